"""OneHotEncoder and OrdinalEncoder as table lookups, with scikit-learn's matching rules.

scikit-learn matches text (object) columns with Python sets and dicts — `_check_unknown` and
`_map_to_integer` in sklearn/utils/_encode.py — and number columns with `np.searchsorted` against
the sorted categories, NaN last. Every setting that changes an answer (unknown handling, `drop`,
infrequent grouping, the missing-value code) is folded into one table per input column when the
model loads: category -> output column (one-hot) or code (ordinal).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
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
    positions,
)

NO_COLUMN = -1  # one-hot: the value sets no output column
REFUSED = -2  # handle_unknown="error": the library raises, so the lean path declines the batch


class Lookup:
    """One input column: value -> code, for text (dict) or number (sorted array) columns."""

    def __init__(self, column: Column, categories: Array, codes: Sequence[Any], unknown: Any) -> None:
        self.unknown = unknown
        if column.kind is Kind.TEXT:
            self.table = {(NAN if is_nan(c) else c): code for c, code in zip(categories.tolist(), codes, strict=True)}
            self.nan_one = self.table.get(NAN, unknown)
            return
        values = _as_numbers(categories)
        nan = np.isnan(values)
        self.sorted = values[~nan]
        self.table = {v: code for v, code, missing in zip(values.tolist(), codes, nan, strict=True) if not missing}
        self.nan_one = next((code for code, missing in zip(codes, nan, strict=True) if missing), unknown)
        table = np.asarray(list(codes), dtype=np.float64)
        self.nan_code = table[nan][0] if nan.any() else unknown
        self.codes = np.append(table[~nan], float(unknown))  # position len() = not found

    def one(self, value: Any) -> Any:
        """One cell's code. A dict matches numbers as searchsorted does (1 == 1.0, -0.0 == 0.0)
        and text as scikit-learn's own dict does; any NaN is the NaN category."""
        return self.table.get(value, self.unknown) if value == value else self.nan_one  # noqa: PLR0124

    def text(self, values: Sequence[Any]) -> list[Any]:
        """Codes for a text column: its only NaN is the NAN object (frame, Imputer), found by identity."""
        return list(map(self.table.get, values, repeat(self.unknown)))

    def numbers(self, x: Array) -> Array:
        if not len(self.sorted):
            found = np.full(len(x), len(self.sorted))
        else:
            at = np.minimum(np.searchsorted(self.sorted, x), len(self.sorted) - 1)
            found = np.where(self.sorted[at] == x, at, len(self.sorted))
        codes: Array = self.codes[found]
        return np.where(np.isnan(x), self.nan_code, codes)


def _as_numbers(categories: Array) -> Array:
    """A number column's categories as floats: a numeric array, or an object array of numbers
    (fitted on an object array), whose items match by equality as floats do."""
    numeric = categories.dtype.kind in "iuf"
    if not numeric and categories.dtype.kind == "O":
        numeric = all(_is_number(c) for c in categories.tolist())
    if not numeric:
        raise _Uncovered("a number column's encoder holds non-numeric categories")
    return categories.astype(np.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_dtype(encoder: Any) -> None:
    # Another output dtype would change what the next step computes in (float32 arithmetic).
    if np.dtype(encoder.dtype) != np.float64:
        raise _Uncovered(f"{type(encoder).__name__}(dtype={np.dtype(encoder.dtype)})")


def _grouped(encoder: Any, i: int, raw: int) -> int:
    """A category's index after infrequent categories are grouped into one."""
    mappings = getattr(encoder, "_default_to_infrequent_mappings", None)
    if getattr(encoder, "_infrequent_enabled", False) and mappings and mappings[i] is not None:
        return int(mappings[i][raw])
    return raw


def _infrequent_raw(encoder: Any, i: int) -> int | None:
    indices = getattr(encoder, "_infrequent_indices", None)
    if getattr(encoder, "_infrequent_enabled", False) and indices and indices[i] is not None:
        return int(indices[i][0])
    return None


class OneHot:
    def __init__(self, encoder: Any, layout: Layout, hints: dict[int, list[Any]]) -> None:
        _check_dtype(encoder)
        if encoder.handle_unknown not in ("error", "ignore", "infrequent_if_exist", "warn"):
            raise _Uncovered(f"OneHotEncoder(handle_unknown={encoder.handle_unknown!r})")
        self.width = int(sum(encoder._n_features_outs))
        offsets = np.cumsum([0, *encoder._n_features_outs])
        self.places = positions(layout)
        self.lookups = []
        for i, (column, categories) in enumerate(zip(layout, encoder.categories_, strict=True)):
            codes = [self._out(encoder, i, raw, int(offsets[i])) for raw in range(len(categories))]
            self.lookups.append(Lookup(column, categories, codes, self._unknown(encoder, i, int(offsets[i]))))
            if column.source is not None:
                hints.setdefault(column.source, []).extend(categories.tolist())
        self.layout: Layout = tuple(Column(Kind.NUMBER, None, bounded=True) for _ in range(self.width))
        self.cells = [(lookup.table.get, lookup.unknown, lookup.nan_one) for lookup in self.lookups]

    @staticmethod
    def _out(encoder: Any, i: int, raw: int, offset: int) -> int:
        grouped = _grouped(encoder, i, raw)
        drops = encoder._drop_idx_after_grouping
        drop = None if drops is None else drops[i]
        if drop is not None:
            if grouped == drop:
                return NO_COLUMN
            if grouped > drop:
                grouped -= 1
        return offset + grouped

    def _unknown(self, encoder: Any, i: int, offset: int) -> int:
        if encoder.handle_unknown == "error":
            return REFUSED
        infrequent = _infrequent_raw(encoder, i)
        if infrequent is not None and encoder.handle_unknown in ("infrequent_if_exist", "warn"):
            return self._out(encoder, i, infrequent, offset)
        return NO_COLUMN

    def __call__(self, block: Block) -> Block | None:
        n = block.rows
        codes = np.empty((len(self.lookups), n), dtype=np.intp)
        for j, (lookup, (kind, p)) in enumerate(zip(self.lookups, self.places, strict=True)):
            codes[j] = lookup.text(block.texts[p]) if kind is Kind.TEXT else lookup.numbers(block.numbers[:, p])
        if (codes == REFUSED).any():
            return None
        hit = codes >= 0
        out = np.zeros((n, self.width))
        out[np.broadcast_to(np.arange(n), codes.shape)[hit], codes[hit]] = 1.0
        return numbers_only(out)

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        hot = self.ones(values, 0)
        if hot is None:
            return None
        out = [0.0] * self.width
        for column in hot:
            out[column] = 1.0
        return out

    def text_tables(self, offset: int, spare: int) -> tuple[list[dict[Any, int]], list[int]] | None:
        """For text columns only: per column, value -> output column counted from `offset` (`spare`,
        a column past the output, for none; REFUSED for an error), and the code of an unknown
        value; None if a column holds numbers."""
        if any(kind is not Kind.TEXT for kind, _ in self.places):
            return None

        def shifted(code: int) -> int:
            return code + offset if code >= 0 else spare if code == NO_COLUMN else code

        tables = [{value: shifted(code) for value, code in lookup.table.items()} for lookup in self.lookups]
        return tables, [shifted(lookup.unknown) for lookup in self.lookups]

    def ones(self, values: Sequence[Any], offset: int) -> list[int] | None:
        """One row's output as the columns (from `offset`) that hold 1.0; all others hold 0.0."""
        hot = []
        for (get, unknown, nan_code), value in zip(self.cells, values, strict=True):
            code = get(value, unknown) if value == value else nan_code  # noqa: PLR0124 - NaN
            if code >= 0:
                hot.append(offset + code)
            elif code == REFUSED:
                return None
        return hot


class Ordinal:
    def __init__(self, encoder: Any, layout: Layout, hints: dict[int, list[Any]]) -> None:
        _check_dtype(encoder)
        if encoder.handle_unknown not in ("error", "use_encoded_value"):
            raise _Uncovered(f"OrdinalEncoder(handle_unknown={encoder.handle_unknown!r})")
        missing = getattr(encoder, "_missing_indices", {}) or {}
        unknown = float(encoder.unknown_value) if encoder.handle_unknown == "use_encoded_value" else None
        self.places = positions(layout)
        self.lookups = []
        for i, (column, categories) in enumerate(zip(layout, encoder.categories_, strict=True)):
            codes = [
                float(encoder.encoded_missing_value) if missing.get(i) == raw else float(_grouped(encoder, i, raw))
                for raw in range(len(categories))
            ]
            if column.kind is Kind.NUMBER and unknown is None:
                raise _Uncovered("OrdinalEncoder(handle_unknown='error') on a number column")
            self.lookups.append(Lookup(column, categories, codes, unknown))
            if column.source is not None:
                hints.setdefault(column.source, []).extend(categories.tolist())
        self.layout: Layout = tuple(Column(Kind.NUMBER, None) for _ in layout)

    def __call__(self, block: Block) -> Block | None:
        out = np.empty((block.rows, len(self.lookups)))
        for j, (lookup, (kind, p)) in enumerate(zip(self.lookups, self.places, strict=True)):
            if kind is Kind.TEXT:
                codes = lookup.text(block.texts[p])
                if None in codes:
                    return None  # an unknown category, and handle_unknown="error"
                out[:, j] = codes
            else:
                out[:, j] = lookup.numbers(block.numbers[:, p])
        return numbers_only(out)

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        codes = [lookup.one(value) for lookup, value in zip(self.lookups, values, strict=True)]
        return None if None in codes else codes
