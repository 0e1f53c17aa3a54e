"""Many models behind one endpoint: load time, and throughput across 100 models against one.

    .venv/bin/python bench/multimodel.py [--loads 200] [--models 100] [--seconds 10] [--rounds 3]
                                         [--model lr|rf] [--mms-loads 50] [--skip-mms]

The model: the bench's LogisticRegression (bench/run.py, 10 features; --model rf for the
100-tree forest), saved once per name in its own directory (model.joblib), as SageMaker
unpacks each model.tar.gz under /opt/ml/models/<id>/model.

(a) Load time: `sagehost serve --multi-model` (workers = cores), then `--loads` POST /models
    of distinct names, one at a time, each timed from request to its 200 (by then every worker
    holds a copy and has warmed it up); each model is unloaded (DELETE) before the next load, so
    every load finds the same server. p50 and p99.
(b) Throughput: `--models` models loaded, then wrk at 40 connections for `--seconds`, each
    request to POST /models/<name>/invoke of a model chosen at random (bench/multimodel.lua),
    one CSV row per request; against the same model served alone (`sagehost serve --model-dir`,
    POST /invocations) and the multi-model server with one model (POST /models/<name>/invoke).
    The three run side by side and are measured in turns, `--rounds` times; the ratios are
    the median of each round's.
(c) The AWS toolkit's multi-model server (multi-model-server + sagemaker-inference, Java),
    from its own venv (MMS_VENV, default /work/mmsvenv: python3 -m venv; pip install
    multi-model-server sagemaker-inference scikit-learn joblib), with the minimal handler
    service in bench/mms_handler.py, as SageMaker's multi-model config runs it (one Python
    worker process per model): `--mms-loads` loads (each starts a Python process: seconds),
    then the same wrk runs over as many of the models as half the free memory holds (each
    worker process takes ~150 MB). --skip-mms leaves it out.

Every run is bounded in requests and time; every process started is stopped by its PID.
Needs wrk (scripts/setup --bench).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as bench_run  # noqa: E402  (bench/run.py: train, free_port, spawn, stop, tree_cpu_seconds)

WORKERS = os.cpu_count() or 1
CONNECTIONS = 40
MMS_VENV = Path(os.environ.get("MMS_VENV", "/work/mmsvenv"))
LOAD_TIMEOUT_S = 120
MMS_WORKER_MB = 150


@dataclass
class Throughput:
    label: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float


# ---- HTTP, bounded ---------------------------------------------------------------------------


def call(method: str, url: str, body: bytes | None = None, timeout: float = LOAD_TIMEOUT_S) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if call("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200")


# ---- the servers -----------------------------------------------------------------------------


@dataclass
class Server:
    """A running multi-model server and how to speak to it."""

    name: str
    procs: list[subprocess.Popen[bytes]]
    base: str
    """Where POST /models goes."""
    invoke_base: str

    def load(self, name: str, directory: Path) -> float:
        body = orjson.dumps({"model_name": name, "url": str(directory)})
        started = time.perf_counter()
        status, answer = call("POST", self.base + "/models", body)
        took = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{self.name}: POST /models {name} answered {status}: {answer[:300]!r}")
        return took

    def unload(self, name: str) -> None:
        status, answer = call("DELETE", f"{self.base}/models/{name}")
        if status != 200:
            raise RuntimeError(f"{self.name}: DELETE /models/{name} answered {status}: {answer[:300]!r}")

    def invoke_path(self, name: str) -> str:
        return f"/models/{name}/invoke"


def start_sagehost_multi(work: Path) -> Server:
    port = bench_run.free_port()
    cmd = [str(bench_run.VENV_BIN / "sagehost"), "serve", "--multi-model", "--port", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "SAGEHOST_WORKERS": str(WORKERS), "SAGEHOST_LOG_LEVEL": "WARNING"}
    proc = bench_run.spawn(cmd, env, work / "sagehost-multi.log")
    base = f"http://127.0.0.1:{port}"
    server = Server("sagehost --multi-model", [proc], base, base)
    try:
        wait_for(base + "/ping", proc)
    except BaseException:
        bench_run.stop(server.procs)
        raise
    return server


def start_sagehost_single(model_dir: Path, work: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    procs, port = bench_run.start_sagehost(model_dir, work)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/ping", procs[0])
    except BaseException:
        bench_run.stop(procs)
        raise
    return procs, base


def start_mms(work: Path) -> Server:
    """The AWS toolkit's server as sagemaker-inference starts it in a multi-model container:
    SAGEMAKER_MULTI_MODEL=true, SageMaker's /models API on the inference port."""
    python = MMS_VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(
            f"no venv at {MMS_VENV} (python3 -m venv; pip install multi-model-server sagemaker-inference)"
        )
    port = short_port()
    home = work / "mms"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "SAGEMAKER_MULTI_MODEL": "true",
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_SAFE_PORT_RANGE": f"{port}-{port}",
        "PYTHONPATH": str(BENCH),
        "HOME": str(home),
        "PATH": f"{MMS_VENV / 'bin'}:{os.environ.get('PATH', '')}",
    }
    env.pop("VIRTUAL_ENV", None)
    proc = bench_run.spawn([str(python), str(BENCH / "mms_handler.py"), str(home)], env, work / "mms.log", cwd=home)
    base = f"http://127.0.0.1:{port}"
    server = Server("AWS multi-model-server", [proc], base, base)
    try:
        wait_for(base + "/ping", proc, timeout=180)
    except BaseException:
        bench_run.stop(server.procs)
        raise
    return server


def short_port() -> int:
    """A free loopback port below 32768: MMS reads the port as a Java short (its Connector refuses
    "http://0.0.0.0:54847" as an "Invalid port number"), and the kernel's free ports are above."""
    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


# ---- measures --------------------------------------------------------------------------------


def load_times(server: Server, dirs: list[Path], loads: int) -> list[float]:
    times = []
    for i in range(loads):
        name = f"load{i}"
        times.append(server.load(name, dirs[i % len(dirs)]))
        server.unload(name)
    return times


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def wrk(
    base: str, paths: list[str], row: str, seconds: int, *, work: Path, procs: list[subprocess.Popen[bytes]], label: str
) -> Throughput:
    """wrk at 40 connections; each request to one of `paths` at random (bench/multimodel.lua)."""
    (work / "paths.txt").write_text("\n".join(paths) + "\n")
    env = {**os.environ, "PATHS_FILE": str(work / "paths.txt"), "BODY": row}
    cpu_before, started = bench_run.tree_cpu_seconds(procs), time.monotonic()
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(BENCH / "multimodel.lua"), base],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
        env=env,
    ).stdout
    elapsed, cpu = time.monotonic() - started, bench_run.tree_cpu_seconds(procs) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if socket_errors := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in socket_errors.groups())
    p50, p99 = bench_run._latency(out, "50%"), bench_run._latency(out, "99%")
    return Throughput(label, rps, p50, p99, errors, cpu / max(rps * elapsed, 1) * 1e6)


def show(t: Throughput) -> None:
    print(
        f"  {t.label:52} {t.rps:9.0f} req/s  p50 {t.p50_ms:6.2f} ms  p99 {t.p99_ms:6.2f} ms  "
        f"errors {t.errors}  CPU {t.cpu_us:4.0f} us/req",
        flush=True,
    )


@dataclass
class Target:
    """One thing wrk hammers: a server and the paths it spreads its requests over."""

    label: str
    base: str
    paths: list[str]
    procs: list[subprocess.Popen[bytes]]


def measure_loads(server: Server, dirs: list[Path], loads: int) -> list[float]:
    times = load_times(server, dirs, loads)
    print(
        f"  {server.name}: {loads} loads of distinct names (each unloaded before the next): "
        f"p50 {statistics.median(times) * 1000:.0f} ms, p99 {percentile(times, 99) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms",
        flush=True,
    )
    return times


def load_all(server: Server, dirs: list[Path], models: int) -> tuple[Target, Target]:
    """`models` models loaded: the target of one of them, and of all of them at random."""
    for i in range(models):
        server.load(f"m{i}", dirs[i])
    one = Target(f"{server.name}, 1 model", server.invoke_base, [server.invoke_path("m0")], server.procs)
    paths = [server.invoke_path(f"m{i}") for i in range(models)]
    return one, Target(f"{server.name}, {models} models", server.invoke_base, paths, server.procs)


def rounds(targets: list[Target], row: str, args: argparse.Namespace, work: Path) -> dict[str, list[Throughput]]:
    """Each target warmed up, then measured in turns, `args.rounds` times (the order turning each
    round): on a shared machine, the targets of one round share its drift."""
    found: dict[str, list[Throughput]] = {t.label: [] for t in targets}
    for target in targets:
        wrk(target.base, target.paths, row, 2, work=work, procs=target.procs, label="warm-up")
    for turn in range(args.rounds):
        for target in targets[turn % len(targets) :] + targets[: turn % len(targets)]:
            result = wrk(
                target.base, target.paths, row, args.seconds, work=work, procs=target.procs, label=target.label
            )
            found[target.label].append(result)
            show(result)
    return found


def ratio(found: dict[str, list[Throughput]], ours: str, theirs: str) -> str:
    """The median of the per-round ratios, and their range."""
    each = sorted(a.rps / b.rps for a, b in zip(found[ours], found[theirs], strict=True))
    return f"{statistics.median(each):.2f}x (rounds {each[0]:.2f}-{each[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=200)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=("lr", "rf"), default="lr")
    parser.add_argument("--mms-loads", type=int, default=50, help="MMS starts a Python worker per load: ~3 s each")
    parser.add_argument("--skip-mms", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: run scripts/setup --bench")
    with tempfile.TemporaryDirectory(prefix="sagehost-bench-mm-") as tmp:
        work = Path(tmp)
        trained = bench_run.train(work / "trained", [args.model])[args.model]
        dirs = []
        for i in range(max(args.models, 1)):
            directory = work / "models" / f"m{i}" / "model"
            directory.mkdir(parents=True)
            shutil.copy(trained / "model.joblib", directory / "model.joblib")
            dirs.append(directory)
        row = (work / "trained" / "row.csv").read_text().strip()
        print(
            f"{os.cpu_count()} cores, {WORKERS} workers, {CONNECTIONS} connections, a CSV row a request, {args.model}"
        )
        ours = sagehost_bench(trained, dirs, row, args, work)
        theirs = None if args.skip_mms else mms_bench(dirs, row, args, work)
        if theirs:
            print(f"  sagehost / AWS multi-model-server, across the models (medians): {ours / theirs:.1f}x")


def sagehost_bench(trained: Path, dirs: list[Path], row: str, args: argparse.Namespace, work: Path) -> float:
    """The median requests/s across the models."""
    started: list[list[subprocess.Popen[bytes]]] = []
    try:
        procs, base = start_sagehost_single(trained, work)
        started.append(procs)
        server = start_sagehost_multi(work)
        started.append(server.procs)
        measure_loads(server, dirs, args.loads)
        one, many = load_all(server, dirs, args.models)
        print(f"  RSS with {args.models} models loaded: {bench_run.tree_rss_mb(server.procs):.0f} MB", flush=True)
        alone = Target("sagehost serve, the model alone", base, ["/invocations"], procs)
        found = rounds([alone, one, many], row, args, work)
    finally:
        for procs in started:
            bench_run.stop(procs)
    print(
        f"  sagehost, {args.models} models / the model alone: {ratio(found, many.label, alone.label)} "
        f"(target >= 0.80x); / 1 model on --multi-model: {ratio(found, many.label, one.label)}",
        flush=True,
    )
    return statistics.median(r.rps for r in found[many.label])


def mms_models(wanted: int) -> int:
    """How many models MMS may load here: each is a Python worker process of its own (about
    150 MB with scikit-learn), so at most half the memory available goes to them."""
    available = _available_mb()
    fits = int(available * 0.5 // MMS_WORKER_MB)
    if fits < wanted:
        print(
            f"  AWS multi-model-server: {fits} models, not {wanted}: {available:.0f} MB free, ~{MMS_WORKER_MB} MB each"
        )
    return max(1, min(wanted, fits))


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mms_bench(dirs: list[Path], row: str, args: argparse.Namespace, work: Path) -> float | None:
    """The median requests/s across the models; None when it did not start."""
    models = mms_models(args.models)
    try:
        mms = start_mms(work)
    except RuntimeError as exc:
        log = work / "mms.log"
        print(f"  AWS multi-model-server did not start: {exc}. The end of its log:")
        print(log.read_text()[-3000:] if log.exists() else "(no log)")
        return None
    try:
        measure_loads(mms, dirs, args.mms_loads)
        one, many = load_all(mms, dirs, models)
        print(f"  RSS with {models} models loaded: {bench_run.tree_rss_mb(mms.procs):.0f} MB", flush=True)
        found = rounds([one, many], row, args, work)
    finally:
        bench_run.stop(mms.procs)
    return statistics.median(r.rps for r in found[many.label])


if __name__ == "__main__":
    main()
