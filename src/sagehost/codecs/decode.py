"""Request body -> Table: cheap, plain rows; never pandas.

Cells stay as the client sent them (CSV cells as strings): converting them to the model's
types is the schema's job (models/schema.py), which knows the model's columns.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from sagehost.codecs import media, sparse
from sagehost.errors import EmptyPayload, InvalidPayload, UnsupportedMediaType
from sagehost.predictor import Shape, Table

MISSING: Any = None  # a named field a record left out; the schema reports it if the model needs it

_NPY_MAGIC = b"\x93NUMPY"


def decode(body: bytes, content_type: str | None) -> Table:
    kind = media.media_type(content_type)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        shown = kind or "(none)"
        raise UnsupportedMediaType(
            f"Content-Type {shown[:100]!r} is not supported. Send one of: {', '.join(sorted(_DECODERS))}."
        )
    if not body.strip():
        raise EmptyPayload("The request body is empty: send at least one row.")
    table = decoder(body)
    if len(table) == 0:
        raise EmptyPayload("The request holds no rows: send at least one row.")
    return table


def decode_json(body: bytes) -> Table:
    return json_value_to_table(_loads(body))


def json_value_to_table(value: Any) -> Table:
    if isinstance(value, list):
        return _from_list(value, Shape.ROWS)
    if isinstance(value, dict):
        return _from_object(value)
    raise InvalidPayload("A JSON body must be a list of rows, one row, or an object; got a single value.")


def _from_object(obj: dict[str, Any]) -> Table:
    if "dataframe_split" in obj:
        return _split(obj["dataframe_split"], Shape.WRAPPED)
    if "dataframe_records" in obj:
        return _records(obj["dataframe_records"], Shape.WRAPPED)
    for key in ("instances", "inputs"):
        if key in obj:
            return _tensor_style(obj[key])
    if "data" in obj and len(obj) <= 2:
        inner = obj["data"]
        if isinstance(inner, dict):
            return _from_object(inner)
        if "columns" in obj:
            return _split(obj, Shape.ROWS)
        if isinstance(inner, list):
            return _from_list(inner, Shape.ROWS)
    if "columns" in obj and "data" in obj:
        return _split(obj, Shape.ROWS)
    if obj and all(isinstance(v, list) for v in obj.values()):
        return _columnar(obj, Shape.ROWS)
    return _records([obj], Shape.RECORD)


def _from_list(items: list[Any], shape: Shape) -> Table:
    if not items:
        return Table([], None, shape)
    first = items[0]
    if isinstance(first, dict):
        return _records(items, Shape.RECORDS if shape is Shape.ROWS else shape)
    if isinstance(first, list):
        if not all(isinstance(row, list) for row in items):
            raise InvalidPayload("Every row must be a list when the first one is.")
        return Table(items, None, shape)
    if any(isinstance(v, (list, dict)) for v in items):
        raise InvalidPayload("A row mixes plain values with lists or objects.")
    return Table([items], None, Shape.ROW if shape is Shape.ROWS else shape)


def _tensor_style(value: Any) -> Table:
    # TF-Serving: {"instances": [...]} (row or column format) and {"inputs": ...}.
    if isinstance(value, dict):
        return _columnar(value, Shape.WRAPPED)
    if isinstance(value, list):
        return _from_list(value, Shape.WRAPPED)
    raise InvalidPayload("'instances'/'inputs' must hold a list of rows or an object of columns.")


def _split(value: Any, shape: Shape) -> Table:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InvalidPayload("'dataframe_split' must be an object with 'columns' and 'data' lists.")
    columns = value.get("columns")
    data = value["data"]
    if data and not isinstance(data[0], list):
        data = [data]
    if columns is None:
        return Table(data, None, shape)
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidPayload("'columns' must be a list of column names.")
    return Table(data, tuple(columns), shape)


def _records(items: Any, shape: Shape) -> Table:
    if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
        raise InvalidPayload("Records must be a list of objects of named fields.")
    columns: dict[str, None] = {}
    for record in items:
        for key in record:
            columns.setdefault(key, None)
    names = tuple(columns)
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


def decode_jsonlines(body: bytes) -> Table:
    values = [_loads(line) for line in body.splitlines() if line.strip()]
    if all(isinstance(v, dict) for v in values):
        return _records(values, Shape.ROWS)
    rows: list[list[Any]] = []
    for value in values:
        table = json_value_to_table(value)
        if table.columns is not None:
            raise InvalidPayload("JSON lines must all be objects or all be rows, not a mix.")
        rows.extend(table.rows)
    return Table(rows, None, Shape.ROWS)


def decode_csv(body: bytes) -> Table:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidPayload("CSV must be UTF-8 text.") from None
    if '"' in text:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    else:
        # The fast path: no quoting, so a split is exact and several times quicker than csv.reader.
        rows = [line.split(",") for line in text.splitlines() if line.strip()]
    return Table(rows, None, Shape.ROWS)


def decode_npy(body: bytes) -> Table:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)  # a pickle in an .npy is code, not data
    except (ValueError, OSError, EOFError):
        raise InvalidPayload("The body is not a valid .npy array (object arrays are refused).") from None
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise InvalidPayload(f"An .npy body must be 1-D (one row) or 2-D (rows); got {array.ndim}-D.")
    return Table(array, None, Shape.ROWS)


def decode_octet(body: bytes) -> Table:
    # The H2O scorer's curl example posts JSON as octet-stream; others post CSV or .npy files.
    if body.startswith(_NPY_MAGIC):
        return decode_npy(body)
    if body.lstrip()[:1] in (b"[", b"{"):
        return decode_json(body)
    return decode_csv(body)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"The body is not valid JSON (line {exc.lineno}, column {exc.colno}).") from None


_DECODERS: dict[str, Callable[[bytes], Table]] = {
    media.JSON: decode_json,
    media.JSONLINES: decode_jsonlines,
    media.CSV: decode_csv,
    media.NPY: decode_npy,
    media.OCTET: decode_octet,
    media.LIBSVM: sparse.decode_libsvm,
    media.RECORDIO: sparse.decode_recordio_protobuf,
}
