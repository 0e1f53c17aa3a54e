"""Multi-model serving with real processes: `sagehost serve --multi-model` with two workers and
really trained models of three formats (scikit-learn, XGBoost, LightGBM) plus an inference.py.

Which worker answers is the kernel's choice; to ask one worker in particular, the tests stop the
other (SIGSTOP): new connections then wait for the one left running."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tarfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

from tests.conftest import Server, local_endpoint, start_sagehost
from tests.integration.test_proxy import children_of
from tests.integration.test_workers import wait_for

MIB = 1024 * 1024
ROWS = np.linspace(-2, 2, 12).reshape(3, 4)
CSV = "\n".join(",".join(f"{v:.6f}" for v in row) for row in ROWS)
BAD = {"content-type": "image/png"}  # 415 from a worker that has the model, 404 from one that has not
SLOW_SCRIPT = """
import time

def model_fn(model_dir):
    time.sleep(1.5)
    return "slow"

def transform_fn(model, body, content_type, accept):
    return '"slow"', "application/json"
"""


@pytest.fixture(scope="module")
def fifty(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray[Any, Any]]]:
    """50 distinct models (20 scikit-learn, 15 XGBoost, 15 LightGBM), each with its predictions for ROWS."""
    import lightgbm
    import xgboost
    from sklearn.linear_model import LinearRegression

    root = tmp_path_factory.mktemp("fifty")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0])
    found: dict[str, tuple[Path, np.ndarray[Any, Any]]] = {}
    for index in range(50):
        name = f"model-{index:02d}"
        folder = root / name
        folder.mkdir()
        target = y + 10 * index  # every model answers differently: a mix-up cannot pass
        if index < 20:
            model = LinearRegression().fit(x, target)
            joblib.dump(model, folder / "model.joblib")
            found[name] = (folder, model.predict(ROWS))
        elif index < 35:
            params = {"max_depth": 2, "objective": "reg:squarederror", "nthread": 1}
            booster = xgboost.train(params, xgboost.DMatrix(x, label=target), num_boost_round=3)
            booster.save_model(folder / "model.json")
            found[name] = (folder, booster.predict(xgboost.DMatrix(ROWS)))
        else:
            params = {
                "objective": "regression",
                "num_leaves": 4,
                "min_data_in_leaf": 5,
                "verbose": -1,
                "num_threads": 1,
            }
            gbm = lightgbm.train(params, lightgbm.Dataset(x, target), num_boost_round=3)
            gbm.save_model(str(folder / "model.txt"))
            found[name] = (folder, np.asarray(gbm.predict(ROWS)))
    return found


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory, fifty: dict[str, tuple[Path, Any]]) -> list[Path]:
    """Three scikit-learn models with 8 MiB of files each: that is what each copy costs."""
    root = tmp_path_factory.mktemp("padded")
    folders = []
    for index in range(3):
        folder = root / f"padded-{index}"
        shutil.copytree(fifty[f"model-{index:02d}"][0], folder)
        (folder / "padding.dat").write_bytes(b"\0" * (8 * MIB))
        folders.append(folder)
    return folders


@contextlib.contextmanager
def multi_model(tmp: Path, *args: str, workers: int = 2, flag: bool = True) -> Iterator[Server]:
    """`serve --multi-model`, or, without `flag`, `serve` with SAGEMAKER_MULTI_MODEL=true as SageMaker sets it."""
    command = ["serve", *(["--multi-model"] if flag else []), "--workers", str(workers), *args]
    server = start_sagehost(command, tmp, {} if flag else {"SAGEMAKER_MULTI_MODEL": "true"})
    try:
        if workers > 1:
            wait_for(lambda: len(children_of(server.process.pid)) == workers, 30)
        yield server
    finally:
        assert server.stop() == 0, server.log


@contextlib.contextmanager
def only(server: Server, worker: int) -> Iterator[None]:
    """Every other worker stopped (SIGSTOP): new connections can reach `worker` alone."""
    others = children_of(server.process.pid) - {worker}
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module", autouse=True)
def no_keep_alive() -> Iterator[None]:
    with httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        _CLIENT.append(client)
        yield
        _CLIENT.clear()


_CLIENT: list[httpx.Client] = []


def fresh(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request on a new connection (no keep-alive: it must not stay with one worker)."""
    return _CLIENT[0].request(method, server.url + path, **kwargs)


def load(server: Server, name: str, folder: Path) -> httpx.Response:
    return fresh(server, "POST", "/models", json={"model_name": name, "url": str(folder)})


def invoke(server: Server, name: str, body: str = CSV, headers: dict[str, str] | None = None) -> httpx.Response:
    return fresh(
        server, "POST", f"/models/{name}/invoke", content=body, headers=headers or {"content-type": "text/csv"}
    )


def predictions(response: httpx.Response) -> np.ndarray[Any, Any]:
    assert response.status_code == 200, response.text
    return np.asarray(response.json(), dtype=float)


def test_fifty_models_of_three_formats_loaded_invoked_and_unloaded_with_two_workers(
    tmp_path: Path, fifty: dict[str, tuple[Path, np.ndarray[Any, Any]]]
) -> None:
    with multi_model(tmp_path) as server:
        workers = children_of(server.process.pid)
        # From its 200 on, a model is served by every worker.
        for name in ("model-00", "model-20", "model-35"):
            assert load(server, name, fifty[name][0]).status_code == 200
            for worker in workers:
                with only(server, worker):
                    np.testing.assert_allclose(predictions(invoke(server, name)), fifty[name][1], rtol=1e-5)
        rest = [n for n in fifty if n not in ("model-00", "model-20", "model-35")]
        with ThreadPoolExecutor(8) as pool:  # SageMaker loads several at once
            statuses = list(pool.map(lambda n: load(server, n, fifty[n][0]).status_code, rest))
        assert statuses == [200] * len(rest), server.log[-3000:]

        def check(name: str) -> None:
            np.testing.assert_allclose(predictions(invoke(server, name)), fifty[name][1], rtol=1e-5)

        with ThreadPoolExecutor(16) as pool:  # every model, concurrently, several times
            list(pool.map(check, list(fifty) * 3))
        for worker in workers:
            with only(server, worker):
                assert [invoke(server, n, "x", BAD).status_code for n in fifty] == [415] * 50

        pages, token = [], None
        while True:
            page = fresh(
                server, "GET", "/models", params={"limit": 20, **({"next_page_token": token} if token else {})}
            )
            pages.append([m["modelName"] for m in page.json()["models"]])
            token = page.json().get("nextPageToken")
            if token is None:
                break
        assert [len(p) for p in pages] == [20, 20, 10] and sorted(sum(pages, [])) == sorted(fifty)

        gone = list(fifty)[::2]
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda n: fresh(server, "DELETE", f"/models/{n}").status_code, gone)) == {200}
        for worker in workers:
            with only(server, worker):
                for name in fifty:
                    status = invoke(server, name, "x", BAD).status_code
                    assert status == (404 if name in gone else 415), name
        assert fresh(server, "DELETE", "/models/model-00").status_code == 404
        assert len(fresh(server, "GET", "/models").json()["models"]) == 25


def test_a_small_budget_answers_507_until_a_model_is_unloaded(
    tmp_path: Path, padded: list[Path], fifty: dict[str, tuple[Path, Any]]
) -> None:
    """40 MiB with two workers: two models of 8 MiB (16 MiB for both copies) fit, a third does not."""
    with multi_model(tmp_path, "--model-memory-mb", "40") as server:
        assert load(server, "a", padded[0]).status_code == 200
        assert load(server, "b", padded[1]).status_code == 200
        refused = load(server, "c", padded[2])
        assert refused.status_code == 507 and refused.json()["error"]["code"] == "insufficient_memory"
        assert "2 workers" in refused.json()["error"]["message"]
        assert invoke(server, "c").status_code == 404
        assert fresh(server, "DELETE", "/models/a").status_code == 200
        assert load(server, "c", padded[2]).status_code == 200
        np.testing.assert_allclose(predictions(invoke(server, "c")), fifty["model-02"][1], rtol=1e-6)
        assert sorted(m["modelName"] for m in fresh(server, "GET", "/models").json()["models"]) == ["b", "c"]


def test_the_statuses_of_post_models(tmp_path: Path, fifty: dict[str, tuple[Path, Any]]) -> None:
    (tmp_path / "empty").mkdir()
    with multi_model(tmp_path, workers=1, flag=False) as server:
        assert fresh(server, "GET", "/ping").status_code == 200  # no model loaded
        assert load(server, "m", fifty["model-40"][0]).status_code == 200
        assert load(server, "m", fifty["model-41"][0]).status_code == 409
        assert load(server, "n", tmp_path / "missing").status_code == 404
        assert load(server, "n", Path("/proc/1")).status_code == 400
        unservable = load(server, "n", tmp_path / "empty")
        assert unservable.status_code == 400 and "the directory is empty" in unservable.json()["error"]["message"]
        assert fresh(server, "GET", "/models/n").status_code == 404
        assert fresh(server, "DELETE", "/models/n").status_code == 404


def test_a_worker_replacing_a_dead_one_serves_every_loaded_model(
    tmp_path: Path, fifty: dict[str, tuple[Path, np.ndarray[Any, Any]]]
) -> None:
    names = list(fifty)[:6] + list(fifty)[20:23] + list(fifty)[35:38]
    with multi_model(tmp_path) as server:
        for name in names:
            assert load(server, name, fifty[name][0]).status_code == 200
        first = children_of(server.process.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: children_of(server.process.pid) - first, 30)
        (replacement,) = new
        with only(server, replacement):
            for name in names:
                np.testing.assert_allclose(predictions(invoke(server, name)), fifty[name][1], rtol=1e-5)
        # The dead worker's copies no longer count, and the next load waits for no ghost.
        assert load(server, "late", fifty["model-49"][0]).status_code == 200


def test_a_load_blocks_neither_ping_nor_the_other_models(
    tmp_path: Path, fifty: dict[str, tuple[Path, np.ndarray[Any, Any]]]
) -> None:
    slow = tmp_path / "slow"
    (slow / "code").mkdir(parents=True)
    (slow / "code" / "inference.py").write_text(textwrap.dedent(SLOW_SCRIPT))
    with multi_model(tmp_path) as server:
        assert load(server, "fast", fifty["model-01"][0]).status_code == 200
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            loading = pool.submit(load, server, "slow", slow)
            time.sleep(0.3)
            while not loading.done():
                began = time.monotonic()
                assert fresh(server, "GET", "/ping").status_code == 200
                np.testing.assert_allclose(predictions(invoke(server, "fast")), fifty["model-01"][1], rtol=1e-6)
                assert time.monotonic() - began < 1.0
                time.sleep(0.1)
            assert loading.result().status_code == 200
            assert time.monotonic() - started >= 3.0  # one worker after the other: 1.5 s each
        assert invoke(server, "slow", "[]", {"content-type": "application/json"}).json() == "slow"


# ---- sagehost local serve --mode multi-model ---------------------------------------------------------


def test_the_local_stand_in_loads_on_first_use_and_evicts_the_least_recently_used(
    tmp_path: Path, padded: list[Path], fifty: dict[str, tuple[Path, np.ndarray[Any, Any]]]
) -> None:
    """Three model.tar.gz of 8 MiB under a 40 MiB budget with two workers: the third evicts the first."""
    prefix = tmp_path / "prefix"
    (prefix / "team").mkdir(parents=True)
    targets = ["a.tar.gz", "team/b.tar.gz", "c.tar.gz"]
    for folder, target in zip(padded, targets, strict=True):
        with tarfile.open(prefix / target, "w:gz") as tar:
            for path in folder.iterdir():
                tar.add(path, arcname=path.name)
    args = ["--no-container", "--mode", "multi-model", "--model-data", str(prefix)]
    args += ["-e", "SAGEHOST_MODEL_MEMORY_MB=40", "-e", "SAGEHOST_WORKERS=2"]
    expected = {t: fifty[f"model-{i:02d}"][1] for i, t in enumerate(targets)}
    with local_endpoint(args, tmp_path) as endpoint:

        def call(target: str | None, body: str = CSV) -> httpx.Response:
            headers = {"content-type": "text/csv", **({"X-Amzn-SageMaker-Target-Model": target} if target else {})}
            return _CLIENT[0].post(endpoint.url + "/invocations", content=body, headers=headers)

        for target in ["a.tar.gz", "team/b.tar.gz", "a.tar.gz", "c.tar.gz", "team/b.tar.gz"]:
            np.testing.assert_allclose(predictions(call(target)), expected[target], rtol=1e-6)
        log = endpoint.log
        # c evicted b (a had been used after it); b's return evicted a.
        assert "unloaded team/b.tar.gz, the least recently used" in log
        assert log.index("unloaded team/b.tar.gz") < log.index("unloaded a.tar.gz")
        assert log.count("least recently used") == 2
        missing = call("nope.tar.gz")
        assert missing.status_code == 400 and "there is no nope.tar.gz" in missing.json()["message"]
        assert call(None).status_code == 400
        assert call("../outside.tar.gz").status_code == 400
        failing = call("c.tar.gz", "not,numbers,at,all")
        assert failing.status_code == 424 and failing.json()["OriginalStatusCode"] == 400
    assert endpoint.process.returncode == 0


@pytest.mark.container
@pytest.mark.slow
def test_a_multi_model_image_serves_models_under_opt_ml_models_in_a_read_only_container(
    tmp_path: Path, padded: list[Path], fifty: dict[str, tuple[Path, np.ndarray[Any, Any]]]
) -> None:
    """`sagehost build --multi-model`, then `local serve IMAGE --mode multi-model`: the label, the
    models unpacked where SageMaker puts them, eviction inside the container."""
    from tests.integration.test_container import BASE, build, podman

    assert podman("image", "exists", BASE, check=False).returncode == 0, f"no {BASE}: run scripts/setup-containers"
    tag = f"localhost/sagehost-test-mm-{os.getpid()}"
    build(tag, tmp_path / "context", "--multi-model")
    try:
        labels = podman("image", "inspect", tag, "--format", "{{json .Labels}}").stdout
        assert '"com.amazonaws.sagemaker.capabilities.multi-models":"true"' in labels.replace(" ", "")
        prefix = tmp_path / "prefix"
        prefix.mkdir()
        for index, folder in enumerate(padded):
            with tarfile.open(prefix / f"m{index}.tar.gz", "w:gz") as tar:
                for path in folder.iterdir():
                    tar.add(path, arcname=path.name)
        args = [tag, "--mode", "multi-model", "--model-data", str(prefix), "--builder", "podman"]
        args += ["-e", "SAGEHOST_MODEL_MEMORY_MB=40", "-e", "SAGEHOST_WORKERS=2"]
        with local_endpoint(args, tmp_path) as endpoint:
            for index in (0, 1, 2, 0):
                headers = {"content-type": "text/csv", "X-Amzn-SageMaker-Target-Model": f"m{index}.tar.gz"}
                answer = _CLIENT[0].post(endpoint.url + "/invocations", content=CSV, headers=headers)
                np.testing.assert_allclose(predictions(answer), fifty[f"model-{index:02d}"][1], rtol=1e-6)
            assert "from /opt/ml/models/" in endpoint.log
            assert endpoint.log.count("the least recently used") == 2
    finally:
        podman("rmi", "-f", tag, check=False)
