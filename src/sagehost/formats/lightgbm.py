"""LightGBM: text model files (`Booster.save_model`) and pickled Boosters/wrappers.

A Booster answers `predict` as Booster.predict does (probabilities for binary and multiclass
objectives); `predict_proba` gives scikit-learn's (n, classes) shape for those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.formats.arrays import Array, ArrayModel, two_columns
from sagehost.formats.extras import require, threads_per_worker
from sagehost.formats.files import head, model_files
from sagehost.predictor import Model, ModelSpec


def find(model_dir: Path) -> list[Path]:
    return [p for p in model_files(model_dir, ".txt", ".lgb") if head(p, 5) == b"tree\n"]


def load(path: Path, settings: Settings) -> Model:
    lgb = require("lightgbm", "lightgbm", f"{path.name} (a LightGBM model)")
    try:
        booster = lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as exc:
        raise ModelLoadError(f"LightGBM could not load {path.name}: {str(exc)[:300]}") from None
    return booster_model(booster, path.name, threads_per_worker(settings.workers))


def booster_model(booster: Any, description: str, threads: int) -> Model:
    objective = str(booster.params.get("objective") or booster.dump_model(num_iteration=0)["objective"])
    objective = objective.split(maxsplit=1)[0]
    n_features = booster.num_feature()
    names = tuple(booster.feature_name())
    if all(name == f"Column_{i}" for i, name in enumerate(names)):
        names = ()  # LightGBM's own placeholder names: the user gave none

    def predict(x: Array) -> Array:
        out: Array = booster.predict(x, num_threads=threads)
        return out

    methods = {"predict": predict}
    classes: tuple[Any, ...] | None = None
    if objective in ("binary", "cross_entropy", "xentropy"):
        methods["predict_proba"] = lambda x: two_columns(predict(x))
        classes = (0, 1)
    elif objective in ("multiclass", "softmax", "multiclassova", "ova"):
        methods["predict_proba"] = predict
        classes = tuple(range(booster.num_model_per_iteration()))
    spec = ModelSpec(
        methods=frozenset(methods),
        feature_names=names or None,
        n_features=n_features,
        classes=classes,
        sample=[[0.0] * n_features],
        fork_safe=False,
        steady_cost=True,
        description=f"{description}: LightGBM Booster ({objective})",
    )
    return ArrayModel(spec, methods, np.float64)


def is_booster(obj: Any) -> bool:
    return type(obj).__module__.startswith("lightgbm") and type(obj).__name__ == "Booster"
