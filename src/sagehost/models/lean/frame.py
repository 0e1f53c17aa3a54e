"""A batch as the lean pipeline steps see it: numbers in one float matrix, text in columns.

Each step's column layout (which column is text, which is a number) is fixed when the pipeline
compiles, so at run time a block is only the two containers; the layout lives with the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

NAN = float("nan")
"""The one missing-value object the lean steps use in text columns: dict lookups find it by
identity, as scikit-learn's `_nandict` finds any NaN."""


def is_nan(value: Any) -> bool:
    """NaN as scikit-learn's `is_scalar_nan` sees it in an object column (any float NaN)."""
    return isinstance(value, float) and math.isnan(value)


class Kind(Enum):
    NUMBER = "number"  # float64, NaN for missing
    TEXT = "text"  # str, None or NAN


@dataclass(frozen=True, slots=True)
class Column:
    kind: Kind
    source: int | None  # the request's column it came from unchanged, for probe rows
    bounded: bool = False  # always 0.0 or 1.0 (one-hot): never NaN, infinite or huge


def unbounded(layout: tuple[Column, ...]) -> tuple[Column, ...]:
    """The layout of a step that computes new numbers from its input, column for column."""
    return tuple(Column(c.kind, c.source) for c in layout)


Layout = tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Block:
    numbers: Array  # (rows, number columns of the layout), in layout order
    texts: list[Sequence[Any]]  # one sequence per text column of the layout, in layout order

    @property
    def rows(self) -> int:
        return int(self.numbers.shape[0])

    def rows_between(self, start: int, stop: int) -> Block:
        return Block(self.numbers[start:stop], [column[start:stop] for column in self.texts])


def numbers_only(x: Array) -> Block:
    return Block(x, [])


class _Uncovered(Exception):
    """A step, or a setting of one, the lean path does not reproduce."""


def positions(layout: Layout) -> list[tuple[Kind, int]]:
    """Each layout column's place: its kind and its index among the columns of that kind."""
    seen = {Kind.NUMBER: 0, Kind.TEXT: 0}
    places = []
    for column in layout:
        places.append((column.kind, seen[column.kind]))
        seen[column.kind] += 1
    return places


class Selector:
    """Columns by index out of a block, decided once at compile time."""

    def __init__(self, layout: Layout, indices: Sequence[int]) -> None:
        places = positions(layout)
        chosen = [places[i] for i in indices]
        self.numbers = [p for kind, p in chosen if kind is Kind.NUMBER]
        self.texts = [p for kind, p in chosen if kind is Kind.TEXT]
        n_numbers = sum(1 for c in layout if c.kind is Kind.NUMBER)
        self.all_numbers = self.numbers == list(range(n_numbers))
        self.layout: Layout = tuple(layout[i] for i in indices)

    def __call__(self, block: Block) -> Block:
        numbers = block.numbers if self.all_numbers else block.numbers[:, self.numbers]
        return Block(numbers, [block.texts[p] for p in self.texts])


def from_values(values: Any, layout: Layout, *, pandas_text: bool = True) -> Block | None:
    """The request's conformed rows (schema.conform) as a block; None for what the library must
    judge (infinite numbers, which every covered step's validation refuses). `pandas_text`: the
    library is handed a DataFrame, so text columns follow pandas' rule for None."""
    if isinstance(values, np.ndarray):
        if any(c.kind is Kind.TEXT for c in layout) or values.ndim != 2 or values.dtype != np.float64:
            return None
        numbers = values
        texts: list[Sequence[Any]] = []
    else:
        columns = list(zip(*values, strict=True))  # one transpose, in C
        try:
            numbers = np.array([columns[i] for i, c in enumerate(layout) if c.kind is Kind.NUMBER], dtype=np.float64)
        except (TypeError, ValueError):
            return None
        numbers = numbers.reshape(-1, len(values)).T
        texts = [columns[i] for i, c in enumerate(layout) if c.kind is Kind.TEXT]
        if pandas_text:
            texts = [_as_pandas_does(column) for column in texts]
    if np.isinf(numbers).any():
        return None
    return Block(numbers, texts)


def _as_pandas_does(column: Sequence[Any]) -> Sequence[Any]:
    """A text column as the DataFrame path hands it to scikit-learn: pandas makes a column with any
    string a string column, where None becomes NaN; a column of None alone stays None."""
    if None not in column:
        return column
    if all(v is None for v in column):
        return column
    return [NAN if v is None else v for v in column]
