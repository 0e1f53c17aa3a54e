"""What sagehost knows about one model format: how to recognise it, load it and install it.

Each format's module ends with its FORMAT; `sagehost.models.registry` lists them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sagehost.config import Settings
from sagehost.predictor import Model


def never(path: Path) -> bool:
    return False


@dataclass(frozen=True)
class Format:
    name: str
    """What --flavor / SAGEHOST_FLAVOR call it; config.FLAVORS lists the names for the CLI."""
    extra: str
    """The install extra that brings its runtime: pip install 'sagehost[<extra>]'."""
    files: str
    """What it is recognised by, for messages."""
    find: Callable[[Path], list[Path]]
    """Its artifacts in a directory, told from names and first bytes: no heavy import, no load."""
    load: Callable[[Path, Settings], Model]
    """One artifact `find` returned, loaded; the runtime is imported here, not before."""
    fork_safe: Callable[[Path], bool] = never
    """Whether a loaded model of this file may be shared by forked workers (no OpenMP pool, JVM
    or runtime threads started in the parent that a child would inherit half-alive)."""
    system_packages: tuple[str, ...] = ()
    """Debian packages its runtime needs in an image (names that hold on the slim images of every
    current Debian release)."""
    whole_directory: bool = False
    """Its artifact is the directory itself, whose other model files are its parts (MLflow)."""
