"""text/csv bodies -> Table, whole or in chunks of rows.

Cells stay text. A CSV body costs far more as Python objects than as bytes: a row list and a
string per cell, about 150 bytes for a two-byte row such as `0\\n` (a 6 MB body of them took
630 MB). So a numeric model's big bodies go through `csv_chunks`: tables of consecutive rows
from about `CHUNK_CHARS` of text each, which the schema turns into float64 as they come
(models/schema.py `conform_chunks`), and only one chunk's objects are ever alive. A chunk of
plain numbers (the common Batch Transform body) skips the objects altogether: numpy's C reader
(`np.loadtxt`) turns it into float64 in half the CPU (0.6 against 1.1 us a row of 10 values), and
whatever it will not read (a header, a missing value, a ragged row) goes the object way, so the
answer is the same either way.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from sagehost.codecs import limits
from sagehost.errors import EmptyPayload, InvalidPayload
from sagehost.predictor import Shape, Table

CHUNK_CHARS = 64 * 1024  # about 5 MB of objects at worst
# Line breaks of str.splitlines that np.loadtxt does not break lines at (\n, \r\n and \r it does).
_OTHER_BREAKS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def decode_csv(body: bytes, width: int | None = None) -> Table:
    text = _text(body)
    if '"' in text:
        return Table(_quoted_rows(text), None, Shape.ROWS)
    return Table(_plain_rows(text, width), None, Shape.ROWS)


def csv_chunks(body: bytes, width: int | None = None, chunk_chars: int = CHUNK_CHARS) -> Iterator[Table]:
    """The body's rows as consecutive non-empty tables of about `chunk_chars` of text each."""
    if not body or body.isspace():
        raise EmptyPayload("The request body is empty: send at least one row.")
    text = _text(body)
    # Quoted CSV is cut by cells, as a quoted cell may hold newlines; plain CSV at line ends.
    pieces = _quoted_chunks(text, chunk_chars // 4) if '"' in text else _plain_chunks(text, width, chunk_chars)
    for rows in pieces:
        if len(rows):
            yield Table(rows, None, Shape.ROWS)
        del rows  # before the next chunk is made, not after


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidPayload("CSV must be UTF-8 text.") from None


def _plain_rows(text: str, width: int | None) -> list[list[str]]:
    # The fast path: no quoting, so a split is exact and several times quicker than csv.reader.
    lines = text.splitlines()
    if text.count(",") >= limits.MAX_COLUMNS:  # split no line into more cells than a row may hold
        limits.check_columns(1 + max(line.count(",") for line in lines), width)
    return [line.split(",") for line in lines if line.strip()]


def _plain_chunks(
    text: str, width: int | None, chunk_chars: int
) -> Iterator[list[list[str]] | np.ndarray[Any, np.dtype[np.float64]]]:
    start = 0
    while start < len(text):
        end = text.find("\n", start + chunk_chars)  # a chunk ends with a line
        end = len(text) if end < 0 else end + 1
        chunk = text[start:end]
        numbers = _numbers(chunk)
        yield numbers if numbers is not None else _plain_rows(chunk, width)
        start = end


def _other_breaks(text: str) -> bool:
    if text.isascii():  # a flag of the string, not a scan: five memchr-fast searches then
        return any(brk in text for brk in "\x0b\x0c\x1c\x1d\x1e")
    return _OTHER_BREAKS.search(text) is not None  # a regex over a whole chunk: 4x the C reader's time


def _numbers(text: str) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """The rows as float64 when every cell reads as a number (and they are two or more), else
    None. numpy converts each cell as np.asarray(cells, dtype=float64) would (both round
    correctly), skips blank lines as _plain_rows does and refuses ragged rows; what it cannot
    read is left to the object path."""
    if text.count(",") >= limits.MAX_COLUMNS or not text.strip() or _other_breaks(text):
        return None
    try:
        numbers = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, comments=None, ndmin=2)
    except ValueError:
        return None
    # One row is left as text: the schema reads a first chunk of one row together with the next
    # (a header's second row tells it is a header), and expects cells then.
    return numbers if len(numbers) > 1 else None


def _quoted_rows(text: str) -> list[list[str]]:
    return [row for chunk in _quoted_chunks(text, None) for row in chunk]


def _quoted_chunks(text: str, chunk_cells: int | None) -> Iterator[list[list[str]]]:
    chunk: list[list[str]] = []
    cells = 0
    try:
        for row in csv.reader(io.StringIO(text)):
            if row:
                chunk.append(row)
                cells += len(row)
            if chunk_cells is not None and cells >= chunk_cells:
                yield chunk
                chunk, cells = [], 0
    except csv.Error:
        raise InvalidPayload(
            f"The CSV is malformed (a quoted field is unterminated or longer than {csv.field_size_limit():,} "
            "characters)."
        ) from None
    yield chunk
