"""Measure sagehost against the stacks users run today, side by side, in one run.

    .venv/bin/python bench/run.py [--seconds 10] [--rounds 1] [--method predict_proba]
                                  [--models lr,rf,xgb,onnx,fraud,xgbc,lgbmc,hgbc]
                                  [--stacks sagehost,numpy-walk,base,uvicorn,granian,classic,mlflow,mlserver]
                                  [--base REV]
    .venv/bin/python bench/run.py --memory --models lr,rf,fraud   # summed PSS, 1 and 2 workers

The models: a scikit-learn LogisticRegression and a 100-tree RandomForestClassifier, an XGBoost
Booster of 100 rounds and that forest converted to ONNX (all on 10 numeric features, CSV rows);
and issue 17's: `fraud`, a Pipeline of a ColumnTransformer (OneHotEncoder on 7 text columns,
StandardScaler on 2 numbers) and a LogisticRegression, one JSON record of named fields per
request; `xgbc` (XGBClassifier, 100 trees of depth 6), `lgbmc` (LGBMClassifier, 100 trees) and
`hgbc` (HistGradientBoostingClassifier, 100 iterations), pickled, CSV rows. Every stack is asked
for `--method` (predict_proba unless told; MLflow and MLServer always predict).

For each model it starts each stack that can serve it on a free loopback port, sends one row per
request over 40 keep-alive connections with wrk and with `ab -k -c 40` (HTTP/1.0), and prints
requests/s, p50/p99 latency, errors, the servers' total RSS and summed PSS and their CPU per
request, then the ratios against sagehost. With --rounds N the stacks of a model run side by
side and are measured in turns, N times (the order turning each round), and the summary gives
medians and each ratio's range over the rounds. Every load run is bounded in time and request
count. The stack `base` is sagehost as of `--base REV` (a git worktree) and `numpy-walk` this
checkout with SAGEHOST_COMPILED_TREES=0: a change's A/B in one run. `--memory` measures
`sagehost serve` alone with 1 worker, then 2 (bench/memory.py).
Needs `scripts/setup --bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median_high
from typing import Any

import joblib
import numpy as np
import orjson
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import memory

BENCH = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
WORKERS = os.cpu_count() or 1


@dataclass
class Result:
    stack: str
    model: str
    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb: float
    pss_mb: float
    """Summed PSS of the stack's processes: shared pages counted once (bench/memory.py)."""
    cpu_us: float
    """The stack's own CPU (all its processes) per request, about: requests are requests/s x seconds."""
    turn: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def train(work: Path, models: list[str]) -> dict[str, Path]:
    """Each model in the directory layout its library saves: what a user would hand to a server."""
    x, y = make_classification(n_samples=5000, n_features=10, n_informative=6, random_state=0)
    dirs = {}
    for name in models:
        out = work / name
        out.mkdir(parents=True)
        SAVERS[name](x, y, out)
        dirs[name] = out
    np.savetxt(work / "row.csv", x[:1], delimiter=",", fmt="%.6f")
    return dirs


def save_lr(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), out / "model.joblib")


def save_rf(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    joblib.dump(RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y), out / "model.joblib")


def save_xgb(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    """A native Booster, 100 rounds of depth 6: what SageMaker's XGBoost algorithm trains."""
    import xgboost as xgb

    params = {"objective": "binary:logistic", "max_depth": 6, "nthread": 2}
    xgb.train(params, xgb.DMatrix(x, y), 100).save_model(out / "model.json")


def save_onnx(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    """The 100-tree forest converted with skl2onnx (ZipMap probabilities), as users export it."""
    from skl2onnx import to_onnx

    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)
    (out / "model.onnx").write_bytes(to_onnx(forest, x[:1].astype(np.float32)).SerializeToString())


# The fraud model's columns: seven text columns of realistic cardinality, then two numbers.
FRAUD_TEXT = {
    "merchant_category": 20,
    "country": 50,
    "device_type": 4,
    "channel": 3,
    "card_type": 5,
    "email_domain": 30,
    "hour_band": 8,
}
FRAUD_NUMBERS = ("amount", "account_age_days")
REQUEST = "request.json"  # a model whose request is one JSON record keeps it here


def fraud_frame(n: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """Transactions with a label that depends on every column, as a fraud label does."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    logit = np.zeros(n)
    for name, categories in FRAUD_TEXT.items():
        codes = rng.integers(0, categories, n)
        columns[name] = np.array([f"{name}_{i}" for i in range(categories)], dtype=object)[codes]
        logit += rng.normal(0, 0.6, categories)[codes]
    columns["amount"] = rng.lognormal(3.5, 1.2, n).round(2)
    columns["account_age_days"] = rng.integers(0, 3650, n).astype(float)
    logit += 0.4 * (np.log(columns["amount"]) - 3.5) - 0.0003 * columns["account_age_days"]
    return pd.DataFrame(columns), (rng.random(n) < 1 / (1 + np.exp(2 - logit))).astype(int)


def save_fraud(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    """The shape of most tabular models users ship (issue 17): strings one-hot encoded, numbers
    scaled, a logistic regression; one JSON record of named fields per request, as H2O's scorer takes."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, label = fraud_frame(20_000)
    steps = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), list(FRAUD_TEXT)),
            ("numbers", StandardScaler(), list(FRAUD_NUMBERS)),
        ]
    )
    pipeline = Pipeline([("columns", steps), ("model", LogisticRegression(max_iter=1000))]).fit(frame, label)
    joblib.dump(pipeline, out / "model.joblib")
    (out / REQUEST).write_bytes(orjson.dumps(frame.iloc[0].to_dict()))


def save_xgbc(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    from xgboost import XGBClassifier

    model = XGBClassifier(n_estimators=100, max_depth=6, random_state=0).fit(x, y)
    joblib.dump(model, out / "model.joblib")


def save_lgbmc(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    from lightgbm import LGBMClassifier

    model = LGBMClassifier(n_estimators=100, random_state=0, verbose=-1).fit(x, y)
    joblib.dump(model, out / "model.joblib")


def save_hgbc(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0).fit(x, y)
    joblib.dump(model, out / "model.joblib")


SAVERS = {
    "lr": save_lr,
    "rf": save_rf,
    "xgb": save_xgb,
    "onnx": save_onnx,
    "fraud": save_fraud,
    "xgbc": save_xgbc,
    "lgbmc": save_lgbmc,
    "hgbc": save_hgbc,
}
PICKLED = {"lr", "rf", "fraud", "xgbc", "lgbmc", "hgbc"}
# Which stacks can serve which model: the classic recipe and MLServer's sklearn runtime take
# joblib files only; MLflow has an xgboost and an onnx flavor of its own.
SERVES = {
    "sagehost": set(SAVERS),
    "numpy-walk": {"rf", "xgbc", "lgbmc", "hgbc"},
    "base": set(SAVERS),
    "uvicorn": set(SAVERS),
    "granian": set(SAVERS),
    "classic": PICKLED,
    "mlflow": {"lr", "rf", "xgb", "onnx"},
    "mlserver": {"lr", "rf"},
}
METHOD = "predict_proba"
"""What every request asks of the model (--method); MLflow and MLServer always predict."""


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


def start_sagehost(
    model_dir: Path, work: Path, workers: int = WORKERS, **env_extra: str
) -> tuple[list[subprocess.Popen[bytes]], int]:
    port = free_port()
    cmd = [str(VENV_BIN / "sagehost"), "serve", "--model-dir", str(model_dir), "--port", str(port),
           "--host", "127.0.0.1"]  # fmt: skip
    env = {**os.environ, "SAGEHOST_WORKERS": str(workers), "SAGEHOST_LOG_LEVEL": "WARNING",
           "SAGEHOST_DEFAULT_METHOD": METHOD, **env_extra}  # fmt: skip
    log = "sagehost.log" if not env_extra else "sagehost-variant.log"
    return [spawn(cmd, env, work / log)], port


BASE_SRC: Path | None = None
"""--base REV: a checkout of that commit's src/, which the "base" stack serves from."""


def start_base(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    """sagehost as of --base REV (a git worktree), beside this checkout's: a change's A/B in one run."""
    if BASE_SRC is None:
        sys.exit("the base stack needs --base REV")
    return start_sagehost(model_dir, work, PYTHONPATH=str(BASE_SRC))


def start_numpy_walk(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    """sagehost with numpy's tree walk instead of the compiled one: the compiled walk's A/B."""
    return start_sagehost(model_dir, work, SAGEHOST_COMPILED_TREES="0")


def start_uvicorn(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    """`sagehost serve` as it ran until issue 14, uvicorn in each worker (bench/uvicorn_app.py)."""
    port = free_port()
    env = {**os.environ, "SAGEHOST_MODEL_DIR": str(model_dir), "SAGEHOST_PORT": str(port),
           "SAGEHOST_HOST": "127.0.0.1", "SAGEHOST_WORKERS": str(WORKERS), "SAGEHOST_LOG_LEVEL": "WARNING",
           "SAGEHOST_DEFAULT_METHOD": METHOD}  # fmt: skip
    return [spawn([sys.executable, str(BENCH / "uvicorn_app.py")], env, work / "uvicorn.log")], port


def start_granian(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    port = free_port()
    cmd = [
        str(VENV_BIN / "granian"),
        "--interface",
        "asgi",
        "--workers",
        str(WORKERS),
        "--loop",
        "uvloop",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "granian_app:app",
    ]
    env = {**os.environ, "SAGEHOST_MODEL_DIR": str(model_dir), "SAGEHOST_LOG_LEVEL": "WARNING",
           "SAGEHOST_DEFAULT_METHOD": METHOD}  # fmt: skip
    return [spawn(cmd, env, work / "granian.log", cwd=BENCH)], port


MLSERVER_BIN = BENCH.parent / ".venv-mlserver" / "bin"


def start_mlserver(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    """MLServer 1.7 with its scikit-learn runtime and adaptive batching on, one inference process per core."""
    if not (MLSERVER_BIN / "mlserver").exists():
        raise RuntimeError("MLServer is missing: run scripts/setup --bench")
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    repo = work / f"mlserver-{model_dir.name}"
    repo.mkdir(exist_ok=True)
    shutil.copy(model_dir / "model.joblib", repo / "model.joblib")
    model_settings = {
        "name": "model",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
        "max_batch_size": 32,  # sagehost's default row cap, for a like-for-like batch
        "max_batch_time": 0.002,
    }
    (repo / "model-settings.json").write_bytes(orjson.dumps(model_settings))
    server_settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": WORKERS,
        "debug": False,
        "metrics_dir": str(repo / ".metrics"),
    }
    (repo / "settings.json").write_bytes(orjson.dumps(server_settings))
    cmd = [str(MLSERVER_BIN / "mlserver"), "start", str(repo)]
    return [spawn(cmd, dict(os.environ), work / "mlserver.log", cwd=repo)], port


def start_classic(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    port = free_port()
    sock = work / f"gunicorn-{port}.sock"
    gunicorn = [
        str(VENV_BIN / "gunicorn"),
        "--chdir",
        str(BENCH),
        "-k",
        "gevent",
        "-w",
        str(WORKERS),
        "-b",
        f"unix:{sock}",
        "--timeout",
        "60",
        "classic_recipe:app",
    ]
    # One OpenMP thread per worker, as issue 17's measurement ran it: gevent workers on 2 cores.
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "CLASSIC_METHOD": METHOD,
        "CLASSIC_JSON": "1",
        "OMP_NUM_THREADS": "1",
    }
    procs = [spawn(gunicorn, env, work / "gunicorn.log")]
    conf = work / f"nginx-{port}.conf"
    conf.write_text(NGINX_CONF.format(port=port, sock=sock, work=work))
    procs.append(spawn(["nginx", "-c", str(conf), "-g", "daemon off;"], dict(os.environ), work / "nginx.log"))
    return procs, port


def save_for_mlflow(model_dir: Path, mlflow_dir: Path) -> None:
    """The same model, saved by MLflow's own flavor for it."""
    if (model_dir / "model.json").exists():
        import mlflow.xgboost
        import xgboost as xgb

        mlflow.xgboost.save_model(xgb.Booster(model_file=str(model_dir / "model.json")), str(mlflow_dir))
    elif (model_dir / "model.onnx").exists():
        import mlflow.onnx
        import onnx

        mlflow.onnx.save_model(onnx.load(str(model_dir / "model.onnx")), str(mlflow_dir))
    else:
        import mlflow.sklearn

        model = joblib.load(model_dir / "model.joblib")
        mlflow.sklearn.save_model(model, str(mlflow_dir), serialization_format="cloudpickle")


def start_mlflow(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    port = free_port()
    mlflow_dir = work / f"mlflow-{model_dir.name}"
    if not mlflow_dir.exists():
        save_for_mlflow(model_dir, mlflow_dir)
    cmd = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        str(mlflow_dir),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-w",
        str(WORKERS),
        "--env-manager",
        "local",
    ]
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}  # it execs a bare `uvicorn`
    return [spawn(cmd, env, work / "mlflow.log")], port


def spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: the server and its workers
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def tree_rss_mb(procs: list[subprocess.Popen[bytes]]) -> float:
    sessions = {p.pid for p in procs}
    total_kb = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) in sessions:  # field 6 of /proc/PID/stat: session id
                status = (stat.parent / "status").read_text()
                total_kb += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        except (OSError, IndexError, AttributeError, ValueError):
            continue
    return total_kb / 1024


def tree_cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU so far of every live process in the stack's sessions, from /proc."""
    sessions = {p.pid for p in procs}
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) in sessions:
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5), fields 14 and 15)
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str, body: str, content_type: str, seconds: int, work: Path, *, connections: int = 40
) -> tuple[float, float, float, int]:
    script = work / "post.lua"
    script.write_text(
        # A level-3 long bracket: JSON rows end in "]]", which would close a plain [[...]] string.
        f'wrk.method = "POST"\nwrk.body = [===[{body}]===]\nwrk.headers["Content-Type"] = "{content_type}"\n'
        "function response(status, headers, body) if status ~= 200 then errors = (errors or 0) + 1 end end\n"
    )
    out = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return rps, _latency(out, "50%"), _latency(out, "99%"), errors


def _latency(out: str, pct: str) -> float:
    value, unit = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def ab(url: str, body: str, content_type: str, seconds: int, work: Path) -> tuple[float, float, float, int]:
    payload = work / "ab-body"
    payload.write_text(body)
    out = subprocess.run(
        ["ab", "-k", "-c", "40", "-t", str(seconds), "-n", "100000", "-p", str(payload), "-T", content_type, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    ).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # ab also counts as failed an answer whose length differs from the first one's; answers of
    # probabilities differ in length with their digits, so only connection failures count here.
    kinds = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)", out)
    failed = sum(int(n) for n in kinds.groups()) if kinds else 0
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx responses:\s+(\d+)", out)) else 0
    p50 = float(re.search(r"\s50%\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"\s99%\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99, failed + non2xx


STACKS = {
    "sagehost": start_sagehost,
    "numpy-walk": start_numpy_walk,
    "base": start_base,
    "uvicorn": start_uvicorn,
    "granian": start_granian,
    "classic": start_classic,
    "mlflow": start_mlflow,
    "mlserver": start_mlserver,
}
PING = {"mlserver": "/v2/models/model/ready"}
INVOKE = {"mlserver": "/v2/models/model/infer"}


def request_for(stack: str, row: list[float], model_dir: Path) -> tuple[str, str]:
    """One request's body and Content-Type as `stack` takes it."""
    if (model_dir / REQUEST).exists():  # a record of named fields, as JSON
        return (model_dir / REQUEST).read_text(), "application/json"
    if stack == "mlserver":  # the V2 (Open Inference Protocol) request its REST API takes
        tensor = {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}
        return orjson.dumps({"inputs": [tensor]}).decode(), "application/json"
    if stack == "mlflow":  # MLflow's scoring protocol; CSV would go through pandas.read_csv too
        return orjson.dumps({"dataframe_split": {"data": [row]}}).decode(), "application/json"
    return ",".join(map(str, row)), "text/csv"


def run(models: list[str], stacks: list[str], seconds: int, rounds: int) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sagehost-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's worker (user nobody) must reach the gunicorn socket in here
        dirs = train(work, models)
        row = np.loadtxt(work / "row.csv", delimiter=",").tolist()
        for model in models:
            servable = [stack for stack in stacks if model in SERVES[stack]]
            common = {"model_dir": dirs[model], "row": row, "seconds": seconds, "work": work}
            if rounds == 1:  # one stack at a time, as this bench always ran
                for stack in servable:
                    results += run_stacks(model, [stack], **common, rounds=1)
            else:
                results += run_stacks(model, servable, **common, rounds=rounds)
    return results


def run_stacks(
    model: str, stacks: list[str], *, model_dir: Path, row: list[float], seconds: int, rounds: int, work: Path
) -> list[Result]:
    """Start the stacks side by side, then measure them in turns, `rounds` times."""
    results = []
    started: dict[str, tuple[list[subprocess.Popen[bytes]], int]] = {}
    try:
        for stack in stacks:
            started[stack] = STACKS[stack](model_dir, work)
        for stack, (procs, port) in started.items():
            wait_ready(f"http://127.0.0.1:{port}{PING.get(stack, '/ping')}", procs[0])
            body, content_type = request_for(stack, row, model_dir)
            ab(f"http://127.0.0.1:{port}{INVOKE.get(stack, '/invocations')}", body, content_type, 2, work)  # warm up
        for turn in range(rounds):
            for stack in stacks[turn % len(stacks) :] + stacks[: turn % len(stacks)]:
                procs, port = started[stack]
                body, content_type = request_for(stack, row, model_dir)
                url = f"http://127.0.0.1:{port}{INVOKE.get(stack, '/invocations')}"
                for tool, measure in (("wrk", wrk), ("ab -k", ab)):
                    cpu_before, start = tree_cpu_seconds(procs), time.monotonic()
                    rps, p50, p99, errors = measure(url, body, content_type, seconds, work)
                    elapsed, cpu = time.monotonic() - start, tree_cpu_seconds(procs) - cpu_before
                    cpu_us = cpu / max(rps * elapsed, 1) * 1e6
                    pss = memory.summed_pss(_stack_pids(procs)).total_mb
                    results.append(
                        Result(stack, model, tool, rps, p50, p99, errors, tree_rss_mb(procs), pss, cpu_us, turn)
                    )
                    print(_row(results[-1]), flush=True)
    finally:
        for procs, _ in started.values():
            stop(procs)
    return results


def _stack_pids(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    return [pid for proc in procs for pid in memory.session_pids(proc.pid)]


def _row(r: Result) -> str:
    return (
        f"{r.model:5} {r.stack:9} {r.tool:6} {r.rps:10.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
        f"p99 {r.p99_ms:7.2f} ms  errors {r.errors:5d}  RSS {r.rss_mb:6.0f} MB  PSS {r.pss_mb:6.0f} MB  "
        f"CPU {r.cpu_us:5.0f} us/req"
    )


def report(results: list[Result]) -> None:
    keys = list(dict.fromkeys((r.model, r.stack, r.tool) for r in results))
    by_key = {key: [r for r in results if (r.model, r.stack, r.tool) == key] for key in keys}
    if any(len(runs) > 1 for runs in by_key.values()):
        print("\nmedians over the rounds (requests/s range in brackets)")
        for (model, stack, tool), runs in by_key.items():
            medians = (median_high(values) for values in zip(*(_figures(r) for r in runs), strict=True))
            m = Result(stack, model, tool, *medians)
            low, high = min(r.rps for r in runs), max(r.rps for r in runs)
            print(f"{_row(m)}  ({low:.0f}-{high:.0f})")
    print("\nratios: sagehost requests/s over each peer (same model, same load tool, same run)")
    for (model, stack, tool), runs in by_key.items():
        ours = by_key.get((model, "sagehost", tool))
        if stack == "sagehost" or not ours:
            continue
        ratio = median_high(r.rps for r in ours) / median_high(r.rps for r in runs)
        line = f"  {model:5} {tool:6} sagehost / {stack:8} = {ratio:6.2f}x"
        if len(runs) > 1:  # each round's pair, seconds apart: they share the machine's drift
            paired = sorted(a.rps / b.rps for a, b in zip(ours, runs, strict=True))
            cpu = sorted(a.cpu_us / b.cpu_us for a, b in zip(ours, runs, strict=True))
            line += f"  by round {paired[0]:.2f}-{paired[-1]:.2f}x; CPU per request {median_high(cpu):.2f}x"
            line += f" ({cpu[0]:.2f}-{cpu[-1]:.2f})"
        print(line)


def _figures(r: Result) -> tuple[float, ...]:
    return (r.rps, r.p50_ms, r.p99_ms, r.errors, r.rss_mb, r.pss_mb, r.cpu_us)


def measure_memory(models: list[str]) -> None:
    """`sagehost serve` with 1 worker, then 2, on each model: summed PSS once every worker has
    served requests, and the ratio (issue 17: at most 1.25, aim 1.1)."""
    with tempfile.TemporaryDirectory(prefix="sagehost-bench-") as tmp:
        work = Path(tmp)
        dirs = train(work, models)
        row = np.loadtxt(work / "row.csv", delimiter=",").tolist()
        print("summed PSS of `sagehost serve` (supervisor and workers) after 400+ requests on fresh connections")
        for model in models:
            figures = {workers: _serve_pss(dirs[model], row, work, workers) for workers in (1, 2)}
            one, two = figures[1], figures[2]
            print(f"{model:5} 1 worker:  {one}")
            print(f"{model:5} 2 workers: {two}")
            print(f"{model:5} 2 workers / 1: PSS {two.total_mb / one.total_mb:.2f}x, "
                  f"anonymous {two.anon_mb / one.anon_mb:.2f}x", flush=True)  # fmt: skip


def _serve_pss(model_dir: Path, row: list[float], work: Path, workers: int) -> memory.Pss:
    procs, port = start_sagehost(model_dir, work, workers)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", procs[0])
        body, content_type = request_for("sagehost", row, model_dir)
        body_file = work / "memory-body"
        body_file.write_text(body)
        pids = memory.session_pids(procs[0].pid)
        served_by = [pid for pid in pids if pid != procs[0].pid] or [procs[0].pid]
        memory.warm_every_worker(f"http://127.0.0.1:{port}/invocations", body_file, content_type, served_by)
        return memory.settle(pids)
    finally:
        stop(procs)


def main() -> None:
    global METHOD
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="with more than 1, the stacks run side by side, in turns")
    parser.add_argument("--models", default="lr,rf,xgb,onnx")
    parser.add_argument("--stacks", default="sagehost,classic,mlflow")
    parser.add_argument("--method", default="predict_proba", choices=("predict", "predict_proba"))
    parser.add_argument("--memory", action="store_true", help="summed PSS of sagehost with 1 and 2 workers instead")
    parser.add_argument("--base", metavar="REV", help='serve the "base" stack from this commit (add it to --stacks)')
    args = parser.parse_args()
    for tool in ("wrk", "ab", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: run scripts/setup --bench")
    METHOD = args.method
    if args.base:
        with base_checkout(args.base) as src:
            global BASE_SRC
            BASE_SRC = src
            report(run(args.models.split(","), args.stacks.split(","), args.seconds, args.rounds))
        return
    if args.memory:
        measure_memory(args.models.split(","))
        return
    print(f"{os.cpu_count()} cores, {WORKERS} workers per stack, 40 connections, one row per request\n")
    report(run(args.models.split(","), args.stacks.split(","), args.seconds, args.rounds))


@contextlib.contextmanager
def base_checkout(rev: str) -> Iterator[Path]:
    """`rev` checked out in a temporary git worktree; its src/ directory."""
    repo = BENCH.parent
    with tempfile.TemporaryDirectory(prefix="sagehost-base-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            yield tree / "src"
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)


NGINX_CONF = """
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 2048; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  upstream gunicorn {{ server unix:{sock}; }}
  server {{
    listen 127.0.0.1:{port} deferred;
    client_max_body_size 5m;
    keepalive_timeout 5;
    proxy_read_timeout 1200s;
    location ~ ^/(ping|invocations) {{
      proxy_set_header Host $http_host;
      proxy_redirect off;
      proxy_pass http://gunicorn;
    }}
    location / {{ return 404 "{{}}"; }}
  }}
}}
"""

if __name__ == "__main__":
    main()
