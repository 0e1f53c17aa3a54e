"""The sklearn format: pickled models (joblib, pickle or cloudpickle) — scikit-learn estimators
and Pipelines, any object with `predict`, and the native Boosters of XGBoost and LightGBM
pickled whole. `from_object` also serves what a script's model_fn returns."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models import boosters
from sagehost.models.estimator import EstimatorModel
from sagehost.models.extras import require, threads_per_worker
from sagehost.models.files import model_files
from sagehost.models.format import Format
from sagehost.predictor import Model

SUFFIXES = (".joblib", ".pkl", ".pickle")

# Runtimes that start OpenMP or other thread pools when they predict: a worker forked after the
# parent used one hangs on its first call, so such pickles load in each worker after fork.
_THREADED_MODULES = (
    b"xgboost",
    b"lightgbm",
    b"catboost",
    b"torch",
    b"onnxruntime",
    b"sklearn.ensemble._hist_gradient_boosting",
    b"sklearn.neighbors",
    b"sklearn.cluster",
)
_SNIFF_LIMIT = 64 * 1024 * 1024
_COMPRESSED = (b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18")  # zlib gzip bz2 xz lz4


def find(model_dir: Path) -> list[Path]:
    return model_files(model_dir, *SUFFIXES)


def fork_safe(path: Path) -> bool:
    """Read the pickle's module names without running it; unknown (compressed, huge) is unsafe."""
    if path.stat().st_size > _SNIFF_LIMIT:
        return False
    data = path.read_bytes()
    if data.startswith(_COMPRESSED):
        return False
    return not any(module in data for module in _THREADED_MODULES)


def load(path: Path, settings: Settings) -> Model:
    return from_object(load_pickle(path), path.name, settings)


def load_pickle(path: Path) -> Any:
    """joblib, pickle or cloudpickle: joblib's loader reads all three."""
    joblib = require("joblib", "sklearn", f"{path.name} (a pickle)")
    try:
        return joblib.load(path)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"{path.name} needs the Python module {exc.name!r}, which is not installed. "
            f"Install it in the image (for a format sagehost knows: pip install 'sagehost[all]'), "
            f"or if it is your own code, ship it in code/ with an inference.py."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError) as exc:
        raise ModelLoadError(
            f"{path.name} could not be unpickled ({type(exc).__name__}). Was it written with joblib.dump "
            "or pickle.dump, by the same library versions, and copied completely?"
        ) from None


def from_object(obj: Any, description: str, settings: Settings) -> Model:
    """The Model for an unpickled object: native Boosters get their runtime's own path."""
    threads = threads_per_worker(settings.workers)
    booster = boosters.adopt(obj, description, threads, fast_path=settings.fast_path)
    if booster is not None:
        return booster
    _limit_threads(obj, threads)
    return EstimatorModel(obj, description, fast_path=settings.fast_path)


def _limit_threads(estimator: Any, threads: int) -> None:
    """XGBoost/LightGBM/CatBoost scikit-learn wrappers: one pool per worker, sized to its share."""
    module = type(estimator).__module__.split(".")[0]
    if module in ("xgboost", "lightgbm") and hasattr(estimator, "set_params"):
        estimator.set_params(n_jobs=threads)
    elif module == "catboost" and hasattr(estimator, "set_params"):
        estimator.set_params(thread_count=threads)


FORMAT = Format(
    "sklearn",
    extra="sklearn",
    files="*.joblib, *.pkl, *.pickle",
    find=find,
    load=load,
    fork_safe=fork_safe,
)
