"""How much a request body may decode to: bounded by the body's own length, never by its claims.

The rule, the same for every format: a body decodes to at most `max_values(len(body))` values,
that is at most max(64 MiB, 16 × the body's length) once they are float64 (8 bytes each). Text
formats (CSV, JSON) cannot exceed it, as every value takes a byte or more; formats that state
sizes or positions (an .npy header's shape, libsvm feature indices, RecordIO keys, JSON records
that leave fields out) are checked against it before anything is allocated. The 64 MiB floor
keeps small requests to wide models working.
"""

from __future__ import annotations

from sagehost.errors import InvalidPayload

FLOOR_BYTES = 64 * 1024 * 1024
BYTES_PER_BODY_BYTE = 16
_VALUE_BYTES = 8  # a float64: what the model's array holds
FLOOR_VALUES = FLOOR_BYTES // _VALUE_BYTES
"""Any body may decode to this many values; only bigger tables need the body's length."""

MAX_COLUMNS = 100_000
"""Values per CSV or JSON row, unless the model has more features: a million-column row costs a
million objects and a million header checks, for a width no model here is trained on."""

MAX_DEPTH = 64
"""JSON nesting: a request is a few levels deep; Python's own repr and orjson's encoder fail
near 1000 and 255 levels, so a body nested deeper is refused before anything walks it."""


def max_values(body_length: int) -> int:
    return max(FLOOR_BYTES, BYTES_PER_BODY_BYTE * body_length) // _VALUE_BYTES


def check_values(rows: int, width: int, body_length: int, what: str) -> None:
    """Refuse a `rows` × `width` table that the rule does not allow; `what` names the format."""
    if rows * width > max_values(body_length):
        limit = max(FLOOR_BYTES, BYTES_PER_BODY_BYTE * body_length)
        size = rows * width * _VALUE_BYTES
        raise InvalidPayload(
            f"The {what} body would decode to {rows:,} rows × {width:,} values ({size:,} bytes), "
            f"more than the {limit:,} bytes this body may decode to (64 MiB, or 16 bytes per body byte). "
            "Send fewer or narrower rows per request."
        )


def check_columns(widest: int, width: int | None) -> None:
    limit = max(MAX_COLUMNS, width or 0)
    if widest > limit:
        raise InvalidPayload(
            f"A row holds {widest:,} values; at most {limit:,} per row are accepted "
            "(or the model's feature count, if larger)."
        )
