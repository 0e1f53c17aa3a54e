"""Batch Transform, locally: rows/s of `sagehost local transform --no-container` on a big CSV.

    .venv/bin/python bench/transform.py [--rows 1000000] [--classic-rows 50000] [--models lr,rf]
                                        [--single-rows 5000] [--skip-classic]

One CSV of `--rows` rows of 10 numeric features (about 95 MB, written once into a temp dir),
and the bench's two models (bench/run.py: a LogisticRegression and a 100-tree
RandomForestClassifier, trained on 5,000 rows). For each model, three measures:

- in process, the physical limit: the CSV read with pandas (its C parser), then the library's
  `predict` on the whole array, in one process on one core, best of three. Printed with the
  parse (the fair comparison: sagehost parses the CSV too) and without it. sagehost's `predict`
  answers (labels) are what it answers by default, so the in-process call is `predict` too.
- sagehost: `sagehost local transform --no-container` with SageMaker-realistic settings
  (--split-type Line --strategy MultiRecord --max-payload-mb 6 --concurrency WORKERS
  --assemble-with Line), its workers = cores; the rate is the runner's own (first request to
  last .out byte; server start-up excluded, printed apart), and the .out is checked against
  the in-process predictions, line by line.
- the classic recipe (nginx + gunicorn(gevent) + Flask + pandas, bench/classic_recipe.py, as
  bench/run.py starts it) behind the same runner: the bench calls what `sagehost local
  transform` runs (sagehost.local.transform.local_transform) with `url`, which sends the job to
  a server already running instead of starting one. The recipe's nginx takes at most 5 MB a
  body (client_max_body_size 5m, as AWS's example), so it gets MaxPayloadInMB 5; and it runs
  on a `--classic-rows` slice, its rate scaled as rows/s.

With --single-rows N (default 5000; 0 skips) both servers also take N rows under
SingleRecord (one record a request, concurrency = workers): the per-request cost, which
MultiRecord hides. Every step is bounded in time; every process started is stopped by PID.
Needs `scripts/setup --bench` (nginx) for the classic recipe.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import joblib
import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as bench_run  # noqa: E402  (bench/run.py: train, start_classic, wait_ready, stop)
from sagehost.local.transform import TransformRequest, local_transform  # noqa: E402

WORKERS = os.cpu_count() or 1
T = TypeVar("T")
FEATURES = 10
CLI_TIMEOUT_S = 1200
CLASSIC_PAYLOAD_MB = 5  # the recipe's nginx: client_max_body_size 5m


@dataclass
class Rate:
    label: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` rows of 10 features, 6 decimals: about 95 bytes a row."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = 200_000
    with path.open("wb") as out:
        for start in range(0, rows, step):
            block = rng.standard_normal((min(step, rows - start), FEATURES)) * 2
            pd.DataFrame(block).to_csv(out, header=False, index=False, float_format="%.6f")


def head(source: Path, target: Path, rows: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as read, target.open("wb") as out:
        for _, line in zip(range(rows), read, strict=False):
            out.write(line)


# ---- in process ------------------------------------------------------------------------------


def in_process(model_dir: Path, data: Path, rows: int) -> tuple[Rate, Rate, np.ndarray[Any, Any]]:
    """Best of three (a model call of over 2 s: once): the limit, as little disturbed as it gets."""
    model = joblib.load(model_dir / "model.joblib")
    parse, x = best(lambda: pd.read_csv(data, header=None, dtype=np.float64).to_numpy(), 3)
    call, predictions = best(lambda: model.predict(x), 1)
    if call < 2:
        again, predictions = best(lambda: model.predict(x), 2)
        call = min(call, again)
    assert len(predictions) == rows
    return (
        Rate("in process, with CSV parse", rows, parse + call, f"parse {parse:.2f} s, best of 3"),
        Rate("in process, model call only", rows, call),
        predictions,
    )


def best(work: Callable[[], T], times: int) -> tuple[float, T]:
    """The shortest of `times` runs, in seconds, and what the last returned."""
    shortest = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        result = work()
        shortest = min(shortest, time.perf_counter() - started)
    return shortest, result


# ---- sagehost local transform ----------------------------------------------------------------


def sagehost_cli(model_dir: Path, input_dir: Path, output: Path, rows: int, *, single: bool = False) -> Rate:
    shutil.rmtree(output, ignore_errors=True)
    strategy = ["--strategy", "SingleRecord"] if single else ["--strategy", "MultiRecord", "--max-payload-mb", "6"]
    cmd = [
        str(bench_run.VENV_BIN / "sagehost"), "local", "transform", "--no-container",
        "--model-data", str(model_dir), "--input", str(input_dir), "--output", str(output),
        "--content-type", "text/csv", "--accept", "text/csv", "--split-type", "Line", *strategy,
        "--concurrency", str(WORKERS), "--assemble-with", "Line",
    ]  # fmt: skip
    env = {**os.environ, "SAGEHOST_LOG_LEVEL": "WARNING", "SAGEHOST_WORKERS": str(WORKERS)}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    wall = time.perf_counter() - started
    said = done.stdout + done.stderr
    found = re.search(r"([\d,]+) records in [\d.]+ s \(([\d,]+) records/s\)", said)
    ready = re.search(r"Ready in ([\d.]+) s", said)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"sagehost local transform failed ({done.returncode}):\n{said[-3000:]}")
    records, rate = int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))
    seconds = records / rate  # the runner's own rate, unrounded (its seconds are printed to 0.1 s)
    assert records == rows, f"{records} records transformed of {rows}"
    note = f"wall {wall:.1f} s with start-up (ready in {ready.group(1) if ready else '?'} s)"
    label = "sagehost SingleRecord" if single else "sagehost local transform"
    return Rate(label, rows, seconds, note)


def check_output(out_file: Path, expected: np.ndarray[Any, Any]) -> None:
    """The .out holds the in-process predictions, one a line, in input order, no blank line."""
    text = out_file.read_bytes()
    assert text.endswith(b"\n") and b"\n\n" not in text, "blank lines in the .out"
    try:
        got = np.array(text.split(), dtype=np.float64)
    except ValueError:
        raise AssertionError(f"the .out is not one number a line: {text[:200]!r}") from None
    assert len(got) == len(expected), f"{len(got)} lines for {len(expected)} rows"
    mismatched = int((got != expected.astype(np.float64)).sum())
    assert mismatched == 0, f"{mismatched} predictions differ from the in-process ones"


# ---- the classic recipe, behind the same runner ----------------------------------------------


def classic(model_dir: Path, input_dir: Path, output: Path, rows: int, work: Path, *, single: bool = False) -> Rate:
    """The recipe started as bench/run.py starts it, then the same job as sagehost's, sent to it
    by `local_transform` with `url` (what `sagehost local transform` runs, minus the start-up)."""
    procs, port = bench_run.start_classic(model_dir, work)
    said: list[str] = []
    try:
        url = f"http://127.0.0.1:{port}"
        bench_run.wait_ready(url + "/ping", procs[0])
        shutil.rmtree(output, ignore_errors=True)
        payload: dict[str, Any] = (
            {"strategy": "SingleRecord"}
            if single
            else {"strategy": "MultiRecord", "max_payload_mb": CLASSIC_PAYLOAD_MB}
        )
        request = TransformRequest(
            None,
            str(input_dir),
            str(output),
            url=url,
            content_type="text/csv",
            accept="text/csv",
            split_type="Line",
            concurrency=WORKERS,
            assemble_with="Line",
            retries=0,
            invocation_timeout_s=120.0,
            **payload,
        )
        code = local_transform(request, said.append)
    finally:
        bench_run.stop(procs)
    found = re.search(r"([\d,]+) records in [\d.]+ s \(([\d,]+) records/s\)", "\n".join(said))
    if code != 0 or found is None:
        raise RuntimeError("the classic recipe's job failed:\n" + "\n".join(said)[-3000:])
    records, rate = int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))
    assert records == rows, f"{records} records transformed of {rows}"
    mode = "SingleRecord" if single else f"MultiRecord, MaxPayloadInMB {CLASSIC_PAYLOAD_MB}"
    return Rate(f"classic recipe ({mode})", rows, records / rate, f"{rows:,}-row slice")


# ---- the run ---------------------------------------------------------------------------------


def bench_model(name: str, model_dir: Path, data: dict[str, Path], args: argparse.Namespace, work: Path) -> None:
    print(f"\n{name}: {args.rows:,} rows, {WORKERS} workers, --concurrency {WORKERS}", flush=True)
    with_parse, model_only, expected = in_process(model_dir, data["full"] / "data.csv", args.rows)
    rates = [with_parse, model_only]
    show(rates[0])
    show(rates[1])
    ours = sagehost_cli(model_dir, data["full"], work / f"out-{name}", args.rows)
    check_output(work / f"out-{name}" / "data.csv.out", expected)
    show(ours)
    print(
        f"  sagehost / in process: {ours.per_s / with_parse.per_s:.2f}x of the rate with parse "
        f"(target >= 0.5x), {ours.per_s / model_only.per_s:.2f}x of the model call alone",
        flush=True,
    )
    if not args.skip_classic:
        theirs = classic(model_dir, data["slice"], work / f"classic-{name}", args.classic_rows, work)
        show(theirs)
        print(f"  sagehost / classic recipe: {ours.per_s / theirs.per_s:.2f}x (target >= 10x)", flush=True)
    if args.single_rows:
        single = sagehost_cli(model_dir, data["single"], work / f"single-{name}", args.single_rows, single=True)
        show(single)
        if not args.skip_classic:
            theirs = classic(model_dir, data["single"], work / f"csingle-{name}", args.single_rows, work, single=True)
            show(theirs)
            print(f"  SingleRecord, sagehost / classic recipe: {single.per_s / theirs.per_s:.2f}x", flush=True)


def show(rate: Rate) -> None:
    note = f"  ({rate.note})" if rate.note else ""
    print(f"  {rate.label:44} {rate.per_s:12,.0f} rows/s  {rate.seconds:7.2f} s{note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classic-rows", type=int, default=50_000)
    parser.add_argument("--single-rows", type=int, default=5_000)
    parser.add_argument("--models", default="lr,rf")
    parser.add_argument("--skip-classic", action="store_true")
    args = parser.parse_args()
    if not args.skip_classic and shutil.which("nginx") is None:
        sys.exit("nginx is missing (the classic recipe): run scripts/setup --bench, or pass --skip-classic")
    models = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="sagehost-bench-transform-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's worker (user nobody) must reach the gunicorn socket in here
        dirs = bench_run.train(work / "models", models)
        data = {"full": work / "full", "slice": work / "slice", "single": work / "single"}
        started = time.perf_counter()
        write_csv(data["full"] / "data.csv", args.rows)
        head(data["full"] / "data.csv", data["slice"] / "data.csv", args.classic_rows)
        head(data["full"] / "data.csv", data["single"] / "data.csv", args.single_rows)
        size = (data["full"] / "data.csv").stat().st_size
        print(f"{os.cpu_count()} cores; input {size / 1e6:.0f} MB written in {time.perf_counter() - started:.1f} s")
        for name in models:
            bench_model(name, dirs[name], data, args, work)


if __name__ == "__main__":
    main()
