"""A proxy's pool filled while one of the scoring server's workers was busy: does that worker
get work again?

uvicorn's, gunicorn's and MLflow's workers share one listening socket, and each connection stays
with the worker that accepted it. This fills each proxy's pool while one of MLflow's two workers
is stopped (SIGSTOP: as busy as a worker can be) and the pool is idle again, resumes the worker,
and prints the CPU it then gets, second by second, and the requests/s, through:
- `sagehost proxy`, which replaces pooled connections once they are 1 s old (its default);
- `sagehost proxy --upstream-max-connection-age 0`, which keeps them as long as MLflow does;
- nginx, kept-alive upstream connections, as in bench/proxy.py.

    .venv/bin/python bench/proxy_rebalance.py [--seconds 6] [--trials 2]

Needs `scripts/setup --bench`.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from proxy import Procs, family_ticks, mlflow_upstream, nginx_proxy, process_ticks, sagehost_proxy
from run import stop, wait_ready, wrk

KEEP_ALIVE_S = 5  # uvicorn's: MLflow closes a connection idle this long


def never_replacing(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
    return sagehost_proxy(upstream, health, work, "--upstream-max-connection-age", "0")


PROXIES = {
    "sagehost proxy": sagehost_proxy,
    "sagehost proxy --upstream-max-connection-age 0": never_replacing,
    "nginx proxy": nginx_proxy,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sagehost-rebalance-bench-") as tmp:
        work = Path(tmp)
        procs, port, health, body, content_type = mlflow_upstream(work)
        try:
            wait_ready(f"http://127.0.0.1:{port}{health}", procs[0])
            targets: dict[str, int] = {}
            for label, start in PROXIES.items():
                proxy_procs, proxy_port = start(f"http://127.0.0.1:{port}/invocations", health, work)
                procs += proxy_procs
                wait_ready(f"http://127.0.0.1:{proxy_port}/ping", proxy_procs[0])
                targets[label] = proxy_port
            before = family_ticks(procs[0].pid)
            wrk(f"http://127.0.0.1:{port}/invocations", body, content_type, 2, work)
            scored = {pid: ticks - before.get(pid, 0) for pid, ticks in family_ticks(procs[0].pid).items()}
            stopped = sorted(scored, key=lambda pid: -scored[pid])[1]  # the two that scored: MLflow's workers
            for trial in range(args.trials):
                for label, proxy_port in targets.items():
                    url = f"http://127.0.0.1:{proxy_port}/invocations"
                    time.sleep(KEEP_ALIVE_S + 1)  # every pool starts empty
                    os.kill(stopped, signal.SIGSTOP)
                    try:
                        wrk(url, body, content_type, 1, work)  # fills the pool: all in the other worker
                        time.sleep(1)  # the requests wrk left behind are answered, the pool is idle
                    finally:
                        os.kill(stopped, signal.SIGCONT)
                    rps, shares = measure(url, body, content_type, seconds=args.seconds, work=work, worker=stopped)
                    cores = " ".join(f"{share:.2f}" for share in shares)
                    print(f"{trial} {label:47} {rps:6.0f} req/s; the resumed worker's cores, s by s: {cores}")
        finally:
            stop(procs)


def measure(
    url: str, body: str, content_type: str, *, seconds: int, work: Path, worker: int
) -> tuple[float, list[float]]:
    """Requests/s of a wrk run, and the CPU `worker` got in each of its seconds."""
    result: list[float] = []
    load = threading.Thread(target=lambda: result.append(wrk(url, body, content_type, seconds, work)[0]))
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    before = process_ticks(worker)
    load.start()
    shares = []
    for _ in range(seconds):
        time.sleep(1)
        now = process_ticks(worker)
        shares.append((now - before) / ticks_per_s)
        before = now
    load.join()
    return result[0], shares


if __name__ == "__main__":
    main()
