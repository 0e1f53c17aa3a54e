"""A review of the lean paths: inputs the proof at load did not cover, where a lean path answered
differently from the library (or answered where the library raises). Each test pins one defect:
the lean path now agrees with the library, or declines and leaves the input to it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from sagehost.codecs.decode import decode
from sagehost.config import Method
from sagehost.models import schema
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


def conformed(records: list[dict[str, Any]], model: EstimatorModel) -> Rows:
    """The rows exactly as a JSON request of these records reaches the model."""
    return schema.conform(decode(orjson.dumps(records), "application/json"), model.spec)


# One encoder over a text column and an integer column (a DataFrame's str and int64 columns):
# every column of the part was typed text, so a JSON 20 reached the encoder as "20", which no
# integer category matches: unknown, all zeros, on the lean path and the library path alike,
# where scikit-learn given the same records answers with the category's column. Behind an
# imputer the integer categories are an object array, typed text too; and a nested
# ColumnTransformer's text columns were typed numbers, so every request was refused.
def _parts(kind: str) -> Any:
    from sklearn.impute import SimpleImputer

    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    return {
        "one-hot": OneHotEncoder(handle_unknown="ignore"),
        "ordinal": ordinal,
        "imputed": make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
        "nested": ColumnTransformer([("inner", OneHotEncoder(handle_unknown="ignore"), [0, 1])]),
    }[kind]


@pytest.mark.parametrize("kind", ["one-hot", "ordinal", "imputed", "nested"])
def test_an_integer_column_encoded_beside_a_text_column_matches_as_a_number(kind: str) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"city": rng.choice(["a", "b", "c"], 200), "zip": rng.choice([10, 20, 30], 200), "x": rng.normal(size=200)}
    )
    target = ((frame["zip"] == 20) | (frame["city"] == "a")).to_numpy().astype(int)
    parts = ColumnTransformer([("codes", _parts(kind), ["city", "zip"]), ("scaled", StandardScaler(), ["x"])])
    pipeline = make_pipeline(parts, LogisticRegression()).fit(frame, target)
    records = [
        {"city": "b", "zip": 20, "x": 0.1},
        {"city": "b", "zip": 10, "x": 0.1},
        {"city": "c", "zip": 30.0, "x": 2},
    ]
    expected = pipeline.predict_proba(pd.DataFrame(records))  # scikit-learn on the user's records
    for fast_path in (True, False):
        model = EstimatorModel(pipeline, "mixed", fast_path=fast_path)
        for batch in (records, records[:1]):
            answer = model.predict(conformed(batch, model), "predict_proba")
            np.testing.assert_allclose(answer, expected[: len(batch)], rtol=1e-9)
    assert EstimatorModel(pipeline, "mixed").uses_fast_path is (kind != "imputed")  # text and numbers imputed together


# LightGBM reads an input past ±1e300 (and infinity) as ±1e300 (Common::AvoidInf). A split that
# parts NaN from all numbers sits at 1e300, numbers left: the walk sent 1.5e300 and inf right, with
# NaN. The proof's probe rows hold inf there, so such a model lost its lean path at load; one
# whose 1e300 node the probes missed would have answered wrong.
def test_lightgbm_reads_huge_values_and_infinity_as_1e300() -> None:
    lightgbm = pytest.importorskip("lightgbm")
    from sagehost.models.trees import lgbm

    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 1.0, np.nan], size=(500, 1))
    y = np.isnan(x[:, 0]).astype(float) + rng.normal(size=500) * 0.01
    model = lightgbm.LGBMRegressor(n_estimators=3, min_child_samples=2, verbose=-1).fit(x, y)
    root = model.booster_.dump_model()["tree_info"][0]["tree_structure"]
    assert (root["threshold"], root["missing_type"]) == (1e300, "NaN")
    rows = np.array([[1.0], [1e300], [1.5e300], [np.inf], [-np.inf], [-1.5e300], [np.nan], [1e-36]])
    path = lgbm.wrapper_path(model)
    assert path is not None
    walked = path.predict(rows, "predict")
    assert walked is not None
    np.testing.assert_allclose(walked, model.predict(rows), rtol=1e-12)
    served = EstimatorModel(model, "lgbm")
    assert served.uses_fast_path
    assert_same_as_library(served, Rows(rows), "predict")


# The walk gathers (trees, rows, classes) leaf values before summing them. A 20-tree forest of
# 200 classes took ~1,200 rows a batch (its cut-off counts tree steps only): ~40 MB for a batch
# the library answers in ~2 MB. Batches now stay under a leaf-value budget; bigger ones are the
# library's.
def test_a_forest_of_many_classes_walks_batches_of_bounded_memory() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4))
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, rng.integers(0, 200, 2000))
    model = EstimatorModel(forest, "forest")
    assert model.uses_fast_path
    for size in (1, 300, 1024, 2048):
        rows = rng.normal(size=(size, 4))
        tracemalloc.start()
        try:
            answer = model.predict(Rows(rows), "predict_proba")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 24e6, (size, peak)
        np.testing.assert_array_equal(answer, forest.predict_proba(rows))


# A one-hot column of thousands of categories: the lean path's matrix is dense where the
# library's is sparse. A 2,000-row batch of 20,000 categories held ~600 MB (and took 14x the
# library's time); now the matrix is made in ~1 MB chunks, and a batch of more than 128 rows of
# a mostly one-hot output is left to the library.
def test_a_wide_one_hot_output_keeps_batches_bounded() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"merchant": [f"m{i}" for i in rng.integers(0, 3000, 6000)], "x": rng.normal(size=6000)})
    parts = ColumnTransformer(
        [("merchant", OneHotEncoder(handle_unknown="ignore"), ["merchant"]), ("x", StandardScaler(), ["x"])]
    )
    pipeline = make_pipeline(parts, LogisticRegression(max_iter=2000)).fit(frame, rng.integers(0, 2, 6000))
    model = EstimatorModel(pipeline, "wide")
    assert model.uses_fast_path
    pairs = zip(frame["merchant"], frame["x"], strict=True)
    records: list[dict[str, Any]] = [{"merchant": m, "x": x} for m, x in pairs]
    for size, declined in ((1, 0), (100, 0), (2000, 1)):
        rows = conformed(records[:size], model)
        tracemalloc.start()
        try:
            answer = model.predict(rows, "predict_proba")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16e6, (size, peak)
        np.testing.assert_allclose(answer, pipeline.predict_proba(frame.iloc[:size]), rtol=1e-9)
        assert model.declined == declined  # 2,000 rows: the library's sparse matrix


# The proof at load tried 120 edge rows one at a time, each a library call over the whole width:
# a 300-column pipeline (100 one-hot, 200 imputed and scaled) took ~15 s to load. Past 50 columns
# fewer single rows are sampled, and one row per edge value sets it in every column at once.
def test_the_proof_of_a_wide_pipeline_makes_few_library_calls() -> None:
    from sklearn.impute import SimpleImputer

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"n{i}": rng.normal(size=200) for i in range(200)})
    frame["t"] = rng.choice(["a", "b", "c"], 200)
    numbers = make_pipeline(SimpleImputer(), StandardScaler())
    parts = ColumnTransformer([("t", OneHotEncoder(handle_unknown="ignore"), ["t"]), ("n", numbers, list(frame)[:-1])])
    pipeline = make_pipeline(parts, LogisticRegression(max_iter=1000)).fit(frame, rng.integers(0, 2, 200))
    calls = []
    library = pipeline.predict_proba

    def counted(x: Any) -> Any:
        calls.append(len(x))
        return library(x)

    pipeline.predict_proba = counted  # the library's method, counted: sagehost's code runs as is
    model = EstimatorModel(pipeline, "wide")
    assert model.uses_fast_path
    single = sum(1 for n in calls if n == 1)
    assert 24 <= single <= 50, calls
    row = [{str(k): v.item() if isinstance(v, np.generic) else v for k, v in frame.iloc[0].items()}]
    np.testing.assert_allclose(model.predict(conformed(row, model), "predict_proba"), library(frame.iloc[:1]))


# HistGradientBoosting parts NaN from every number with a split at +inf. The probe rows spread
# each feature from its smallest split - 1 to its largest + 1: uniform(low, inf) raised
# OverflowError, and a model trained with missing values lost its lean path at load.
def test_histgradientboosting_with_a_split_at_infinity_keeps_its_lean_path() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    x[rng.random(400) < 0.3, 0] = np.nan
    y = np.where(np.isnan(x[:, 0]), "missing", np.where(x[:, 1] > 0, "up", "down"))
    hgb = HistGradientBoostingClassifier(max_iter=5).fit(x, y)
    assert any(np.isinf(p.nodes["num_threshold"]).any() for iteration in hgb._predictors for p in iteration)
    model = EstimatorModel(hgb, "hgb")
    assert model.uses_fast_path
    rows = np.array([[np.nan, 1.0], [np.inf, -1.0], [0.5, 0.5], [-np.inf, np.nan]])
    np.testing.assert_array_equal(model.predict(Rows(rows), "predict"), hgb.predict(rows))
    np.testing.assert_allclose(model.predict(Rows(rows), "predict_proba"), hgb.predict_proba(rows), rtol=1e-9)
    np.testing.assert_allclose(model.predict(Rows(rows), "decision_function"), hgb.decision_function(rows), rtol=1e-9)
    assert model.declined == 0


# An XGBoost binary:logistic Booster trained on labels all 0 has base_score 0: its margin,
# -log(1/0 - 1), raised ZeroDivisionError while the lean path was built, and the model failed
# to load at all. The library serves it.
def test_an_xgboost_booster_with_base_score_zero_loads() -> None:
    xgboost = pytest.importorskip("xgboost")
    from sagehost.models import boosters

    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(x, label=np.zeros(100)), 3)
    model = boosters.xgboost(booster, "zeros", 1)
    np.testing.assert_array_equal(model.predict(Rows(x[:5]), "predict"), booster.inplace_predict(x[:5]))
