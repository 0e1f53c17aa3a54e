"""How much memory the loaded models may take, and what one model costs.

The budget is `--model-memory-mb` (`SAGEHOST_MODEL_MEMORY_MB`), else `DEFAULT_SHARE` of the
container's memory limit: its cgroup's (v2 `memory.max`, v1 `memory.limit_in_bytes`, the
tightest on the cgroup's path), else the machine's memory. The rest is for the workers
themselves, the libraries they import and the requests in flight.
https://docs.kernel.org/admin-guide/cgroup-v2.html#memory-interface-files
https://docs.kernel.org/admin-guide/cgroup-v1/memory.html

A model's cost (per copy: each worker holds its own) is what the worker's memory grew by while
it loaded: the larger of its resident memory's growth and of the bytes malloc handed out and did
not get back (glibc's mallinfo2, which a load reusing memory freed earlier still grows, where
resident memory does not), and never less than the size of its files. A library imported by that
load (scikit-learn, xgboost …) stays with the worker whatever is unloaded, so it is not the
model's cost: a load that brought new libraries in is measured again on a second load, with
them already imported. Resident memory is the process's, so invocations running meanwhile blur
the measure a little; the files' size keeps it from going below what the model must hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sagehost import contract
from sagehost.config import Settings

DEFAULT_SHARE = 0.75
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1
T = TypeVar("T")


def budget_bytes(settings: Settings, root: Path = Path("/")) -> int:
    """The models' budget: as set, else `DEFAULT_SHARE` of the container's (or machine's) memory."""
    if settings.model_memory_mb is not None:
        return settings.model_memory_mb * contract.MIB
    limits = [n for n in (container_limit(root), memory_total(root)) if n is not None]
    return int(min(limits) * DEFAULT_SHARE) if limits else 0


def container_limit(root: Path = Path("/")) -> int | None:
    """This process's cgroup memory limit in bytes (v2 or v1), None when it has none."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2's single hierarchy: "0::/path"
            found += _limits(root / "sys/fs/cgroup", path, "memory.max")
        elif "memory" in controllers.split(","):
            found += _limits(root / "sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
    return min(found) if found else None


def _limits(mount: Path, path: str, name: str) -> list[int]:
    """The limits set on the cgroup and its ancestors. In a container the cgroup namespace makes
    the path `/`, and the container's limit is the mount's own file."""
    parts = [p for p in path.split("/") if p]
    values: list[int] = []
    for depth in range(len(parts), -1, -1):
        with contextlib.suppress(OSError, ValueError):
            text = (mount.joinpath(*parts[:depth]) / name).read_text().strip()
            if text != "max" and 0 < int(text) < _UNLIMITED:
                values.append(int(text))
    return values


def memory_total(root: Path = Path("/")) -> int | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_bytes() -> int:
    """This process's resident memory now (/proc/self/statm), 0 where that cannot be read."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc 2.33+). https://man7.org/linux/man-pages/man3/mallinfo.3.html"""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc_function(name: str) -> Any:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc, or an older one
        return None


_MALLINFO2 = _libc_function("mallinfo2")
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2
    _MALLINFO2.argtypes = []
_MALLOC_TRIM = _libc_function("malloc_trim")


def heap_bytes() -> int:
    """Bytes malloc has handed out and not had back (heap and mmapped chunks); 0 without glibc."""
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def files_bytes(directory: Path) -> int:
    """The size of every file under `directory`."""
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def give_back() -> None:
    """Return freed memory to the system: collect cycles, then have glibc hand its free pages
    back (malloc_trim), so a model unloaded is memory another can use.
    https://man7.org/linux/man-pages/man3/malloc_trim.3.html"""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def measured(load: Callable[[], T], model_dir: Path) -> tuple[T, int]:
    """Call `load` and measure what it keeps resident: (what it returned, bytes). Blocking."""
    before_modules = set(sys.modules)
    resident, heap = resident_bytes(), heap_bytes()
    loaded = load()
    if _imported_libraries(before_modules, model_dir):
        del loaded  # that measure holds the libraries too: measure a second load without them
        give_back()
        resident, heap = resident_bytes(), heap_bytes()
        loaded = load()
    grown = max(resident_bytes() - resident, heap_bytes() - heap)
    return loaded, max(grown, files_bytes(model_dir))


def _imported_libraries(before: set[str], model_dir: Path) -> bool:
    """Whether modules from outside the model's own directory were imported since `before`."""
    inside = str(model_dir.resolve())
    for name in set(sys.modules) - before:
        origin = getattr(sys.modules.get(name), "__file__", None)
        if origin is None or not os.path.realpath(origin).startswith(inside):
            return True
    return False
