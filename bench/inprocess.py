"""Per-call cost of one prediction in process: sagehost's model call vs the library's own.

    .venv/bin/python bench/inprocess.py [--rows 1] [--repeat 2000]

Times `EstimatorModel.predict` (what a sagehost worker calls, lean path on and off) against the
estimator's own `predict_proba` on the same rows, for the bench's LogisticRegression, 100-tree
forest, and the fraud-shaped Pipeline (OneHotEncoder on 7 text columns, StandardScaler on 2
numbers, LogisticRegression) fed rows as a JSON record decodes them. No HTTP: this isolates what
the lean paths save. The last line sets the pipeline's lean call against the bare
LogisticRegression's (issue 17 aims for at most 2x).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from sagehost.codecs.decode import decode
from sagehost.models import schema
from sagehost.models.estimator import EstimatorModel
from sagehost.predictor import Rows


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Microseconds per call, best of five rounds (the least disturbed by the rest of the machine)."""
    rounds = timeit.repeat(fn, number=repeat, repeat=5)
    return min(rounds) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    x, y = make_classification(n_samples=5000, n_features=10, n_informative=6, random_state=0)
    rows = x[: args.rows]
    print(f"{args.rows} row(s) per call, predict_proba, microseconds per call (best of 5 x {args.repeat})")
    logistic = LogisticRegression(max_iter=1000).fit(x, y)
    for name, estimator in (
        ("LogisticRegression", logistic),
        ("RandomForest(100)", RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)),
    ):
        compare(name, estimator, Rows(rows), rows, args.repeat)
    pipeline, frame = fraud_pipeline()
    body = frame.iloc[: args.rows].to_json(orient="records").encode()  # named fields, as JSON requests send
    conformed = schema.conform(decode(body, "application/json"), EstimatorModel(pipeline, "x", False).spec)
    compare("fraud Pipeline", pipeline, conformed, frame.iloc[: args.rows], args.repeat)
    bare, whole = EstimatorModel(logistic, "bare"), EstimatorModel(pipeline, "fraud")
    times = interleaved(
        lambda: bare.predict(Rows(rows), "predict_proba"),
        lambda: whole.predict(conformed, "predict_proba"),
        args.repeat,
    )
    aim = " (issue 17 aims for at most 2x on one row)" if args.rows == 1 else ""
    print(
        f"  interleaved: LogisticRegression lean {times[0]:.1f}, fraud Pipeline lean {times[1]:.1f}: "
        f"{times[1] / times[0]:.2f}x per call{aim}"
    )


def interleaved(first: Callable[[], Any], second: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Microseconds per call of each, best of 25 alternating rounds: both see the same machine."""
    best = [float("inf"), float("inf")]
    for _ in range(25):
        for i, fn in enumerate((first, second)):
            best[i] = min(best[i], timeit.timeit(fn, number=max(1, repeat // 5)) / max(1, repeat // 5) * 1e6)
    return best[0], best[1]


def fraud_pipeline() -> tuple[Pipeline, pd.DataFrame]:
    """The shape of the seeds' fraud model: 7 text columns one-hot encoded, 2 numbers scaled."""
    rng = np.random.default_rng(0)
    n = 5000
    texts = {f"c{i}": rng.choice([f"v{j}" for j in range(3 + 2 * i)], n) for i in range(7)}
    frame = pd.DataFrame({**texts, "amount": rng.lognormal(3, 1, n), "age": rng.integers(18, 90, n) * 1.0})
    y = (frame["c0"].isin(["v0", "v1"]) ^ (frame["amount"] > 30)).astype(int)
    columns = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), list(texts)),
            ("numbers", StandardScaler(), ["amount", "age"]),
        ]
    )
    return make_pipeline(columns, LogisticRegression(max_iter=1000)).fit(frame, y), frame


def compare(name: str, estimator: Any, rows: Rows, theirs: Any, repeat: int) -> None:
    """Prints the three figures: the library alone, sagehost without and with its lean path."""
    lean = EstimatorModel(estimator, name)
    plain = EstimatorModel(estimator, name, fast_path=False)
    assert lean.uses_fast_path, f"{name}: the lean path refused this model"
    assert np.allclose(lean.predict(rows, "predict_proba"), estimator.predict_proba(theirs), rtol=1e-9, atol=0)
    slow = "Forest" in name or "Pipeline" in name
    library = best_of(lambda: estimator.predict_proba(theirs), max(1, repeat // (20 if slow else 1)))
    ours_plain = best_of(lambda: plain.predict(rows, "predict_proba"), max(1, repeat // (20 if slow else 1)))
    ours_lean = best_of(lambda: lean.predict(rows, "predict_proba"), max(1, repeat // (20 if "Forest" in name else 1)))
    print(
        f"  {name:19} scikit-learn {library:9.1f}   sagehost (no lean path) {ours_plain:9.1f}   "
        f"sagehost lean {ours_lean:8.1f}   library / lean = {library / ours_lean:5.1f}x"
    )


if __name__ == "__main__":
    main()
