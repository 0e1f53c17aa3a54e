"""The tree walk compiled to machine code by numba, when numba is installed (`sagehost[trees]`).

numpy's walk pays about a microsecond of call overhead for each array operation, several per
tree level: 18 µs for one row through 100 depth-6 XGBoost trees, 42 µs through
HistGradientBoosting's deeper trees, most of a request's model time. Compiled, one row costs
2-5 µs, and a row leaves a tree at its leaf instead of walking the deepest tree's depth
(bench/trees_inprocess.py). Both walks route a row by the same rules on the same arrays, so
they reach the same leaf; `FlatTrees` sums the leaves either way.

numba compiles the kernel on its first call in a process (about 0.4 s), which is the lean path's
proof at load: before the fork, so workers inherit the machine code. No threads are started:
the kernel is plain, not `parallel`. SAGEHOST_COMPILED_TREES=0 keeps numpy's walk.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
# (x, feature, threshold, left, nan_right, zero_right, use_nan, use_zero, value, per_group, sums)
# -> met a NaN it could not route
Kernel = Callable[[Array, Array, Array, Array, Array, Array, bool, bool, Array, int, Array], bool]

ENV = "SAGEHOST_COMPILED_TREES"
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
    sums: Array,
) -> bool:
    """Each group's leaves summed into `sums`, (groups, rows, values per leaf), in tree order as
    the library adds them; True, and stop, at a NaN the trees cannot route. The rules of
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
                # the first tree's leaf as it is (0 + -0.0 would be +0.0), then one by one
                sums[group, row, k] = value[node, k] if first == 0 else sums[group, row, k] + value[node, k]
    return False


@cache
def kernel() -> Kernel | None:
    """The compiled walk, or None: numba is not installed, or SAGEHOST_COMPILED_TREES=0. Said
    once per process in the log, with how to change it."""
    if os.environ.get(ENV, "1").strip() == "0":
        log.info("Trees are walked by numpy (%s=0).", ENV)
        return None
    if importlib.util.find_spec("numba") is None:
        log.info("Trees are walked by numpy: pip install 'sagehost[trees]' compiles the walk (numba).")
        return None
    import numba

    compiled: Kernel = numba.njit(nogil=True, boundscheck=False, cache=False)(_walk)
    log.info("Trees are walked by numba-compiled code (%s=0 turns it off).", ENV)
    return compiled
