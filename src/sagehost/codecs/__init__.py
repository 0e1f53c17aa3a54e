"""Request bodies to rows, predictions to response bytes."""

from __future__ import annotations

from sagehost.codecs.decode import CHUNK_CHARS, csv_chunks, decode, inline
from sagehost.codecs.encode import encode
from sagehost.codecs.media import media_type, negotiate

__all__ = ["CHUNK_CHARS", "csv_chunks", "decode", "encode", "inline", "media_type", "negotiate"]
