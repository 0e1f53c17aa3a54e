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
from sagehost.models.arrays import Array, gradient_boosted
from sagehost.models.extras import require, threads_per_worker
from sagehost.models.files import head, model_files
from sagehost.predictor import Model

_BINARY = ("binary", "cross_entropy", "xentropy")
_MULTICLASS = ("multiclass", "softmax", "multiclassova", "ova")


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

    n_classes = None
    if objective in _BINARY:
        n_classes = 2
    elif objective in _MULTICLASS:
        n_classes = booster.num_model_per_iteration()
    return gradient_boosted(
        predict,
        n_classes=n_classes,
        names=names or None,
        n_features=n_features,
        description=f"{description}: LightGBM Booster ({objective})",
        dtype=np.float64,
    )


def is_booster(obj: Any) -> bool:
    return type(obj).__module__.startswith("lightgbm") and type(obj).__name__ == "Booster"
