"""Lean predict paths for the models where scikit-learn's per-call overhead dominates.

A 100-tree forest spends most of a small call dispatching one task per tree through joblib;
walking every tree at once with numpy (one gather per tree level) gives the same answers for a
fraction of the cost. Logistic regression spends most of a one-row call validating its input.

Each path reproduces the library's arithmetic (float32 inputs compared against float64
thresholds, trees summed in order; scores as `X @ coef.T + intercept`) and proves itself
against the library on synthetic rows when the model loads: any disagreement and the model
is served by the library alone.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from sagehost.predictor import ModelSpec

log = logging.getLogger("sagehost.models")

_CHUNK_ROWS = 2048  # bounds the (rows x trees) index arrays for big Batch Transform payloads


class FastPath(Protocol):
    methods: frozenset[str]

    def predict(self, x: np.ndarray[Any, Any], method: str) -> np.ndarray[Any, Any] | None:
        """The answer, or None to let the library answer (e.g. missing values)."""


def compile_for(estimator: Any, spec: ModelSpec) -> FastPath | None:
    path = build_path(estimator)
    if path is None or spec.n_features is None:
        return None
    if not _agrees(path, estimator, spec):
        log.warning("Lean path for %s disagreed with scikit-learn; using the library.", type(estimator).__name__)
        return None
    log.info("Lean predict path on for %s (%s).", type(estimator).__name__, ", ".join(sorted(path.methods)))
    return path


def build_path(estimator: Any) -> FastPath | None:
    """The lean path for a fitted estimator of a type we cover (exact types), unchecked; None
    for any other. Callers prove it with the library before use (as `compile_for` does)."""
    try:
        from sklearn.ensemble import (
            ExtraTreesClassifier,
            ExtraTreesRegressor,
            RandomForestClassifier,
            RandomForestRegressor,
        )
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None
    kind = type(estimator)  # exact types: a subclass may change predict
    if kind in (RandomForestClassifier, ExtraTreesClassifier) and estimator.n_outputs_ == 1:
        return TreeEnsemble(estimator, classifier=True)
    if kind in (RandomForestRegressor, ExtraTreesRegressor) and estimator.n_outputs_ == 1:
        return TreeEnsemble(estimator, classifier=False)
    if kind is LogisticRegression:
        return Logistic(estimator)
    return None


class TreeEnsemble:
    """All trees of a forest flattened into arrays and walked together, level by level."""

    def __init__(self, forest: Any, classifier: bool) -> None:
        trees = [e.tree_ for e in forest.estimators_]
        offsets = np.cumsum([0] + [t.node_count for t in trees[:-1]])
        self.roots = offsets.astype(np.intp)
        self.depth = max(t.max_depth for t in trees)
        leaf_self = [np.arange(t.node_count) for t in trees]
        # A leaf points at itself, so walking past it is harmless and every tree takes `depth` steps.
        self.left = np.concatenate(
            [
                np.where(t.children_left < 0, own, t.children_left) + off
                for t, own, off in zip(trees, leaf_self, offsets, strict=False)
            ]
        ).astype(np.intp)
        self.right = np.concatenate(
            [
                np.where(t.children_right < 0, own, t.children_right) + off
                for t, own, off in zip(trees, leaf_self, offsets, strict=False)
            ]
        ).astype(np.intp)
        self.feature = np.concatenate([np.maximum(t.feature, 0) for t in trees]).astype(np.intp)
        self.threshold = np.concatenate([t.threshold for t in trees])
        if classifier:
            n_classes = int(forest.n_classes_)
            self.value = np.concatenate([t.value[:, 0, :n_classes] for t in trees])
            self.classes = forest.classes_
            self.methods = frozenset({"predict", "predict_proba"})
        else:
            self.value = np.concatenate([t.value[:, 0, 0] for t in trees])
            self.classes = None
            self.methods = frozenset({"predict"})
        self.n_trees = len(trees)

    def predict(self, x: np.ndarray[Any, Any], method: str) -> np.ndarray[Any, Any] | None:
        if method not in self.methods:
            return None
        x32 = np.ascontiguousarray(x, dtype=np.float32)  # the dtype scikit-learn's trees compare in
        if np.isnan(x32).any():
            return None  # missing values follow per-node rules: leave them to the library
        parts = [self._mean(x32[i : i + _CHUNK_ROWS]) for i in range(0, len(x32), _CHUNK_ROWS)]
        mean = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self.classes is None or method == "predict_proba":
            return mean
        result: np.ndarray[Any, Any] = self.classes.take(np.argmax(mean, axis=1), axis=0)
        return result

    def _mean(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        flat = x.ravel()
        base = (np.arange(len(x), dtype=np.intp) * x.shape[1])[:, None]
        node = np.broadcast_to(self.roots, (len(x), self.n_trees))
        for _ in range(self.depth):
            go_left = flat[base + self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        leaves = self.value[node]
        # cumsum adds tree by tree, in the forest's order: the same sums, bit for bit.
        total: np.ndarray[Any, Any] = np.cumsum(leaves, axis=1)[:, -1] / self.n_trees
        return total


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


def _agrees(path: FastPath, estimator: Any, spec: ModelSpec) -> bool:
    x = _probe_rows(path, spec.n_features or 0)
    frame: Any = x
    if spec.feature_names is not None:
        import pandas as pd

        frame = pd.DataFrame(x, columns=list(spec.feature_names))
    for method in sorted(path.methods & spec.methods):
        ours = path.predict(x, method)
        theirs = np.asarray(getattr(estimator, method)(frame))
        if ours is None or ours.shape != theirs.shape:
            return False
        if theirs.dtype.kind in "fc":
            if not np.allclose(ours, theirs, rtol=1e-9, atol=1e-12):
                return False
        elif not np.array_equal(ours, theirs):
            return False
    return True


def _probe_rows(path: FastPath, width: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(0)
    if isinstance(path, TreeEnsemble):
        # Spread each feature across its split points so the probe visits many leaves.
        low = np.full(width, -1.0)
        high = np.full(width, 1.0)
        for f in range(width):
            used = path.threshold[(path.feature == f) & (path.left != path.right)]
            if used.size:
                low[f], high[f] = used.min() - 1, used.max() + 1
        return rng.uniform(low, high, size=(256, width))
    return rng.normal(size=(256, width)) * 3
