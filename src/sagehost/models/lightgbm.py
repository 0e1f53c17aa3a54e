"""LightGBM: text model files (`Booster.save_model`). Served by `boosters.lightgbm`."""

from __future__ import annotations

from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models import boosters, sklearn
from sagehost.models.extras import require
from sagehost.models.files import head, model_files
from sagehost.models.format import Format
from sagehost.predictor import Model


def find(model_dir: Path) -> list[Path]:
    return [p for p in model_files(model_dir, ".txt", ".lgb") if head(p, 5) == b"tree\n"]


def load(path: Path, settings: Settings) -> Model:
    lgb = require("lightgbm", "lightgbm", f"{path.name} (a LightGBM model)")
    try:
        booster = lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as exc:
        raise ModelLoadError(f"LightGBM could not load {path.name}: {str(exc)[:300]}") from None
    return boosters.lightgbm(
        booster, path.name, sklearn.library_threads(settings.workers), fast_path=settings.fast_path
    )


def openmp_only(path: Path) -> bool:
    """LightGBM's only threads are its OpenMP pool."""
    return True


FORMAT = Format(
    "lightgbm",
    extra="lightgbm",
    files="LightGBM text model *.txt",
    find=find,
    load=load,
    system_packages=("libgomp1",),  # its wheels link the system's OpenMP
)
