"""Forked workers share the model's pages (issue 17): real `sagehost serve` processes with 1 and
2 workers, measured by PSS once every worker has served requests, on a forest of tens of MB
(loaded before the fork) and on a boosted model (loaded by each worker, its libraries imported
before the fork); and the warm-up leaves a worker's first request nothing to import.

PSS charges each page to the processes mapping it in equal parts, so summed over the supervisor
and its workers it is the memory the server takes (RSS would count a shared page in each).
The assertions use its anonymous part, where the model, the heap and Python's objects live: the
rest is files in the page cache (libpython, numpy's and scikit-learn's shared objects), whose
PSS moves with every other process on the machine mapping the same files (bench/memory.py).
https://docs.kernel.org/filesystems/proc.html (smaps_rollup)
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tests.conftest import running
from tests.integration.test_proxy import children_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's smaps_rollup"),
]

ROW = b"0.1,-0.4,1.2,0.3"
MAX_RATIO = 1.25  # issue 17's bound: 2 workers take at most 1.25 times the memory of one
APART = 1.6  # each worker with its own copy of everything: about 2 times


@dataclass(frozen=True)
class Memory:
    pss_mb: float
    anon_mb: float


@pytest.fixture(scope="module")
def forest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 trees fitted to noise grow deep: a model of tens of MB, trained in a few seconds."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5000, 4)), rng.integers(0, 2, 5000)
    forest = RandomForestClassifier(n_estimators=200, random_state=0, n_jobs=2).fit(x, y)
    out = tmp_path_factory.mktemp("forest")
    joblib.dump(forest, out / "model.joblib")
    assert (out / "model.joblib").stat().st_size > 30e6
    return out


@pytest.fixture(scope="module")
def boosted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose runtime (OpenMP) does not survive a fork: each worker loads its own."""
    x, y = make_classification(n_samples=2000, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0).fit(x, y)
    out = tmp_path_factory.mktemp("hgb")
    joblib.dump(model, out / "model.joblib")
    return out


def rollup_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/smaps_rollup")


def read_calls(pid: int) -> int:
    """Read syscalls `pid` made so far (/proc/PID/io): a worker's grow with each request it reads."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscr in /proc/{pid}/io")


def send_until_each_served(url: str, workers: list[int], timeout: float = 30) -> None:
    """Requests from 8 threads on fresh connections until every worker has read at least 50:
    a worker that served nothing has copied nothing, and would flatter the figure."""
    before = {pid: read_calls(pid) for pid in workers}
    deadline = time.monotonic() + timeout

    def send() -> None:
        with httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for _ in range(25):
                response = client.post("/invocations", content=ROW, headers={"Content-Type": "text/csv"})
                assert response.status_code == 200, response.text

    while not all(read_calls(pid) >= before[pid] + 50 for pid in workers):
        assert time.monotonic() < deadline, f"some of the workers {workers} never got a request"
        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def wait_for_workers(supervisor: int, workers: int, timeout: float = 10) -> list[int]:
    """The processes that serve: the workers, once all are forked, or the server itself alone."""
    if workers == 1:
        return [supervisor]
    deadline = time.monotonic() + timeout
    while len(children := children_of(supervisor)) < workers:
        assert time.monotonic() < deadline, f"{len(children)} of {workers} workers started"
        time.sleep(0.05)
    return sorted(children)


def served_memory(model_dir: Path, tmp: Path, workers: int, *args: str) -> Memory:
    """Summed PSS of the server's processes after every worker has served requests."""
    with running(model_dir, tmp, {"SAGEHOST_WORKERS": str(workers)}, *args) as server:
        supervisor = server.process.pid
        serving = wait_for_workers(supervisor, workers)
        pids = sorted({supervisor, *serving})
        send_until_each_served(server.url, serving)
        time.sleep(0.3)  # in-flight answers freed
        return Memory(
            sum(rollup_kb(pid, "Pss") for pid in pids) / 1024,
            sum(rollup_kb(pid, "Pss_Anon") for pid in pids) / 1024,
        )


def test_two_workers_take_little_more_memory_than_one(forest_dir: Path, tmp_path: Path) -> None:
    one = served_memory(forest_dir, tmp_path, 1)
    two = served_memory(forest_dir, tmp_path, 2)
    assert two.anon_mb <= MAX_RATIO * one.anon_mb, (one, two)
    # The same measure on workers that each load their own copy: it tells sharing from not.
    apart = served_memory(forest_dir, tmp_path, 2, "--no-preload")
    assert apart.anon_mb > APART * one.anon_mb, (one, apart)


def test_workers_that_load_their_own_model_share_its_libraries(boosted_dir: Path, tmp_path: Path) -> None:
    """The parent imports what loading the model imports (scikit-learn, SciPy, pandas: most of a
    worker's memory), learnt in a throwaway child, and never loads the model itself. Before it
    did, 2 workers took 2.08 times the memory of one on this model; now about 1.25."""
    one = served_memory(boosted_dir, tmp_path, 1)
    two = served_memory(boosted_dir, tmp_path, 2)
    assert two.anon_mb <= 1.4 * one.anon_mb, (one, two)


FIRST_REQUEST = """
import asyncio, sys
from pathlib import Path
from sagehost.config import Settings
from sagehost.prefork import import_worker_modules
from sagehost.server import build_service, load_and_warm
from sagehost.service import Invocation

settings = Settings(model_dir=Path(sys.argv[1]), default_method="predict_proba", fast_path=False)
service = build_service(load_and_warm(settings), settings)
import_worker_modules()
before = set(sys.modules)
body = b'{"merchant": "merchant_3", "country": "country_7", "amount": 12.5}'
reply = asyncio.run(service.invoke(Invocation(body, "application/json", None)))
assert reply.status == 200, reply
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_the_warm_up_leaves_the_first_request_nothing_to_import(tmp_path: Path) -> None:
    """What a worker imports is its own memory. A pipeline of text columns may have no row known
    to be valid, so the warm-up guesses one (a text it has not seen, a 0); scikit-learn imports
    its DataFrame machinery (narwhals) on the first transform, which must be the warm-up's, before
    the fork. On the library's path (no lean path), in a fresh process: this one has imported
    everything already."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "merchant": [f"merchant_{i}" for i in rng.integers(0, 8, 300)],
            "country": [f"country_{i}" for i in rng.integers(0, 12, 300)],
            "amount": rng.lognormal(3, 1, 300),
        }
    )
    columns = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), ["merchant", "country"]),
            ("numbers", StandardScaler(), ["amount"]),
        ]
    )
    pipeline = Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, rng.integers(0, 2, 300))
    joblib.dump(pipeline, tmp_path / "model.joblib")
    run = subprocess.run(
        [sys.executable, "-c", FIRST_REQUEST, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.split() == []
