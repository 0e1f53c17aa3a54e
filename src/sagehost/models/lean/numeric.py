"""Scalers, SimpleImputer and the identity FunctionTransformer: the library's own arithmetic,
operation for operation (sklearn/preprocessing/_data.py, sklearn/impute/_base.py), so the
numbers are the same bit for bit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sagehost.models.lean.frame import (
    NAN,
    Array,
    Block,
    Column,
    Kind,
    Layout,
    _Uncovered,
    is_nan,
    numbers_only,
    unbounded,
)


def _numbers(layout: Layout, what: str) -> None:
    if any(c.kind is not Kind.NUMBER for c in layout):
        raise _Uncovered(f"{what} on a text column")


class _ShiftThenDivide:
    """`(x - shift) / scale`, either part optional: StandardScaler's mean and std, RobustScaler's
    center and IQR scale."""

    def __init__(self, layout: Layout, shift: Array | None, scale: Array | None) -> None:
        self.shift, self.scale = shift, scale
        self.shift_by = _listed(shift, len(layout), 0.0)
        self.divide_by = _listed(scale, len(layout), 1.0)
        self.layout = unbounded(layout)

    def __call__(self, block: Block) -> Block | None:
        x = block.numbers
        if self.shift is not None:
            x = x - self.shift
        if self.scale is not None:
            x = x / self.scale
        return numbers_only(x)

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        # Python floats round each + - * / exactly as numpy's float64 ufuncs do (IEEE 754), and
        # subtracting 0.0 or dividing by 1.0 changes nothing: one loop for every setting.
        return [(v - m) / s for v, m, s in zip(values, self.shift_by, self.divide_by, strict=True)]


def standard(scaler: Any, layout: Layout, hints: dict[int, list[Any]]) -> _ShiftThenDivide:
    _numbers(layout, "StandardScaler")
    _hint_spread(layout, hints, scaler.mean_, scaler.scale_)
    return _ShiftThenDivide(
        layout, scaler.mean_ if scaler.with_mean else None, scaler.scale_ if scaler.with_std else None
    )


def robust(scaler: Any, layout: Layout, hints: dict[int, list[Any]]) -> _ShiftThenDivide:
    _numbers(layout, "RobustScaler")
    if scaler.center_ is not None and scaler.scale_ is not None:
        _hint_spread(layout, hints, scaler.center_, scaler.scale_)
    return _ShiftThenDivide(
        layout,
        scaler.center_ if scaler.with_centering else None,
        scaler.scale_ if scaler.with_scaling else None,
    )


class MinMax:
    def __init__(self, scaler: Any, layout: Layout, hints: dict[int, list[Any]]) -> None:
        _numbers(layout, "MinMaxScaler")
        self.scale, self.min = scaler.scale_, scaler.min_
        self.clip = (float(scaler.feature_range[0]), float(scaler.feature_range[1])) if scaler.clip else None
        self.pairs = list(zip(self.scale.tolist(), self.min.tolist(), strict=True))
        _hint_spread(layout, hints, scaler.data_min_, scaler.data_range_)
        _hint_spread(layout, hints, scaler.data_max_, scaler.data_range_)
        self.layout = unbounded(layout)

    def __call__(self, block: Block) -> Block | None:
        x = block.numbers * self.scale
        x += self.min
        if self.clip is not None:
            np.clip(x, self.clip[0], self.clip[1], out=x)
        return numbers_only(x)

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        out = [v * s + m for v, (s, m) in zip(values, self.pairs, strict=True)]
        if self.clip is not None:
            low, high = self.clip
            out = [low if v < low else high if v > high else v for v in out]  # NaN stays, as np.clip keeps it
        return out


class Identity:
    """FunctionTransformer() with no function and no validation: the input, unchanged."""

    def __init__(self, transformer: Any, layout: Layout, hints: dict[int, list[Any]]) -> None:
        if transformer.func is not None or transformer.validate or transformer.kw_args:
            raise _Uncovered("FunctionTransformer with a function or validation")
        self.layout = layout

    def __call__(self, block: Block) -> Block | None:
        return block

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        return values


class Imputer:
    def __init__(self, imputer: Any, layout: Layout, hints: dict[int, list[Any]]) -> None:
        if imputer.add_indicator:
            raise _Uncovered("SimpleImputer(add_indicator=True)")
        kinds = {c.kind for c in layout}
        if len(kinds) != 1:
            raise _Uncovered("SimpleImputer over text and number columns together")
        self.text = kinds == {Kind.TEXT}
        if imputer._fit_dtype.kind not in ("O" if self.text else "iuf"):
            raise _Uncovered(f"SimpleImputer fitted on {imputer._fit_dtype} data")
        self.missing = imputer.missing_values
        self.nan_missing = is_nan(self.missing)
        if not self.text and not isinstance(self.missing, (int, float)):
            raise _Uncovered("SimpleImputer with a non-numeric missing_values on numbers")
        statistics = imputer.statistics_
        keep = np.ones(len(statistics), dtype=bool)
        if not imputer.keep_empty_features:
            keep = np.array([not is_nan(s) for s in statistics.tolist()], dtype=bool)
        self.keep = None if keep.all() else np.flatnonzero(keep)
        self.fill = statistics[keep] if self.text else statistics[keep].astype(np.float64)
        # NaN as the one NAN object in text columns, which the encoders' dicts find by identity.
        self.fill_list = [NAN if is_nan(f) else f for f in self.fill.tolist()]
        self.keep_list = None if self.keep is None else self.keep.tolist()
        self.layout: Layout = tuple(Column(c.kind, c.source) for c, k in zip(layout, keep, strict=True) if k)

    def __call__(self, block: Block) -> Block | None:
        if self.text:
            return self._texts(block)
        x = block.numbers
        if self.nan_missing:
            mask = np.isnan(x)
        elif np.isnan(x).any():
            return None  # the library refuses NaN when something else marks a missing value
        else:
            mask = x == self.missing
        if self.keep is not None:
            x, mask = x[:, self.keep], mask[:, self.keep]
        x = np.where(mask, self.fill, x)
        return numbers_only(x)

    def _texts(self, block: Block) -> Block | None:
        columns = block.texts if self.keep is None else [block.texts[i] for i in self.keep]
        filled = [
            [f if self._missing(v) else v for v in column] for column, f in zip(columns, self.fill_list, strict=True)
        ]
        return Block(block.numbers[:, :0], list(filled))

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        if not self.text and not self.nan_missing and any(is_nan(v) for v in values):
            return None  # the library refuses NaN when something else marks a missing value
        if self.keep_list is not None:
            values = [values[i] for i in self.keep_list]
        return [f if self._missing(v) else v for v, f in zip(values, self.fill_list, strict=True)]

    def _missing(self, value: Any) -> bool:
        if self.nan_missing:
            return is_nan(value)
        if self.missing is None:
            return value is None
        return bool(value == self.missing)


def _listed(values: Array | None, width: int, neutral: float) -> list[float]:
    return [neutral] * width if values is None else np.asarray(values, dtype=np.float64).tolist()


def _hint_spread(layout: Layout, hints: dict[int, list[Any]], center: Array, spread: Array) -> None:
    """Probe values for the request's number columns: around the training data, and far out."""
    for column, c, s in zip(layout, np.asarray(center).tolist(), np.asarray(spread).tolist(), strict=True):
        if column.source is not None:
            hints.setdefault(column.source, []).extend([c, c - 2 * s, c + 3 * s, c + 1e6 * (s or 1.0)])
