"""Lean boosted trees (models/trees/): XGBoost, LightGBM and HistGradientBoosting walked in numpy
give the library's answers on random rows, on rows with NaN, zeros, ±1e30 and values exactly on
split thresholds, for binary, multiclass and regression models, pickled or in native files; the
models the walk does not cover are answered by the library, and say so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from sagehost.config import Method, Settings
from sagehost.models import (
    boosters,
    fast,
    lightgbm as lightgbm_format,
    sklearn as sklearn_format,
    xgboost as xgboost_format,
)
from sagehost.models.estimator import EstimatorModel
from sagehost.models.trees import lgbm, xgb as xgb_trees
from sagehost.models.trees.flat import _in_order_sum
from sagehost.models.trees.path import TreePath
from sagehost.predictor import Rows
from sagehost.server import build_service, load_and_warm
from sagehost.service import Service
from tests.test_app import serving
from tests.test_compiled_walk import tree_walk  # noqa: F401  # a fixture

Array = np.ndarray[Any, Any]
Library = Callable[[Array, str], Any]

XGB_TOLERANCE = (1e-5, 1e-6)  # XGBoost computes in float32: (rtol, atol)
F64_TOLERANCE = (1e-9, 1e-12)
Tolerance = tuple[float, float]


@pytest.fixture(scope="module")
def data() -> tuple[Array, Array]:
    x, y = make_classification(n_samples=800, n_features=8, n_informative=5, n_classes=3, random_state=0)
    x[::11, 2] = np.nan  # the models learn where missing values go
    x[::7, 5] = 0.0
    return x, y


def targets(y: Array, task: str) -> Array:
    return {"binary": y % 2, "multiclass": y, "regression": y * 2.5 + 0.3}[task]


def edge_rows(x: Array, thresholds: dict[int, Array]) -> Array:
    """Rows with values exactly on the model's own split thresholds, NaN, zeros and ±1e30."""
    rng = np.random.default_rng(1)
    rows = x[:96].copy()
    for feature, cuts in thresholds.items():
        pick = rng.random(len(rows)) < 0.5
        rows[pick, feature] = rng.choice(cuts, size=int(pick.sum()))
    mask = rng.random(rows.shape)
    rows[mask < 0.08] = np.nan
    rows[(mask >= 0.08) & (mask < 0.16)] = 0.0
    rows[(mask >= 0.16) & (mask < 0.19)] = 1e30
    rows[(mask >= 0.19) & (mask < 0.22)] = -1e30
    return rows


def assert_walk_matches(path: Any, library: Library, batches: list[Array], tolerance: Tolerance) -> None:
    """The walk itself answers every batch (in pieces it takes) and gives the library's answer."""
    assert isinstance(path, TreePath)
    for rows in batches:
        for method in sorted(path.methods):
            for start in range(0, len(rows), path.max_rows):
                piece = rows[start : start + path.max_rows]
                ours = path.predict(piece, method)
                theirs = np.asarray(library(piece, method))
                assert ours is not None, method
                assert ours.shape == theirs.shape and ours.dtype.kind == theirs.dtype.kind, method
                if theirs.dtype.kind == "f":
                    close(ours, theirs, tolerance, method)
                else:
                    assert np.array_equal(ours, theirs), method


def close(ours: Any, theirs: Any, tolerance: Tolerance, what: str = "") -> None:
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=tolerance[0], atol=tolerance[1], err_msg=what)


def estimator_library(model: Any) -> Library:
    return lambda rows, method: getattr(model, method)(rows)


def xgb_thresholds(booster: Any) -> dict[int, Array]:
    frame = booster.trees_to_dataframe()
    splits = frame[frame["Feature"] != "Leaf"]
    return {
        int(str(f).lstrip("f")): group["Split"].to_numpy(dtype=np.float32).astype(np.float64)
        for f, group in splits.groupby("Feature")
    }


def lgb_thresholds(booster: Any) -> dict[int, Array]:
    frame = booster.trees_to_dataframe()
    splits = frame[frame["split_feature"].notna()]
    names = booster.feature_name()
    return {
        names.index(f): group["threshold"].to_numpy(dtype=np.float64) for f, group in splits.groupby("split_feature")
    }


def hgb_thresholds(model: Any) -> dict[int, Array]:
    nodes = np.concatenate([p.nodes for it in model._predictors for p in it])
    splits = nodes[nodes["is_leaf"] == 0]
    return {int(f): splits["num_threshold"][splits["feature_idx"] == f] for f in np.unique(splits["feature_idx"])}


# ---- parity, family by family -------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_xgboost_wrappers_walk_as_xgboost_predicts(task: str, data: tuple[Array, Array]) -> None:
    x, y = data
    kind = xgb.XGBRegressor if task == "regression" else xgb.XGBClassifier
    model = kind(n_estimators=25, max_depth=4, n_jobs=1).fit(x, targets(y, task))
    served = EstimatorModel(model, "xgb")
    assert served.uses_fast_path
    path = fast.build_path(model)
    edges = edge_rows(x, xgb_thresholds(model.get_booster()))
    assert_walk_matches(path, estimator_library(model), [x[:200], edges, x[:1]], XGB_TOLERANCE)
    assert np.array_equal(served.predict(Rows(x[:5]), "predict"), model.predict(x[:5]))


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_lightgbm_wrappers_walk_as_lightgbm_predicts(task: str, data: tuple[Array, Array]) -> None:
    x, y = data
    kind = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
    model = kind(n_estimators=20, num_leaves=15, n_jobs=1, verbose=-1).fit(x, targets(y, task))
    assert EstimatorModel(model, "lgbm").uses_fast_path
    edges = edge_rows(x, lgb_thresholds(model.booster_))
    assert_walk_matches(fast.build_path(model), estimator_library(model), [x[:200], edges, x[:1]], F64_TOLERANCE)


@pytest.mark.parametrize("params", [{"zero_as_missing": True}, {"use_missing": False}, {"objective": "multiclassova"}])
def test_lightgbm_missing_types_and_ova(params: dict[str, Any], data: tuple[Array, Array]) -> None:
    x, y = data
    objective = params.get("objective", "binary")
    labels = y if objective == "multiclassova" else y % 2
    config = {"objective": objective, "verbose": -1, "num_leaves": 7, **params}
    if objective == "multiclassova":
        config["num_class"] = 3
    booster = lgb.train(config, lgb.Dataset(x, labels), 15)
    path = fast.proven(lgbm.booster_path(booster), lambda r, _: booster.predict(r), 8, "lgb")  # type: ignore[arg-type]
    assert path is not None
    edges = edge_rows(x, lgb_thresholds(booster))
    assert_walk_matches(path, lambda r, _: booster.predict(r), [x[:200], edges], F64_TOLERANCE)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_hist_gradient_boosting_walks_as_scikit_learn_predicts(task: str, data: tuple[Array, Array]) -> None:
    x, y = data
    kind = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    model = kind(max_iter=20, max_leaf_nodes=15, random_state=0).fit(x, targets(y, task))
    assert EstimatorModel(model, "hgb").uses_fast_path
    edges = edge_rows(x, hgb_thresholds(model))
    assert_walk_matches(fast.build_path(model), estimator_library(model), [x[:200], edges, x[:1]], F64_TOLERANCE)


@pytest.mark.parametrize(
    ("objective", "extra"),
    [
        ("binary:logistic", {}),
        ("binary:logitraw", {}),
        ("multi:softprob", {"num_class": 3}),
        ("multi:softmax", {"num_class": 3}),
        ("reg:squarederror", {}),
        ("count:poisson", {}),
    ],
)
def test_xgboost_objectives_and_base_scores(objective: str, extra: dict[str, Any], data: tuple[Array, Array]) -> None:
    x, y = data
    labels = y if "multi" in objective else y % 2
    params = {"objective": objective, "max_depth": 3, "base_score": 0.3 if "binary" in objective else None, **extra}
    booster = xgb.train({k: v for k, v in params.items() if v is not None}, xgb.DMatrix(x, labels), 12)
    path = xgb_path(booster)
    assert path is not None
    edges = edge_rows(x, xgb_thresholds(booster))
    assert_walk_matches(path, lambda r, _: booster.inplace_predict(r), [x[:200], edges], XGB_TOLERANCE)


def xgb_path(booster: Any) -> Any:
    return fast.proven(xgb_trees.booster_path(booster), lambda r, _: booster.inplace_predict(r), 8, "xgb")  # type: ignore[arg-type]


def test_early_stopping_predicts_with_the_best_iteration(data: tuple[Array, Array]) -> None:
    x, y = data
    model = xgb.XGBClassifier(n_estimators=200, max_depth=3, early_stopping_rounds=3, n_jobs=1)
    model.fit(x[:600], y[:600] % 2, eval_set=[(x[600:], y[600:] % 2)], verbose=False)
    assert model.best_iteration < 199
    assert_walk_matches(fast.build_path(model), estimator_library(model), [x[:100]], XGB_TOLERANCE)


# ---- native files and pickles, through sagehost's loaders ---------------------------------------


def test_no_fast_path_reaches_native_boosters_from_every_loader(data: tuple[Array, Array], tmp_path: Path) -> None:
    """`--no-fast-path` turns the walk off for a Booster however it was saved: the library answers."""
    x, y = data
    xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, y % 2), 5).save_model(tmp_path / "model.json")
    native = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y % 2), 5)
    native.save_model(tmp_path / "model.txt")
    joblib.dump(native, tmp_path / "model.pkl")
    off = Settings(model_dir=tmp_path, fast_path=False)
    served = [
        xgboost_format.load(tmp_path / "model.json", off),
        lightgbm_format.load(tmp_path / "model.txt", off),
        sklearn_format.load(tmp_path / "model.pkl", off),
    ]
    for model in served:
        assert isinstance(model, boosters.BoosterModel) and not model.uses_fast_path


@pytest.mark.parametrize("suffix", ["json", "ubj"])
def test_native_xgboost_files_are_served_by_the_walk(suffix: str, data: tuple[Array, Array], tmp_path: Path) -> None:
    x, y = data
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 4}, xgb.DMatrix(x, y), 15)
    booster.save_model(tmp_path / f"model.{suffix}")
    served = xgboost_format.load(tmp_path / f"model.{suffix}", Settings(model_dir=tmp_path))
    assert isinstance(served, boosters.BoosterModel) and served.uses_fast_path
    for method in ("predict", "predict_proba"):
        close(served.predict(Rows(x[:40]), method), booster.inplace_predict(x[:40]), XGB_TOLERANCE)


def test_native_lightgbm_text_file_is_served_by_the_walk(data: tuple[Array, Array], tmp_path: Path) -> None:
    x, y = data
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y % 2), 20)
    booster.save_model(tmp_path / "model.txt")
    served = lightgbm_format.load(tmp_path / "model.txt", Settings(model_dir=tmp_path))
    assert isinstance(served, boosters.BoosterModel) and served.uses_fast_path
    proba = served.predict(Rows(x[:40]), "predict_proba")
    close(np.asarray(proba)[:, 1], booster.predict(x[:40]), F64_TOLERANCE)


@pytest.mark.parametrize("kind", [xgb.XGBClassifier, lgb.LGBMClassifier, HistGradientBoostingClassifier])
def test_pickled_wrappers_load_onto_the_walk(kind: Any, data: tuple[Array, Array], tmp_path: Path) -> None:
    x, y = data
    args: dict[str, Any] = {"max_iter": 10} if kind is HistGradientBoostingClassifier else {"n_estimators": 10}
    if kind is lgb.LGBMClassifier:
        args["verbose"] = -1
    model = kind(**args).fit(x, y)
    joblib.dump(model, tmp_path / "model.joblib")
    served = sklearn_format.load(tmp_path / "model.joblib", Settings(model_dir=tmp_path))
    assert isinstance(served, EstimatorModel) and served.uses_fast_path
    close(served.predict(Rows(x[:30]), "predict_proba"), model.predict_proba(x[:30]), XGB_TOLERANCE)


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_a_pickled_native_booster_is_served_by_the_walk(
    library: str, data: tuple[Array, Array], tmp_path: Path
) -> None:
    x, y = data
    if library == "xgboost":
        booster: Any = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, y % 2), 10)
        expected = booster.inplace_predict(x[:30])
    else:
        booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y % 2), 10)
        expected = booster.predict(x[:30])
    joblib.dump(booster, tmp_path / "model.pkl")
    served = sklearn_format.load(tmp_path / "model.pkl", Settings(model_dir=tmp_path))
    assert isinstance(served, boosters.BoosterModel) and served.uses_fast_path
    close(served.predict(Rows(x[:30]), "predict"), expected, XGB_TOLERANCE)


# ---- where the library answers ------------------------------------------------------------------


def test_xgboost_categorical_splits_are_left_to_the_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"colour": pd.Categorical(rng.choice(["r", "g", "b"], 300)), "size": rng.normal(size=300)})
    labels = (frame["colour"] == "g").to_numpy() ^ (frame["size"] > 0.5).to_numpy()
    booster = xgb.train(
        {"objective": "binary:logistic", "max_cat_to_onehot": 1},
        xgb.DMatrix(frame, labels, enable_categorical=True),
        10,
    )
    served = boosters.xgboost(booster, "categorical", threads=1)
    assert not served.uses_fast_path
    codes = np.column_stack([frame["colour"].cat.codes.to_numpy(dtype=float), frame["size"]])[:20]
    np.testing.assert_array_equal(served.predict(Rows(codes), "predict"), booster.inplace_predict(codes))


@pytest.mark.parametrize(
    "params",
    [
        {"booster": "dart", "objective": "binary:logistic"},
        {"booster": "gblinear", "objective": "binary:logistic"},  # which inplace_predict refuses
        {"objective": "multi:softprob", "num_class": 3, "multi_strategy": "multi_output_tree"},
        {"objective": "survival:cox"},
    ],
)
def test_xgboost_models_the_walk_does_not_read_are_left_to_the_library(
    params: dict[str, Any], data: tuple[Array, Array]
) -> None:
    x, y = data
    labels = y if params.get("num_class") else y % 2 + (params["objective"] == "survival:cox")
    booster = xgb.train(params, xgb.DMatrix(x, labels), 6)
    served = boosters.xgboost(booster, "fallback", threads=1)
    assert not served.uses_fast_path
    close(served.predict(Rows(x[:20]), "predict"), booster.predict(xgb.DMatrix(x[:20])), XGB_TOLERANCE)


def test_lightgbm_categorical_and_linear_trees_are_left_to_the_library(data: tuple[Array, Array]) -> None:
    x, y = data
    x = np.nan_to_num(x)
    x[:, 0] = np.arange(len(x)) % 6  # a category code the label depends on, split by sets
    labels = np.isin(x[:, 0], (1, 4)) ^ (x[:, 1] > 0.5)
    categorical = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "max_cat_to_onehot": 1},
        lgb.Dataset(x, labels, categorical_feature=[0]),
        10,
    )
    assert sum(tree["num_cat"] for tree in categorical.dump_model()["tree_info"]) > 0
    linear = lgb.train({"objective": "regression", "verbose": -1, "linear_tree": True}, lgb.Dataset(x, y), 5)
    for booster in (categorical, linear):
        served = boosters.lightgbm(booster, "fallback", threads=1)
        assert not served.uses_fast_path
        np.testing.assert_array_equal(served.predict(Rows(x[:20]), "predict"), booster.predict(x[:20]))


def test_hist_gradient_boosting_categorical_features_are_left_to_the_library(data: tuple[Array, Array]) -> None:
    x, y = data
    x = np.nan_to_num(x.copy())
    x[:, 0] = np.abs(x[:, 0] * 3).astype(int) % 5
    model = HistGradientBoostingClassifier(max_iter=10, categorical_features=[0]).fit(x, y)
    served = EstimatorModel(model, "hgb")
    assert fast.build_path(model) is None and not served.uses_fast_path
    assert np.array_equal(served.predict(Rows(x[:20]), "predict_proba"), model.predict_proba(x[:20]))


def test_the_walk_can_be_turned_off_for_native_boosters(data: tuple[Array, Array]) -> None:
    x, y = data
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y % 2), 5)
    assert boosters.lightgbm(booster, "on", threads=1).uses_fast_path
    assert not boosters.lightgbm(booster, "off", threads=1, fast_path=False).uses_fast_path
    xgboost_booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, y % 2), 5)
    assert not boosters.xgboost(xgboost_booster, "off", threads=1, fast_path=False).uses_fast_path


def test_a_walk_that_disagrees_with_the_library_is_not_used(
    data: tuple[Array, Array], caplog: pytest.LogCaptureFixture
) -> None:
    x, y = data
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y % 2), 10)
    path = lgbm.booster_path(booster)
    assert path is not None
    path.trees.value[path.trees.internal.argmin()] += 1e-6  # one leaf off by a millionth
    with caplog.at_level(logging.WARNING, logger="sagehost.models"):
        assert fast.proven(path, lambda r, _: booster.predict(r), 8, "tampered") is None
    assert "disagreed with the library on predict" in caplog.text


def test_big_batches_go_to_the_library_and_small_ones_to_the_walk(data: tuple[Array, Array]) -> None:
    x, y = data
    model = xgb.XGBClassifier(n_estimators=30, max_depth=6, n_jobs=1).fit(x, y % 2)
    path = fast.build_path(model)
    assert isinstance(path, TreePath) and 1 <= path.max_rows < 800
    assert path.predict(x, "predict_proba") is None
    assert path.predict(x[: path.max_rows], "predict_proba") is not None
    served = EstimatorModel(model, "xgb")
    close(served.predict(Rows(x), "predict_proba"), model.predict_proba(x), XGB_TOLERANCE)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 40, 1), (1, 101, 1), (1, 101, 2), (3, 17, 5), (1, 64, 1000), (1, 9, 3, 4)])
def test_trees_are_summed_one_after_another(dtype: Any, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    leaves = (rng.normal(size=shape) * rng.choice([1e-4, 1.0, 1e4], size=shape)).astype(dtype)
    expected = leaves[:, 0].copy()
    for tree in range(1, shape[1]):
        expected = expected + leaves[:, tree]
    assert np.array_equal(_in_order_sum(leaves), expected)


# ---- through the app, micro-batched --------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def xgboost_pickle(x: Array, y: Array, model_dir: Path) -> Callable[[Array], Array]:
    model = xgb.XGBClassifier(n_estimators=30, max_depth=5, n_jobs=1).fit(x, y)
    joblib.dump(model, model_dir / "model.joblib")
    return lambda rows: np.asarray(model.predict_proba(rows))


def lightgbm_text(x: Array, y: Array, model_dir: Path) -> Callable[[Array], Array]:
    booster = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1}, lgb.Dataset(x, y), 20)
    booster.save_model(model_dir / "model.txt")
    return lambda rows: np.asarray(booster.predict(rows))


@pytest.mark.anyio
@pytest.mark.parametrize("save", [xgboost_pickle, lightgbm_text])
@pytest.mark.usefixtures("tree_walk")
async def test_concurrent_requests_are_batched_and_answered_as_the_library(
    save: Callable[[Array, Array, Path], Callable[[Array], Array]],
    data: tuple[Array, Array],
    tmp_path: Path,
) -> None:
    """On the compiled walk and on numpy's (`tree_walk`)."""
    x, y = data
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    library = save(x, y, model_dir)
    settings = Settings(model_dir=model_dir, workers=1, scratch_dir=tmp_path / "scratch")
    loaded = load_and_warm(settings)
    assert getattr(loaded, "uses_fast_path", False)
    rows = np.nan_to_num(np.round(x[:48], 6))  # JSON has no NaN; the walk's NaN is tested above
    rows[3, 2] = 1e30
    rows[5, 0] = 0.0
    method: Method = "predict_proba"

    async def load() -> Service:
        return build_service(loaded, settings)

    async with serving(settings, load) as client:
        answers = await asyncio.gather(
            *(client.post(f"/invocations?method={method}", json=row.tolist()) for row in rows)
        )
    got = np.asarray([a.json()[0] for a in answers])
    close(got, library(rows), XGB_TOLERANCE)


def test_a_library_that_refuses_the_probe_rows_keeps_the_model(
    data: tuple[Array, Array], caplog: pytest.LogCaptureFixture
) -> None:
    x, y = data
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y % 2), 5)
    path = lgbm.booster_path(booster)
    assert path is not None

    def refuses(rows: Array, _: str) -> Any:
        return booster.predict(rows[:, :3])  # a wrong-width call: LightGBM raises

    with caplog.at_level(logging.WARNING, logger="sagehost.models"):
        assert fast.proven(path, refuses, 8, "refused") is None
    assert "the check failed (LightGBMError" in caplog.text
