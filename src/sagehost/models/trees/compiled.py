"""The tree walk compiled to machine code by numba, when numba is installed (`sagehost[trees]`).

numpy's walk pays about a microsecond of call overhead for each array operation, several per
tree level: 18 µs for one row through 100 depth-6 XGBoost trees, 42 µs through
HistGradientBoosting's deeper trees, most of a request's model time. Compiled, one row costs
about 5 µs, the call included, and a row leaves a tree at its leaf instead of walking the deepest
tree's depth (bench/trees_inprocess.py). Both walks route a row by the same rules on the same arrays, so
they reach the same leaf; `FlatTrees` sums the leaves either way.

numba compiles the kernel when the first tree model loads (about 0.9 s for its two leaf types):
before the fork, so workers inherit the machine code. The kernel starts no threads: it is plain,
not `parallel`. SAGEHOST_COMPILED_TREES=0 (Settings.compiled_trees) keeps numpy's walk.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
# (x, feature, threshold, left, nan_right, zero_right, use_nan, use_zero, value, per_group, start,
# sums) -> met a NaN it could not route
Kernel = Callable[[Array, Array, Array, Array, Array, Array, bool, bool, Array, int, float, Array], bool]

log = logging.getLogger("sagehost.models")


def _walk(  # noqa: PLR0917  # numba's dispatcher passes arrays by position
    x: Array,
    feature: Array,
    threshold: Array,
    left: Array,
    nan_right: Array,
    zero_right: Array,
    use_nan: bool,
    use_zero: bool,
    value: Array,
    per_group: int,
    start: float,
    sums: Array,
) -> bool:
    """Each group's leaves summed into `sums`, (groups, rows, values per leaf), in tree order as
    the library adds them, from `start`; True, and stop, at a NaN the trees cannot route. The rules of
    `FlatTrees`: right when `v > threshold`, else as `nan_right` / `zero_right` say; a leaf is its
    own left child. Trees in the outer loop keep one tree's nodes in cache."""
    for tree in range(sums.shape[0] * per_group):
        group, first = divmod(tree, per_group)
        for row in range(x.shape[0]):
            node = tree
            child = left[node]
            while child != node:
                v = x[row, feature[node]]
                if math.isnan(v):
                    if not use_nan:
                        return True
                    node = child + nan_right[node]
                elif use_zero and v == 0.0:
                    node = child + zero_right[node]
                else:
                    node = child + (v > threshold[node])
                child = left[node]
            for k in range(value.shape[1]):
                if first == 0:
                    sums[group, row, k] = start + value[node, k]
                else:
                    sums[group, row, k] += value[node, k]
    return False


_enabled = True  # Settings.compiled_trees, set by `use` when a model loads


def use(enabled: bool) -> None:
    """Walk trees compiled (where numba is installed) or by numpy: Settings.compiled_trees
    (SAGEHOST_COMPILED_TREES), for every tree path built after this in the process."""
    global _enabled
    if enabled != _enabled:
        _enabled = enabled
        kernel.cache_clear()


@cache
def kernel() -> Kernel | None:
    """The compiled walk, or None: turned off, numba not installed, or numba failing to import or
    to compile (a numba built for another numpy, say: the model is served by numpy's walk). Said
    once per process in the log, with how to change it."""
    if not _enabled:
        log.info("Trees are walked by numpy (SAGEHOST_COMPILED_TREES=0).")
        return None
    if importlib.util.find_spec("numba") is None:
        log.info("Trees are walked by numpy: pip install 'sagehost[trees]' compiles the walk (numba).")
        return None
    try:
        compiled = _compile()
    except Exception as exc:  # an ImportError, numba's own errors, LLVM's: none may stop a load
        log.warning(
            "Trees are walked by numpy: numba failed (%s: %s); pip install -U 'sagehost[trees]' may mend it.",
            type(exc).__name__,
            str(exc)[:300],
        )
        return None
    log.info("Trees are walked by numba-compiled code (SAGEHOST_COMPILED_TREES=0 turns it off).")
    return compiled


def _compile() -> Kernel:
    """The walk for float32 leaves (XGBoost) and float64 (the rest), compiled now (about 0.9 s)
    and only those: arrays are typed read-only, which writable ones match too, so no layout a
    request brings can start a compile on the event loop; a call that matches neither raises."""
    import numba
    from numba import types

    def readonly(dtype: Any, ndim: int) -> Any:
        return types.Array(dtype, ndim, "C", readonly=True)

    flags = (types.boolean, types.boolean)
    signatures = [
        types.boolean(
            readonly(types.float64, 2),  # x
            readonly(types.intp, 1),  # feature
            readonly(types.float64, 1),  # threshold
            readonly(types.intp, 1),  # left
            readonly(types.boolean, 1),  # nan_right
            readonly(types.boolean, 1),  # zero_right
            *flags,  # use_nan, use_zero
            readonly(leaf, 2),  # value
            types.intp,  # per_group
            types.float64,  # start
            types.Array(leaf, 3, "C"),  # sums
        )
        for leaf in (types.float32, types.float64)
    ]
    compiled: Kernel = numba.njit(signatures, nogil=True, boundscheck=False, cache=False)(_walk)
    return compiled
