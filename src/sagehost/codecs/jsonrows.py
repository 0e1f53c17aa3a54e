"""JSON and JSON lines bodies -> Table, in every row layout the AWS, MLflow and TF-Serving
clients send. orjson parses; this module only checks the layout and names the columns.

A body nested deeper than `limits.MAX_DEPTH` is refused before it is parsed, and records that
leave fields out (each one missing field becomes a cell) are checked against the body's value
budget before their rows are built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from sagehost.codecs import limits
from sagehost.errors import InvalidPayload
from sagehost.predictor import Shape, Table

MISSING: Any = None  # a named field a record left out; the schema reports it if the model needs it


def decode_json(body: bytes, width: int | None = None) -> Table:
    if body.count(b"[") + body.count(b"{") > limits.MAX_DEPTH:  # fewer cannot nest deeper: the hot path
        _check_depth(body)
    return json_value_to_table(_loads(body), len(body))


def decode_jsonlines(body: bytes, width: int | None = None) -> Table:
    if body.count(b"[") + body.count(b"{") > limits.MAX_DEPTH:
        _check_depth(body)
    values = [_loads(line) for line in body.splitlines() if line.strip()]
    if all(isinstance(v, dict) for v in values):
        return _records(values, Shape.ROWS, len(body))
    rows: list[list[Any]] = []
    for value in values:
        table = json_value_to_table(value, len(body))
        if table.columns is not None:
            raise InvalidPayload("JSON lines must all be objects or all be rows, not a mix.")
        rows.extend(table.rows)
    return Table(rows, None, Shape.ROWS)


def json_value_to_table(value: Any, body_length: int) -> Table:
    """`body_length` sets how many cells the table may hold (limits.max_values)."""
    if isinstance(value, list):
        return _from_list(value, Shape.ROWS, body_length)
    if isinstance(value, dict):
        return _from_object(value, body_length)
    raise InvalidPayload("A JSON body must be a list of rows, one row, or an object; got a single value.")


def _from_object(obj: dict[str, Any], body_length: int) -> Table:
    if "dataframe_split" in obj:
        return _split(obj["dataframe_split"], Shape.WRAPPED)
    if "dataframe_records" in obj:
        return _records(obj["dataframe_records"], Shape.WRAPPED, body_length)
    for key in ("instances", "inputs"):
        if key in obj:
            return _tensor_style(obj[key], body_length)
    if "data" in obj and len(obj) <= 2:
        inner = obj["data"]
        if isinstance(inner, dict):
            return _from_object(inner, body_length)
        if "columns" in obj:
            return _split(obj, Shape.ROWS)
        if isinstance(inner, list):
            return _from_list(inner, Shape.ROWS, body_length)
    if "columns" in obj and "data" in obj:
        return _split(obj, Shape.ROWS)
    if obj and all(isinstance(v, list) for v in obj.values()):
        return _columnar(obj, Shape.ROWS)
    return _records([obj], Shape.RECORD, body_length)


def _from_list(items: list[Any], shape: Shape, body_length: int) -> Table:
    if not items:
        return Table([], None, shape)
    first = items[0]
    if isinstance(first, dict):
        return _records(items, Shape.RECORDS if shape is Shape.ROWS else shape, body_length)
    if isinstance(first, list):
        if not all(isinstance(row, list) for row in items):
            raise InvalidPayload("Every row must be a list when the first one is.")
        return Table(items, None, shape)
    if any(isinstance(v, (list, dict)) for v in items):
        raise InvalidPayload("A row mixes plain values with lists or objects.")
    return Table([items], None, Shape.ROW if shape is Shape.ROWS else shape)


def _tensor_style(value: Any, body_length: int) -> Table:
    # TF-Serving: {"instances": [...]} (row or column format) and {"inputs": ...}.
    if isinstance(value, dict):
        return _columnar(value, Shape.WRAPPED)
    if isinstance(value, list):
        return _from_list(value, Shape.WRAPPED, body_length)
    raise InvalidPayload("'instances'/'inputs' must hold a list of rows or an object of columns.")


def _split(value: Any, shape: Shape) -> Table:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InvalidPayload("'dataframe_split' must be an object with 'columns' and 'data' lists.")
    columns = value.get("columns")
    data = value["data"]
    if data and not isinstance(data[0], list):
        data = [data]
    if not all(isinstance(row, list) for row in data):
        raise InvalidPayload("Every row of 'data' must be a list when the first one is.")
    if columns is None:
        return Table(data, None, shape)
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidPayload("'columns' must be a list of column names.")
    return Table(data, tuple(columns), shape)


def _records(items: Any, shape: Shape, body_length: int) -> Table:
    if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
        raise InvalidPayload("Records must be a list of objects of named fields.")
    columns: dict[str, None] = {}
    for record in items:
        for key in record:
            columns.setdefault(key, None)
    names = tuple(columns)
    # Each record gets a cell for every name any record used: 10,000 records with a field each,
    # all different, would make 100,000,000 cells from 150 KB.
    cells = len(items) * len(names)
    if cells > limits.FLOOR_VALUES and cells > limits.max_values(body_length):
        raise InvalidPayload(
            f"The records name {len(names):,} different fields across {len(items):,} records; "
            f"as rows that is more than the {limits.max_values(body_length):,} values this body may decode to. "
            "Send records with the same fields."
        )
    for record in items:
        for value in record.values():
            if isinstance(value, (list, dict)):
                raise InvalidPayload("A field's value must be a single number or string, not a list or object.")
    return Table([[r.get(name, MISSING) for name in names] for r in items], names, shape)


def _columnar(obj: dict[str, Any], shape: Shape) -> Table:
    names = tuple(obj)
    columns = list(obj.values())
    if not all(isinstance(c, list) for c in columns):
        raise InvalidPayload("An object of columns must map every name to a list of values.")
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise InvalidPayload("Every column must hold the same number of values.")
    return Table([list(row) for row in zip(*columns, strict=True)], names, shape)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"The body is not valid JSON (line {exc.lineno}, column {exc.colno}).") from None


# ---- nesting depth, measured on the bytes: C-speed passes, numpy only for odd bodies ----

_BRACKETS = bytes.maketrans(b"{}", b"[]")  # for depth, an object is a list
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'[]{}"'))
_QUICK_PASSES = 8  # typical bodies are 2 to 4 levels deep


def _check_depth(body: bytes) -> None:
    if _depth(body) > limits.MAX_DEPTH:
        raise InvalidPayload(
            f"The JSON is nested more than {limits.MAX_DEPTH} levels deep; requests are rows of values, "
            "a few levels at most."
        )


def _depth(body: bytes) -> int:
    """The deepest nesting of [] and {} outside strings (for valid JSON; any answer for invalid,
    which orjson then refuses)."""
    if b'"' in body:  # escaped quotes and backslashes would confuse where strings end
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Only brackets and quotes are left; empty strings, and strings without brackets, vanish.
    shape = body.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    peeled = 0
    if b'"' not in shape:
        # Each pass removes the innermost level: every "[]" left is a leaf.
        while shape and peeled < _QUICK_PASSES:
            inner = shape.replace(b"[]", b"")
            if len(inner) == len(shape):
                return peeled  # unbalanced: not JSON
            shape, peeled = inner, peeled + 1
        if not shape:
            return peeled
    return peeled + _depth_by_sum(shape)


def _depth_by_sum(shape: bytes) -> int:
    chars = np.frombuffer(shape, dtype=np.uint8)
    step = (chars == ord("[")).astype(np.int32) - (chars == ord("]"))
    in_string = np.cumsum(chars == ord('"'), dtype=np.int32) & 1 == 1
    step[in_string] = 0
    return int(np.cumsum(step).max(initial=0))
