"""XGBoost's gbtree models, read from the model's own JSON, computed as its CPU predictor does:
inputs rounded to float32, `x < split_condition` (strict; stored here as `x <= the float32 just
below it`), NaN to the default child; each class's margin starts at the base score's margin
and adds its trees in order in float32; then the objective's transform in float32.

Left to the library: categorical splits, vector leaves (multi_output_tree), dart and gblinear,
multi-target models, objectives not listed below, a wrapper whose `missing` is not NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sagehost.models.trees.flat import Array, FlatTrees, Tree, constant
from sagehost.models.trees.path import FLOAT32_TOLERANCE, Crossover, TreePath, via_float32

_F = np.float32

# The batch size (rows x trees x depth steps) past which the library is faster: XGBoost's predictor
# costs ~1 µs a row for 100 depth-6 trees, so ~100 rows of them by numpy's walk, ~200 compiled.
XGBOOST_STEPS = Crossover(numpy=60_000, compiled=120_000)


def _sigmoid(z: Array) -> Array:
    with np.errstate(over="ignore"):
        out: Array = _F(1) / (np.exp(-z) + _F(1))
    return out


def _softmax(z: Array) -> Array:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: Array = e / e.sum(axis=1, keepdims=True)
    return out


def _exp(z: Array) -> Array:
    with np.errstate(over="ignore"):
        out: Array = np.exp(z)
    return out


def _logit(p: float) -> float:
    return -math.log(1.0 / p - 1.0)


# objective -> (base_score -> its margin, margin -> the Booster's output)
_OBJECTIVES: dict[str, tuple[Callable[[float], float], Callable[[Array], Array]]] = {
    "binary:logistic": (_logit, _sigmoid),
    "reg:logistic": (_logit, _sigmoid),
    "binary:logitraw": (float, lambda z: z),
    "reg:squarederror": (float, lambda z: z),
    "reg:squaredlogerror": (float, lambda z: z),
    "reg:pseudohubererror": (float, lambda z: z),
    "reg:absoluteerror": (float, lambda z: z),
    "count:poisson": (math.log, _exp),
    "reg:gamma": (math.log, _exp),
    "reg:tweedie": (math.log, _exp),
    "multi:softprob": (float, _softmax),
    "multi:softmax": (float, lambda z: np.argmax(z, axis=1).astype(_F)),
}


def booster_path(booster: Any, iterations: tuple[int, int] = (0, 0)) -> TreePath | None:
    """The lean twin of `booster.inplace_predict(x)` (its `predict`), or None."""
    read = _read(booster, iterations)
    if read is None:
        return None
    flat, output = read
    return TreePath(
        flat, {"predict": output}, prepare=via_float32, tolerance=FLOAT32_TOLERANCE, max_steps=XGBOOST_STEPS
    )


def wrapper_path(model: Any) -> TreePath | None:
    """XGBClassifier / XGBRegressor's predict (and predict_proba), or None."""
    if not (isinstance(model.missing, float) and math.isnan(model.missing)):
        return None  # a sentinel value counts as missing there: leave it to the library
    read = _read(model.get_booster(), model._get_iteration_range(None))
    if read is None:
        return None
    flat, output = read
    if not hasattr(model, "classes_"):
        outputs = {"predict": output}
    elif model.objective == "multi:softmax":
        outputs = {"predict": lambda s: output(s).astype(np.int32)}
    else:
        outputs = {"predict": lambda s: _labels(output(s)), "predict_proba": lambda s: _proba(output(s))}
    return TreePath(flat, outputs, prepare=via_float32, tolerance=FLOAT32_TOLERANCE, max_steps=XGBOOST_STEPS)


def _labels(out: Array) -> Array:
    if out.ndim > 1:
        index: Array = np.argmax(out, axis=1)
        return index
    return (out > 0.5).astype(np.int64)  # XGBClassifier: P(class 1) > 0.5


def _proba(out: Array) -> Array:
    if out.ndim > 1:
        return out
    both = np.empty((len(out), 2), dtype=out.dtype)  # filled in place: a third of vstack's cost
    both[:, 1] = out
    np.subtract(1.0, out, out=both[:, 0])
    return both


def _read(booster: Any, iterations: tuple[int, int]) -> tuple[FlatTrees, Callable[[Array], Array]] | None:
    learner = json.loads(booster.save_raw("json"))["learner"]
    objective = learner["objective"]["name"]
    booster_kind = learner["gradient_booster"]["name"]
    param = learner["learner_model_param"]
    if booster_kind != "gbtree" or objective not in _OBJECTIVES or int(param.get("num_target", 1)) != 1:
        return None
    model = learner["gradient_booster"]["model"]
    n_groups = max(1, int(param["num_class"]))
    to_margin, link = _OBJECTIVES[objective]
    base = [_F(to_margin(float(v))) for v in str(param["base_score"]).strip("[]").split(",")]
    if len(base) == 1:
        base *= n_groups
    indptr = model["iteration_indptr"]
    begin, end = iterations
    end = end or len(indptr) - 1
    trees = [constant(b, group=k) for k, b in enumerate(base)]
    for i in range(indptr[begin], indptr[end]):
        tree = _tree(model["trees"][i], int(model["tree_info"][i]))
        if tree is None:
            return None
        trees.append(tree)
    flat = FlatTrees(trees, from_zero=False)  # XGBoost starts each margin at the base score
    if n_groups == 1 and objective not in ("multi:softprob", "multi:softmax"):
        return flat, lambda sums: link(sums[0])
    return flat, lambda sums: link(sums.T)


def _tree(tree: dict[str, Any], group: int) -> Tree | None:
    if int(tree["tree_param"].get("size_leaf_vector", 1)) > 1 or any(tree["split_type"]):
        return None  # vector leaves or categorical splits
    left = np.asarray(tree["left_children"], dtype=np.intp)
    condition = np.asarray(tree["split_conditions"], dtype=_F)
    # x < c on float32 values is x <= the float32 just below c.
    below = np.nextafter(condition, _F(-np.inf))
    return Tree(
        feature=np.asarray(tree["split_indices"], dtype=np.intp),
        threshold=below.astype(np.float64),
        left=left,
        right=np.asarray(tree["right_children"], dtype=np.intp),
        value=condition,  # a leaf's split_condition holds its weight
        nan_left=np.asarray(tree["default_left"], dtype=bool),
        group=group,
    )
