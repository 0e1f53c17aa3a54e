"""`sagehost verify URL` against our server and against the classic Flask recipe users run."""

from __future__ import annotations

import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SAGEHOST, Server, free_port, running

BENCH = Path(__file__).resolve().parents[2] / "bench"


def verify(url: str, *payloads: tuple[Path, str]) -> subprocess.CompletedProcess[str]:
    args = [arg for path, kind in payloads for arg in ("--payload", str(path), kind)]
    return subprocess.run([SAGEHOST, "verify", url, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def payloads(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "row.csv").write_text("5.1,3.5,1.4,0.2\n")
    (tmp_path / "row.json").write_text("[[5.1, 3.5, 1.4, 0.2]]")
    return [(tmp_path / "row.csv", "text/csv"), (tmp_path / "row.json", "application/json")]


@pytest.fixture(scope="module")
def ours(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(iris_dir, tmp_path_factory.mktemp("logs")) as server:
        yield server


def test_sagehost_passes_every_check(ours: Server, payloads: list[tuple[Path, str]]) -> None:
    done = verify(ours.url, *payloads)
    assert done.returncode == 0, done.stdout
    assert "7 passed, 0 failed" in done.stdout
    assert "PASS  A body over 6 MB is refused with a 4xx: HTTP 413" in done.stdout


def wait_for_ping(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until a peer's /ping says 200; verify itself reports whatever state it is left in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/ping").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


@pytest.fixture
def classic(iris_dir: Path, tmp_path: Path) -> Iterator[str]:
    """AWS's scikit_bring_your_own Flask app under gunicorn, as users run it (bench/classic_recipe.py)."""
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    env = {**os.environ, "MODEL_DIR": str(iris_dir), "PYTHONWARNINGS": "ignore"}
    with (tmp_path / "gunicorn.log").open("wb") as log:
        process = subprocess.Popen(
            [str(gunicorn), "--chdir", str(BENCH), "-w", "1", "-b", f"127.0.0.1:{port}", "classic_recipe:app"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(url, process, timeout=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_classic_flask_recipe_fails_with_causes_and_fixes(classic: str, payloads: list[tuple[Path, str]]) -> None:
    done = verify(classic, *payloads)
    assert done.returncode == 1
    print(done.stdout)  # what it finds, for the record
    assert "PASS  GET /ping is 200 within 2 s" in done.stdout
    assert "PASS  POST /invocations (text/csv)" in done.stdout
    assert "FAIL  POST /invocations (application/json): HTTP 415" in done.stdout
    assert "FAIL  A body over 6 MB is refused with a 4xx" in done.stdout
    assert done.stdout.count("fix: ") == done.stdout.count("FAIL  ")


def test_nothing_listening_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    done = verify(f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "FAIL  GET /ping is 200 within 2 s: No answer from http://127.0.0.1:" in done.stdout
    assert "Connection refused" in done.stdout


class _Endless(socketserver.StreamRequestHandler):
    """Reads a request whole, then answers 200 with a chunked body that never ends."""

    def handle(self) -> None:
        length = 0
        while (line := self.rfile.readline(65536)) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.rfile.read(length)
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"1" * 65536)
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:  # verify stopped reading and closed the connection
            return


class _Threads(socketserver.ThreadingTCPServer):
    daemon_threads = True


@pytest.fixture
def endless() -> Iterator[str]:
    with _Threads(("127.0.0.1", 0), _Endless) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join(10)


def test_an_answer_without_end_is_read_to_6_mb_and_judged(endless: str, payloads: list[tuple[Path, str]]) -> None:
    """A server that never stops answering: verify reads 6 MB of each answer (InvokeEndpoint's
    limit), judges it, and finishes (without the cap it would read until memory runs out)."""
    done = verify(endless, payloads[0])
    print(done.stdout)  # what it finds, for the record
    assert done.returncode == 1, done.stdout
    assert "PASS  GET /ping is 200 within 2 s" in done.stdout
    assert "FAIL  POST /invocations (text/csv): the answer is over 6291456 bytes" in done.stdout
    assert "FAIL  Unknown paths are 404: HTTP 200" in done.stdout


@pytest.fixture
def mlflow_server(mlflow_model: tuple[Path, Any], tmp_path: Path) -> Iterator[str]:
    """`mlflow models serve`, the scoring server MLflow users deploy (and build images from)."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", str(mlflow_model[0]), "-h", "127.0.0.1",
               "-p", str(port), "--env-manager", "local", "-w", "1"]  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # mlflow execs a bare `uvicorn`
    with (tmp_path / "mlflow.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(url, process, timeout=90)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.slow
def test_mlflows_scoring_server_and_what_verify_finds(
    mlflow_server: str, mlflow_model: tuple[Path, Any], tmp_path: Path
) -> None:
    rows = mlflow_model[1][:1].tolist()
    (tmp_path / "split.json").write_text(json.dumps({"dataframe_split": {"data": rows}}))
    (tmp_path / "row.csv").write_text(",".join(map(str, rows[0])) + "\n")
    done = verify(mlflow_server, (tmp_path / "split.json", "application/json"), (tmp_path / "row.csv", "text/csv"))
    print(done.stdout)  # what it finds, for the record
    # MLflow reads CSV with a header row only: the headerless lines Batch Transform sends (SplitType=Line)
    # are refused. Everything else in the contract holds.
    assert done.returncode == 1
    assert "FAIL  POST /invocations (text/csv): HTTP 400" in done.stdout
    assert "PASS  POST /invocations (application/json)" in done.stdout
    assert "6 passed, 1 failed" in done.stdout
