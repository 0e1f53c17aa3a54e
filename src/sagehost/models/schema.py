"""Table -> Rows: put a request's rows in the model's column order and types.

This runs per request, so a bad request fails alone with a 400 that names the field or
column at fault, never the value (values are the user's data).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from sagehost.errors import EmptyPayload, SchemaMismatch
from sagehost.predictor import ColumnKind, ModelSpec, Rows, Table

_MISSING_TEXT = frozenset({"", "na", "nan", "null", "none"})


def conform(table: Table, spec: ModelSpec) -> Rows:
    if table.sparse:
        table = _widen(table, spec)
    table = strip_header(table, spec)
    rows, names = _ordered(table, spec)
    if spec.numeric:
        return Rows(_numeric(rows, names))
    return Rows(_mixed(rows, names, spec))


def conform_chunks(tables: Iterable[Table], spec: ModelSpec) -> Rows:
    """Consecutive tables of one body (codecs.csv_chunks), for an all-numeric model: each becomes
    float64 before the next is read, so the body's cells never all exist as Python objects. A
    header row, if the first table starts with one, names the columns of every table."""
    parts: list[np.ndarray[Any, Any]] = []
    columns: tuple[str, ...] | None = None
    for number, chunk in enumerate(_first_two_rows_together(iter(tables))):
        if number == 0:
            table = strip_header(chunk, spec)
            columns = table.columns
        else:
            table = chunk if columns is None else type(chunk)(chunk.rows, columns, chunk.shape)
        if len(table) == 0:
            continue  # a first chunk that held only the header
        array = _numeric(*_ordered(table, spec))
        if parts and array.shape[1] != parts[0].shape[1]:
            widths = {parts[0].shape[1], array.shape[1]}
            raise SchemaMismatch(f"Rows have different numbers of values ({_span(widths)}); each row needs the same.")
        parts.append(array)
        del chunk, table  # before the next chunk is made, not after
    if not parts:
        raise EmptyPayload("The request holds a header row and no rows of values: send at least one.")
    return Rows(parts[0] if len(parts) == 1 else np.concatenate(parts))


def _first_two_rows_together(tables: Iterator[Table]) -> Iterator[Table]:
    """Header detection may look at the row after the header: keep it in the first table."""
    first = next(tables, None)
    if first is None:
        return
    if len(first) < 2:
        second = next(tables, None)
        if second is not None:
            first = type(first)([*first.rows, *second.rows], None, first.shape)
    yield first
    del first  # not kept alive while the rest are read
    yield from tables


def _widen(table: Table, spec: ModelSpec) -> Table:
    """Sparse rows end at their last present feature; the rest are missing (NaN)."""
    rows = np.asarray(table.rows, dtype=np.float64)
    expected = spec.n_features
    if expected is None or rows.shape[1] >= expected:
        return type(table)(rows, None, table.shape)
    padding = np.full((rows.shape[0], expected - rows.shape[1]), np.nan)
    return type(table)(np.hstack([rows, padding]), None, table.shape)


def strip_header(table: Table, spec: ModelSpec) -> Table:
    """A CSV header row maps columns by name; it is recognised, never required."""
    rows = table.rows
    if table.columns is not None or isinstance(rows, np.ndarray) or not rows:
        return table
    first = rows[0]
    if not first or not all(isinstance(cell, str) and not _is_number(cell) for cell in first):
        return table
    cells = [cell.strip() for cell in first]
    if spec.feature_names is not None:
        is_header = bool(set(cells) & set(spec.feature_names))
    else:
        is_header = any(_is_number(cell) for row in rows[1:2] for cell in row)
    if not is_header:
        return table
    return type(table)(rows[1:], tuple(cells), table.shape)


def _ordered(table: Table, spec: ModelSpec) -> tuple[Any, tuple[str, ...] | None]:
    """Rows in the model's column order, and the names of those columns when known."""
    rows = table.rows
    if table.columns is not None:
        _check_named_width(rows, len(table.columns))
    if table.columns is not None and spec.feature_names is not None:
        position = {name: i for i, name in enumerate(table.columns)}
        missing = [name for name in spec.feature_names if name not in position]
        if missing:
            raise SchemaMismatch(
                f"Missing field(s) {_names(missing)}. The model expects: {_names(spec.feature_names)}."
            )
        index = [position[name] for name in spec.feature_names]
        if index != list(range(len(table.columns))):
            rows = [[row[i] for i in index] for row in rows]
        return rows, spec.feature_names
    width = len(table.columns) if table.columns is not None else None
    _check_width(rows, spec, width)
    return rows, spec.feature_names or table.columns


def _check_width(rows: Any, spec: ModelSpec, width: int | None) -> None:
    expected = spec.n_features
    widths = {rows.shape[1]} if isinstance(rows, np.ndarray) else {len(row) for row in rows}
    if len(widths) > 1:
        raise SchemaMismatch(f"Rows have different numbers of values ({_span(widths)}); each row needs the same.")
    got = width if width is not None else next(iter(widths))
    if expected is not None and got != expected:
        raise SchemaMismatch(f"Expected {expected} values per row, got {got}.")


def _check_named_width(rows: Any, width: int) -> None:
    """Named columns (a header row, `dataframe_split`) need one value per name in every row."""
    widths = {rows.shape[1]} if isinstance(rows, np.ndarray) else set(map(len, rows))
    if not widths:
        raise EmptyPayload("The request holds a header row and no rows of values: send at least one.")
    if widths != {width}:
        held = _span(widths) if len(widths) > 1 else str(next(iter(widths)))
        raise SchemaMismatch(f"{width} columns are named, but rows hold {held} values; each row needs one per name.")


def _numeric(rows: Any, names: tuple[str, ...] | None) -> np.ndarray[Any, Any]:
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):
        array = np.array([[_to_float(cell, i, names) for i, cell in enumerate(row)] for row in rows])
    if array.ndim != 2:
        raise SchemaMismatch("Each row must be a flat list of values.")
    return array


def _mixed(rows: Any, names: tuple[str, ...] | None, spec: ModelSpec) -> list[list[Any]]:
    kinds = spec.kinds or ()
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    converted: list[list[Any]] = []
    for row in rows:
        converted.append(
            [
                _to_text(cell) if kind is ColumnKind.TEXT else _to_float(cell, i, names)
                for i, (cell, kind) in enumerate(zip(row, kinds, strict=True))
            ]
        )
    return converted


def _to_float(cell: Any, index: int, names: tuple[str, ...] | None) -> float:
    if cell is None:
        return math.nan
    if isinstance(cell, str):
        text = cell.strip()
        if text.lower() in _MISSING_TEXT:
            return math.nan
        cell = text
    try:
        return float(cell)
    except (ValueError, TypeError):
        where = repr(names[index]) if names and index < len(names) else f"at position {index + 1}"
        raise SchemaMismatch(f"Field {where} must be a number.") from None


def _to_text(cell: Any) -> Any:
    if cell is None or isinstance(cell, str):
        return cell
    if isinstance(cell, (list, dict)):
        raise SchemaMismatch("A text field must hold one value, not a list or object.")
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell)


def _is_number(cell: Any) -> bool:
    try:
        float(cell)
    except (ValueError, TypeError, OverflowError):  # JSON cells may be None, lists or huge integers
        return False
    return True


def _names(names: Any, limit: int = 12) -> str:
    shown = [repr(n) for n in list(names)[:limit]]
    more = len(names) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _span(widths: set[int]) -> str:
    return f"{min(widths)} to {max(widths)}"
