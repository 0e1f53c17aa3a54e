"""XGBoost: native models (.json, .ubj, legacy binary) and the file SageMaker's XGBoost container
writes (`xgboost-model`, a pickled Booster or a native file). Served by `boosters.xgboost`.
"""

from __future__ import annotations

from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models import boosters, sklearn
from sagehost.models.extras import require
from sagehost.models.files import head, is_pickle, model_files
from sagehost.models.format import Format
from sagehost.predictor import Model

CONTAINER_FILE = "xgboost-model"  # what SageMaker's built-in XGBoost algorithm saves


def find(model_dir: Path) -> list[Path]:
    found = [p for p in model_dir.iterdir() if p.is_file() and p.name == CONTAINER_FILE]
    found += model_files(model_dir, ".ubj", ".bst", ".xgb")
    found += [p for p in model_files(model_dir, ".json") if b'"learner"' in head(p, 256)]
    return sorted(found)


def load(path: Path, settings: Settings) -> Model:
    xgb = require("xgboost", "xgboost", f"{path.name} (an XGBoost model)")
    if is_pickle(path):  # older SageMaker XGBoost containers pickle the Booster
        return sklearn.load(path, settings)
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError as exc:
        raise ModelLoadError(f"XGBoost could not load {path.name}: {str(exc).splitlines()[0][:300]}") from None
    return boosters.xgboost(booster, path.name, sklearn.library_threads(settings.workers), fast_path=settings.fast_path)


def openmp_only(path: Path) -> bool:
    """XGBoost's only threads are its OpenMP pool (a pickled Booster: as its pickle says)."""
    return sklearn.openmp_only(path) if is_pickle(path) else True


FORMAT = Format(
    "xgboost",
    extra="xgboost",
    files="xgboost-model, *.ubj, *.bst, XGBoost *.json",
    find=find,
    load=load,
    system_packages=("libgomp1",),  # its wheels link the system's OpenMP
)
