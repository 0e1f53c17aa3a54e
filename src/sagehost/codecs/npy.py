"""`application/x-npy` bodies, checked against their own header before any array exists.

`np.load` trusts the header: a 100-byte body that declares a shape of (1e9, 10) makes it
allocate 74.5 GiB before it finds the data missing. So the header is read first (with numpy's
own safe reader: a literal, at most 10,000 bytes) and the array is made only when the bytes
present hold exactly what it declares, within the body's value budget (codecs/limits.py).
https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from sagehost.codecs import limits
from sagehost.errors import InvalidPayload
from sagehost.predictor import Shape, Table

MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10_000  # numpy's own default limit for a header it will parse
_VERSIONS = ((1, 0), (2, 0), (3, 0))
_KINDS = frozenset("biufUS")  # bool, integers, floats, text: what a model's row can hold


def decode_npy(body: bytes, width: int | None = None) -> Table:
    stream = io.BytesIO(body)
    shape, fortran, dtype = _header(body, stream)
    _check_dtype(dtype)
    if len(shape) not in (1, 2):
        raise InvalidPayload(f"An .npy body must be 1-D (one row) or 2-D (rows); got {len(shape)}-D.")
    if any(d < 0 for d in shape):
        raise InvalidPayload("The .npy header declares a negative dimension.")
    rows, columns = (1, shape[0]) if len(shape) == 1 else shape
    if columns == 0 and rows > 1:
        raise InvalidPayload(f"The .npy header declares {rows:,} rows of no values; each row needs at least one.")
    count = rows * columns
    needed, present = count * dtype.itemsize, len(body) - stream.tell()
    if needed > present:
        raise InvalidPayload(
            f"The .npy header declares shape {tuple(shape)} of {dtype.str} ({needed:,} bytes), "
            f"but the body holds {present:,} bytes after the header."
        )
    limits.check_values(rows, columns, len(body), ".npy")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    # Fortran order is column-major: the transposed C layout, as np.load builds it.
    array = flat.reshape(columns, rows).T if fortran else flat.reshape(rows, columns)
    return Table(array.copy(), None, Shape.ROWS)  # a writable array of its own, as np.load gives


def _header(body: bytes, stream: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = npy_format.read_magic(stream)
    except ValueError:
        version = (0, 0)
    if version not in _VERSIONS:
        raise InvalidPayload("The body is not a valid .npy array (its magic string or version is wrong).")
    major = version[0]
    size_format = "<H" if major == 1 else "<I"
    start = stream.tell() + struct.calcsize(size_format)
    if start > len(body):
        raise InvalidPayload("The .npy body ends inside its header.")
    (length,) = struct.unpack_from(size_format, body, stream.tell())
    if length > _MAX_HEADER:
        raise InvalidPayload(f"The .npy header declares {length:,} bytes; at most {_MAX_HEADER:,} are accepted.")
    if start + length > len(body):
        raise InvalidPayload("The .npy body ends inside its header.")
    read = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    try:
        shape, fortran, dtype = read(stream, max_header_size=_MAX_HEADER)
    except (ValueError, TypeError, SyntaxError, KeyError, RecursionError):
        raise InvalidPayload(
            "The .npy header is not valid (it must state 'descr', 'fortran_order', 'shape')."
        ) from None
    return shape, bool(fortran), dtype


def _check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.hasobject:
        raise InvalidPayload("The body is not a valid .npy array (object arrays are refused: a pickle is code).")
    if dtype.kind not in _KINDS or dtype.itemsize == 0 or dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidPayload(f"An .npy body must hold numbers or text; {dtype.str!r} is not accepted.")
