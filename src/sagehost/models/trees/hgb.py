"""scikit-learn's HistGradientBoostingClassifier/Regressor, as its predictors compute: float64
inputs, `x <= num_threshold` on the raw value, NaN where `missing_go_to_left` says; raw scores
= baseline + each iteration's tree, in order; then the loss's own inverse link.

Categorical splits (bitsets over category codes, with the fitted ordinal encoder in front) stay
with the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sagehost.models.trees.flat import Array, FlatTrees, Tree, constant
from sagehost.models.trees.path import Crossover, TreePath, as_float64, labels

# The batch size (rows x trees x depth steps) past which the library is faster: ~160 rows of a
# 100-iteration model by numpy's walk (the library's OpenMP start-up cost per call is high), ~300
# by the compiled one.
HGB_STEPS = Crossover(numpy=300_000, compiled=600_000)


def path(model: Any) -> TreePath | None:
    categorical = getattr(model, "is_categorical_", None)
    if getattr(model, "_preprocessor", None) is not None or (categorical is not None and categorical.any()):
        return None
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    trees = [constant(b, group=k) for k, b in enumerate(baseline)]
    for iteration in model._predictors:
        for k, predictor in enumerate(iteration):
            tree = _tree(predictor.nodes, k)
            if tree is None:
                return None
            trees.append(tree)
    flat = FlatTrees(trees)
    loss = model._loss
    if not hasattr(model, "classes_"):
        return TreePath(
            flat, {"predict": lambda sums: loss.link.inverse(sums[0])}, prepare=as_float64, max_steps=HGB_STEPS
        )
    classes = model.classes_

    def predict(raw: Array) -> Array:
        if raw.shape[1] == 1:  # as the library decides: "> 0", so a tie goes to the first class
            return labels(classes, (raw.ravel() > 0).astype(int))
        return labels(classes, np.argmax(raw, axis=1))

    def decision(raw: Array) -> Array:
        return raw.ravel() if raw.shape[1] == 1 else raw

    on_raw = {"predict": predict, "predict_proba": loss.predict_proba, "decision_function": decision}
    return TreePath(
        flat, {method: _rows_first(fn) for method, fn in on_raw.items()}, prepare=as_float64, max_steps=HGB_STEPS
    )


def _rows_first(fn: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """The library's (rows, trees per iteration) raw scores from the walk's (groups, rows) sums."""
    return lambda sums: fn(sums.T)


def _tree(nodes: Array, group: int) -> Tree | None:
    if nodes["is_categorical"].any():
        return None
    leaf = nodes["is_leaf"].astype(bool)
    return Tree(
        feature=nodes["feature_idx"].astype(np.intp),
        threshold=nodes["num_threshold"].astype(np.float64),
        left=np.where(leaf, -1, nodes["left"].astype(np.intp)),
        right=np.where(leaf, -1, nodes["right"].astype(np.intp)),
        value=nodes["value"].astype(np.float64),
        nan_left=nodes["missing_go_to_left"].astype(bool),
        group=group,
    )
