"""Request body -> Table: cheap, plain rows; never pandas.

Cells stay as the client sent them (CSV cells as strings): converting them to the model's
types is the schema's job (models/schema.py), which knows the model's columns.

Every decoder is bounded by the body (codecs/limits.py): whatever a body claims (a shape, an
index, a length), it decodes to a bounded number of values, or to an InvalidPayload that says
why, before the memory is taken. `inline` says which formats are cheap enough to decode on
the event loop when small; the rest belong on a thread.
"""

from __future__ import annotations

from collections.abc import Callable

from sagehost.codecs import limits, media, npy, sparse
from sagehost.codecs.csvrows import CHUNK_CHARS, csv_chunks, decode_csv
from sagehost.codecs.jsonrows import MISSING, decode_json, decode_jsonlines, json_value_to_table
from sagehost.errors import EmptyPayload, UnsupportedMediaType
from sagehost.predictor import Table

__all__ = [
    "CHUNK_CHARS",
    "MISSING",
    "csv_chunks",
    "decode",
    "decode_csv",
    "decode_json",
    "decode_jsonlines",
    "inline",
    "json_value_to_table",
]

Decoder = Callable[[bytes, "int | None"], Table]


def decode(body: bytes, content_type: str | None, *, width: int | None = None) -> Table:
    """`width`: the model's feature count when known; sparse indices past it are refused."""
    kind = media.media_type(content_type)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        shown = kind or "(none)"
        raise UnsupportedMediaType(
            f"Content-Type {shown[:100]!r} is not supported. Send one of: {', '.join(sorted(_DECODERS))}."
        )
    if not body or body.isspace():
        raise EmptyPayload("The request body is empty: send at least one row.")
    table = decoder(body, width)
    if len(table) == 0:
        raise EmptyPayload("The request holds no rows: send at least one row.")
    if len(body) > limits.MAX_COLUMNS and isinstance(table.rows, list):
        limits.check_columns(max(map(len, table.rows)), width)  # a row of N values takes N bytes or more
    return table


def decode_octet(body: bytes, width: int | None = None) -> Table:
    # The H2O scorer's curl example posts JSON as octet-stream; others post CSV or .npy files.
    if body.startswith(npy.MAGIC):
        return npy.decode_npy(body, width)
    if body.lstrip()[:1] in (b"[", b"{"):
        return decode_json(body, width)
    return decode_csv(body, width)


_DECODERS: dict[str, Decoder] = {
    media.JSON: decode_json,
    media.JSONLINES: decode_jsonlines,
    media.CSV: decode_csv,
    media.NPY: npy.decode_npy,
    media.OCTET: decode_octet,
    media.LIBSVM: sparse.decode_libsvm,
    media.RECORDIO: sparse.decode_recordio_protobuf,
}

INLINE_BYTES = 8 * 1024
_INLINE_TYPES = frozenset({media.JSON, media.JSONLINES, media.CSV})


def inline(body: bytes, content_type: str | None) -> bool:
    """Whether this body may be decoded (and conformed) on the event loop rather than a thread.

    Only small CSV and JSON: their cost is linear, bounded per value and never set by what the
    body claims, at worst about half a microsecond a byte (a first row of 4,000 text cells, each
    tried as a number by the header check), so a few milliseconds at 8 KiB. Everything else
    (libsvm, RecordIO, .npy, octet-stream sniffing, bigger bodies) goes to a thread, so /ping
    keeps answering while it decodes."""
    if len(body) > INLINE_BYTES:
        return False
    return content_type in _INLINE_TYPES or media.media_type(content_type) in _INLINE_TYPES
