"""The proxy's cost, in one run: requests/s and p99 straight to an upstream, through
`sagehost proxy`, and through the hand-written Flask + gunicorn + requests proxy users build.

    .venv/bin/python bench/proxy.py [--seconds 10] [--rounds 3] [--upstreams mlflow,fast]

Upstreams: MLflow's scoring server (slow, CPU-heavy) serving a LogisticRegression, and a fast
one, `sagehost serve` of the demo model. Each proxy runs 2 workers, like the upstream; all of
it shares the machine's cores with wrk (-t2 -c40, one row per request). Targets (issue 4): with
MLflow, the proxy keeps ≥95% of MLflow's direct requests/s; with the fast upstream, ≥3× the
hand-written proxy's requests/s. Needs `scripts/setup --bench`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import joblib
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from run import BENCH, VENV_BIN, WORKERS, free_port, save_for_mlflow, spawn, stop, wait_ready, wrk

PROXY_WORKERS = int(os.environ.get("PROXY_WORKERS", "1"))  # sagehost proxy's default; set 2 to compare
DEMO = BENCH.parent / "examples" / "demo" / "model"
Procs = list[subprocess.Popen[bytes]]


def mlflow_upstream(work: Path) -> tuple[Procs, int, str, str, str]:
    x, y = make_classification(n_samples=2000, n_features=10, random_state=0)
    sk = work / "lr"
    sk.mkdir()
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), sk / "model.joblib")
    save_for_mlflow(sk, work / "mlflow-lr")
    port = free_port()
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(work / "mlflow-lr"), "-p", str(port),
           "-h", "127.0.0.1", "-w", str(WORKERS), "--env-manager", "local"]  # fmt: skip
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    body = '{"dataframe_split": {"data": [[' + ",".join(f"{v:.6f}" for v in x[0]) + "]]}}"
    return [spawn(cmd, env, work / "mlflow.log")], port, "/ping", body, "application/json"


def fast_upstream(work: Path) -> tuple[Procs, int, str, str, str]:
    if not (DEMO / "model.joblib").exists():
        sys.exit("The demo model is missing: run scripts/setup")
    port = free_port()
    cmd = [str(VENV_BIN / "sagehost"), "serve", "--model-dir", str(DEMO), "--port", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "SAGEHOST_WORKERS": str(WORKERS), "SAGEHOST_LOG_LEVEL": "WARNING"}
    return [spawn(cmd, env, work / "upstream.log")], port, "/ping", "5.1,3.5,1.4,0.2", "text/csv"


UPSTREAMS: dict[str, Callable[[Path], tuple[Procs, int, str, str, str]]] = {
    "mlflow": mlflow_upstream,
    "fast": fast_upstream,
}


def sagehost_proxy(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
    port = free_port()
    cmd = [str(VENV_BIN / "sagehost"), "proxy", "--upstream", upstream, "--upstream-health", health,
           "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    env = {**os.environ, "SAGEHOST_WORKERS": str(PROXY_WORKERS), "SAGEHOST_LOG_LEVEL": "WARNING"}
    return [spawn(cmd, env, work / "proxy.log")], port


def flask_proxy(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
    port = free_port()
    cmd = [str(VENV_BIN / "gunicorn"), "--chdir", str(BENCH), "-k", "gevent", "-w", str(PROXY_WORKERS),
           "-b", f"127.0.0.1:{port}", "--timeout", "60", "flask_proxy:app"]  # fmt: skip
    env = {**os.environ, "UPSTREAM": upstream, "UPSTREAM_HEALTH": health}
    return [spawn(cmd, env, work / "flask-proxy.log")], port


def measure(port: int, body: str, content_type: str, seconds: int, work: Path) -> tuple[float, float, int]:
    url = f"http://127.0.0.1:{port}/invocations"
    rps, _, p99, errors = wrk(url, body, content_type, seconds, work)
    return rps, p99, errors


def run(names: list[str], seconds: int, rounds: int) -> None:
    """All three targets run side by side and are measured in turns, `rounds` times: a slow,
    CPU-bound upstream drifts by more between runs than the difference being measured."""
    with tempfile.TemporaryDirectory(prefix="sagehost-proxy-bench-") as tmp:
        work = Path(tmp)
        for name in names:
            procs, port, health, body, content_type = UPSTREAMS[name](work)
            try:
                wait_ready(f"http://127.0.0.1:{port}{health}", procs[0])
                upstream = f"http://127.0.0.1:{port}/invocations"
                ports = {"direct": port}
                for label, start in (("sagehost proxy", sagehost_proxy), ("Flask proxy", flask_proxy)):
                    proxy_procs, ports[label] = start(upstream, health, work)
                    procs += proxy_procs
                    wait_ready(f"http://127.0.0.1:{ports[label]}/ping", proxy_procs[0])
                for target in ports.values():  # warm every path up once
                    measure(target, body, content_type, 2, work)
                runs: dict[str, list[tuple[float, float, int]]] = {label: [] for label in ports}
                for _ in range(rounds):
                    for label, target in ports.items():
                        runs[label].append(measure(target, body, content_type, seconds, work))
            finally:
                stop(procs)
            report(name, {label: median(figures) for label, figures in runs.items()})
            paired = [ours[0] / direct[0] for ours, direct in zip(runs["sagehost proxy"], runs["direct"], strict=True)]
            print(f"{name:6} sagehost proxy / direct, round by round: {', '.join(f'{r:.1%}' for r in paired)}\n")


def median(figures: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    ordered = sorted(figures)
    return ordered[len(ordered) // 2]


def report(name: str, figures: dict[str, tuple[float, float, int]]) -> None:
    for label, (rps, p99, errors) in figures.items():
        print(f"{name:6} {label:15} {rps:9.0f} req/s  p99 {p99:8.2f} ms  errors {errors}", flush=True)
    ours, direct, flask = figures["sagehost proxy"][0], figures["direct"][0], figures["Flask proxy"][0]
    print(f"{name:6} sagehost proxy / direct = {ours / direct:5.1%}   / Flask proxy = {ours / flask:5.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstreams", default="mlflow,fast")
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores, upstream {WORKERS} workers, proxies {PROXY_WORKERS}; wrk -t2 -c40, one row per "
        f"request; median of {args.rounds} interleaved runs\n"
    )
    run(args.upstreams.split(","), args.seconds, args.rounds)


if __name__ == "__main__":
    main()
