"""scikit-learn's random forests and extra trees: the mean of every tree's leaf, as
`predict_proba` / `predict` compute it (float32 inputs against float64 thresholds; a value
float32 cannot hold is the library's to refuse)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sagehost.models.trees.flat import Array, FlatTrees, Tree
from sagehost.models.trees.path import Crossover, TreePath, finite_float32, labels

# The batch size (rows x trees x depth steps) past which the library is faster: scikit-learn's
# forests pay for joblib on every call, so ~600 rows of 100 unpruned trees by numpy's walk and
# ~3,000 by the compiled one.
FOREST_STEPS = Crossover(numpy=1_500_000, compiled=8_000_000)


def path(forest: Any, classifier: bool) -> TreePath:
    n_classes = int(forest.n_classes_) if classifier else 1
    trees = [_tree(e.tree_, classifier, n_classes) for e in forest.estimators_]
    flat = FlatTrees(trees)
    n = flat.n_trees

    def mean(sums: Array) -> Array:
        total: Array = sums[0] / n  # sklearn adds tree by tree, then divides once
        return total

    if not classifier:
        return TreePath(flat, {"predict": mean}, prepare=finite_float32, max_steps=FOREST_STEPS)
    classes = forest.classes_
    return TreePath(
        flat,
        {"predict_proba": mean, "predict": lambda s: labels(classes, np.argmax(mean(s), axis=1))},
        prepare=finite_float32,
        max_steps=FOREST_STEPS,
    )


def _tree(tree: Any, classifier: bool, n_classes: int) -> Tree:
    # NaN stays with the library: a forest's missing-value routing is not taken here.
    value = tree.value[:, 0, :n_classes] if classifier else tree.value[:, 0, 0]
    return Tree(
        feature=np.maximum(tree.feature, 0),
        threshold=tree.threshold,
        left=tree.children_left,
        right=tree.children_right,
        value=value,
    )
