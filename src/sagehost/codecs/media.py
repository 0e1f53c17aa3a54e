"""Content-Type parsing and Accept negotiation, as the AWS toolkits do it.

A missing or `*/*` Accept means the configured default (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT);
a comma-separated list is tried in order of quality, then of appearance.
"""

from __future__ import annotations

from sagehost.errors import NotAcceptable

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
NPY = "application/x-npy"
OCTET = "application/octet-stream"
LIBSVM = "text/libsvm"
RECORDIO = "application/x-recordio-protobuf"

# Spellings clients use for the same formats.
_ALIASES = {
    "application/json-lines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-jsonlines": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/ndjson": JSONLINES,
    "text/json": JSON,
    "application/csv": CSV,
    "text/x-csv": CSV,
    "application/npy": NPY,
    "text/x-libsvm": LIBSVM,
}

ENCODABLE = (JSON, CSV, JSONLINES, NPY)


def media_type(header: str | None) -> str:
    """`"Text/CSV; charset=utf-8"` -> `"text/csv"`; empty when absent."""
    if not header:
        return ""
    base = header.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def negotiate(accept: str | None, default: str, offered: tuple[str, ...] = ENCODABLE) -> str:
    """Pick the response media type for an Accept header, or raise NotAcceptable."""
    if not accept or not accept.strip():
        return media_type(default)
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        kind, _, params = part.partition(";")
        quality = _quality(params)
        if quality > 0:
            choices.append((-quality, position, media_type(kind)))
    for _, _, kind in sorted(choices):
        if kind in ("*/*", "") or kind == media_type(default):
            return media_type(default)
        if kind in offered:
            return kind
        if kind.endswith("/*"):
            prefix = kind[:-1]
            for candidate in offered:
                if candidate.startswith(prefix):
                    return candidate
    raise NotAcceptable(
        f"Cannot answer in {accept.strip()[:100]!r}. Ask for one of: {', '.join(offered)} (or */* for the default)."
    )


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 1.0
    return 1.0
