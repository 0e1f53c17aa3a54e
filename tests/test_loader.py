"""The one loader: `serve`, `package` and `build` read a model directory alike (in process,
with really trained small models)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import xgboost as xgb
from sklearn.linear_model import LogisticRegression

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.image.plan import plan_image
from sagehost.models import Loaded, describe, fork_safe, load
from sagehost.models.script import ScriptHandler
from sagehost.package import package
from sagehost.predictor import Rows

ROWS = np.random.default_rng(0).random((40, 3))
LABELS = (ROWS.sum(axis=1) > 1.5).astype(int)


def settings(model_dir: Path, scratch: Path, **changes: Any) -> Settings:
    return Settings(model_dir=model_dir, scratch_dir=scratch / "scratch", **changes)


def booster() -> Any:
    return xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(ROWS, LABELS), 3)


def predicts(loaded: Loaded) -> Any:
    assert not isinstance(loaded, ScriptHandler)
    return loaded.predict(Rows(ROWS.astype(np.float32)), "predict")


def test_serve_package_and_build_say_the_same_of_a_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    estimator = LogisticRegression().fit(ROWS, LABELS)
    joblib.dump(estimator, model_dir / "model.joblib")
    said = "model.joblib as sklearn (pip install 'sagehost[sklearn]')"
    assert str(describe(model_dir, settings(model_dir, tmp_path))) == said
    assert package(model_dir, tmp_path / "model.tar.gz", Settings()).endswith(f"files at the root): {said}")
    assert plan_image(model_dir, Settings()).serves == said
    assert fork_safe(settings(model_dir, tmp_path))
    np.testing.assert_array_equal(predicts(load(settings(model_dir, tmp_path))), estimator.predict(ROWS))


def test_a_model_tar_gz_alone_is_looked_inside_by_build_as_by_serve(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    trained = booster()
    trained.save_model(source / "model.json")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with tarfile.open(model_dir / "model.tar.gz", "w:gz") as tar:
        tar.add(source / "model.json", arcname="model.json")
    servable = describe(model_dir, settings(model_dir, tmp_path))
    assert str(servable) == "model.json as xgboost (pip install 'sagehost[xgboost]'), in model.tar.gz"
    assert not servable.fork_safe
    plan = plan_image(model_dir, settings(model_dir, tmp_path))
    assert plan.extras == ("xgboost",) and plan.system_packages == ("libgomp1",)
    expected = trained.predict(xgb.DMatrix(ROWS.astype(np.float32)))
    np.testing.assert_allclose(predicts(load(settings(model_dir, tmp_path))), expected, rtol=1e-6)
    with pytest.raises(ModelLoadError, match="already the archive SageMaker takes"):
        package(model_dir, tmp_path / "out.tar.gz", settings(model_dir, tmp_path))
    assert not (tmp_path / "out.tar.gz").exists()


def test_a_script_beside_a_model_file_gets_that_format_in_the_image(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "xgboost-model").write_bytes(booster().save_raw("ubj"))  # as newer containers write it
    (model_dir / "code" / "inference.py").write_text("def input_fn(body, content_type):\n    return body\n")
    servable = describe(model_dir, Settings())
    assert servable.script == model_dir / "code" / "inference.py"
    assert str(servable) == (
        "code/inference.py (the AWS toolkit's hooks), beside xgboost-model as xgboost (pip install 'sagehost[xgboost]')"
    )
    plan = plan_image(model_dir, Settings())
    assert plan.extras == ("xgboost", "sklearn") and plan.system_packages == ("libgomp1",)
    assert plan_image(model_dir, Settings(), extras=("onnx",)).extras == ("xgboost", "onnx")


def test_an_ambiguous_directory_is_a_script_s_business(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    joblib.dump(LogisticRegression().fit(ROWS, LABELS), model_dir / "a.joblib")
    joblib.dump(LogisticRegression().fit(ROWS, LABELS), model_dir / "b.joblib")
    servable = describe(model_dir, Settings())
    assert servable.found is None and str(servable) == "code/inference.py (the AWS toolkit's hooks)"
    (model_dir / "code" / "inference.py").unlink()
    with pytest.raises(ModelLoadError, match=r"several sklearn model files \(a.joblib, b.joblib\)"):
        describe(model_dir, Settings())


def test_serve_names_the_nested_folder_mistake_as_package_does(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    (outer / "model").mkdir(parents=True)
    joblib.dump(LogisticRegression().fit(ROWS, LABELS), outer / "model" / "model.joblib")
    hint = "holds only the folder model/: package that folder instead"
    with pytest.raises(ModelLoadError, match=hint):
        load(settings(outer, tmp_path))
    with pytest.raises(ModelLoadError, match=hint):
        package(outer, tmp_path / "a.tar.gz", Settings())
    (outer / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=r"holds no model sagehost can serve. Found: model/, notes.txt"):
        load(settings(outer, tmp_path))


def test_an_s3_submit_directory_means_the_code_packed_into_the_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    from_sdk = Settings(code_dir=Path("s3://bucket/job/source/sourcedir.tar.gz"))
    assert describe(model_dir, from_sdk).script == model_dir / "code" / "inference.py"
    with pytest.raises(ModelLoadError, match="SAGEMAKER_SUBMIT_DIRECTORY name"):
        describe(model_dir, Settings(code_dir=tmp_path / "elsewhere"))


def test_a_missing_directory_is_named() -> None:
    with pytest.raises(ModelLoadError, match="The model directory /nonexistent/model does not exist"):
        load(Settings(model_dir=Path("/nonexistent/model")))
    assert fork_safe(Settings(model_dir=Path("/nonexistent/model")))  # the load says why
