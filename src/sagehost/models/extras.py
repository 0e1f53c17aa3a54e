"""Heavy runtimes are imported only when their format is used, and say how to get them."""

from __future__ import annotations

import importlib
from types import ModuleType

from sagehost.errors import ModelLoadError


def require(module: str, extra: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(
            f"{what} needs the Python package {module!r}, which is not installed ({exc}). "
            f"Install it with: pip install 'sagehost[{extra}]'"
        ) from None


def threads_per_worker(workers: int) -> int:
    """A runtime's own thread pool size: the cores shared out between worker processes."""
    import os

    return max(1, (os.cpu_count() or 1) // max(1, workers))
