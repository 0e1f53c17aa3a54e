from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_regression
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from sagehost.config import Method
from sagehost.models import fast
from sagehost.models.estimator import EstimatorModel
from sagehost.predictor import Rows

Data = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]


@pytest.mark.parametrize(
    "estimator",
    [RandomForestClassifier(n_estimators=40, random_state=0), ExtraTreesClassifier(n_estimators=20, random_state=0)],
)
def test_forest_lean_path_matches_library_exactly(estimator: Any, numeric_data: Data) -> None:
    x, y = numeric_data
    estimator.fit(x, y)
    model = EstimatorModel(estimator, "forest")
    assert model.uses_fast_path
    for rows in (x[:1], x[:37], x):
        assert np.array_equal(model.predict(Rows(rows), "predict_proba"), estimator.predict_proba(rows))
        assert np.array_equal(model.predict(Rows(rows), "predict"), estimator.predict(rows))


def test_forest_regressor_matches_library() -> None:
    x, y = make_regression(n_samples=300, n_features=5, random_state=0)
    forest = RandomForestRegressor(n_estimators=20, random_state=0).fit(x, y)
    model = EstimatorModel(forest, "forest")
    assert model.uses_fast_path
    assert np.allclose(model.predict(Rows(x), "predict"), forest.predict(x), rtol=1e-12)


def test_missing_values_fall_back_to_the_library(numeric_data: Data) -> None:
    x, y = numeric_data
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)
    rows = x[:5].copy()
    rows[0, 3] = np.nan
    model = EstimatorModel(forest, "forest")
    assert np.array_equal(model.predict(Rows(rows), "predict_proba"), forest.predict_proba(rows))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_lean_path_matches_library(n_classes: int, numeric_data: Data) -> None:
    x, y = numeric_data
    y = y % n_classes
    logistic = LogisticRegression(max_iter=1000).fit(x, y)
    model = EstimatorModel(logistic, "logistic")
    assert model.uses_fast_path
    methods: tuple[Method, ...] = ("predict", "predict_proba", "decision_function")
    for method in methods:
        ours = model.predict(Rows(x), method)
        assert np.allclose(ours, getattr(logistic, method)(x), rtol=1e-12, atol=0)


def test_lean_path_can_be_turned_off(numeric_data: Data) -> None:
    x, y = numeric_data
    assert not EstimatorModel(LogisticRegression().fit(x, y), "x", fast_path=False).uses_fast_path


def test_build_path_gives_unchecked_paths_for_covered_types_only(numeric_data: Data) -> None:
    x, y = numeric_data
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    path = fast.build_path(forest)
    assert path is not None and path.methods == {"predict", "predict_proba"}
    answer = path.predict(x[:3], "predict_proba")
    assert answer is not None and np.array_equal(answer, forest.predict_proba(x[:3]))
    tuned = type("Tuned", (RandomForestClassifier,), {})  # a subclass may change predict: not covered
    assert fast.build_path(tuned(n_estimators=5).fit(x, y)) is None
    assert fast.build_path(make_regression) is None
