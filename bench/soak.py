"""A bounded soak of `sagehost serve` and `sagehost proxy` (issue 14), not part of CI: a million
requests over 40 kept-alive connections, one in ten payload-malformed, and it checks that

- every valid request got a 200 and every malformed one a 4xx (bench/soak.lua knows which
  request each answer is for: wrk runs one connection per thread, one request in flight);
- no connection was lost and wrk saw no connect, read, write or timeout error;
- no worker was replaced (the processes of the server's session are the same at the end);
- memory stayed flat: the summed RSS of the server's processes, sampled every half second,
  never grew more than 10% over its value after a warm-up of the same traffic.

    .venv/bin/python bench/soak.py [--targets serve,proxy] [--requests 1000000] [--connections 40]

Targets: `sagehost serve` of the demo model (a worker per core), and `sagehost proxy` (1 worker,
transparent) in front of another `sagehost serve` of it; for the proxy the conditions apply to
the proxy's own processes, and the upstream's RSS is printed beside them. Malformed requests
(bench/soak.lua) are bad CSV cells, rows too narrow or too wide, JSON cut short, a broken JSON
line, an empty body, a content type nobody decodes and an answer type nobody encodes: each gets
a 4xx and keeps its connection. It prints a summary table and exits 1 if a condition fails.
Needs wrk (`scripts/setup --bench`) and the demo model (`scripts/setup`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from run import BENCH, VENV_BIN, WORKERS, free_port, spawn, stop, wait_ready

DEMO = BENCH.parent / "examples" / "demo" / "model"
MALFORMED_EVERY = 10  # one request in ten
MAX_GROWTH = 0.10
Procs = list[subprocess.Popen[bytes]]


@dataclass
class Target:
    """What is soaked (its processes) and what it needs beside it (an upstream)."""

    procs: Procs
    port: int
    beside: Procs = field(default_factory=list)


def serve_demo(work: Path, name: str) -> tuple[Procs, int]:
    port = free_port()
    cmd = [str(VENV_BIN / "sagehost"), "serve", "--model-dir", str(DEMO), "--port", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "SAGEHOST_WORKERS": str(WORKERS), "SAGEHOST_LOG_LEVEL": "WARNING"}
    return [spawn(cmd, env, work / f"{name}.log")], port


def start_serve(work: Path) -> Target:
    procs, port = serve_demo(work, "serve")
    wait_ready(f"http://127.0.0.1:{port}/ping", procs[0])
    return Target(procs, port)


def start_proxy(work: Path) -> Target:
    upstream, upstream_port = serve_demo(work, "upstream")
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/ping", upstream[0])
        port = free_port()
        cmd = [str(VENV_BIN / "sagehost"), "proxy", "--upstream", f"http://127.0.0.1:{upstream_port}/invocations",
               "--upstream-health", "/ping", "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
        env = {**os.environ, "SAGEHOST_LOG_LEVEL": "WARNING"}  # the proxy's own default: 1 worker
        procs = [spawn(cmd, env, work / "proxy.log")]
        wait_ready(f"http://127.0.0.1:{port}/ping", procs[0])
    except BaseException:
        stop(upstream)
        raise
    return Target(procs, port, beside=upstream)


TARGETS = {"serve": start_serve, "proxy": start_proxy}


def session_pids(procs: Procs) -> set[int]:
    """The live processes of the sessions the target's processes lead (each starts its own)."""
    sessions = {p.pid for p in procs}
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) in sessions:
                pids.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def rss_mb(procs: Procs) -> float:
    """The summed RSS of the target's processes (shared pages count once per process)."""
    total_kb = 0
    for pid in session_pids(procs):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if match := re.search(r"VmRSS:\s+(\d+)", status):
            total_kb += int(match.group(1))
    return total_kb / 1024


class Sampler(threading.Thread):
    """The target's RSS every half second, while the load runs."""

    def __init__(self, procs: Procs) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.samples: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.samples.append(rss_mb(self.procs))


def wrk(port: int, requests: int, connections: int, cap_s: int) -> dict[str, int]:
    """Send exactly `requests` through bench/soak.lua, one connection per wrk thread; its tallies.

    wrk runs for its whole -d unless interrupted, so once every thread has sent its share and
    noted it in `finished`, wrk gets the SIGINT that ends its run early (wrk.c's handler)."""
    with tempfile.NamedTemporaryFile(prefix="sagehost-soak-", suffix=".finished") as finished:
        cmd = ["wrk", f"-t{connections}", f"-c{connections}", f"-d{cap_s}s", "--timeout", "10s",
               "-s", str(BENCH / "soak.lua"), f"http://127.0.0.1:{port}/invocations", "--",
               str(requests), str(connections), str(MALFORMED_EVERY), finished.name]  # fmt: skip
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as load:
            deadline = time.monotonic() + cap_s + 60
            while load.poll() is None and time.monotonic() < deadline:
                if len(Path(finished.name).read_text().split()) >= connections:
                    load.send_signal(signal.SIGINT)
                    break
                time.sleep(0.2)
            try:
                out, _ = load.communicate(timeout=max(deadline - time.monotonic(), 30))
            except subprocess.TimeoutExpired:
                load.kill()
                raise
    if load.returncode != 0:
        raise RuntimeError(f"wrk exited with {load.returncode}")
    return {name: int(value) for name, value in re.findall(r"^soak (\w+) (-?\d+)$", out, re.MULTILINE)}


@dataclass
class Outcome:
    target: str
    requests: int
    tallies: dict[str, int]
    rps: float
    rss_warm: float
    rss_peak: float
    rss_end: float
    beside_rss: tuple[float, float]
    replaced: int
    failures: list[str]


def soak(name: str, requests: int, connections: int, work: Path) -> Outcome:
    target = TARGETS[name](work)
    try:
        warmup = min(50_000, max(requests // 4, 1000))
        warm_tallies = wrk(target.port, warmup, connections, cap_s=max(60, warmup // 200))
        rss_warm, beside_warm = rss_mb(target.procs), rss_mb(target.beside)
        pids = session_pids(target.procs)
        sampler = Sampler(target.procs)
        sampler.start()
        try:
            tallies = wrk(target.port, requests, connections, cap_s=requests // 300 + 60)
        finally:
            sampler.halt.set()
            sampler.join()
        rss_end, beside_end = rss_mb(target.procs), rss_mb(target.beside)
        replaced = len(pids - session_pids(target.procs))
    finally:
        stop(target.procs + target.beside)
    rps = tallies.get("requests", 0) / max(tallies.get("duration_us", 1), 1) * 1e6
    peak = max([*sampler.samples, rss_end])
    outcome = Outcome(name, requests, tallies, rps, rss_warm, peak, rss_end, (beside_warm, beside_end), replaced, [])
    outcome.failures = failures(outcome, warm_tallies)
    return outcome


def failures(o: Outcome, warm: dict[str, int]) -> list[str]:
    t = o.tallies
    found = []
    if (answered := t.get("valid_ok", 0) + t.get("malformed_ok", 0)) != o.requests:
        found.append(f"{answered:,} of {o.requests:,} requests answered as they should be")
    for tallies, phase in ((warm, "warm-up"), (t, "soak")):
        if bad := tallies.get("valid_bad", 0):
            found.append(f"{phase}: {bad:,} valid requests got something else than 200")
        if bad := tallies.get("malformed_bad", 0):
            found.append(f"{phase}: {bad:,} malformed requests got something else than a 4xx")
        errors = {kind: tallies.get(kind, 0) for kind in ("lost", "connect_errors", "read_errors", "write_errors")}
        errors["timeouts"] = tallies.get("timeouts", 0)
        if any(errors.values()):
            found.append(f"{phase}: connection errors " + ", ".join(f"{k} {v}" for k, v in errors.items() if v))
    if o.replaced:
        found.append(f"{o.replaced} of the server's processes were replaced during the soak")
    if o.rss_peak > o.rss_warm * (1 + MAX_GROWTH):
        found.append(f"RSS grew {o.rss_peak / o.rss_warm - 1:.1%} after warm-up (the bound: {MAX_GROWTH:.0%})")
    return found


def report(outcomes: list[Outcome], connections: int) -> None:
    print(f"\n{os.cpu_count()} cores; wrk -t{connections} -c{connections}, one malformed request in {MALFORMED_EVERY}")
    head = "| target | requests | req/s | valid → 200 | malformed → 4xx | wrong | errors |"
    print(head + " RSS warm-up → peak → end MB | upstream RSS MB | result |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for o in outcomes:
        t = o.tallies
        wrong = t.get("valid_bad", 0) + t.get("malformed_bad", 0)
        errors = sum(t.get(k, 0) for k in ("lost", "connect_errors", "read_errors", "write_errors", "timeouts"))
        rss = f"{o.rss_warm:.0f} → {o.rss_peak:.0f} → {o.rss_end:.0f} ({o.rss_peak / o.rss_warm - 1:+.1%})"
        upstream = f"{o.beside_rss[0]:.0f} → {o.beside_rss[1]:.0f}" if o.beside_rss[0] else "—"
        print(
            f"| {o.target} | {o.requests:,} | {o.rps:,.0f} | {t.get('valid_ok', 0):,} | {t.get('malformed_ok', 0):,} "
            f"| {wrong} | {errors} | {rss} | {upstream} | {'FAIL' if o.failures else 'pass'} |"
        )
    for o in outcomes:
        statuses = sorted((k.removeprefix("status_"), v) for k, v in o.tallies.items() if k.startswith("status_"))
        latency = f"p50 {o.tallies.get('p50_us', 0) / 1000:.2f} ms, p99 {o.tallies.get('p99_us', 0) / 1000:.2f} ms"
        print(f"{o.target}: statuses " + ", ".join(f"{k} × {v:,}" for k, v in statuses) + f"; {latency}")
        for failure in o.failures:
            print(f"{o.target}: FAILED: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="serve,proxy", help="a comma-separated subset of: serve,proxy")
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=40, help="wrk's connections, one thread each")
    args = parser.parse_args()
    targets = args.targets.split(",")
    if unknown := set(targets) - TARGETS.keys():
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: run scripts/setup --bench")
    if not (DEMO / "model.joblib").exists():
        sys.exit("The demo model is missing: run scripts/setup")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="sagehost-soak-") as tmp:
        for name in targets:
            started = time.monotonic()
            outcomes.append(soak(name, args.requests, args.connections, Path(tmp)))
            print(f"{name}: {args.requests:,} requests in {time.monotonic() - started:.0f} s", flush=True)
    report(outcomes, args.connections)
    sys.exit(1 if any(o.failures for o in outcomes) else 0)


if __name__ == "__main__":
    main()
