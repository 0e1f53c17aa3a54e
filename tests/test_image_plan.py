"""What `sagehost build` puts in an image, decided from the model's files (no engine needed)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from sagehost.config import Settings
from sagehost.errors import ConfigError, StartupError
from sagehost.image.build import write_context
from sagehost.image.dockerfile import render
from sagehost.image.plan import plan_image


def test_xgboost_gets_its_extra_and_openmp(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    booster = xgb.train(
        {"objective": "binary:logistic"}, xgb.DMatrix(rng.random((50, 3)), label=rng.integers(0, 2, 50)), 2
    )
    booster.save_model(tmp_path / "model.json")
    plan = plan_image(tmp_path, Settings())
    assert plan.extras == ("xgboost",)
    assert plan.system_packages == ("libgomp1",)
    recipe = render(plan)
    assert "'sagehost[xgboost]'" in recipe
    assert "apt-get install -y --no-install-recommends libgomp1" in recipe


def test_an_h2o_mojo_gets_a_headless_jre(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as mojo:
        mojo.writestr("model.ini", "[info]\n")
    plan = plan_image(tmp_path, Settings())
    assert plan.extras == ("h2o",)
    assert "default-jre-headless" in render(plan)


def test_a_script_brings_its_requirements_into_the_context(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    (model / "code" / "requirements.txt").write_text("tabulate==0.9.0\n")
    plan = plan_image(model, Settings(), extras=("onnx",))
    assert plan.extras == ("onnx",)
    recipe = write_context(plan, tmp_path / "context")
    text = recipe.read_text()
    assert "-r /requirements.txt" in text and "COPY requirements.txt /requirements.txt" in text
    assert (tmp_path / "context" / "requirements.txt").read_text() == "tabulate==0.9.0\n"
    assert (tmp_path / "context" / "model" / "code" / "inference.py").is_file()


def test_code_only_image_defaults_to_the_sklearn_stack_and_has_no_model() -> None:
    recipe = render(plan_image(None, Settings()))
    assert "'sagehost[sklearn]'" in recipe
    assert "/opt/ml/model" not in recipe
    assert 'ENTRYPOINT ["/opt/venv/bin/sagehost"]' in recipe and 'CMD ["serve"]' in recipe
    assert 'LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port="true"' in recipe


def test_a_folder_without_a_model_is_refused_before_any_build(tmp_path: Path) -> None:
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "model.joblib").write_bytes(b"")
    with pytest.raises(StartupError, match="package that folder instead"):
        plan_image(tmp_path, Settings())
    with pytest.raises(StartupError, match="Unknown extra"):
        plan_image(None, Settings(), extras=("tensorflow",))


def test_a_context_folder_that_is_not_ours_is_never_deleted(tmp_path: Path) -> None:
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    plan = plan_image(None, Settings())
    with pytest.raises(StartupError, match="not a context sagehost wrote"):
        write_context(plan, precious)
    assert (precious / "notes.txt").read_text() == "mine"
    context = tmp_path / "context"
    write_context(plan, context)
    write_context(plan, context)  # its own context is replaced on every build
    assert (context / "Dockerfile").is_file()


def test_the_trees_add_on_joins_the_model_s_extra(tmp_path: Path) -> None:
    """`--extra trees` (numba's compiled tree walk) is no format's extra but installs beside one."""
    rng = np.random.default_rng(0)
    booster = xgb.train({}, xgb.DMatrix(rng.random((50, 3)), label=rng.random(50)), 2)
    model = tmp_path / "model"
    model.mkdir()
    booster.save_model(model / "model.json")
    plan = plan_image(model, Settings(), extras=("trees",))
    assert plan.extras == ("xgboost", "trees")
    assert "'sagehost[xgboost,trees]'" in render(plan)
    with pytest.raises(ConfigError, match="choose from .*trees"):
        plan_image(model, Settings(), extras=("tree",))
    # an add-on is no choice of stack: without a model, or for a script, the default stays
    assert plan_image(None, Settings(), extras=("trees",)).extras == ("sklearn", "trees")
    script = tmp_path / "script"
    (script / "code").mkdir(parents=True)
    (script / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    assert plan_image(script, Settings(), extras=("trees",)).extras == ("sklearn", "trees")
