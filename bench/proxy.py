"""The proxy's cost, in one run: requests/s and p99 straight to an upstream, through
`sagehost proxy`, through the hand-written Flask + gunicorn + requests proxy users build, and
through two references: a featureless Python relay (bench/floor_proxy.py) and nginx, with each
proxy's CPU per request and how busy the machine was. `sagehost proxy --no-yield-cpu` and
`nginx proxy (SCHED_BATCH)` show what the workers' scheduling policy does on its own.

    .venv/bin/python bench/proxy.py [--seconds 10] [--rounds 3] [--upstreams mlflow,fast]
                                    [--proxies "sagehost proxy,Flask proxy,floor proxy,nginx proxy"]
                                    [--connections 40] [--cgroup]

Upstreams: MLflow's scoring server (slow, CPU-heavy) serving a LogisticRegression, and a fast
one, `sagehost serve` of the demo model, each with 2 workers. The proxies run PROXY_WORKERS
workers (1, sagehost proxy's default); all of it shares the machine's cores with wrk (-t2 -c40
unless told, one row per request). Targets are measured in turns, round after round (the
proxies' order turning each round), and each proxied run is compared with the direct runs
either side of it.
Targets (issue 4): with MLflow, the proxy keeps ≥95% of MLflow's direct requests/s; with the
fast upstream, ≥3× the hand-written proxy's requests/s. Needs `scripts/setup --bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from statistics import mean, median_high, stdev

import joblib
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from cgroup import autogroup_enabled, own_cgroup
from run import BENCH, VENV_BIN, WORKERS, free_port, save_for_mlflow, spawn, stop, wait_ready, wrk

PROXY_WORKERS = int(os.environ.get("PROXY_WORKERS", "1"))  # sagehost proxy's default; set 2 to compare
DEMO = BENCH.parent / "examples" / "demo" / "model"
Procs = list[subprocess.Popen[bytes]]
ProxyStarter = Callable[[str, str, Path], tuple[Procs, int]]


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


def sagehost_proxy(upstream: str, health: str, work: Path, *flags: str) -> tuple[Procs, int]:
    port = free_port()
    cmd = [str(VENV_BIN / "sagehost"), "proxy", "--upstream", upstream, "--upstream-health", health,
           "--port", str(port), "--host", "127.0.0.1", *flags]  # fmt: skip
    env = {**os.environ, "SAGEHOST_WORKERS": str(PROXY_WORKERS), "SAGEHOST_LOG_LEVEL": "WARNING"}
    return [spawn(cmd, env, work / "proxy.log")], port


def flask_proxy(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
    port = free_port()
    cmd = [str(VENV_BIN / "gunicorn"), "--chdir", str(BENCH), "-k", "gevent", "-w", str(PROXY_WORKERS),
           "-b", f"127.0.0.1:{port}", "--timeout", "60", "flask_proxy:app"]  # fmt: skip
    env = {**os.environ, "UPSTREAM": upstream, "UPSTREAM_HEALTH": health}
    return [spawn(cmd, env, work / "flask-proxy.log")], port


def uvicorn_proxy(client: str) -> ProxyStarter:
    """The well-kept alternative to sagehost's own server and client (issue 14): uvicorn
    (httptools, uvloop) running a minimal ASGI relay over a pooled httpx or aiohttp client
    (bench/httpx_proxy.py), with as many workers as `sagehost proxy`."""

    def start(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
        port = free_port()
        cmd = [str(VENV_BIN / "uvicorn"), "--app-dir", str(BENCH), "--loop", "uvloop", "--http", "httptools",
               "--workers", str(PROXY_WORKERS), "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
               "--log-level", "warning", "--timeout-keep-alive", "75", "httpx_proxy:app"]  # fmt: skip
        env = {**os.environ, "UPSTREAM": upstream, "UPSTREAM_HEALTH": health, "CLIENT": client}
        return [spawn(cmd, env, work / f"uvicorn-{client}-proxy.log")], port

    return start


def floor_proxy(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
    """The least any Python proxy on uvloop + httptools does per request (bench/floor_proxy.py): a
    reference for how much of the proxy's cost is the language and the event loop, not sagehost."""
    port = free_port()
    upstream_port = upstream.rsplit(":", 1)[1].split("/", 1)[0]
    cmd = [sys.executable, str(BENCH / "floor_proxy.py"), upstream_port, str(port)]
    proc = spawn(cmd, dict(os.environ), work / "floor-proxy.log")
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:  # it has no /ping: wait until it listens
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return [proc], port
        time.sleep(0.1)
    raise RuntimeError("bench/floor_proxy.py did not start")


def nginx_proxy(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
    """nginx with one worker and kept-alive upstream connections: what the extra hop costs with
    no Python at all, a reference for what any proxy can keep of a CPU-bound upstream here."""
    port = free_port()
    upstream_port = upstream.rsplit(":", 1)[1].split("/", 1)[0]
    conf = work / "nginx-proxy.conf"
    conf.write_text(NGINX_PROXY_CONF.format(port=port, upstream_port=upstream_port, work=work))
    return [spawn(["nginx", "-c", str(conf), "-g", "daemon off;"], dict(os.environ), work / "nginx-proxy.log")], port


NGINX_PROXY_CONF = """
worker_processes 1;
pid {work}/nginx-proxy.pid;
error_log {work}/nginx-proxy-error.log;
events {{ worker_connections 2048; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-proxy-body;
  proxy_temp_path {work}/nginx-proxy-temp;
  fastcgi_temp_path {work}/nginx-proxy-fastcgi;
  uwsgi_temp_path {work}/nginx-proxy-uwsgi;
  scgi_temp_path {work}/nginx-proxy-scgi;
  upstream scorer {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 100000000;
    location / {{
      proxy_pass http://scorer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def yielding(start: ProxyStarter) -> ProxyStarter:
    """A reference proxy under SCHED_BATCH, as `sagehost proxy` runs its workers by default
    (sagehost.proxy.scheduling): the policy's own effect, apart from sagehost's code."""

    def start_yielding(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # the proxy started now inherits it
        try:
            return start(upstream, health, work)
        finally:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    return start_yielding


def sagehost_proxy_not_yielding(upstream: str, health: str, work: Path) -> tuple[Procs, int]:
    return sagehost_proxy(upstream, health, work, "--no-yield-cpu")


PROXIES: dict[str, ProxyStarter] = {
    "sagehost proxy": sagehost_proxy,
    "sagehost proxy --no-yield-cpu": sagehost_proxy_not_yielding,
    "uvicorn + httpx": uvicorn_proxy("httpx"),
    "uvicorn + httpx (SCHED_BATCH)": yielding(uvicorn_proxy("httpx")),
    "uvicorn + aiohttp": uvicorn_proxy("aiohttp"),
    "uvicorn + aiohttp (SCHED_BATCH)": yielding(uvicorn_proxy("aiohttp")),
    "Flask proxy": flask_proxy,
    "floor proxy": floor_proxy,
    "nginx proxy": nginx_proxy,
    "nginx proxy (SCHED_BATCH)": yielding(nginx_proxy),
}
PINGLESS = {"floor proxy"}


@dataclass(frozen=True, order=True)
class Run:
    rps: float
    p50: float
    p99: float
    errors: int
    cpu_us: float
    """The proxy's own CPU (all its processes) per request; 0 for the upstream measured directly."""
    busy: float
    """The share of the machine's CPU time that was busy during the run."""


def measure(port: int, load: Load, seconds: int, *, pid: int | None) -> Run:
    url = f"http://127.0.0.1:{port}/invocations"
    before, machine_before = cpu_seconds(pid), machine_ticks()
    rps, p50, p99, errors = wrk(url, load.body, load.content_type, seconds, load.work, connections=load.connections)
    busy, total = (after - start for after, start in zip(machine_ticks(), machine_before, strict=True))
    cpu_us = (cpu_seconds(pid) - before) / (rps * seconds) * 1e6
    return Run(rps, p50, p99, errors, cpu_us, busy / max(total, 1))


@dataclass(frozen=True)
class Load:
    """What wrk sends, and over how many connections."""

    body: str
    content_type: str
    connections: int
    work: Path


def machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine so far, from /proc/stat: a proxy only costs the
    upstream throughput when the machine has no idle time left to give it."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def cpu_seconds(root: int | None) -> float:
    """User + system CPU of a process and all its descendants, from /proc."""
    return 0.0 if root is None else sum(family_ticks(root).values()) / os.sysconf("SC_CLK_TCK")


def family_ticks(root: int) -> dict[int, int]:
    """User + system CPU ticks of a process and of each of its descendants, by pid, from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            parents[pid], ticks[pid] = _parent_and_ticks(stat)
        except (OSError, IndexError):
            continue  # gone meanwhile
    family, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return {pid: ticks[pid] for pid in family if pid in ticks}


def process_ticks(pid: int) -> int:
    """User + system CPU ticks of one process (all its threads), from /proc."""
    return _parent_and_ticks(Path(f"/proc/{pid}/stat"))[1]


def _parent_and_ticks(stat: Path) -> tuple[int, int]:
    fields = stat.read_text().rsplit(")", 1)[1].split()  # the command name may hold spaces
    return int(fields[1]), int(fields[11]) + int(fields[12])


def run(names: list[str], proxies: list[str], seconds: int, rounds: int, connections: int) -> None:
    """All targets run side by side and are measured in turns, `rounds` times, with one more
    direct run at the end: a slow, CPU-bound upstream drifts by more between runs than the
    difference being measured, so each proxied run is compared with the direct runs either side."""
    with tempfile.TemporaryDirectory(prefix="sagehost-proxy-bench-") as tmp:
        work = Path(tmp)
        for name in names:
            procs, port, health, body, content_type = UPSTREAMS[name](work)
            try:
                wait_ready(f"http://127.0.0.1:{port}{health}", procs[0])
                upstream = f"http://127.0.0.1:{port}/invocations"
                targets: dict[str, tuple[int, int | None]] = {"direct": (port, None)}
                for label in proxies:
                    proxy_procs, proxy_port = PROXIES[label](upstream, health, work)
                    procs += proxy_procs
                    targets[label] = (proxy_port, proxy_procs[0].pid)
                    if label not in PINGLESS:
                        wait_ready(f"http://127.0.0.1:{proxy_port}/ping", proxy_procs[0])
                load = Load(body, content_type, connections, work)
                for target, pid in targets.values():  # warm every path up once
                    measure(target, load, 2, pid=pid)
                runs: dict[str, list[Run]] = {label: [] for label in targets}
                for turn in range(rounds):
                    for label in ["direct", *_rotated(proxies, turn)]:  # no proxy always right after direct
                        target, pid = targets[label]
                        runs[label].append(measure(target, load, seconds, pid=pid))
                runs["direct"].append(measure(port, load, seconds, pid=None))
            finally:
                stop(procs)
            report(name, runs)


def _rotated(items: list[str], by: int) -> list[str]:
    shift = by % len(items)
    return items[shift:] + items[:shift]


def report(name: str, runs: dict[str, list[Run]]) -> None:
    """Medians of the rounds, each figure on its own; then each proxied run against the mean of
    the direct runs just before and after it (runs seconds apart share the machine's drift), and
    the median and mean of that."""
    medians = {label: median_high(figures) for label, figures in runs.items()}
    width = max(len(label) for label in runs)
    for label, figures in runs.items():
        m = Run(*(median_high(values) for values in zip(*(astuple(r) for r in figures), strict=True)))
        low, high = min(r.cpu_us for r in figures), max(r.cpu_us for r in figures)
        cpu = f"  proxy CPU {m.cpu_us:5.0f} us/request ({low:.0f}-{high:.0f})" if m.cpu_us else ""
        latency = f"p50 {m.p50:7.2f} ms  p99 {m.p99:8.2f} ms"
        line = f"{name:6} {label:{width}} {m.rps:9.0f} req/s  {latency}  errors {m.errors}  machine busy"
        print(f"{line} {m.busy:4.0%}{cpu}", flush=True)
    direct = runs["direct"]
    for label in [label for label in runs if label != "direct"]:
        ratio = medians[label].rps / medians["direct"].rps
        brackets = zip(runs[label], direct[:-1], direct[1:], strict=True)
        paired = sorted(r.rps / ((before.rps + after.rps) / 2) for r, before, after in brackets)
        rounds = ", ".join(f"{r:.1%}" for r in paired)
        by_round = f"median {median_high(paired):.1%}"
        if len(paired) > 1:
            by_round += f", mean {mean(paired):.1%} ± {stdev(paired) / len(paired) ** 0.5:.1%} (standard error)"
        print(f"{name:6} {label} / direct: {ratio:.1%} as medians; by round, {by_round} ({rounds})")
    if {"sagehost proxy", "Flask proxy"} <= runs.keys():
        times = medians["sagehost proxy"].rps / medians["Flask proxy"].rps
        print(f"{name:6} sagehost proxy / Flask proxy = {times:.1f}x")
    for ours, theirs in SAME_POLICY:
        if {ours, theirs} <= runs.keys():
            print(f"{name:6} {ours} / {theirs}: {_by_round(runs[ours], runs[theirs])}")
    print()


# sagehost's own server and client against uvicorn with a library client, under the same
# scheduling policy (issue 14): `sagehost proxy` yields the CPU by default, so it is paired with
# the uvicorn proxies started under SCHED_BATCH, and --no-yield-cpu with the plain ones.
SAME_POLICY = [
    (ours, f"uvicorn + {client}{policy}")
    for client in ("httpx", "aiohttp")
    for ours, policy in (("sagehost proxy", " (SCHED_BATCH)"), ("sagehost proxy --no-yield-cpu", ""))
]


def _by_round(ours: list[Run], theirs: list[Run]) -> str:
    """Two proxies' CPU per request and requests/s as ratios round by round: runs of one round
    are seconds apart, so they share the machine's drift more than the medians do."""
    cpu = sorted(a.cpu_us / b.cpu_us for a, b in zip(ours, theirs, strict=True))
    rps = sorted(a.rps / b.rps for a, b in zip(ours, theirs, strict=True))
    return (
        f"CPU per request {median_high(cpu):.2f}x by round ({cpu[0]:.2f}-{cpu[-1]:.2f}), "
        f"requests/s {median_high(rps):.2f}x ({rps[0]:.2f}-{rps[-1]:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstreams", default="mlflow,fast")
    parser.add_argument("--proxies", default=",".join(PROXIES), help="a comma-separated subset of: %(default)s")
    parser.add_argument("--connections", type=int, default=40, help="wrk's connections (-c); its threads: up to 2")
    parser.add_argument("--cgroup", action="store_true", help="all in one fresh cpu cgroup, as in a container (root)")
    args = parser.parse_args()
    proxies = args.proxies.split(",")
    if unknown := set(proxies) - PROXIES.keys():
        parser.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    with own_cgroup("sagehost-proxy-bench") if args.cgroup else contextlib.nullcontext():
        print(
            f"{os.cpu_count()} cores, upstream {WORKERS} workers, proxies {PROXY_WORKERS}; wrk "
            f"-t{min(2, args.connections)} -c{args.connections}, one row per request; median of {args.rounds} "
            f"interleaved runs; {_scheduling(cgroup=args.cgroup)}\n"
        )
        run(args.upstreams.split(","), proxies, args.seconds, args.rounds, args.connections)


def _scheduling(*, cgroup: bool) -> str:
    if cgroup:
        return "one cpu cgroup, as in a container"
    return "root cgroup, autogroup " + ("on: each session its own group" if autogroup_enabled() else "off")


if __name__ == "__main__":
    main()
