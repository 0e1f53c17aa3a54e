"""Per-call cost of one prediction in process: sagehost's model call vs the library's own.

    .venv/bin/python bench/inprocess.py [--rows 1] [--repeat 2000]

Times `EstimatorModel.predict` (what a sagehost worker calls, lean path on and off) against the
estimator's own `predict_proba` on the same rows, for the bench's LogisticRegression and
100-tree forest. No HTTP: this isolates what the lean paths save.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

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
    for name, estimator in (
        ("LogisticRegression", LogisticRegression(max_iter=1000)),
        ("RandomForest(100)", RandomForestClassifier(n_estimators=100, random_state=0)),
    ):
        compare(name, estimator.fit(x, y), rows, args.repeat)


def compare(name: str, estimator: Any, rows: np.ndarray[Any, Any], repeat: int) -> None:
    lean = EstimatorModel(estimator, name)
    plain = EstimatorModel(estimator, name, fast_path=False)
    assert lean.uses_fast_path, f"{name}: the lean path refused this model"
    assert np.array_equal(lean.predict(Rows(rows), "predict_proba"), estimator.predict_proba(rows))
    repeat = max(1, repeat // (20 if "Forest" in name else 1))
    library = best_of(lambda: estimator.predict_proba(rows), repeat)
    ours_plain = best_of(lambda: plain.predict(Rows(rows), "predict_proba"), repeat)
    ours_lean = best_of(lambda: lean.predict(Rows(rows), "predict_proba"), repeat)
    print(
        f"  {name:19} scikit-learn {library:9.1f}   sagehost (no lean path) {ours_plain:9.1f}   "
        f"sagehost lean {ours_lean:8.1f}   library / lean = {library / ours_lean:5.1f}x"
    )


if __name__ == "__main__":
    main()
