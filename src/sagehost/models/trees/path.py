"""A lean predict path over flattened trees: the library's input rounding, one walk, then the
library's arithmetic from summed leaves to each method's answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from sagehost.models.trees import compiled
from sagehost.models.trees.flat import Array, FlatTrees

# float64 libraries (LightGBM, HistGradientBoosting, forests) agree to rounding in the last bits;
# XGBoost sums and links in float32, where numpy's expf and the order of a softmax may move the
# last few bits: compare probabilities with rtol 1e-5 / atol 1e-6 there.
FLOAT64_TOLERANCE = (1e-9, 1e-12)
FLOAT32_TOLERANCE = (1e-5, 1e-6)

# Past some batch size the library's compiled loop beats numpy's array passes: the walk costs a
# few nanoseconds per (row, tree, level) step, the library a fixed cost per call (what the walk
# saves) plus its own cost per row. Each family's module names the number of steps per batch
# where its library overtook the walk in bench/trees_inprocess.py --crossover (100 trees, one
# thread), for numpy's walk and for the compiled one; bigger batches go to the library.


class Crossover(NamedTuple):
    """(rows x trees x depth) steps a batch may take before the library answers it instead."""

    numpy: int
    compiled: int


# The walk gathers every tree's leaf for every row before summing: (trees, rows, classes) values.
# A forest of many classes would hold hundreds of MB for one batch where the library, adding
# tree by tree, holds (rows, classes); past this many values (16 MB) the library answers.
_LEAF_VALUES = 1 << 21


class TreePath:
    """A FastPath: `outputs` maps each method to the library's arithmetic on the walk's sums,
    (groups, rows[, classes]); batches over `max_rows` are left to the library, and so is a batch
    `prepare` returns None for (input the library refuses)."""

    def __init__(
        self,
        trees: FlatTrees,
        outputs: Mapping[str, Callable[[Array], Array]],
        *,
        prepare: Callable[[Array], Array | None],
        tolerance: tuple[float, float] = FLOAT64_TOLERANCE,
        max_steps: Crossover,
    ) -> None:
        self.trees = trees
        per_leaf = int(np.prod(trees.value.shape[1:]))  # a forest's leaf holds every class's fraction
        steps = max_steps.numpy if compiled.kernel() is None else max_steps.compiled
        by_steps = steps // (trees.n_trees * max(trees.depth, 1))
        self.max_rows = max(1, min(by_steps, _LEAF_VALUES // (trees.n_trees * per_leaf)))
        self.methods = frozenset(outputs)
        self.tolerance = tolerance
        self._outputs = dict(outputs)
        self._prepare = prepare

    def predict(self, x: Array, method: str) -> Array | None:
        finish = self._outputs.get(method)
        if finish is None or len(x) > self.max_rows:
            return None
        prepared = self._prepare(x)
        sums = None if prepared is None else self.trees.sums(prepared)
        return None if sums is None else finish(sums)


def as_float64(x: Array) -> Array:
    return np.ascontiguousarray(x, dtype=np.float64)


def via_float32(x: Array) -> Array:
    """The values a float32 library compares: each input rounded to float32 (beyond its range, ±inf)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(x, dtype=np.float32).astype(np.float64)


def finite_float32(x: Array) -> Array | None:
    """`via_float32` for scikit-learn's trees, which refuse what float32 cannot hold ("Input X
    contains infinity or a value too large for dtype('float32')"): None for such a batch."""
    rounded = via_float32(x)
    return None if np.isinf(rounded).any() else rounded


def labels(classes: Array, index: Array) -> Array:
    taken: Array = classes.take(index, axis=0)
    return taken
