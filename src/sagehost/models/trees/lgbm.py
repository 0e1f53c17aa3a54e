"""LightGBM's numerical trees, read from `Booster.dump_model()`, computed as its predictor does:
float64 inputs (|x| <= 1e-35 read as 0, |x| > 1e300 as ±1e300), NaN read as 0 unless the
split's missing type is NaN, a missing value (NaN, or zero for zero-as-missing) to the default
child, else `x <= threshold`;
each class's trees summed in order in float64; then the objective's transform.

Left to the library: categorical splits, linear trees, random-forest mode (averaged output),
objectives not listed below, custom objectives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sagehost.models.trees.flat import Array, FlatTrees, Tree
from sagehost.models.trees.path import Crossover, TreePath, as_float64, labels

_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold, a float, compared as a double
# LightGBM's Common::AvoidInf: an input past ±1e300 (infinity too) is read as ±1e300, which a
# split at 1e300 (all numbers on one side, NaN on the other) sends left, not right.
_AVOID_INF = 1e300
_IDENTITY = ("regression", "regression_l1", "huber", "fair", "quantile", "mape", "lambdarank", "rank_xendcg")
_EXP = ("poisson", "gamma", "tweedie")

# The batch size (rows x trees x depth steps) past which the library is faster: leaf-wise trees
# run deep and numpy's walk takes every level, so ~120 rows of a 100-tree model. The compiled walk
# stops at each leaf and was still ahead at 4,096 rows: it keeps batches up to ~2,000.
LIGHTGBM_STEPS = Crossover(numpy=250_000, compiled=4_000_000)


def booster_path(booster: Any) -> TreePath | None:
    """The lean twin of `booster.predict(x)`, or None."""
    read = _read(booster.dump_model())
    if read is None:
        return None
    flat, output = read
    return TreePath(flat, {"predict": output}, prepare=_prepare, max_steps=LIGHTGBM_STEPS)


def wrapper_path(model: Any) -> TreePath | None:
    """LGBMClassifier / LGBMRegressor's predict (and predict_proba), or None."""
    if callable(model.objective):
        return None
    read = _read(model.booster_.dump_model())
    if read is None:
        return None
    flat, output = read
    if not hasattr(model, "classes_"):
        return TreePath(flat, {"predict": output}, prepare=_prepare, max_steps=LIGHTGBM_STEPS)
    classes = model.classes_

    def proba(sums: Array) -> Array:
        out = output(sums)
        return out if out.ndim > 1 else np.vstack((1.0 - out, out)).transpose()

    outputs = {"predict_proba": proba, "predict": lambda s: labels(classes, np.argmax(proba(s), axis=1))}
    return TreePath(flat, outputs, prepare=_prepare, max_steps=LIGHTGBM_STEPS)


def _prepare(x: Array) -> Array:
    x = as_float64(x)
    magnitude = np.abs(x)
    tiny = magnitude <= _ZERO  # LightGBM drops these from the row it predicts on: they read as 0
    huge = magnitude > _AVOID_INF
    if not (tiny.any() or huge.any()):
        return x
    return np.where(tiny, 0.0, np.clip(x, -_AVOID_INF, _AVOID_INF))  # NaN stays NaN


def _read(dump: dict[str, Any]) -> tuple[FlatTrees, Callable[[Array], Array]] | None:
    link = _link(str(dump["objective"]))
    if link is None or dump.get("average_output"):
        return None
    per_iteration = int(dump["num_tree_per_iteration"])
    trees = []
    for i, info in enumerate(dump["tree_info"]):
        tree = _tree(info["tree_structure"], i % per_iteration)
        if tree is None:
            return None
        trees.append(tree)
    flat = FlatTrees(trees)
    if per_iteration == 1:
        return flat, lambda sums: link(sums[0])
    return flat, lambda sums: link(sums.T)


def _link(objective: str) -> Callable[[Array], Array] | None:
    name, *params = objective.split()
    options = dict(p.split(":", 1) for p in params if ":" in p)
    if any(":" not in p for p in params):
        return None  # a flag such as `sqrt` changes the transform
    if name == "binary":
        scale = float(options.get("sigmoid", 1.0))
        return lambda z: _quiet(lambda: 1.0 / (1.0 + np.exp(-scale * z)))
    if name in ("cross_entropy", "xentropy"):
        return lambda z: _quiet(lambda: 1.0 / (1.0 + np.exp(-z)))
    if name in ("multiclass", "softmax"):
        return _softmax
    if name in ("multiclassova", "ova"):
        scale = float(options.get("sigmoid", 1.0))
        return lambda z: _quiet(lambda: 1.0 / (1.0 + np.exp(-scale * z)))
    if name in _EXP:
        return lambda z: _quiet(lambda: np.exp(z))
    if name in _IDENTITY:
        return lambda z: z
    return None


def _quiet(fn: Callable[[], Array]) -> Array:
    with np.errstate(over="ignore"):  # exp of an extreme score: 0 or 1 (inf), as in C
        return fn()


def _softmax(z: Array) -> Array:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: Array = e / e.sum(axis=1, keepdims=True)
    return out


def _tree(root: dict[str, Any], group: int) -> Tree | None:
    """The nested dump as node arrays, parents before children."""
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    value: list[float] = []
    nan_left: list[bool] = []
    zero_left: list[bool] = []
    pending: list[tuple[dict[str, Any], int, str]] = [(root, -1, "")]
    while pending:
        node, parent, side = pending.pop()
        index = len(feature)
        if parent >= 0:
            (left if side == "left" else right)[parent] = index
        if "leaf_value" in node or "split_feature" not in node:
            if "leaf_coeff" in node or "leaf_features" in node:
                return None  # a linear tree
            feature.append(0)
            threshold.append(0.0)
            left.append(-1)
            right.append(-1)
            value.append(float(node.get("leaf_value", 0.0)))
            nan_left.append(False)
            zero_left.append(False)
            continue
        if node["decision_type"] != "<=":
            return None  # a categorical split
        cut = float(node["threshold"])
        kind = node["missing_type"]
        default = bool(node["default_left"])
        feature.append(int(node["split_feature"]))
        threshold.append(cut)
        left.append(-1)
        right.append(-1)
        value.append(0.0)
        # None: NaN is read as 0 and compared; Zero: NaN and 0 are missing; NaN: only NaN is.
        nan_left.append(cut >= 0.0 if kind == "None" else default)
        zero_left.append(default if kind == "Zero" else cut >= 0.0)
        pending.append((node["right_child"], index, "right"))
        pending.append((node["left_child"], index, "left"))
    return Tree(
        feature=np.asarray(feature, dtype=np.intp),
        threshold=np.asarray(threshold),
        left=np.asarray(left, dtype=np.intp),
        right=np.asarray(right, dtype=np.intp),
        value=np.asarray(value),
        nan_left=np.asarray(nan_left),
        zero_left=np.asarray(zero_left),
        group=group,
    )
