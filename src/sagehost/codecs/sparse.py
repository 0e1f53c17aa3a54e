"""The content types SageMaker's built-in XGBoost container takes besides CSV: `text/libsvm`
and `application/x-recordio-protobuf`, so its clients work unchanged against sagehost.

Sparse rows become dense rows with NaN where a feature is absent: XGBoost treats NaN as
missing, exactly as it treats an absent entry of a sparse matrix. The table is marked sparse,
so the schema widens it to the model's feature count.
https://docs.aws.amazon.com/sagemaker/latest/dg/xgboost.html#InputOutput-XGBoost
https://docs.aws.amazon.com/sagemaker/latest/dg/cdf-inference.html
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from sagehost.errors import InvalidPayload
from sagehost.predictor import Shape, Table

_MAX_WIDTH = 1_000_000  # refuse an index that would allocate gigabytes for one row


def decode_libsvm(body: bytes) -> Table:
    """`[label] index:value index:value …` per line; indices are column numbers as written."""
    entries: list[list[tuple[int, float]]] = []
    for number, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if ":" not in tokens[0]:
            tokens = tokens[1:]  # the label, which scoring ignores
        try:
            entries.append([(int(i), float(v)) for i, v in (t.split(":", 1) for t in tokens)])
        except ValueError:
            raise InvalidPayload(f"libsvm line {number} is not 'label index:value …'.") from None
    return _dense(entries)


def _dense(entries: list[list[tuple[int, float]]]) -> Table:
    width = 1 + max((i for row in entries for i, _ in row), default=-1)
    if width > _MAX_WIDTH or any(i < 0 for row in entries for i, _ in row):
        raise InvalidPayload(f"Feature indices must be between 0 and {_MAX_WIDTH - 1}.")
    rows = np.full((len(entries), max(width, 1)), np.nan)
    for r, row in enumerate(entries):
        for i, value in row:
            rows[r, i] = value
    return Table(rows, None, Shape.ROWS, sparse=True)


# ---- RecordIO-wrapped protobuf (aialgs.data.Record), decoded by hand: no protobuf runtime ----

_RECORDIO_MAGIC = 0xCED7230A
_FEATURES, _MAP_KEY, _MAP_VALUE = 1, 1, 2
_FLOAT32_TENSOR, _FLOAT64_TENSOR, _INT32_TENSOR = 2, 3, 7
_TENSOR_VALUES, _TENSOR_KEYS, _TENSOR_SHAPE = 1, 2, 3


def decode_recordio_protobuf(body: bytes) -> Table:
    """Each record's `features["values"]` tensor is one row (dense, or sparse with keys)."""
    entries: list[list[tuple[int, float]]] = []
    try:
        for record in _recordio(body):
            entries.append(_record_row(record))
    except (IndexError, struct.error, ValueError, UnicodeDecodeError):
        raise InvalidPayload("The body is not valid RecordIO-protobuf (aialgs.data.Record).") from None
    return _dense(entries)


def _recordio(body: bytes) -> list[bytes]:
    records, offset = [], 0
    while offset < len(body):
        magic, header = struct.unpack_from("<II", body, offset)
        if magic != _RECORDIO_MAGIC:
            raise ValueError("bad magic")
        length = header & ((1 << 29) - 1)  # the top 3 bits flag multi-part records
        start = offset + 8
        if start + length > len(body):
            raise ValueError("truncated record")
        records.append(body[start : start + length])
        offset = start + ((length + 3) & ~3)  # records are padded to 4 bytes
    return records


def _record_row(record: bytes) -> list[tuple[int, float]]:
    for field, value in _fields(record):
        if field != _FEATURES:
            continue
        entry = dict(_fields(value))
        if entry.get(_MAP_KEY) == b"values":
            return _tensor_row(entry.get(_MAP_VALUE, b""))
    raise ValueError("no features['values']")


def _tensor_row(value: bytes) -> list[tuple[int, float]]:
    for kind, tensor in _fields(value):
        fmt = {_FLOAT32_TENSOR: "f", _FLOAT64_TENSOR: "d", _INT32_TENSOR: "i"}.get(kind)
        if fmt is None:
            continue
        values: list[float] = []
        keys: list[int] = []
        for field, data in _fields(tensor):
            if field == _TENSOR_VALUES:
                values.extend(_packed(data, fmt))
            elif field == _TENSOR_KEYS:
                keys.extend(_varints(data))
        return list(zip(keys, values, strict=True)) if keys else list(enumerate(values))
    raise ValueError("no tensor")


def _fields(message: bytes) -> list[tuple[int, Any]]:
    """(field number, bytes or int) for each field of a protobuf message."""
    out: list[tuple[int, Any]] = []
    offset = 0
    while offset < len(message):
        tag, offset = _varint(message, offset)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, offset = _varint(message, offset)
            out.append((field, value))
        elif wire == 2:
            length, offset = _varint(message, offset)
            out.append((field, message[offset : offset + length]))
            offset += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            out.append((field, message[offset : offset + size]))
            offset += size
        else:
            raise ValueError("unsupported wire type")
    return out


def _packed(data: Any, fmt: str) -> list[float]:
    if isinstance(data, int):  # a lone unpacked int32
        return [float(data)]
    if fmt == "i":
        return [float(v - (1 << 64) if v >= 1 << 63 else v) for v in _varints(data)]
    size = struct.calcsize(fmt)
    return list(struct.unpack(f"<{len(data) // size}{fmt}", data))


def _varints(data: Any) -> list[int]:
    if isinstance(data, int):
        return [data]
    out, offset = [], 0
    while offset < len(data):
        value, offset = _varint(data, offset)
        out.append(value)
    return out


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, offset
        shift += 7
