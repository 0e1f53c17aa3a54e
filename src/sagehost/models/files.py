"""Cheap looks at a model directory's files: names, suffixes and first bytes, never a full load."""

from __future__ import annotations

import zipfile
from pathlib import Path

PICKLE_PROTOCOL_2_PLUS = b"\x80"


def model_files(model_dir: Path, *suffixes: str) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def head(path: Path, size: int = 4096) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


def is_pickle(path: Path) -> bool:
    return head(path, 1) == PICKLE_PROTOCOL_2_PLUS


def zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []
