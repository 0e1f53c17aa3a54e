"""`sagehost local serve/train --no-container`: SageMaker's environment, limits and error shapes
around the same `serve` process an image runs (the container runs are in test_container.py)."""

from __future__ import annotations

import socket
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from tests.conftest import SAGEHOST, local_endpoint, start_local

ROWS = "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"


def package(model_dir: Path, out: Path) -> Path:
    subprocess.run([SAGEHOST, "package", str(model_dir), "-o", str(out)], check=True, capture_output=True)
    return out


def expected(model: Any, frame: pd.DataFrame) -> list[str]:
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    return [str(v) for v in model.predict(pd.DataFrame(rows, columns=frame.columns))]


def test_model_tar_gz_is_served_and_errors_come_back_as_model_errors(
    iris_dir: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    archive = package(iris_dir, tmp_path / "model.tar.gz")
    with local_endpoint(["--no-container", "--model-data", str(archive)], tmp_path) as endpoint:
        ok = httpx.post(endpoint.url + "/invocations", content=ROWS, headers={"Content-Type": "text/csv"})
        assert ok.status_code == 200
        assert ok.json() == expected(iris_model, iris_frame)
        assert ok.headers["x-amzn-invoked-production-variant"] == "AllTraffic"

        # The runtime API's own path, as boto3 sends it with endpoint_url pointing here.
        runtime = httpx.post(
            endpoint.url + "/endpoints/demo/invocations", content=ROWS, headers={"Content-Type": "text/csv"}
        )
        assert runtime.json() == ok.json()

        bad = httpx.post(endpoint.url + "/invocations", content="1,2\n", headers={"Content-Type": "text/csv"})
        assert bad.status_code == 424
        assert bad.headers["x-amzn-errortype"].startswith("ModelError")
        error = bad.json()
        assert error["OriginalStatusCode"] == 400
        assert "Received client error (400) from primary" in error["Message"]
        assert "schema_mismatch" in error["OriginalMessage"]

        huge = httpx.post(endpoint.url + "/invocations", content=b"1," * (3 * 1024 * 1024 + 1))
        assert huge.status_code == 413
        assert "6291456" in huge.json()["message"]
    assert endpoint.process.returncode == 0
    assert "Stopped after SIGTERM in" in endpoint.log


def test_batch_mode_sets_sagemakers_batch_environment(iris_dir: Path, tmp_path: Path) -> None:
    args = ["--no-container", "--model-data", str(iris_dir), "--mode", "batch", "--max-payload-mb", "20"]
    with local_endpoint(args, tmp_path) as endpoint:
        params = httpx.get(endpoint.url + "/execution-parameters").json()
        assert params["MaxPayloadInMB"] == 20
        assert params["BatchStrategy"] == "MULTI_RECORD"
        # Over the real-time 6 MB limit, under batch's 20 MB: the stand-in lets it through.
        rows = ROWS * 200_000
        assert len(rows) > 6 * 1024 * 1024
        answer = httpx.post(
            endpoint.url + "/invocations",
            content=rows,
            headers={"Content-Type": "text/csv", "Accept": "text/csv"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        # One prediction per row; in batch mode the answer ends without a newline (the SDK adds one).
        assert answer.text.count("\n") == 400_000 - 1 and not answer.text.endswith("\n")


def test_pipeline_mode_moves_the_server_to_the_bind_port(iris_dir: Path, tmp_path: Path) -> None:
    with local_endpoint(["--no-container", "--model-data", str(iris_dir), "--mode", "pipeline"], tmp_path) as endpoint:
        answer = httpx.post(endpoint.url + "/invocations", content=ROWS, headers={"Content-Type": "text/csv"})
        assert answer.status_code == 200


def test_a_model_that_cannot_load_fails_the_health_check_with_its_reason(tmp_path: Path) -> None:
    nested = tmp_path / "outer" / "model"
    nested.mkdir(parents=True)
    (nested / "notes.txt").write_text("not a model")
    endpoint = start_local(
        ["--no-container", "--model-data", str(tmp_path / "outer"), "--startup-timeout", "60"], tmp_path
    )
    assert endpoint.process.wait(timeout=90) == 1
    log = endpoint.log
    assert "did not pass the ping health check" in log
    assert "the serve exited with code" in log
    assert "package that folder instead" in log  # the nested-folder mistake, named before the start


def test_local_train_writes_the_model_as_model_tar_gz(iris_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "model.tar.gz"
    done = subprocess.run(
        [SAGEHOST, "local", "train", "--no-container", "--data", str(iris_dir), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with tarfile.open(out) as tar:
        assert "model.joblib" in tar.getnames()


def test_local_train_reports_the_failure_reason(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("no model here")
    done = subprocess.run(
        [SAGEHOST, "local", "train", "--no-container", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "m.tgz")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "FailureReason:" in done.stderr
    assert not (tmp_path / "m.tgz").exists()


def test_an_invocation_over_the_timeout_is_a_model_error_with_status_0(tmp_path: Path) -> None:
    code = tmp_path / "model" / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(
        "import time\n"
        "def model_fn(model_dir):\n    return None\n"
        "def predict_fn(data, model):\n    time.sleep(3)\n    return [1]\n"
    )
    args = ["--no-container", "--model-data", str(tmp_path / "model"), "--invocation-timeout", "1"]
    with local_endpoint(args, tmp_path) as endpoint:
        answer = httpx.post(
            endpoint.url + "/invocations", content="1", headers={"Content-Type": "text/csv"}, timeout=30
        )
        assert answer.status_code == 424
        error = answer.json()
        assert error["OriginalStatusCode"] == 0
        assert "Received server error (0) from primary" in error["Message"]
        assert "timed out while waiting for a response from container primary" in error["Message"]


def test_a_taken_port_is_refused_before_anything_starts(iris_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [SAGEHOST, "local", "serve", "--no-container", "--model-data", str(iris_dir), "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    assert "[serve]" not in done.stderr  # nothing was started
