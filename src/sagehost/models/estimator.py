"""scikit-learn estimators and Pipelines — and any object with `predict` — as a Model."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from sagehost.config import METHODS, Method
from sagehost.errors import ModelLoadError
from sagehost.models import fast, lean
from sagehost.models.arrays import require_method
from sagehost.predictor import ColumnKind, ModelSpec, Outputs, Rows

log = logging.getLogger("sagehost.models")


class EstimatorModel:
    """A Model over a fitted estimator: one call per batch, one array or DataFrame per batch."""

    def __init__(self, estimator: Any, description: str, fast_path: bool = True) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise ModelLoadError(
                f"{description} holds a {type(estimator).__name__}, which has no predict method. "
                "Save the fitted estimator itself, or write code/inference.py with model_fn and predict_fn."
            )
        self._estimator = estimator
        self._spec = describe(estimator, description)
        self._fast = fast.compile_for(estimator, self._spec) if fast_path else None
        self._pipeline = None
        if fast_path and self._fast is None:
            self._pipeline = lean.compile_pipeline(estimator, self._spec, lambda values: self.features(Rows(values)))
        self._declined = 0
        if self.uses_fast_path:
            self._spec = dataclasses.replace(self._spec, steady_cost=True)

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def uses_fast_path(self) -> bool:
        return self._fast is not None or self._pipeline is not None

    @property
    def declined(self) -> int:
        """Batches the lean path left to the library (NaN for a forest, an unknown category under
        handle_unknown="error", ...): the library answered, or raised, as it always does."""
        return self._declined

    @property
    def estimator(self) -> Any:
        return self._estimator

    def predict(self, rows: Rows, method: Method) -> Outputs:
        require_method(method, self._spec)
        answer = self._lean_answer(rows.values, method)
        if answer is not None:
            return answer
        result: Outputs = getattr(self._estimator, method)(self.features(rows))
        return result

    def _lean_answer(self, values: Any, method: Method) -> Outputs | None:
        if self._pipeline is not None:
            answer = self._pipeline.predict(values, method)
        elif self._fast is not None and isinstance(values, np.ndarray):
            answer = self._fast.predict(values, method)
        else:
            return None
        if answer is None:
            self._declined += 1
            # Once at INFO, so a log shows the library took over; then DEBUG, so logs stay small.
            level = logging.INFO if self._declined == 1 else logging.DEBUG
            log.log(level, "The lean path left a batch of %d row(s) (%s) to the library.", len(values), method)
        return answer

    def features(self, rows: Rows) -> Any:
        """The estimator's input for a batch, built once for the whole batch."""
        names = self._spec.feature_names
        if names is not None:
            import pandas as pd

            return pd.DataFrame(rows.values, columns=list(names))
        if isinstance(rows.values, np.ndarray):
            return rows.values
        return np.asarray(rows.values, dtype=object)


def describe(estimator: Any, description: str) -> ModelSpec:
    names = getattr(estimator, "feature_names_in_", None)
    feature_names = tuple(str(n) for n in names) if names is not None else None
    n_features = getattr(estimator, "n_features_in_", None)
    if feature_names is not None:
        n_features = len(feature_names)
    kinds = column_kinds(estimator, feature_names, n_features)
    classes = getattr(estimator, "classes_", None)
    numeric = kinds is None or all(k is ColumnKind.NUMBER for k in kinds)
    return ModelSpec(
        methods=frozenset(m for m in METHODS if _has_method(estimator, m)),
        feature_names=feature_names,
        n_features=int(n_features) if n_features is not None else None,
        kinds=kinds,
        classes=tuple(classes.tolist()) if isinstance(classes, np.ndarray) and classes.ndim == 1 else None,
        sample=[[0.0] * int(n_features)] if numeric and n_features else None,
        description=f"{description}: {_describe_type(estimator)}",
    )


def column_kinds(
    estimator: Any, names: tuple[str, ...] | None, n_features: int | None
) -> tuple[ColumnKind, ...] | None:
    """Which input columns hold text, read from the fitted encoders that consume them, column by
    column: an integer column encoded beside a text one keeps its numbers (as "20" it would
    match no category 20), and text reached through nested ColumnTransformers and imputers is
    still text (typed a number, every request would be refused)."""
    if n_features is None:
        return None
    text = _text_inputs(estimator, n_features, names)
    if not text:
        return None
    return tuple(ColumnKind.TEXT if i in text else ColumnKind.NUMBER for i in range(n_features))


def _text_inputs(step: Any, width: int, names: tuple[str, ...] | None) -> set[int] | None:
    """Which of a fitted step's `width` input columns its encoders read as text; None for a step
    that says nothing about its columns (a scaler, a model, a step of its own)."""
    categories = getattr(step, "categories_", None)
    if categories is not None:
        return {i for i, cats in enumerate(categories) if _is_text(cats)} if len(categories) == width else None
    if getattr(step, "transformers_", None) is not None:
        return _text_by_part(step, width, names)
    for _, inner in getattr(step, "steps", None) or []:
        # A Pipeline's columns reach its first step that changes them as they came in.
        if inner is None or (isinstance(inner, str) and inner == "passthrough") or _keeps_columns(inner):
            continue
        return _text_inputs(inner, width, None)
    return None


def _text_by_part(transformer: Any, width: int, names: tuple[str, ...] | None) -> set[int]:
    """A ColumnTransformer's text columns: each part's own, through the fitted index lists."""
    fitted_indices = getattr(transformer, "_transformer_to_input_indices", None) or {}
    text: set[int] = set()
    for name, part, columns in transformer.transformers_:
        if isinstance(part, str):
            continue
        indices = list(fitted_indices.get(name, _column_indices(columns, names, width)))
        inner = _text_inputs(part, len(indices), None)
        if inner is not None:
            text.update(indices[i] for i in inner)
        elif _encodes_text(part):  # the columns are not told apart: all of them, as any is text
            text.update(indices)
    return text


def _keeps_columns(step: Any) -> bool:
    """A step whose output columns are its input columns, in order (values aside)."""
    kind = type(step).__name__
    if kind == "FunctionTransformer":
        return step.func is None
    if kind == "SimpleImputer" and not step.add_indicator:
        # A column all missing at fit is dropped, unless kept.
        return bool(step.keep_empty_features) or not any(map(_is_nan, step.statistics_.tolist()))
    return False


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _encodes_text(transformer: Any) -> bool:
    categories = getattr(transformer, "categories_", None)
    if categories is not None:
        return any(_is_text(c) for c in categories)
    return any(_encodes_text(step) for _, step in getattr(transformer, "steps", []) or [])


def _is_text(categories: Any) -> bool:
    """Categories of strings; an object array of numbers (a column imputed beside a text one) is
    not: a JSON 20 must reach it as the number it matches."""
    if not isinstance(categories, np.ndarray) or categories.dtype.kind not in "OUST":
        return False
    return categories.dtype.kind != "O" or any(isinstance(c, str) for c in categories.tolist())


def _column_indices(columns: Any, names: tuple[str, ...] | None, n_features: int) -> list[int]:
    if callable(columns):
        return []
    if isinstance(columns, (str, int)):
        columns = [columns]
    if isinstance(columns, slice):
        return list(range(n_features))[columns]
    result: list[int] = []
    for i, column in enumerate(list(columns)):
        if isinstance(column, (bool, np.bool_)):
            if column:
                result.append(i)
        elif isinstance(column, (int, np.integer)):
            result.append(int(column))
        elif names is not None and str(column) in names:
            result.append(names.index(str(column)))
    return result


def _has_method(estimator: Any, method: str) -> bool:
    try:
        return callable(getattr(estimator, method, None))
    except AttributeError:  # available_if raises when e.g. SVC(probability=False)
        return False


def _describe_type(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:
        return "Pipeline(" + " -> ".join(type(s).__name__ for _, s in steps) + ")"
    return type(estimator).__name__
