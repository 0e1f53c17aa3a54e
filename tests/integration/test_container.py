"""Real containers, with podman: `sagehost build` of the demo model, the image run read-only with
its model mounted read-only, `sagehost verify IMAGE`, predictions, SIGTERM, `local train`, and
what verify finds in a hand-written image.

Needs `scripts/setup-containers` (podman and a local Python base image; `scripts/test` runs it).
Deselect with `-m "not container"` on a machine without podman.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.conftest import SAGEHOST, local_endpoint
from tests.integration.test_local import ROWS, expected

pytestmark = [pytest.mark.container, pytest.mark.slow]

BASE = os.environ.get("SAGEHOST_TEST_BASE_IMAGE", "localhost/debian-python:bookworm")
TAG = f"localhost/sagehost-test-{os.getpid()}"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=300)


def build(tag: str, context: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        SAGEHOST,
        "build",
        *args,
        "-t",
        tag,
        "--builder",
        "podman",
        "--base-image",
        BASE,
        "--context",
        str(context),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    assert shutil.which("podman"), "podman is missing: run scripts/setup-containers"
    assert podman("image", "exists", BASE, check=False).returncode == 0, f"no {BASE}: run scripts/setup-containers"
    yield
    podman("rmi", "-f", f"{TAG}-code", f"{TAG}-demo", f"{TAG}-bad", check=False)


@pytest.fixture(scope="module")
def code_image(engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image holding code only: SageMaker delivers the model as model.tar.gz."""
    build(f"{TAG}-code", tmp_path_factory.mktemp("code-context"))
    return f"{TAG}-code"


@pytest.fixture(scope="module")
def demo_image(engine: None, iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """The demo model baked in: (tag, build context, build log)."""
    context = tmp_path_factory.mktemp("demo-context")
    done = build(f"{TAG}-demo", context, str(iris_dir))
    return f"{TAG}-demo", context, done.stderr


@pytest.fixture
def row_csv(tmp_path: Path) -> Path:
    (tmp_path / "row.csv").write_text("5.1,3.5,1.4,0.2\n")
    return tmp_path / "row.csv"


def verify(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGEHOST, "verify", target, *args], capture_output=True, text=True, timeout=180, check=False)


def test_build_writes_a_two_stage_dockerfile_and_a_slim_image(demo_image: tuple[str, Path, str]) -> None:
    tag, context, log = demo_image
    recipe = (context / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE} AS build" in recipe
    assert "--no-index --find-links /wheelhouse" in recipe
    assert 'ENTRYPOINT ["/opt/venv/bin/sagehost"]' in recipe
    assert "COPY model/ /opt/ml/model/" in recipe
    assert "libgomp1" not in recipe and "jre" not in recipe  # scikit-learn needs neither
    assert "serves model.joblib as sklearn" in log
    assert f"Built {tag} with podman:" in log

    config = json.loads(podman("image", "inspect", tag).stdout)[0]
    assert config["Config"]["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Config"]["Cmd"] == ["serve"]
    # Only the virtual environment crossed from the build stage: no wheels, pip, tests or compilers.
    inside = "test ! -e /wheelhouse && test ! -e /opt/venv/bin/pip && ! command -v gcc && test ! -d " + (
        "/opt/venv/lib/python3.11/site-packages/pandas/tests"
    )
    assert podman("run", "--rm", "--entrypoint", "sh", tag, "-c", inside, check=False).returncode == 0


def test_the_built_image_passes_verify(demo_image: tuple[str, Path, str], row_csv: Path) -> None:
    done = verify(demo_image[0], "--payload", str(row_csv), "text/csv")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "on SAGEMAKER_BIND_TO_PORT=9081" in done.stdout  # the label's promise, held to
    assert "PASS  Writes nothing outside /tmp (read-only root)" in done.stdout
    assert "PASS  Stops within 30 s of SIGTERM" in done.stdout
    assert " 0 failed" in done.stdout


def test_train_then_serve_model_tar_gz_in_a_code_only_image(
    code_image: str, iris_dir: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    trained = tmp_path / "output" / "model.tar.gz"
    done = subprocess.run(
        [SAGEHOST, "local", "train", code_image, "--data", str(iris_dir), "-o", str(trained)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    with local_endpoint([code_image, "--model-data", str(trained)], tmp_path) as endpoint:
        answer = httpx.post(endpoint.url + "/invocations", content=ROWS, headers={"Content-Type": "text/csv"})
        assert answer.status_code == 200, endpoint.log[-2000:]
        assert answer.json() == expected(iris_model, iris_frame)
        bad = httpx.post(endpoint.url + "/invocations", content="oops", headers={"Content-Type": "text/csv"})
        assert bad.status_code == 424
        assert bad.json()["OriginalStatusCode"] == 400
    assert endpoint.process.returncode == 0, endpoint.log[-2000:]
    assert "Stopped after SIGTERM in" in endpoint.log


def test_a_model_tar_gz_with_a_nested_folder_fails_the_health_check(
    code_image: str, iris_dir: Path, tmp_path: Path
) -> None:
    nested = tmp_path / "nested.tar.gz"
    subprocess.run(["tar", "czf", str(nested), "-C", str(iris_dir.parent), iris_dir.name], check=True)
    done = subprocess.run(
        [SAGEHOST, "local", "serve", code_image, "--model-data", str(nested), "--port", "0", "--startup-timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "did not pass the ping health check" in done.stderr
    assert "package that folder instead" in done.stderr


HAND_WRITTEN_SERVER = """
import http.server, time
STARTED = time.time()
try:
    open("/srv/cache.txt", "w").write("warm")
except OSError as exc:
    print("cache disabled:", exc, flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(200 if self.path == "/ping" else 404, b"")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        loaded = time.time() - STARTED > 20  # /ping says 200 long before the model is there
        self._answer(200 if loaded else 500, b"[1]" if loaded else b"model not loaded")

http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"""


def test_verify_explains_what_is_wrong_with_a_hand_written_image(engine: None, row_csv: Path, tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(HAND_WRITTEN_SERVER)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE}\nCOPY server.py /srv/server.py\nENTRYPOINT python3 /srv/server.py\n"  # shell form
    )
    podman("build", "-t", f"{TAG}-bad", str(tmp_path))
    done = verify(f"{TAG}-bad", "--payload", str(row_csv), "text/csv")
    assert done.returncode == 1
    out = done.stdout
    assert "FAIL  Label com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true: missing" in out
    assert "FAIL  Exec-form ENTRYPOINT" in out and "shell form: /bin/sh -c" in out
    assert "/ping said 200 but the first invocation got HTTP 500" in out
    assert "FAIL  Writes nothing outside /tmp (read-only root)" in out and "/srv/cache.txt" in out
    assert "FAIL  Stops within 30 s of SIGTERM" in out
    assert "PASS  Architecture amd64" in out
