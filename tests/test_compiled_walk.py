"""The numba-compiled tree walk against numpy's: the same leaves summed to the same bits, for every
family and every routing rule (NaN default directions, LightGBM's zero-as-missing, a forest's
per-class leaves), and the switch between them. Parity with the libraries themselves is in
test_lean_trees.py, which runs on the compiled walk (numba is in the dev install) and, for
micro-batched requests, on both."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)

from sagehost.config import Settings
from sagehost.models import boosters, fast
from sagehost.models.trees import compiled
from sagehost.models.trees.flat import FlatTrees, Tree
from sagehost.models.trees.path import TreePath
from sagehost.models.trees.xgb import XGBOOST_STEPS
from sagehost.predictor import Rows

Array = np.ndarray[Any, Any]


@pytest.fixture(params=["compiled", "numpy"])
def tree_walk(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each walk in turn, as Settings.compiled_trees chooses it when a model loads."""
    compiled.use(request.param == "compiled")
    try:
        yield request.param
    finally:
        compiled.use(True)


@pytest.fixture(scope="module")
def data() -> tuple[Array, Array]:
    x, y = make_classification(n_samples=1500, n_features=6, n_informative=4, n_classes=3, random_state=1)
    x[::13, 1] = np.nan  # trained with NaN: the trees learn where it goes
    x[::7, 2] = 0.0
    return x, y


def xgboost_multiclass(x: Array, y: Array) -> Any:
    return xgb.XGBClassifier(n_estimators=25, max_depth=5, n_jobs=1).fit(x, y)


def lightgbm_zero_as_missing(x: Array, y: Array) -> Any:
    return lgb.LGBMClassifier(n_estimators=25, zero_as_missing=True, verbose=-1, n_jobs=1).fit(x, y % 2)


def lightgbm_nan(x: Array, y: Array) -> Any:
    return lgb.LGBMClassifier(n_estimators=25, verbose=-1, n_jobs=1).fit(x, y)


def hist_gradient_boosting(x: Array, y: Array) -> Any:
    return HistGradientBoostingClassifier(max_iter=25, early_stopping=False, random_state=0).fit(x, y)


def forest(x: Array, y: Array) -> Any:
    return RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0).fit(np.nan_to_num(x), y)


def forest_regressor(x: Array, y: Array) -> Any:
    return RandomForestRegressor(n_estimators=15, max_depth=8, random_state=0).fit(np.nan_to_num(x), y * 1.5)


MODELS: list[Callable[[Array, Array], Any]] = [
    xgboost_multiclass,
    lightgbm_zero_as_missing,
    lightgbm_nan,
    hist_gradient_boosting,
    forest,
    forest_regressor,
]


def flat_trees(model: Any) -> tuple[TreePath, FlatTrees]:
    path = fast.build_path(model)
    assert isinstance(path, TreePath), type(model)
    return path, path.trees


def walk() -> compiled.Kernel:
    kernel = compiled.kernel()
    assert kernel is not None, "numba is part of the dev install"
    return kernel


@pytest.mark.parametrize("fit", MODELS, ids=lambda f: f.__name__)
def test_both_walks_sum_the_same_leaves_bit_for_bit(
    fit: Callable[[Array, Array], Any], data: tuple[Array, Array]
) -> None:
    x, y = data
    path, trees = flat_trees(fit(x, y))
    clean, edge = trees.probe_rows(x.shape[1])
    rng = np.random.default_rng(2)
    batches = [clean, edge, x[:1], x[1:8], x[rng.choice(len(x), 300)], edge[:1]]
    routes_nan = trees.nan_right is not None
    for batch in batches:
        rows = np.ascontiguousarray(batch, dtype=np.float64)
        numpy_sums = trees.numpy_sums(rows)
        compiled_sums = trees.compiled_sums(rows, walk())
        if numpy_sums is None:  # a NaN these trees cannot route: both leave it to the library
            assert compiled_sums is None and not routes_nan and np.isnan(rows).any()
            continue
        assert compiled_sums is not None
        assert compiled_sums.dtype == numpy_sums.dtype and compiled_sums.shape == numpy_sums.shape
        np.testing.assert_array_equal(compiled_sums, numpy_sums, strict=True)


def test_the_rules_each_model_exercises(data: tuple[Array, Array]) -> None:
    """The parity above covers every routing rule: NaN both ways, zero-as-missing, a forest that
    takes no NaN and leaves of several values."""
    x, y = data
    assert flat_trees(lightgbm_zero_as_missing(x, y))[1].zero_right is not None
    _, hgb = flat_trees(hist_gradient_boosting(x, y))
    assert hgb.nan_right is not None and hgb.nan_right.any() and (~hgb.nan_right[hgb.internal]).any()
    _, trees = flat_trees(forest(x, y))
    assert trees.nan_right is None and trees.value.ndim == 2
    assert np.isnan(trees.probe_rows(x.shape[1])[1]).any()


def test_a_nan_the_trees_cannot_route_stops_the_compiled_walk(data: tuple[Array, Array]) -> None:
    x, y = data
    path, trees = flat_trees(forest(x, y))
    rows = np.nan_to_num(x[:50])
    rows[49, 3] = np.nan  # the last row: the walk has summed others before it meets the NaN
    assert trees.compiled_sums(rows, walk()) is None
    assert path.predict(rows, "predict_proba") is None  # the library answers that batch


def test_sagehost_compiled_trees_0_keeps_numpy_s_walk(
    caplog: pytest.LogCaptureFixture, data: tuple[Array, Array], tmp_path: Path
) -> None:
    x, y = data
    model = xgboost_multiclass(x, y)
    settings = Settings.from_environ({"SAGEHOST_COMPILED_TREES": "0", "SAGEHOST_MODEL_DIR": str(tmp_path)})
    assert settings.compiled_trees is False
    try:
        with caplog.at_level(logging.INFO, logger="sagehost.models"):
            compiled.use(settings.compiled_trees)
            assert compiled.kernel() is None
            path, trees = flat_trees(model)
        assert "walked by numpy (SAGEHOST_COMPILED_TREES=0)" in caplog.text
        # numpy's walk hands batches to XGBoost from its own, smaller crossover
        assert path.max_rows == XGBOOST_STEPS.numpy // (trees.n_trees * trees.depth)
    finally:
        compiled.use(True)
    path, trees = flat_trees(model)
    assert path.max_rows == XGBOOST_STEPS.compiled // (trees.n_trees * trees.depth)


BROKEN_NUMBA = """
import logging, sys
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sagehost.models.estimator import EstimatorModel
from sagehost.models.trees import compiled
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
x = np.random.default_rng(0).normal(size=(200, 3))
model = EstimatorModel(HistGradientBoostingClassifier(max_iter=5).fit(x, x[:, 0] > 0), "hgb")
print("lean", model.uses_fast_path, "compiled", compiled.kernel() is not None)
"""


def test_a_numba_that_fails_to_import_leaves_trees_to_numpy_s_walk(tmp_path: Path) -> None:
    """A numba on the path that does not match this numpy (pulled in by another package, say)
    must not stop a tree model from loading: the walk is numpy's, and the log says why."""
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.3 or less. Got NumPy 2.4.")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_NUMBA], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "lean True compiled False" in done.stdout
    assert "numba failed (ImportError: Numba needs NumPy 2.3 or less" in done.stderr


def test_the_walk_compiles_at_load_not_on_a_request(data: tuple[Array, Array]) -> None:
    """Proving the path at load runs the walk, so numba compiles it then (before a fork); a
    request then finds the machine code for its dtypes, whatever layout its rows arrive in."""
    x, y = data
    model = xgboost_multiclass(x, y)
    estimator_path = fast.compile_for(model, fast_spec(model))
    assert estimator_path is not None
    kernel: Any = walk()
    signatures = set(kernel.signatures)
    rows = np.asfortranarray(x[:5])  # not C-contiguous, float64
    assert estimator_path.predict(rows, "predict_proba") is not None
    assert set(kernel.signatures) == signatures


def fast_spec(model: Any) -> Any:
    from sagehost.models.estimator import describe

    return describe(model, type(model).__name__)


@pytest.mark.usefixtures("tree_walk")
def test_rows_narrower_than_the_trees_split_on_are_left_to_the_library(data: tuple[Array, Array]) -> None:
    """The compiled walk reads rows without bounds checks: a row must hold every feature a split
    reads, or neither walk touches it (the library then says what is wrong)."""
    x, y = data
    path, trees = flat_trees(hist_gradient_boosting(x, y))
    assert trees.width == x.shape[1]
    narrow = np.ascontiguousarray(x[:4, : trees.width - 1])
    assert trees.sums(narrow) is None
    assert path.predict(narrow, "predict_proba") is None
    assert trees.sums(np.ascontiguousarray(x[:4])) is not None


def test_child_links_that_do_not_form_trees_leave_the_model_to_the_library(caplog: pytest.LogCaptureFixture) -> None:
    """XGBoost loads and predicts a JSON model whose node has the same left and right child; the
    walk's layout (siblings side by side, read unchecked when compiled) must refuse it at load."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    booster = xgb.train({"max_depth": 2, "objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, x[:, 0] > 0), 3)
    model = json.loads(booster.save_raw("json"))
    tree = model["learner"]["gradient_booster"]["model"]["trees"][-1]
    split = max(i for i, child in enumerate(tree["left_children"]) if child >= 0)
    tree["right_children"][split] = tree["left_children"][split]
    damaged = xgb.Booster()
    damaged.load_model(bytearray(json.dumps(model).encode()))
    with caplog.at_level(logging.INFO, logger="sagehost.models"):
        served = boosters.xgboost(damaged, "damaged", 1)
    assert not served.uses_fast_path
    assert "a node is reached twice" in caplog.text
    np.testing.assert_array_equal(served.predict(Rows(x[:5]), "predict"), damaged.inplace_predict(x[:5]))


@pytest.mark.usefixtures("tree_walk")
@pytest.mark.parametrize(("from_zero", "sign"), [(True, 1.0), (False, -1.0)])
def test_a_negative_zero_sum_keeps_the_library_s_sign(from_zero: bool, sign: float) -> None:
    """scikit-learn and LightGBM add the first leaf to 0.0 (-0.0 becomes 0.0); XGBoost starts from
    its base margin as it is. Either way one row and many rows agree, on both walks."""
    leaf = Tree(
        feature=np.zeros(1, dtype=np.intp),
        threshold=np.zeros(1),
        left=np.full(1, -1),
        right=np.full(1, -1),
        value=np.array([-0.0]),
        nan_left=np.zeros(1, dtype=bool),
    )
    trees = FlatTrees([leaf, leaf], from_zero=from_zero)
    for rows in (1, 3):
        sums = trees.sums(np.zeros((rows, 1)))
        assert sums is not None
        np.testing.assert_array_equal(np.copysign(1.0, sums), np.full((1, rows), sign))
