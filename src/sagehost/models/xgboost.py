"""XGBoost: native models (.json, .ubj, legacy binary) and the file SageMaker's XGBoost container
writes (`xgboost-model`, a pickled Booster or a native file), and pickled Boosters/wrappers.

A Booster answers `predict` as Booster.predict does (and as SageMaker's XGBoost container
does: probabilities for binary:logistic); `predict_proba` gives scikit-learn's (n, classes)
shape for classification objectives. Calls use `inplace_predict`: no DMatrix per batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sagehost.config import Settings
from sagehost.models.arrays import Array, gradient_boosted
from sagehost.models.extras import require, threads_per_worker
from sagehost.models.files import head, is_pickle, model_files
from sagehost.predictor import Model

CONTAINER_FILE = "xgboost-model"  # what SageMaker's built-in XGBoost algorithm saves
_BINARY = ("binary:logistic",)
_MULTI_PROBA = ("multi:softprob",)


def find(model_dir: Path) -> list[Path]:
    found = [p for p in model_dir.iterdir() if p.is_file() and p.name == CONTAINER_FILE]
    found += model_files(model_dir, ".ubj", ".bst", ".xgb")
    found += [p for p in model_files(model_dir, ".json") if b'"learner"' in head(p, 256)]
    return sorted(found)


def load(path: Path, settings: Settings) -> Model:
    xgb = require("xgboost", "xgboost", f"{path.name} (an XGBoost model)")
    threads = threads_per_worker(settings.workers)
    if is_pickle(path):
        from sagehost.models.sklearn import from_object, load_pickle

        return from_object(load_pickle(path), path.name, settings)
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError as exc:
        from sagehost.errors import ModelLoadError

        raise ModelLoadError(f"XGBoost could not load {path.name}: {str(exc).splitlines()[0][:300]}") from None
    return booster_model(booster, path.name, threads)


def booster_model(booster: Any, description: str, threads: int) -> Model:
    booster.set_param({"nthread": threads})
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    n_features = booster.num_features()
    names = tuple(booster.feature_names) if booster.feature_names else None

    def predict(x: Array) -> Array:
        out: Array = booster.inplace_predict(x)
        return out

    n_classes = 2 if objective in _BINARY else _num_class(booster) if objective in _MULTI_PROBA else None
    return gradient_boosted(
        predict,
        n_classes=n_classes,
        names=names,
        n_features=n_features,
        description=f"{description}: XGBoost Booster ({objective})",
        dtype=np.float32,
    )


def _num_class(booster: Any) -> int:
    config = json.loads(booster.save_config())
    return int(config["learner"]["learner_model_param"]["num_class"])


def is_booster(obj: Any) -> bool:
    return type(obj).__module__.startswith("xgboost") and type(obj).__name__ == "Booster"
