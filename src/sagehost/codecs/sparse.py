"""The content types SageMaker's built-in XGBoost container takes besides CSV: `text/libsvm`
and `application/x-recordio-protobuf`, so its clients work unchanged against sagehost.

Sparse rows become dense rows with NaN where a feature is absent: XGBoost treats NaN as
missing, exactly as it treats an absent entry of a sparse matrix. Feature indices are claims:
an index past the model's width is refused, and without a known width the dense table must fit
the body's value budget (codecs/limits.py), checked before it is allocated. Entries are kept
in flat typed arrays until then, 16 bytes each, whatever the rows look like.
https://docs.aws.amazon.com/sagemaker/latest/dg/xgboost.html#InputOutput-XGBoost
https://docs.aws.amazon.com/sagemaker/latest/dg/cdf-inference.html
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np

from sagehost.codecs import limits
from sagehost.errors import InvalidPayload
from sagehost.predictor import Shape, Table

_MAX_INDEX = (1 << 63) - 1  # bigger keys are kept as this, to be refused as past any width


class _Entries:
    """Rows of (index, value) entries, in compressed sparse row form."""

    def __init__(self) -> None:
        self.ends = array("q")  # where each row's entries end
        self.indices = array("q")
        self.values = array("d")

    def end_row(self) -> None:
        self.ends.append(len(self.indices))

    def dense(self, width: int | None, body_length: int, what: str) -> Table:
        rows = len(self.ends)
        indices = np.frombuffer(self.indices, dtype=np.int64)
        if indices.size and int(indices.min()) < 0:
            raise InvalidPayload(f"{what} feature indices must be 0 or more.")
        top = int(indices.max()) if indices.size else -1
        if width is not None and top >= width:
            row = int(np.searchsorted(self.ends, int(np.argmax(indices)), side="right")) + 1
            raise InvalidPayload(
                f"{what} row {row} has feature index {top:,}, past this model's {width:,} features "
                f"(indices 0 to {width - 1:,})."
            )
        columns = width if width is not None else max(top + 1, 1)
        limits.check_values(rows, columns, body_length, what)
        dense = np.full((rows, columns), np.nan)
        starts = np.concatenate(([0], np.frombuffer(self.ends, dtype=np.int64)[:-1]))
        row_of = np.repeat(np.arange(rows), np.frombuffer(self.ends, dtype=np.int64) - starts)
        dense[row_of, indices] = np.frombuffer(self.values, dtype=np.float64)
        return Table(dense, None, Shape.ROWS, sparse=True)


def decode_libsvm(body: bytes, width: int | None = None) -> Table:
    """`[label] index:value index:value …` per line; indices are column numbers as written."""
    entries = _Entries()
    for number, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if ":" not in tokens[0]:
            tokens = tokens[1:]  # the label, which scoring ignores
        try:
            for token in tokens:
                index, value = token.split(":", 1)
                entries.indices.append(int(index))
                entries.values.append(float(value))
        except (ValueError, OverflowError):
            raise InvalidPayload(f"libsvm line {number} is not 'label index:value …'.") from None
        entries.end_row()
    return entries.dense(width, len(body), "libsvm")


# ---- RecordIO-wrapped protobuf (aialgs.data.Record), decoded by hand: no protobuf runtime ----
# Every length is checked against the bytes that remain: a record or field that claims more
# than is there is refused, never sliced short. https://protobuf.dev/programming-guides/encoding/

_RECORDIO_MAGIC = 0xCED7230A
_FEATURES, _MAP_KEY, _MAP_VALUE = 1, 1, 2
_FLOAT32_TENSOR, _FLOAT64_TENSOR, _INT32_TENSOR = 2, 3, 7
_TENSOR_VALUES, _TENSOR_KEYS = 1, 2  # a sparse tensor's `shape` (3) is a claim: the keys decide
_PACKED: dict[int, np.dtype[Any]] = {_FLOAT32_TENSOR: np.dtype("<f4"), _FLOAT64_TENSOR: np.dtype("<f8")}
_MAX_VARINT = 10  # bytes: a 64-bit varint never needs more
_LITTLE_ENDIAN = sys.byteorder == "little"  # protobuf's fixed-width values are little-endian
_SMALL = 256  # bytes of float32 values converted without numpy


class _Malformed(Exception):
    """Raised inside the protobuf reader; becomes one InvalidPayload at its boundary."""


def decode_recordio_protobuf(body: bytes, width: int | None = None) -> Table:
    """Each record's `features["values"]` tensor is one row (dense, or sparse with keys)."""
    entries = _Entries()
    try:
        for record in _recordio(body):
            _record_row(record, entries)
            entries.end_row()
    except _Malformed as exc:
        raise InvalidPayload(f"The body is not valid RecordIO-protobuf (aialgs.data.Record): {exc}.") from None
    return entries.dense(width, len(body), "RecordIO-protobuf")


def _recordio(body: bytes) -> Iterator[memoryview]:
    view, offset = memoryview(body), 0
    while offset < len(body):
        if offset + 8 > len(body):
            raise _Malformed("a record header is cut short")
        magic, header = struct.unpack_from("<II", body, offset)
        if magic != _RECORDIO_MAGIC:
            raise _Malformed("a record does not start with RecordIO's magic number")
        length = header & ((1 << 29) - 1)  # the top 3 bits flag multi-part records
        start = offset + 8
        if start + length > len(body):
            raise _Malformed("a record's length runs past the end of the body")
        yield view[start : start + length]
        offset = start + ((length + 3) & ~3)  # records are padded to 4 bytes


def _record_row(record: memoryview, entries: _Entries) -> None:
    for field, value in _fields(record):
        if field != _FEATURES or isinstance(value, int):
            continue
        entry = dict(_fields(value))
        key = entry.get(_MAP_KEY)
        if isinstance(key, memoryview) and key.tobytes() == b"values":
            tensor = entry.get(_MAP_VALUE, b"")
            if isinstance(tensor, int):
                raise _Malformed("features['values'] is not a tensor")
            _tensor_row(memoryview(tensor), entries)
            return
    raise _Malformed("a record has no features['values'] tensor")


def _tensor_row(value: memoryview, entries: _Entries) -> None:
    for kind, tensor in _fields(value):
        if kind not in (_FLOAT32_TENSOR, _FLOAT64_TENSOR, _INT32_TENSOR) or isinstance(tensor, int):
            continue
        first = len(entries.values)
        keys = array("q")
        for field, data in _fields(tensor):
            if field == _TENSOR_VALUES:
                _add_values(kind, data, entries.values)
            elif field == _TENSOR_KEYS:
                keys.extend(min(k, _MAX_INDEX) for k in _varints(data))
        count = len(entries.values) - first
        if keys and len(keys) != count:
            raise _Malformed("a sparse tensor has a different number of keys and values")
        entries.indices.extend(keys if keys else range(count))
        return
    raise _Malformed("features['values'] holds no float32, float64 or int32 tensor")


def _add_values(kind: int, data: Any, out: array[float]) -> None:
    if kind == _INT32_TENSOR:
        out.extend(float(v - (1 << 64) if v >= 1 << 63 else v) for v in _varints(data))
        return
    if isinstance(data, int):
        raise _Malformed("a float tensor's values are not floats")
    dtype = _PACKED[kind]
    if len(data) % dtype.itemsize:
        raise _Malformed("a float tensor's values are cut short")
    if kind == _FLOAT64_TENSOR and _LITTLE_ENDIAN:
        out.frombytes(data)
    elif len(data) <= _SMALL and _LITTLE_ENDIAN:  # numpy's fixed cost is more than a few floats'
        floats = array("f")
        floats.frombytes(data)
        out.fromlist(floats.tolist())
    else:
        out.frombytes(np.frombuffer(data, dtype=dtype).astype(np.float64).tobytes())


def _fields(message: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, int or bytes) for each field of a protobuf message."""
    offset, end = 0, len(message)
    while offset < end:
        tag, offset = _varint(message, offset)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, offset = _varint(message, offset)
            yield field, value
            continue
        if wire == 2:
            size, offset = _varint(message, offset)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise _Malformed(f"wire type {wire} is not used by aialgs.data.Record")
        if offset + size > end:
            raise _Malformed("a field's length runs past the end of its message")
        yield field, message[offset : offset + size]
        offset += size


def _varints(data: int | memoryview) -> Iterator[int]:
    if isinstance(data, int):
        yield data
        return
    offset = 0
    while offset < len(data):
        value, offset = _varint(data, offset)
        yield value


def _varint(data: memoryview, offset: int) -> tuple[int, int]:
    if offset < len(data) and data[offset] < 0x80:
        return data[offset], offset + 1  # most tags and lengths: one byte
    result = 0
    for shift in range(0, 7 * _MAX_VARINT, 7):
        if offset >= len(data):
            raise _Malformed("a number is cut short")
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, offset
    raise _Malformed(f"a number is longer than {_MAX_VARINT} bytes")
