"""Lean pipelines (sagehost.models.lean) against scikit-learn itself, on really trained pipelines.

Every answer is compared with what sagehost gave before the lean path existed: the library's own
method on the DataFrame sagehost builds (`EstimatorModel(..., fast_path=False)`), on rows decoded
and conformed exactly as requests are. Where the library raises, the lean path must leave the
batch to it (counted in `EstimatorModel.declined`) so the same exception comes out.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)
from sklearn.svm import SVC

from sagehost.codecs.decode import decode
from sagehost.config import Method, Settings
from sagehost.models import lean, schema
from sagehost.models.estimator import EstimatorModel
from sagehost.predictor import Model, ModelSpec, Outputs, Rows
from sagehost.server import build_service, load_and_warm
from sagehost.service import Service

TEXT = ["colour", "city", "flag"]
NUMBERS = ["amount", "age"]
METHODS: tuple[Method, ...] = ("predict", "predict_proba", "decision_function")


def training_frame(n: int = 300, seed: int = 0, missing: bool = False) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue", "black"], n, p=[0.45, 0.3, 0.22, 0.03]),
            "city": rng.choice(["paris", "lyon", "nice", "rome", "oslo"], n),
            "flag": rng.choice(["y", "n"], n),
            "amount": rng.lognormal(3, 1, n),
            "age": rng.integers(18, 90, n).astype(float),
            "code": rng.choice([1, 2, 3], n),
        }
    )
    if missing:
        frame.loc[rng.random(n) < 0.1, "colour"] = None
        frame.loc[rng.random(n) < 0.1, "amount"] = np.nan
    target = (frame["city"].isin(["paris", "nice"]) ^ (frame["age"] > 50)).astype(int).to_numpy().copy()
    target[frame["colour"].to_numpy() == "green"] = 2
    return frame, target


def records_for(frame: pd.DataFrame, columns: list[str], count: int = 40, seed: int = 1) -> list[dict[str, Any]]:
    """Typical rows, then edge rows: unknown categories, None, "", a number in a text field,
    missing and extreme numbers."""
    rng = np.random.default_rng(seed)
    typical = [{c: _plain(frame[c].iloc[int(rng.integers(len(frame)))]) for c in columns} for _ in range(count)]
    edges = []
    for column in columns:
        text = column in TEXT
        for edge in ["zzz", None, "", 7, "x" * 300] if text else [None, 1e300, -1e300, 0.0, 123456.5]:
            edges.append({**typical[0], column: edge})
    return typical + edges


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return None if np.isnan(value) else value.item()
    return value


def conformed(records: list[dict[str, Any]], spec: ModelSpec) -> Rows:
    """The rows exactly as a JSON request of these records reaches the model."""
    return schema.conform(decode(orjson.dumps(records), "application/json"), spec)


def outcome(call: Callable[[], Outputs]) -> tuple[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library warns on unknown categories with drop=...
        try:
            return "answer", np.asarray(call())
        except Exception as exc:  # the library's own error, as sagehost's boundary would see it
            return "raised", (type(exc), str(exc))


def assert_same(model: EstimatorModel, library: EstimatorModel, rows: Rows, method: Method) -> None:
    ours = outcome(lambda: model.predict(rows, method))
    theirs = outcome(lambda: library.predict(rows, method))
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "raised":
        assert ours[1] == theirs[1]
    elif theirs[1].dtype == np.float32:  # XGBoost's answers: equal to float32's last bits
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-6)
    elif theirs[1].dtype.kind == "f":
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_array_equal(ours[1], theirs[1])


def check_parity(pipeline: Any, frame: pd.DataFrame, columns: list[str]) -> EstimatorModel:
    """The lean path is on, and equals the library on one batch, single rows and small batches."""
    model = EstimatorModel(pipeline, "pipeline")
    library = EstimatorModel(pipeline, "pipeline", fast_path=False)
    assert model.uses_fast_path
    records = records_for(frame, columns)
    methods = [m for m in METHODS if m in model.spec.methods]
    typical = conformed(records[:40], model.spec)
    before = model.declined
    for method in methods:
        assert_same(model, library, typical, method)
    assert model.declined == before, "the lean path left ordinary rows to the library"
    for method in methods:
        assert_same(model, library, conformed(records, model.spec), method)
    for record in records[40:] + records[:3]:
        assert_same(model, library, conformed([record], model.spec), "predict_proba")
    for pair in zip(records[40::2], records[41::2], strict=False):
        assert_same(model, library, conformed(list(pair), model.spec), methods[0])
    return model


def by_name(parts: list[tuple[str, Any, Any]], final: Any, **options: Any) -> Pipeline:
    return make_pipeline(ColumnTransformer(parts, **options), final)


# ---- parity, step by step and combined -------------------------------------------------------


@pytest.mark.parametrize("sparse_threshold", [0.0, 1.0])
def test_the_fraud_shape_one_hot_and_scaled_into_logistic_regression(sparse_threshold: float) -> None:
    frame, y = training_frame()
    pipeline = by_name(
        [("text", OneHotEncoder(handle_unknown="ignore"), TEXT), ("numbers", StandardScaler(), NUMBERS)],
        LogisticRegression(max_iter=1000),
        sparse_threshold=sparse_threshold,
    ).fit(frame[TEXT + NUMBERS], y)
    assert pipeline[0].sparse_output_ == (sparse_threshold == 1.0)  # the library scores a sparse matrix
    check_parity(pipeline, frame, TEXT + NUMBERS)


@pytest.mark.parametrize(
    "encoder",
    [
        OneHotEncoder(handle_unknown="ignore", drop="first"),
        OneHotEncoder(handle_unknown="ignore", drop="if_binary"),
        OneHotEncoder(handle_unknown="ignore", drop=["blue", "lyon", "y"]),
        OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=0.05),
        OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=3, drop="first"),
        OneHotEncoder(handle_unknown="ignore", max_categories=3),
        OneHotEncoder(handle_unknown="warn", min_frequency=20),
        OneHotEncoder(handle_unknown="error", sparse_output=False),
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, min_frequency=20),
        OrdinalEncoder(handle_unknown="error", max_categories=3),
    ],
    ids=lambda e: repr(e)[:60],
)
def test_encoders_settings(encoder: Any) -> None:
    frame, y = training_frame()
    pipeline = by_name(
        [("text", encoder, TEXT), ("numbers", MinMaxScaler(feature_range=(-1, 2), clip=True), NUMBERS)],
        LogisticRegression(max_iter=2000),
    ).fit(frame[TEXT + NUMBERS], y)
    check_parity(pipeline, frame, TEXT + NUMBERS)


def test_missing_values_imputed_then_encoded_and_scaled_into_a_forest() -> None:
    frame, y = training_frame(missing=True)
    text = make_pipeline(
        SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore", drop="if_binary")
    )
    numbers = make_pipeline(SimpleImputer(strategy="median"), RobustScaler())
    pipeline = by_name(
        [("text", text, TEXT), ("numbers", numbers, NUMBERS)],
        RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0),
    ).fit(frame[TEXT + NUMBERS], y)
    check_parity(pipeline, frame, TEXT + NUMBERS)


def test_missing_text_as_its_own_category_and_a_constant_fill() -> None:
    frame, y = training_frame(missing=True)
    text = [
        ("seen_missing", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
        ("filled", make_pipeline(SimpleImputer(strategy="constant", fill_value="none"), OrdinalEncoder()), ["city"]),
        ("ordinal", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=9), ["flag"]),
    ]
    numbers = ("numbers", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(with_mean=False)), NUMBERS)
    pipeline = by_name([*text, numbers], LogisticRegression(max_iter=2000)).fit(frame[TEXT + NUMBERS], y)
    assert any(isinstance(c, float) for c in pipeline[0].named_transformers_["seen_missing"].categories_[0])
    check_parity(pipeline, frame, TEXT + NUMBERS)


def test_none_as_a_category_of_an_object_column() -> None:
    """Trained on an object column holding None itself: a request's None matches it only when it
    stays None, which pandas decides per batch; the lean path follows."""
    frame, y = training_frame()
    frame["colour"] = frame["colour"].astype(object)
    frame.loc[frame.index[::7], "colour"] = None
    pipeline = by_name(
        [("text", OneHotEncoder(handle_unknown="ignore"), TEXT)],
        LogisticRegression(max_iter=3000),
        remainder="passthrough",
    ).fit(frame[TEXT + NUMBERS], y)
    check_parity(pipeline, frame, TEXT + NUMBERS)


def test_many_numbers_in_one_part_and_infinities_from_csv() -> None:
    frame, y = training_frame()
    frame["double"], frame["older"], frame["code"] = frame["amount"] * 2, frame["age"] + 3, frame["code"] * 1.0
    numbers = [*NUMBERS, "double", "older", "code"]
    pipeline = by_name(
        [("text", OneHotEncoder(handle_unknown="ignore"), TEXT), ("numbers", RobustScaler(), numbers)],
        LogisticRegression(max_iter=2000),
    ).fit(frame[TEXT + numbers], y)
    model = check_parity(pipeline, frame, TEXT + numbers)
    library = EstimatorModel(pipeline, "library", fast_path=False)
    header = ",".join(TEXT + numbers)
    for body in ("red,paris,y,inf,40,1,2,3", "red,paris,y,12,-inf,1,2,3\nblue,rome,n,1,2,3,4,5"):
        rows = schema.conform(decode(f"{header}\n{body}\n".encode(), "text/csv"), model.spec)
        for method in METHODS:
            assert_same(model, library, rows, method)


def test_a_big_payload_in_chunks_keeps_the_whole_batchs_rule_for_none() -> None:
    """5,200 rows go through 2,048 at a time; the first chunk's colours are all None, which in
    the whole batch (as pandas sees it) are NaN, a category this encoder learnt."""
    frame, y = training_frame(missing=True)
    numbers = make_pipeline(SimpleImputer(), StandardScaler())
    pipeline = by_name(
        [("text", OneHotEncoder(handle_unknown="ignore"), TEXT), ("numbers", numbers, NUMBERS)],
        LogisticRegression(max_iter=1000),
    ).fit(frame[TEXT + NUMBERS], y)
    model = EstimatorModel(pipeline, "big")
    library = EstimatorModel(pipeline, "big", fast_path=False)
    records = records_for(frame, TEXT + NUMBERS)[:40] * 130
    records = [{**r, "colour": None} if i < 2100 else r for i, r in enumerate(records)]
    rows = conformed(records, model.spec)
    assert_same(model, library, rows, "predict_proba")
    assert model.declined == 0
    alone = model.predict(conformed(records[:1], model.spec), "predict_proba")  # None alone stays None
    assert not np.allclose(alone, model.predict(rows, "predict_proba")[:1])


def test_numbers_one_hot_encoded_with_remainder_passthrough_and_weights() -> None:
    frame, y = training_frame(missing=True)
    frame["code"] = frame["code"].astype(float)
    frame.loc[frame.index[::9], "code"] = np.nan
    columns = ["code", *NUMBERS, "flag"]
    pipeline = by_name(
        [
            ("code", OneHotEncoder(handle_unknown="ignore"), ["code"]),
            ("flag", OneHotEncoder(), ["flag"]),
            ("amount", SimpleImputer(keep_empty_features=True), ["amount"]),
        ],
        LogisticRegression(max_iter=2000),
        remainder=StandardScaler(),
        transformer_weights={"code": 2.0},
    ).fit(frame[columns], y)
    check_parity(pipeline, frame, columns)


def test_all_numeric_ndarray_by_index_mask_and_slice_nested_and_identity() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6)) * [1, 10, 100, 1, 1, 1000]
    x[rng.random(x.shape) < 0.05] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 2]) / 100 > 0).astype(int)
    columns = ColumnTransformer(
        [
            ("first", make_pipeline(SimpleImputer(), StandardScaler()), [0, 1]),
            (
                "mask",
                make_pipeline(SimpleImputer(strategy="median"), MinMaxScaler()),
                [False, False, True] + [False] * 3,
            ),
            (
                "slice",
                make_pipeline(FunctionTransformer(), SimpleImputer(strategy="constant", fill_value=0.5)),
                slice(3, 5),
            ),
        ],
        remainder=make_pipeline(SimpleImputer(), RobustScaler(with_centering=False)),
    )
    pipeline = Pipeline(
        [("ident", FunctionTransformer()), ("columns", columns), ("none", None), ("lr", LogisticRegression())]
    )
    pipeline.fit(x, y)
    model = EstimatorModel(pipeline, "numeric")
    library = EstimatorModel(pipeline, "numeric", fast_path=False)
    assert model.uses_fast_path
    rows = np.vstack([x[:50], [[1e300, -1e300, 0.0, np.nan, 5.0, -2.0]]])
    for method in METHODS:
        assert_same(model, library, Rows(rows), method)
        assert_same(model, library, Rows(rows[-1:]), method)
        assert_same(model, library, Rows(rows[:1]), method)


def test_text_without_column_names_an_object_array_by_index() -> None:
    """Fitted on an object array: sagehost hands the library one too, where None stays None."""
    frame, y = training_frame(missing=True)
    columns = [*TEXT, *NUMBERS, "code"]
    array = frame[columns].to_numpy(dtype=object)
    array[:, 5] = [int(v) for v in array[:, 5]]  # Python ints, as an object array holds them
    pipeline = make_pipeline(
        ColumnTransformer(
            [
                ("text", OneHotEncoder(handle_unknown="ignore"), [0, 1, 2]),
                ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), [3, 4]),
                ("code", OneHotEncoder(handle_unknown="ignore"), [5]),
            ]
        ),
        LogisticRegression(max_iter=2000),
    ).fit(array, y)
    assert EstimatorModel(pipeline, "x").spec.feature_names is None
    check_parity(pipeline, frame, columns)


def test_an_all_missing_training_column_is_dropped_as_the_library_drops_it() -> None:
    frame, y = training_frame()
    frame["empty"] = np.nan
    columns = [*NUMBERS, "empty"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Skipping features without any observed values"
        pipeline = by_name(
            [("numbers", make_pipeline(SimpleImputer(), StandardScaler()), columns)],
            ExtraTreesClassifier(n_estimators=10, random_state=0),
        ).fit(frame[columns], y)
        check_parity(pipeline, frame, columns)


def test_a_regression_pipeline_by_column_selector() -> None:
    frame, _ = training_frame()
    columns = TEXT + NUMBERS
    pipeline = by_name(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), make_column_selector(dtype_include=object)),
            ("numbers", StandardScaler(), make_column_selector(dtype_include=np.number)),
        ],
        RandomForestRegressor(n_estimators=10, random_state=0),
        sparse_threshold=1.0,  # a sparse matrix reaches the forest; the lean path's is dense
    ).fit(frame[columns].astype({c: object for c in TEXT}), frame["amount"])
    assert pipeline[0].sparse_output_
    check_parity(pipeline, frame, columns)


def boosted(name: str) -> Any:
    if name == "hgb":
        return HistGradientBoostingClassifier(max_iter=15, random_state=0)
    xgboost = pytest.importorskip("xgboost")
    return xgboost.XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1)


@pytest.mark.parametrize("final", ["hgb", "xgboost"])
def test_a_boosted_final_estimator_from_the_tree_paths_takes_missing_numbers(final: str) -> None:
    frame, y = training_frame(missing=True)
    pipeline = by_name(
        [
            ("text", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), TEXT),
            ("n", "passthrough", NUMBERS),
        ],
        boosted(final),
    ).fit(frame[TEXT + NUMBERS], y)
    model = check_parity(pipeline, frame, TEXT + NUMBERS)
    record = {c: _plain(frame[c].iloc[0]) for c in TEXT + NUMBERS}
    library = EstimatorModel(pipeline, "library", fast_path=False)
    before = model.declined
    for batch in ([{**record, "amount": None}], [record, {**record, "age": None}]):
        assert_same(model, library, conformed(batch, model.spec), "predict_proba")
    assert model.declined == before  # NaN is the library's to take here, and so the lean path's


def test_a_batch_too_big_for_the_tree_walk_is_scored_by_the_librarys_final_step_alone() -> None:
    """The tree path leaves big batches to the library; the lean transforms still make the matrix
    and only the final estimator's own predict runs: the lean path answers (nothing declined)."""
    xgboost = pytest.importorskip("xgboost")
    frame, y = training_frame()
    pipeline = by_name(
        [("text", OneHotEncoder(handle_unknown="ignore", sparse_output=False), TEXT), ("n", StandardScaler(), NUMBERS)],
        xgboost.XGBClassifier(n_estimators=400, max_depth=6, n_jobs=1),
        sparse_threshold=0.0,
    ).fit(frame[TEXT + NUMBERS], y)
    model = check_parity(pipeline, frame, TEXT + NUMBERS)
    library = EstimatorModel(pipeline, "library", fast_path=False)
    big = conformed(records_for(frame, TEXT + NUMBERS, count=300)[:300], model.spec)
    before = model.declined
    assert_same(model, library, big, "predict_proba")
    assert model.declined == before


@pytest.mark.parametrize(
    ("steps", "columns"),
    [
        ([OneHotEncoder(handle_unknown="ignore"), LogisticRegression(max_iter=1000)], TEXT),
        (
            [
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2),
                ExtraTreesClassifier(5),
            ],
            TEXT,
        ),
        ([SimpleImputer(), MinMaxScaler(), StandardScaler(), LogisticRegression(max_iter=1000)], NUMBERS),
    ],
    ids=["one-hot", "ordinal", "numbers-by-name"],
)
def test_a_pipeline_without_a_column_transformer(steps: list[Any], columns: list[str]) -> None:
    frame, y = training_frame(missing=True)
    pipeline = make_pipeline(*steps).fit(frame[columns], y)
    check_parity(pipeline, frame, columns)


# ---- what the library must answer: declines and errors -----------------------------------------


def fraud_like(encoder: Any = None) -> tuple[Pipeline, pd.DataFrame]:
    frame, y = training_frame()
    pipeline = by_name(
        [("text", encoder or OneHotEncoder(handle_unknown="ignore"), TEXT), ("numbers", StandardScaler(), NUMBERS)],
        LogisticRegression(max_iter=1000),
    ).fit(frame[TEXT + NUMBERS], y)
    return pipeline, frame


def test_an_unknown_category_under_handle_unknown_error_raises_the_librarys_error() -> None:
    pipeline, frame = fraud_like(OneHotEncoder(handle_unknown="error"))
    model = EstimatorModel(pipeline, "strict")
    assert model.uses_fast_path
    record = {c: _plain(frame[c].iloc[0]) for c in TEXT + NUMBERS}
    for batch in ([{**record, "city": "atlantis"}], [record, {**record, "city": "atlantis"}]):
        rows = conformed(batch, model.spec)
        before = model.declined
        with pytest.raises(ValueError, match="Found unknown categories") as ours:
            model.predict(rows, "predict_proba")
        with pytest.raises(ValueError) as theirs:
            pipeline.predict_proba(pd.DataFrame(batch))
        assert str(ours.value) == str(theirs.value)
        assert model.declined == before + 1


def test_a_missing_number_reaching_logistic_regression_is_the_librarys_to_refuse(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline, frame = fraud_like()
    model = EstimatorModel(pipeline, "no imputer")
    record = {c: _plain(frame[c].iloc[0]) for c in TEXT + NUMBERS}
    with caplog.at_level(logging.INFO, logger="sagehost.models"):
        for batch in ([{**record, "amount": None}], [record, {**record, "age": None}]):
            before = model.declined
            with pytest.raises(ValueError, match="NaN"):
                model.predict(conformed(batch, model.spec), "predict")
            assert model.declined == before + 1
    assert caplog.text.count("The lean path left a batch") == 1  # once at INFO, then DEBUG


def test_a_method_the_lean_path_lacks_is_left_to_the_library() -> None:
    frame, y = training_frame()
    pipeline = by_name([("numbers", StandardScaler(), NUMBERS)], RandomForestRegressor(n_estimators=5)).fit(
        frame[NUMBERS], frame["amount"]
    )
    model = EstimatorModel(pipeline, "regressor")
    assert model.uses_fast_path
    rows = Rows(frame[NUMBERS].to_numpy()[:5])
    assert np.allclose(model.predict(rows, "predict"), pipeline.predict(frame[NUMBERS][:5]), rtol=1e-12)
    assert model.declined == 0


@pytest.mark.parametrize(
    "pipeline",
    [
        by_name([("numbers", make_pipeline(StandardScaler(), PolynomialFeatures()), NUMBERS)], LogisticRegression()),
        by_name([("numbers", FunctionTransformer(np.log1p), NUMBERS)], LogisticRegression(max_iter=5000)),
        by_name([("numbers", StandardScaler(), NUMBERS)], SVC()),
        by_name([("numbers", StandardScaler().set_output(transform="pandas"), NUMBERS)], LogisticRegression()),
        by_name([("numbers", SimpleImputer(add_indicator=True), NUMBERS)], LogisticRegression(max_iter=5000)),
    ],
    ids=["polynomial", "log1p", "svc", "pandas-output", "indicator"],
)
def test_uncovered_steps_leave_the_whole_pipeline_to_the_library(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    frame, y = training_frame()
    pipeline.fit(frame[NUMBERS], y)
    with caplog.at_level(logging.INFO, logger="sagehost.models"):
        model = EstimatorModel(pipeline, "uncovered")
    assert not model.uses_fast_path
    assert "is not covered; scikit-learn serves it" in caplog.text
    rows = Rows(frame[NUMBERS].to_numpy()[:7])
    assert np.array_equal(model.predict(rows, "predict"), pipeline.predict(frame[NUMBERS][:7]))
    assert model.declined == 0


def test_a_disagreement_at_load_leaves_the_model_to_the_library(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, _ = fraud_like()
    spec = EstimatorModel(pipeline, "x", fast_path=False).spec

    def shifted(values: Any) -> pd.DataFrame:  # a reference that is off by one row: the proof must fail
        frame = pd.DataFrame(values, columns=list(spec.feature_names or ()))
        return frame.iloc[np.roll(np.arange(len(frame)), 1)]

    with caplog.at_level(logging.INFO, logger="sagehost.models"):
        assert lean.compile_pipeline(pipeline, spec, shifted) is None
    assert "disagreed with scikit-learn" in caplog.text


def test_turning_lean_paths_off_turns_this_one_off() -> None:
    pipeline, _ = fraud_like()
    assert not EstimatorModel(pipeline, "off", fast_path=False).uses_fast_path


# ---- through the real app: micro-batched concurrent requests --------------------------------------


class Recorded:
    """The loaded model, wrapped as behaviour is added in sagehost: it notes each batch's size."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self.sizes: list[int] = []

    @property
    def spec(self) -> ModelSpec:
        return self._model.spec

    def predict(self, rows: Rows, method: Method) -> Outputs:
        self.sizes.append(len(rows))
        return self._model.predict(rows, method)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_concurrent_single_records_batched_through_the_app(tmp_path: Path) -> None:
    from tests.test_app import serving

    pipeline, frame = fraud_like(OneHotEncoder(handle_unknown="ignore", drop="if_binary"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(pipeline, model_dir / "model.joblib")
    settings = Settings(model_dir=model_dir, workers=1, scratch_dir=tmp_path / "scratch", max_batch_wait_ms=5)
    loaded = load_and_warm(settings)
    assert isinstance(loaded, EstimatorModel) and loaded.uses_fast_path
    recorded = Recorded(loaded)
    records = records_for(frame, TEXT + NUMBERS, count=31)
    # Not the extreme numbers: past float32's range the lean path leaves rows to the library.
    records = [r for r in records if all(r[c] is not None and abs(r[c]) < 1e6 for c in NUMBERS)][:50]
    assert len(records) == 50
    library = EstimatorModel(pipeline, "library", fast_path=False)

    async def load() -> Service:
        return build_service(recorded, settings)

    async with serving(settings, load) as client:

        async def ask(record: dict[str, Any]) -> httpx.Response:
            return await client.post("/invocations?method=predict_proba", json=record)

        responses = await asyncio.wait_for(asyncio.gather(*(ask(r) for r in records)), timeout=30)
    assert max(recorded.sizes) > 1, "no two requests were batched together"
    declined = loaded.declined
    for record, response in zip(records, responses, strict=True):
        assert response.status_code == 200, response.text
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = library.predict(conformed([record], library.spec), "predict_proba")[0]
        np.testing.assert_allclose(probabilities(response.json()), expected, rtol=1e-9, atol=1e-12)
    assert declined == 0


def strict_model_dir(tmp_path: Path) -> tuple[Path, Pipeline, pd.DataFrame]:
    pipeline, frame = fraud_like(OneHotEncoder(handle_unknown="error"))
    model_dir = tmp_path / "strict"
    model_dir.mkdir()
    joblib.dump(pipeline, model_dir / "model.joblib")
    return model_dir, pipeline, frame


async def responses(settings: Settings, requests: list[tuple[bytes, str]]) -> list[tuple[int, Any]]:
    from tests.test_app import serving

    loaded = load_and_warm(settings)

    async def load() -> Service:
        return build_service(loaded, settings)

    async with serving(settings, load) as client:
        answers = []
        for body, content_type in requests:
            response = await client.post(
                "/invocations?method=predict_proba", content=body, headers={"content-type": content_type}
            )
            error = response.json().get("error") if response.status_code != 200 else None
            answers.append(
                (response.status_code, response.json() if error is None else (error["code"], error["message"]))
            )
    return answers


@pytest.mark.anyio
async def test_csv_with_a_header_and_bad_requests_answer_as_the_library_path_does(tmp_path: Path) -> None:
    model_dir, pipeline, frame = strict_model_dir(tmp_path)
    record = {c: _plain(frame[c].iloc[0]) for c in TEXT + NUMBERS}
    header = ["age", "flag", "city", "amount", "colour"]  # not the model's order: the header maps them
    csv = ",".join(header) + "\n" + "".join(",".join(str(frame[c].iloc[i]) for c in header) + "\n" for i in range(6))
    requests = [
        (csv.encode(), "text/csv"),
        (orjson.dumps(record), "application/json"),
        (orjson.dumps({**record, "city": "atlantis"}), "application/json"),  # unknown, handle_unknown="error"
        (orjson.dumps([record, {**record, "city": "atlantis"}]), "application/json"),
        (orjson.dumps({k: v for k, v in record.items() if k != "age"}), "application/json"),  # a missing field
        (orjson.dumps({**record, "age": "old"}), "application/json"),  # a wrong type
        (orjson.dumps({**record, "amount": None}), "application/json"),  # NaN reaching the model
    ]
    settings = {
        lean_on: Settings(model_dir=model_dir, workers=1, scratch_dir=tmp_path / "scratch", fast_path=lean_on)
        for lean_on in (True, False)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lean_answers = await responses(settings[True], requests)
        library_answers = await responses(settings[False], requests)
    assert [status for status, _ in lean_answers] == [200, 200, 500, 500, 400, 400, 500]
    for (status, ours), (_, theirs) in zip(lean_answers, library_answers, strict=True):
        if status == 200:
            np.testing.assert_allclose(probabilities(ours), probabilities(theirs), rtol=1e-9)
        else:
            assert ours == theirs
    expected = pipeline.predict_proba(frame[TEXT + NUMBERS][:6])
    np.testing.assert_allclose(probabilities(lean_answers[0][1]), expected, rtol=1e-9)


def probabilities(answer: Any) -> np.ndarray[Any, Any]:
    """A JSON answer's numbers: a record's labelled probabilities ({"0": p0, "1": p1}) or rows."""
    return np.asarray(list(answer.values()) if isinstance(answer, dict) else answer, dtype=float)
