"""Lean predict paths for the models where the library's per-call overhead dominates.

A 100-tree forest spends most of a small call dispatching one task per tree through joblib, and
XGBoost, LightGBM and HistGradientBoosting spend most of theirs on validation, threads and
set-up; walking every tree at once with numpy (one gather per tree level, models/trees/) gives
the same answers for a fraction of the cost. Logistic regression spends most of a one-row call
validating its input.

Each path reproduces the library's arithmetic (its input rounding, its comparisons, trees summed
in its order and dtype, its link; scores as `X @ coef.T + intercept`) and proves itself against
the library on probe rows when the model loads (`proven`): any disagreement and the model is
served by the library alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from sagehost.models.trees import forest, hgb, lgbm, xgb
from sagehost.models.trees.flat import FlatTrees
from sagehost.models.trees.path import FLOAT64_TOLERANCE
from sagehost.predictor import ModelSpec

log = logging.getLogger("sagehost.models")

Array = np.ndarray[Any, Any]


class FastPath(Protocol):
    """A lean path. Optional attributes read by `proven`: `tolerance` (rtol, atol) for float
    answers (default 1e-9, 1e-12), `max_rows` (the biggest batch it answers itself)."""

    methods: frozenset[str]

    def predict(self, x: np.ndarray[Any, Any], method: str) -> np.ndarray[Any, Any] | None:
        """The answer, or None to let the library answer (e.g. missing values)."""


def compile_for(estimator: Any, spec: ModelSpec) -> FastPath | None:
    path = build_path(estimator)
    if path is None or spec.n_features is None:
        return None
    frame = _framer(spec)
    return proven(
        path,
        lambda x, method: getattr(estimator, method)(frame(x)),
        spec.n_features,
        type(estimator).__name__,
        methods=spec.methods,
    )


def build_path(estimator: Any) -> FastPath | None:
    """The lean path for a fitted estimator of a type we cover (exact types), unchecked; None
    for any other. Callers prove it with the library before use (as `compile_for` does)."""
    kind = type(estimator)  # exact types: a subclass may change predict
    builder = _BUILDERS.get(kind.__module__.split(".")[0])
    return None if builder is None else built(builder, estimator)


def _sklearn(estimator: Any) -> FastPath | None:
    from sklearn import ensemble, linear_model

    kind = type(estimator)
    if kind in (ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier) and estimator.n_outputs_ == 1:
        return forest.path(estimator, classifier=True)
    if kind in (ensemble.RandomForestRegressor, ensemble.ExtraTreesRegressor) and estimator.n_outputs_ == 1:
        return forest.path(estimator, classifier=False)
    if kind in (ensemble.HistGradientBoostingClassifier, ensemble.HistGradientBoostingRegressor):
        return hgb.path(estimator)
    if kind is linear_model.LogisticRegression:
        return Logistic(estimator)
    return None


def _xgboost(estimator: Any) -> FastPath | None:
    import xgboost

    if type(estimator) in (xgboost.XGBClassifier, xgboost.XGBRegressor):
        return xgb.wrapper_path(estimator)
    return None


def _lightgbm(estimator: Any) -> FastPath | None:
    import lightgbm

    if type(estimator) in (lightgbm.LGBMClassifier, lightgbm.LGBMRegressor):
        return lgbm.wrapper_path(estimator)
    return None


class Logistic:
    """Logistic regression as the library computes it, minus per-call input validation."""

    methods = frozenset({"predict", "predict_proba", "decision_function"})

    def __init__(self, model: Any) -> None:
        from scipy.special import expit
        from sklearn.utils.extmath import softmax

        self.coef_t = np.ascontiguousarray(model.coef_.T)
        self.intercept = model.intercept_
        self.classes = model.classes_
        self._expit = expit
        self._softmax = softmax

    def predict(self, x: np.ndarray[Any, Any], method: str) -> np.ndarray[Any, Any] | None:
        if not np.isfinite(x).all():
            return None  # the library refuses NaN and infinity ("Input X contains NaN"): its error
        scores: np.ndarray[Any, Any] = x @ self.coef_t + self.intercept
        if scores.shape[1] == 1:
            scores = scores.reshape(-1)
        if method == "decision_function":
            return scores
        if method == "predict":
            index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
            labels: np.ndarray[Any, Any] = self.classes[index]
            return labels
        if scores.ndim == 1:
            p = self._expit(scores)
            binary: np.ndarray[Any, Any] = np.vstack([1 - p, p]).T
            return binary
        proba: np.ndarray[Any, Any] = self._softmax(scores, copy=False)
        return proba


_BUILDERS: dict[str, Callable[[Any], FastPath | None]] = {
    "sklearn": _sklearn,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
}


def proven(
    path: FastPath,
    library: Callable[[Array, str], Any],
    width: int,
    name: str,
    methods: frozenset[str] | None = None,
) -> FastPath | None:
    """`path` if it gives the library's answers on probe rows for every method both offer, else
    None (logged): a lean path is only ever used where it was seen to agree."""
    try:
        disagreement = _disagreement(path, library, width, methods)
    except Exception as exc:  # a library that refuses a probe row proves nothing
        disagreement = f"the check failed ({type(exc).__name__}: {str(exc)[:200]})"
    if disagreement is not None:
        log.warning("Lean path for %s not used: %s; the library answers.", name, disagreement)
        return None
    log.info("Lean predict path on for %s (%s).", name, ", ".join(sorted(path.methods)))
    return path


def built(builder: Callable[[Any], FastPath | None], model: Any) -> FastPath | None:
    """`builder(model)`, or None for a model whose shape the builder does not read (logged)."""
    try:
        return builder(model)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ArithmeticError) as exc:
        log.info("No lean path for %s: %s: %s", type(model).__name__, type(exc).__name__, exc)
        return None


def _disagreement(
    path: FastPath, library: Callable[[Array, str], Any], width: int, methods: frozenset[str] | None
) -> str | None:
    for method in sorted(path.methods & (methods if methods is not None else path.methods)):
        for rows, must_answer in _probe_rows(path, width):
            ours = _in_pieces(path, rows, method)
            if ours is None and not must_answer:
                continue  # rows this path leaves to the library
            if ours is None or not _same(ours, np.asarray(library(rows, method)), path):
                return f"it disagreed with the library on {method}"
    return None


def _in_pieces(path: FastPath, rows: Array, method: str) -> Array | None:
    """The path's answer in batches it takes itself (a tree path leaves big ones to the library)."""
    size = getattr(path, "max_rows", len(rows))
    parts = [path.predict(rows[i : i + size], method) for i in range(0, len(rows), size)]
    if any(part is None for part in parts):
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)  # type: ignore[arg-type]


def _same(ours: Array, theirs: Array, path: FastPath) -> bool:
    if ours.shape != theirs.shape:
        return False
    if theirs.dtype.kind in "fc":
        rtol, atol = getattr(path, "tolerance", FLOAT64_TOLERANCE)
        return bool(np.allclose(ours, theirs, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(ours, theirs))


def _framer(spec: ModelSpec) -> Callable[[Array], Any]:
    """Rows as the estimator was fitted on them: a DataFrame when it knows column names."""
    if spec.feature_names is None:
        return lambda x: x
    import pandas as pd

    columns = list(spec.feature_names)
    return lambda x: pd.DataFrame(x, columns=columns)


def _probe_rows(path: FastPath, width: int) -> list[tuple[Array, bool]]:
    """(rows, whether the path must answer them itself)."""
    trees = getattr(path, "trees", None)
    if isinstance(trees, FlatTrees):
        clean, edge = trees.probe_rows(width)
        return [(clean, True), (edge, False), (clean[:1], True)]
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(256, width)) * 3, True)]
