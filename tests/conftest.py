from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

ROOT = Path(__file__).resolve().parents[1]
SAGEHOST = str(Path(sys.executable).parent / "sagehost")
DEMO_TRAINER = ROOT / "examples" / "demo" / "train_demo.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A real `sagehost serve` process on a free loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def exited(self, timeout: float = 60) -> int:
        """The exit code of a server expected to stop by itself (startup failures); slow starts
        on a busy machine take seconds to get there."""
        self.client.close()
        return self.process.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM unless it already exited (or is exiting); the exit code."""
        self.client.close()
        try:
            return self.process.wait(timeout=0.5 if self.process.poll() is None else 0)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=40)


def start_server(
    model_dir: Path, tmp: Path, env: Mapping[str, str] | None = None, *args: str, wait: bool = True
) -> Server:
    return start_sagehost(["serve", "--model-dir", str(model_dir), *args], tmp, env, wait=wait)


def start_proxy(tmp: Path, env: Mapping[str, str] | None = None, *args: str, wait: bool = True) -> Server:
    return start_sagehost(["proxy", *args], tmp, env, wait=wait)


def start_sagehost(command: list[str], tmp: Path, env: Mapping[str, str] | None = None, wait: bool = True) -> Server:
    """`sagehost <command>` on a free loopback port, its output in a log file under `tmp`."""
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SAGEHOST_", "SM_"))}
    full_env.update({"SAGEHOST_WORKERS": "1", "SAGEHOST_SCRATCH_DIR": str(tmp / "scratch"), **(env or {})})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [SAGEHOST, *command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    if wait:
        wait_healthy(server)
    return server


def wait_healthy(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log}")
        try:
            if server.client.get("/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"server never became healthy:\n{server.log}")


@contextmanager
def running(model_dir: Path, tmp: Path, env: Mapping[str, str] | None = None, *args: str) -> Iterator[Server]:
    server = start_server(model_dir, tmp, env, *args)
    try:
        yield server
    finally:
        server.stop()


# ---- really trained models -------------------------------------------------------------


@pytest.fixture(scope="session")
def iris_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled demo model, trained by the same script the README runs."""
    out = tmp_path_factory.mktemp("iris")
    subprocess.run([sys.executable, str(DEMO_TRAINER), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def iris_model(iris_dir: Path) -> Any:
    return joblib.load(iris_dir / "model.joblib")


@pytest.fixture(scope="session")
def iris_frame() -> pd.DataFrame:
    data: pd.DataFrame = load_iris(as_frame=True).data
    return data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))


@pytest.fixture(scope="session")
def numeric_data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    x, y = make_classification(n_samples=1500, n_features=10, n_informative=6, n_classes=3, random_state=0)
    return np.asarray(x), np.asarray(y)


@pytest.fixture(scope="session")
def forest_dir(
    tmp_path_factory: pytest.TempPathFactory, numeric_data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> Path:
    out = tmp_path_factory.mktemp("forest")
    x, y = numeric_data
    joblib.dump(RandomForestClassifier(n_estimators=30, random_state=0).fit(x, y), out / "forest.pkl")
    return out


@pytest.fixture(scope="session")
def logistic_dir(
    tmp_path_factory: pytest.TempPathFactory, numeric_data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> Path:
    out = tmp_path_factory.mktemp("logistic")
    x, y = numeric_data
    with (out / "model.pickle").open("wb") as f:
        import pickle

        pickle.dump(LogisticRegression(max_iter=1000).fit(x, y), f)
    return out


@pytest.fixture(scope="session")
def mlflow_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray[Any, Any]]:
    """A LogisticRegression saved by MLflow itself, and ten rows for it."""
    import mlflow.sklearn

    x, y = make_classification(n_samples=300, n_features=4, random_state=2)
    out = tmp_path_factory.mktemp("mlflow") / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(LogisticRegression().fit(x, y), str(out), serialization_format="cloudpickle")
    return out, x[:10]


def adult_like_frame() -> tuple[pd.DataFrame, pd.Series[Any]]:
    rng = np.random.default_rng(1)
    n = 400
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "gender": rng.choice(["M", "F"], n),
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "income": rng.normal(40, 10, n),
        }
    )
    target = ((frame["age"] > 40) ^ (frame["gender"] == "F")).astype(int)
    return frame, target


@pytest.fixture(scope="session")
def categorical_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ColumnTransformer over string categorical columns, fitted on a DataFrame."""
    out = tmp_path_factory.mktemp("categorical")
    frame, target = adult_like_frame()
    pre = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["gender", "city"]),
            ("num", StandardScaler(), ["age", "income"]),
        ]
    )
    joblib.dump(make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(frame, target), out / "model.joblib")
    return out


# ---- `sagehost local serve` -------------------------------------------------------------


@dataclass
class LocalEndpoint:
    """A `sagehost local serve` process and the runtime stand-in it answers on."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def start_local(args: list[str], tmp: Path, timeout: float = 120) -> LocalEndpoint:
    """`sagehost local serve ARGS` on a free port; returns once it says Ready (or has exited)."""
    port = free_port()
    log_path = tmp / f"local-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SAGEHOST_", "SM_"))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [SAGEHOST, "local", "serve", *args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    endpoint = LocalEndpoint(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while "Ready in" not in endpoint.log and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return endpoint


@contextmanager
def local_endpoint(args: list[str], tmp: Path) -> Iterator[LocalEndpoint]:
    endpoint = start_local(args, tmp)
    try:
        assert "Ready in" in endpoint.log, endpoint.log
        yield endpoint
    finally:
        endpoint.stop()


def slow_model_dir(iris_dir: Path, tmp: Path, seconds: float) -> Path:
    """The demo model behind an inference.py whose model_fn takes `seconds`: a model that loads slowly."""
    model_dir = tmp / "slow"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "model.joblib").write_bytes((iris_dir / "model.joblib").read_bytes())
    (model_dir / "code" / "inference.py").write_text(
        "import time, joblib, os\n"
        "def model_fn(model_dir):\n"
        f"    time.sleep({seconds})\n"
        "    return joblib.load(os.path.join(model_dir, 'model.joblib'))\n"
    )
    return model_dir
