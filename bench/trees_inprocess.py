"""Per-call cost of boosted trees in process: sagehost's model call with the lean tree walk on
and off, against the library's own predict_proba.

    .venv/bin/python bench/trees_inprocess.py [--repeat 400] [--threads 1] [--crossover]

XGBClassifier, LGBMClassifier and HistGradientBoostingClassifier (100 trees/iterations, depth
6 for XGBoost, 10 numeric features, binary), with a 100-tree random forest for reference; one
row and a 1000-row batch per call. "lean off" is what sagehost did before the lean walk; "numpy
walk" is the lean walk without numba (SAGEHOST_COMPILED_TREES=0 or no `sagehost[trees]`),
"compiled" with it. No HTTP: this isolates what the walk saves. The libraries get `--threads` threads, as a worker
gets its share of the cores.

--crossover times the walk itself against the library over growing batches and prints where the
library overtakes, in (rows x trees x depth) steps: the per-family `*_STEPS` constants in
src/sagehost/models/trees/ come from it (bigger batches go to the library).
"""

from __future__ import annotations

import argparse
import contextlib
import timeit
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.datasets import make_classification

from sagehost.models import fast
from sagehost.models.estimator import EstimatorModel
from sagehost.models.trees import compiled
from sagehost.predictor import Rows


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Microseconds per call, best of five rounds (the least disturbed by the rest of the machine)."""
    rounds = timeit.repeat(fn, number=repeat, repeat=5)
    return min(rounds) / repeat * 1e6


def models(threads: int) -> list[tuple[str, Any]]:
    import lightgbm
    import xgboost
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    return [
        ("XGBClassifier", xgboost.XGBClassifier(n_estimators=100, max_depth=6, n_jobs=threads)),
        ("LGBMClassifier", lightgbm.LGBMClassifier(n_estimators=100, n_jobs=threads, verbose=-1)),
        ("HistGradientBoosting", HistGradientBoostingClassifier(max_iter=100, early_stopping=False)),
        ("RandomForest(100)", RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=threads)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=400, help="calls per round for one row (1000 rows: /20)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crossover", action="store_true", help="where the library overtakes the walk")
    args = parser.parse_args()
    x, y = make_classification(n_samples=5000, n_features=10, n_informative=6, random_state=0)
    if args.crossover:
        for name, estimator in models(args.threads):
            crossover(name, estimator.fit(x, y), x, args.repeat)
        return
    print(f"predict_proba, microseconds per call (best of 5 rounds), library threads = {args.threads}")
    head = f"  {'model':21} {'rows':>5} {'library':>10} {'lean off':>10} {'numpy walk':>11} {'compiled':>10}"
    print(head + f" {'off / compiled':>15}")
    for name, estimator in models(args.threads):
        estimator.fit(x, y)
        plain = EstimatorModel(estimator, name, fast_path=False)
        walks = [lean_model(estimator, name, walk) for walk in ("0", "1")]
        for n_rows, repeat in ((1, args.repeat), (1000, max(1, args.repeat // 20))):
            rows = Rows(x[:n_rows])
            library = best_of(lambda: estimator.predict_proba(x[:n_rows]), repeat)  # noqa: B023
            off = best_of(lambda: plain.predict(rows, "predict_proba"), repeat)  # noqa: B023
            on = []
            for walk, lean in zip(("0", "1"), walks, strict=True):
                expected = estimator.predict_proba(x[:n_rows])
                with compiled_trees(walk):
                    np.testing.assert_allclose(lean.predict(rows, "predict_proba"), expected, rtol=1e-5, atol=1e-6)
                    on.append(best_of(lambda: lean.predict(rows, "predict_proba"), repeat))  # noqa: B023
            print(
                f"  {name:21} {n_rows:5d} {library:10.1f} {off:10.1f} {on[0]:11.1f} {on[1]:10.1f} {off / on[1]:14.1f}x"
            )


@contextlib.contextmanager
def compiled_trees(value: str) -> Iterator[None]:
    """The compiled walk on ("1") or off ("0") for what runs inside, as SAGEHOST_COMPILED_TREES
    sets it when a model loads."""
    compiled.use(value == "1")
    try:
        yield
    finally:
        compiled.use(True)


def lean_model(estimator: Any, name: str, walk: str) -> EstimatorModel:
    with compiled_trees(walk):
        lean = EstimatorModel(estimator, name)
    assert lean.uses_fast_path, f"{name}: the lean path refused this model"
    return lean


def crossover(name: str, estimator: Any, x: np.ndarray[Any, Any], repeat: int) -> None:
    path: Any = fast.build_path(estimator)
    path.max_rows = len(x)  # time the walk on every batch size, past its usual cut-off
    steps = path.trees.n_trees * max(path.trees.depth, 1)
    line = []
    for n_rows in (1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        rows = x[:n_rows]
        calls = max(3, repeat // n_rows)
        library = best_of(lambda: estimator.predict_proba(rows), calls)  # noqa: B023
        walk = best_of(lambda: path.predict(rows, "predict_proba"), calls)  # noqa: B023
        line.append(f"{n_rows}: {library:.0f}/{walk:.0f}")
        if library < walk:
            line.append(f"-> library faster from ~{n_rows} rows = {n_rows * steps:,} steps")
            break
    print(f"  {name:21} ({steps} steps a row) library/walk µs: " + "  ".join(line))


if __name__ == "__main__":
    main()
