"""All trees of an ensemble flattened into node arrays and walked together, level by level.

A tree library routes one row at a time through one tree at a time; for a small batch the
per-call overhead of that dwarfs the comparisons. Here every (row, tree) pair moves one level per
numpy gather, so a 100-tree, depth-6 model costs six rounds of array operations per batch.

Every family's split is put in one form: a row goes left when `x <= threshold`, a NaN goes where
`nan_left` says, and (LightGBM's zero-as-missing) an exact zero where `zero_left` says. Leaves
point at themselves, so walking past a leaf is harmless and every tree takes `depth` steps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sagehost.models.trees import compiled

Array = np.ndarray[Any, Any]

_CHUNK_ROWS = 2048  # bounds the (rows x trees) index arrays for big Batch Transform payloads


@dataclass(frozen=True)
class Tree:
    """One tree as each family's converter gives it. Node i sends a row left when
    `x[feature[i]] <= threshold[i]`; `left[i] < 0` marks a leaf, whose output is `value[i]`."""

    feature: Array
    threshold: Array
    left: Array
    right: Array
    value: Array
    """(nodes,) for boosted trees; (nodes, classes) for a forest's class fractions."""
    nan_left: Array | None = None
    """Where a NaN goes at each node; None: this family's lean path does not take NaN."""
    zero_left: Array | None = None
    """Where an exact zero goes at each node, when that is not where the comparison sends it."""
    group: int = 0
    """The output column this tree adds to: the class, for one-tree-per-class boosting."""


def constant(value: Any, group: int = 0) -> Tree:
    """A one-leaf tree: a boosted model's starting score, summed first as the library adds it."""
    leaf = np.full(1, -1, dtype=np.intp)
    return Tree(
        feature=np.zeros(1, dtype=np.intp),
        threshold=np.zeros(1),
        left=leaf,
        right=leaf,
        value=np.asarray([value]),
        nan_left=np.zeros(1, dtype=bool),
        group=group,
    )


class FlatTrees:
    """Trees grouped by output column (each group's trees in their own order), flattened."""

    def __init__(self, trees: Sequence[Tree], *, from_zero: bool = True) -> None:
        """`from_zero`: the library adds the first tree's leaf to 0.0 (scikit-learn, LightGBM),
        rather than starting from it (XGBoost's base margin); they differ only for a -0.0."""
        self.start = 0.0 if from_zero else -0.0  # x + -0.0 is x for every x, -0.0 included
        ordered = sorted(trees, key=lambda t: t.group)  # stable: a group's trees keep their order
        per_group = Counter(t.group for t in ordered)
        if sorted(per_group) != list(range(len(per_group))) or len(set(per_group.values())) != 1:
            raise ValueError("every output column needs the same number of trees")
        self.n_groups = len(per_group)
        self.per_group = per_group[0]
        sizes = [len(t.feature) for t in ordered]
        offsets = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
        left = np.concatenate([np.where(t.left < 0, -1, t.left + o) for t, o in zip(ordered, offsets, strict=True)])
        right = np.concatenate([np.where(t.left < 0, -1, t.right + o) for t, o in zip(ordered, offsets, strict=True)])
        order, self.depth = _level_order(offsets, left, right)
        renumber = np.empty(len(left), dtype=np.intp)
        renumber[order] = np.arange(len(order), dtype=np.intp)
        self.n_trees = len(ordered)
        self._roots = np.arange(self.n_trees, dtype=np.intp)[:, None]
        self._none = np.zeros(0, dtype=bool)  # the compiled walk's stand-in for an absent rule
        self.internal = left[order] >= 0
        # A node's children sit side by side (right = left + 1) and a leaf is its own left child,
        # with an infinite threshold so that nothing goes right of it: one step is `left + went_right`.
        self.left = np.where(self.internal, renumber[np.maximum(left[order], 0)], np.arange(len(order)))
        self.feature = np.concatenate([t.feature for t in ordered]).astype(np.intp)[order]
        if (self.feature[self.internal] < 0).any():
            raise ValueError("a split on a negative feature index")
        self.width = int(self.feature[self.internal].max(initial=-1)) + 1
        """The fewest columns a row needs: one past the highest feature a split reads."""
        threshold = np.concatenate([t.threshold for t in ordered]).astype(np.float64)[order]
        self.threshold = np.where(self.internal, threshold, np.inf)
        self.value = np.concatenate([t.value for t in ordered])[order]
        self._value_2d = np.ascontiguousarray(self.value.reshape(len(self.value), -1))
        by_comparison = threshold < 0  # where a zero goes by `0 <= threshold`: right iff threshold < 0
        nan_right = _right_of(ordered, "nan_left", None)
        self.nan_right = None if nan_right is None else nan_right[order] & self.internal
        zero_right = _right_of(ordered, "zero_left", np.concatenate([t.threshold for t in ordered]) < 0)
        zero_right = None if zero_right is None else zero_right[order] & self.internal
        differs = zero_right is not None and bool((zero_right != by_comparison)[self.internal].any())
        self.zero_right = zero_right if differs else None

    def sums(self, x: Array) -> Array | None:
        """Each group's leaves summed in tree order: (groups, rows[, classes]); None when the batch
        holds a NaN and these trees do not say where NaN goes, or too few columns for the
        features the trees split on (the library says what is wrong). `x` is float64,
        C-contiguous. By the compiled walk when numba is installed, else by numpy's."""
        if x.ndim != 2 or x.shape[1] < self.width:  # the compiled walk reads x unchecked
            return None
        if self.nan_right is None and np.isnan(x).any():
            return None  # the library says what a NaN means to these trees (old forests refuse it)
        walk = compiled.kernel()
        parts: list[Array] = []
        for i in range(0, len(x), _CHUNK_ROWS):
            chunk = x[i : i + _CHUNK_ROWS]
            part = self.numpy_sums(chunk) if walk is None else self.compiled_sums(chunk, walk)
            if part is None:
                return None
            parts.append(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def compiled_sums(self, x: Array, walk: compiled.Kernel) -> Array | None:
        sums = np.empty((self.n_groups, len(x), self._value_2d.shape[1]), dtype=self.value.dtype)
        nan_right = self._none if self.nan_right is None else self.nan_right
        zero_right = self._none if self.zero_right is None else self.zero_right
        use_nan, use_zero = self.nan_right is not None, self.zero_right is not None
        x = np.ascontiguousarray(x, dtype=np.float64)  # the one layout compiled at load, not a new one now
        args = (x, self.feature, self.threshold, self.left, nan_right, zero_right, use_nan, use_zero)
        if walk(*args, self._value_2d, self.per_group, self.start, sums):
            return None
        return sums.reshape(self.n_groups, len(x), *self.value.shape[1:])

    def numpy_sums(self, x: Array) -> Array | None:
        node = self.numpy_leaves(x)
        if node is None:
            return None
        leaves = self.value[node].reshape(self.n_groups, self.per_group, len(x), *self.value.shape[1:])
        return _in_order_sum(leaves, self.start)

    def numpy_leaves(self, x: Array) -> Array | None:
        """numpy's walk: every (tree, row) moves one level per round of gathers, `depth` rounds."""
        nan = bool(np.isnan(x).any())
        if nan and self.nan_right is None:
            return None
        zero = self.zero_right is not None and bool((x == 0).any())
        flat = x.ravel()
        base = np.arange(0, x.size, x.shape[1], dtype=np.intp)  # each row's start in `flat`
        one = len(x) == 1
        node = self._roots  # (trees, 1): broadcast against the rows on the first step
        for _ in range(self.depth):
            v = flat[self.feature[node] if one else base + self.feature[node]]
            right = v > self.threshold[node]  # NaN compares False: settled just below
            if nan:
                right = np.where(np.isnan(v), self.nan_right[node], right)  # type: ignore[index]
            if zero:
                right = np.where(v == 0, self.zero_right[node], right)  # type: ignore[index]
            node = self.left[node] + right
        leaves: Array = np.broadcast_to(node, (self.n_trees, len(x)))  # no split: the roots never met the rows
        return leaves

    def probe_rows(self, width: int) -> tuple[Array, Array]:
        """Rows to prove a lean path with: (rows spread over every feature's split points, so they
        visit many leaves, with some exactly on thresholds; the same with edge values: zeros, tiny,
        ±1e30 and NaN)."""
        rng = np.random.default_rng(0)
        low, high = np.full(width, -1.0), np.full(width, 1.0)
        on_split: list[Array] = []
        for f in range(width):
            used = self.threshold[(self.feature == f) & self.internal]
            # HistGradientBoosting parts NaN from all numbers at inf, LightGBM at 1e300
            finite = used[np.abs(used) < 1e300]
            if finite.size:
                low[f], high[f] = finite.min() - 1, finite.max() + 1
            with np.errstate(over="ignore"):  # a split past float32's range (LightGBM's 1e300): inf
                as32 = used.astype(np.float32)
            near = np.concatenate([used, as32, np.nextafter(as32, np.float32(np.inf))]) if used.size else np.zeros(1)
            on_split.append(rng.choice(near.astype(np.float64), size=128))
        spread = rng.uniform(low, high, size=(256, width))
        exact = np.column_stack(on_split) if width else np.zeros((128, 0))
        clean = np.concatenate([spread, exact])
        edge = clean.copy()
        mask = rng.random(edge.shape)
        edge[mask < 0.1] = 0.0
        edge[(mask >= 0.1) & (mask < 0.13)] = 1e-36
        edge[(mask >= 0.13) & (mask < 0.16)] = 1e30
        edge[(mask >= 0.16) & (mask < 0.19)] = -1e30
        edge[mask >= 0.85] = np.nan
        return clean, edge


def _right_of(trees: Sequence[Tree], name: str, default: Array | None) -> Array | None:
    parts: list[Array] = []
    start = 0
    for tree in trees:
        own = getattr(tree, name)
        n = len(tree.feature)
        if own is None and default is None:
            return None
        parts.append(~np.asarray(own, dtype=bool) if own is not None else default[start : start + n])  # type: ignore[index]
        start += n
    return np.concatenate(parts)


def _in_order_sum(leaves: Array, start: float = -0.0) -> Array:
    """Sum over axis 1 (a group's trees) one tree after another from `start`, in the library's
    order and dtype, so the sums match bit for bit. Reducing an outer axis adds whole rows in
    order; along a single contiguous axis numpy sums pairwise instead, so one row takes cumsum."""
    if leaves[0, 0].size > 1:
        total: Array = np.add.reduce(leaves, axis=1, initial=start)
        return total
    leaves[:, 0] += start  # a fresh gather: ours to change
    last: Array = np.cumsum(leaves, axis=1)[:, -1]
    return last


def _level_order(roots: Array, left: Array, right: Array) -> tuple[Array, int]:
    """Every reachable node, level by level from the roots, siblings side by side; and the
    longest root-to-leaf path. Each node once: a node with two parents, a cycle or a link out of
    range (a damaged model file the library may still load) would put one node in two places,
    where `left + 1` is no longer its sibling and the compiled walk would read past the arrays."""
    seen = np.zeros(len(left), dtype=bool)
    levels, frontier = [roots], roots
    while True:
        if ((frontier < 0) | (frontier >= len(left))).any():
            raise ValueError("a child link points outside the trees")
        if seen[frontier].any() or len(np.unique(frontier)) != len(frontier):
            raise ValueError("a node is reached twice: the child links do not form trees")
        seen[frontier] = True
        split = frontier[left[frontier] >= 0]
        if not split.size:
            return np.concatenate(levels), len(levels) - 1
        frontier = np.column_stack([left[split], right[split]]).ravel()
        levels.append(frontier)
