"""A Model over a numeric runtime: one array per batch, one function per method."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sagehost.config import Method
from sagehost.errors import UnsupportedMethod
from sagehost.predictor import ModelSpec, Outputs, Rows

Array = np.ndarray[Any, Any]


class ArrayModel:
    def __init__(self, spec: ModelSpec, methods: Mapping[str, Callable[[Array], Outputs]], dtype: Any) -> None:
        self._spec = spec
        self._methods = dict(methods)
        self._dtype = dtype

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def predict(self, rows: Rows, method: Method) -> Outputs:
        require_method(method, self._spec)
        return self._methods[method](np.ascontiguousarray(rows.values, dtype=self._dtype))


def require_method(method: str, spec: ModelSpec) -> None:
    """Every Model's first line: a method the model does not have is the caller's 400."""
    if method not in spec.methods:
        raise UnsupportedMethod(unsupported(method, spec))


def unsupported(method: str, spec: ModelSpec) -> str:
    offered = ", ".join(sorted(spec.methods))
    return f"This model ({spec.description}) has no {method}; it offers: {offered}."


def two_columns(p: Array) -> Array:
    """A binary model's P(class 1) as the (n, 2) probabilities scikit-learn's predict_proba gives."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    return np.column_stack([1.0 - p, p])


def flat(out: Array) -> Array:
    """(n, 1) -> (n,): one value per row, as a list of scalars rather than of 1-lists."""
    out = np.asarray(out)
    return out.reshape(-1) if out.ndim == 2 and out.shape[1] == 1 else out
