"""text/csv bodies -> Table, whole or in chunks of rows.

Cells stay text. A CSV body costs far more as Python objects than as bytes: a row list and a
string per cell, about 150 bytes for a two-byte row such as `0\\n` (a 6 MB body of them took
630 MB). So a numeric model's big bodies go through `csv_chunks`: tables of consecutive rows
from about `CHUNK_CHARS` of text each, which the schema turns into float64 as they come
(models/schema.py `conform_chunks`), and only one chunk's objects are ever alive.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from sagehost.codecs import limits
from sagehost.errors import EmptyPayload, InvalidPayload
from sagehost.predictor import Shape, Table

CHUNK_CHARS = 64 * 1024  # about 5 MB of objects at worst


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
        if rows:
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


def _plain_chunks(text: str, width: int | None, chunk_chars: int) -> Iterator[list[list[str]]]:
    start = 0
    while start < len(text):
        end = text.find("\n", start + chunk_chars)  # a chunk ends with a line
        end = len(text) if end < 0 else end + 1
        yield _plain_rows(text[start:end], width)
        start = end


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
