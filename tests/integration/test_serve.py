"""A real `sagehost serve` process, really trained models, a real socket: what needs the process
(workers, batching across connections, timeouts, capacity, signals, loading). The contract's
routes, formats and errors are tested in process in tests/test_app.py."""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import Server, running, slow_model_dir, start_server
from tests.integration import toy_models

ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VALUES = list(ROW.values())
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def demo(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(iris_dir, tmp_path_factory.mktemp("demo"), {"SAGEHOST_WORKERS": "2"}) as server:
        yield server


@pytest.fixture(scope="module")
def picky_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("picky")
    cloudpickle.register_pickle_by_value(toy_models)
    (out / "model.pkl").write_bytes(cloudpickle.dumps(toy_models.Picky()))
    return out


@pytest.fixture(scope="module")
def picky(picky_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1", "SAGEHOST_MAX_QUEUE": "2"}
    with running(picky_dir, tmp_path_factory.mktemp("picky-run"), env) as server:
        yield server


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code
    assert "Traceback" not in response.text
    message: str = body["message"]
    return message


# ---- the contract ----------------------------------------------------------------------


def test_ping_and_execution_parameters(demo: Server) -> None:
    assert demo.client.get("/ping").status_code == 200
    assert demo.client.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }


def test_concurrent_single_rows_match_the_library(demo: Server, iris_model: Any, iris_frame: pd.DataFrame) -> None:
    rows = iris_frame.to_numpy()

    def ask(row: np.ndarray[Any, Any]) -> Any:
        with httpx.Client(base_url=demo.url) as client:
            return client.post("/invocations", json=row.tolist()).json()[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, rows))
    assert answers == iris_model.predict(iris_frame).tolist()


def test_target_name_prefixes_labels(picky_dir: Path, categorical_dir: Path, tmp_path: Path) -> None:
    with running(categorical_dir, tmp_path, {"SAGEHOST_TARGET_NAME": "fraud"}) as server:
        record = {"age": 41, "gender": "M", "city": "lyon", "income": 38.5}
        response = server.client.post("/invocations?method=predict_proba", json=record)
        assert list(response.json()) == ["fraud.0", "fraud.1"]


def test_string_categorical_pipeline_from_csv_and_json(categorical_dir: Path, tmp_path: Path) -> None:
    import joblib

    model = joblib.load(categorical_dir / "model.joblib")
    frame = pd.DataFrame([{"age": 41, "gender": "M", "city": "lyon", "income": 38.5}])
    expected = model.predict_proba(frame).tolist()
    with running(categorical_dir, tmp_path) as server:
        csv = b"city,income,age,gender\nlyon,38.5,41,M\n"
        by_csv = server.client.post(
            "/invocations?method=predict_proba", content=csv, headers={"content-type": "text/csv"}
        )
        by_json = server.client.post("/invocations?method=predict_proba", json=[[41, "M", "lyon", 38.5]])
        assert np.allclose(by_csv.json(), expected)
        assert np.allclose(by_json.json(), expected)


# ---- errors: clear, safe, nothing lost -----------------------------------------------------


def test_request_errors(demo: Server) -> None:
    assert "Expected 4 values per row, got 2" in error(
        demo.client.post("/invocations", json=[1, 2]), 400, "schema_mismatch"
    )
    missing = demo.client.post("/invocations", json={"sepal_length": 1})
    assert "'petal_width'" in error(missing, 400, "schema_mismatch")
    error(demo.client.post("/invocations", content=b"{oops", headers=JSON), 400, "invalid_payload")
    error(demo.client.post("/invocations", content=b"", headers=JSON), 400, "empty_payload")
    error(
        demo.client.post("/invocations", content=b"1", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    not_acceptable = demo.client.post("/invocations", json=[VALUES], headers={"accept": "text/html"})
    error(not_acceptable, 406, "not_acceptable")
    error(demo.client.post("/invocations?method=fit", json=[VALUES]), 400, "invalid_payload")
    error(demo.client.get("/invocations"), 405, "method_not_allowed")
    error(demo.client.get("/nope"), 404, "not_found")


def test_payload_limit_is_413(demo: Server) -> None:
    body = b"5.1,3.5,1.4,0.2\n" * (7 * 1024 * 1024 // 16)
    response = demo.client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert "6 MB" in error(response, 413, "payload_too_large")


def test_model_exception_is_500_naming_its_type_and_the_worker_lives(picky: Server) -> None:
    response = picky.client.post("/invocations", json=[[-1, 0]])
    assert "ValueError" in error(response, 500, "model_error")
    assert "request_id" in response.json()["error"]
    assert picky.client.post("/invocations", json=[[2, 0]]).json() == [4.0]
    assert "negative input" in picky.log  # the detail is in the log, not the response


def test_one_poisoned_request_fails_alone_in_a_batch(picky: Server) -> None:
    def ask(value: int) -> httpx.Response:
        with httpx.Client(base_url=picky.url) as client:
            return client.post("/invocations", json=[[value, 0]])

    slow = concurrent.futures.ThreadPoolExecutor(1).submit(
        lambda: httpx.post(picky.url + "/invocations", json=[[1, 0.4]], timeout=10)
    )
    time.sleep(0.1)  # the model is busy: the next requests queue into one batch
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        good, bad = pool.map(ask, [3, -3])
    assert slow.result().json() == [2.0]
    assert good.json() == [6.0]
    assert bad.status_code == 500


def test_timeout_is_504_and_ping_stays_fast(picky: Server) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(picky.client.post, "/invocations", json=[[1, 1.5]])
        time.sleep(0.2)
        start = time.monotonic()
        assert picky.client.get("/ping").status_code == 200
        assert time.monotonic() - start < 0.5
        assert "longer than 1 s" in error(slow.result(), 504, "prediction_timeout")
    time.sleep(0.5)  # let the model finish the abandoned call


def test_over_capacity_is_503(picky: Server) -> None:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        busy = pool.submit(httpx.post, picky.url + "/invocations", json=[[1, 0.8]], timeout=10)
        time.sleep(0.2)
        rest = list(pool.map(lambda _: httpx.post(picky.url + "/invocations", json=[[1, 0]], timeout=10), range(5)))
        assert busy.result().status_code == 200
    codes = sorted(r.status_code for r in rest)
    assert codes.count(503) >= 1 and codes.count(200) >= 2
    assert all(r.json()["error"]["code"] == "overloaded" for r in rest if r.status_code == 503)


# ---- process lifecycle -------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_and_exits_0(picky_dir: Path, tmp_path: Path) -> None:
    server = start_server(picky_dir, tmp_path, {"SAGEHOST_WORKERS": "2"})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, server.url + "/invocations", json=[[5, 1.0]], timeout=10)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        assert slow.result().json() == [10.0]
    assert server.stop() == 0


def test_unloadable_model_exits_with_one_paragraph(tmp_path: Path) -> None:
    empty = tmp_path / "model"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    server = start_server(empty, tmp_path, wait=False)
    assert server.exited() == 1
    log = server.log
    assert "Found: notes.txt" in log
    assert "Expected one of:" in log and "*.joblib" in log and "*.onnx" in log
    assert "joblib.dump" in log


def test_model_tar_gz_in_a_read_only_dir(iris_dir: Path, tmp_path: Path) -> None:
    import tarfile

    model_dir = tmp_path / "ro"
    model_dir.mkdir()
    with tarfile.open(model_dir / "model.tar.gz", "w:gz") as tar:
        tar.add(iris_dir / "model.joblib", arcname="model.joblib")
    model_dir.chmod(0o555)
    try:
        with running(model_dir, tmp_path) as server:
            assert server.client.post("/invocations", json=VALUES).json() == ["setosa"]
    finally:
        model_dir.chmod(0o755)


def test_ping_is_503_while_the_model_loads(iris_dir: Path, tmp_path: Path) -> None:
    model_dir = slow_model_dir(iris_dir, tmp_path, seconds=2)
    server = start_server(model_dir, tmp_path, wait=False)
    try:
        deadline = time.monotonic() + 10
        statuses: list[int] = []
        while time.monotonic() < deadline and 200 not in statuses:
            with contextlib.suppress(httpx.TransportError):
                statuses.append(server.client.get("/ping", timeout=2).status_code)
            time.sleep(0.1)
        assert statuses[0] == 503 and statuses[-1] == 200
    finally:
        assert server.stop() == 0
