"""A review of the lean paths: inputs the proof at load did not cover, where a lean path answered
differently from the library (or answered where the library raises). Each test pins one defect:
the lean path now agrees with the library, or declines and leaves the input to it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from sagehost.config import Method
from sagehost.models.estimator import EstimatorModel
from sagehost.predictor import Outputs, Rows

Data = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]


def outcome(call: Callable[[], Outputs]) -> tuple[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "answer", np.asarray(call())
        except Exception as exc:  # the library's own error, as sagehost's boundary sees it
            return "raised", (type(exc), str(exc))


def assert_same_as_library(model: EstimatorModel, rows: Rows, method: Method) -> None:
    library = EstimatorModel(model.estimator, "library", fast_path=False)
    ours, theirs = outcome(lambda: model.predict(rows, method)), outcome(lambda: library.predict(rows, method))
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "raised":
        assert ours[1] == theirs[1]
    else:
        np.testing.assert_array_equal(ours[1], theirs[1])


def assert_refused(model: EstimatorModel, rows: Rows, method: Method) -> None:
    """The library raises on these rows, and so does the model, lean path on."""
    assert_same_as_library(model, rows, method)
    assert outcome(lambda: model.predict(rows, method))[0] == "raised"


# A forest compares float32 inputs, and scikit-learn refuses a value float32 cannot hold: inf,
# and anything past float32's largest (1e39 becomes inf there). The lean walk answered.
@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e39, -1e39, 3.4028236e38])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_forest_leaves_values_beyond_float32_to_the_library(value: float, kind: str, numeric_data: Data) -> None:
    x, y = numeric_data
    forest = (
        RandomForestClassifier(n_estimators=8, random_state=0).fit(x, y)
        if kind == "classifier"
        else ExtraTreesRegressor(n_estimators=8, random_state=0).fit(x, y.astype(float))
    )
    model = EstimatorModel(forest, "forest")
    assert model.uses_fast_path
    rows = x[:4].copy()
    rows[2, 1] = value
    for method in model.spec.methods:
        assert_refused(model, Rows(rows), method)  # type: ignore[arg-type]
    declined = model.declined
    assert declined == 2 * len(model.spec.methods)  # left to the library, not answered wrong
    assert_same_as_library(model, Rows(x[:4]), "predict")
    assert model.declined == declined  # the clean rows stay lean


# LogisticRegression refuses NaN and infinity ("Input X contains NaN"); the lean path answered NaN
# probabilities (and class 0) for a JSON null or "" and 0/1 probabilities for "inf" in CSV.
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_logistic_leaves_missing_and_infinite_values_to_the_library(value: float, numeric_data: Data) -> None:
    x, y = numeric_data
    model = EstimatorModel(LogisticRegression(max_iter=500).fit(x, y), "logistic")
    assert model.uses_fast_path
    rows = x[:3].copy()
    rows[0, 4] = value
    methods: tuple[Method, ...] = ("predict", "predict_proba", "decision_function")
    for method in methods:
        assert_refused(model, Rows(rows), method)
    assert model.declined == 6
