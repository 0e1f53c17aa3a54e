"""The sklearn format: pickled models (joblib, pickle or cloudpickle) — scikit-learn estimators
and Pipelines, any object with `predict`, and the native Boosters of XGBoost and LightGBM
pickled whole. `from_object` also serves what a script's model_fn returns."""

from __future__ import annotations

import os
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

# Runtimes whose only threads are an OpenMP (libgomp) pool, started by the first parallel region
# run with more than one thread: a worker forked from a parent that has one hangs on its first
# parallel call (its pool's threads are not in the child). Run single-threaded, they start none,
# and may be loaded before the fork (`openmp_only`, sagehost.prefork.openmp_preloadable).
_OPENMP_MODULES = (b"xgboost", b"lightgbm", b"sklearn.ensemble._hist_gradient_boosting")
# Runtimes that start thread pools when they predict: such pickles load in each worker after fork.
_THREADED_MODULES = (
    *_OPENMP_MODULES,
    b"catboost",
    b"torch",
    b"onnxruntime",
    b"sklearn.neighbors",
    b"sklearn.cluster",
)
_SNIFF_LIMIT = 64 * 1024 * 1024
_COMPRESSED = (b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18")  # zlib gzip bz2 xz lz4


def find(model_dir: Path) -> list[Path]:
    return model_files(model_dir, *SUFFIXES)


def fork_safe(path: Path) -> bool:
    """Read the pickle's module names without running it; unknown (compressed, huge) is unsafe."""
    modules = _threaded_modules(path)
    return modules is not None and not modules


def openmp_only(path: Path) -> bool:
    """Whether the pickle's only threaded runtimes are OpenMP ones (XGBoost, LightGBM, scikit-learn's
    HistGradientBoosting), which start no thread while they run single-threaded."""
    modules = _threaded_modules(path)
    return modules is not None and modules <= set(_OPENMP_MODULES)


def _threaded_modules(path: Path) -> set[bytes] | None:
    """The names of _THREADED_MODULES in the pickle; None when they cannot be read (compressed, huge)."""
    if path.stat().st_size > _SNIFF_LIMIT:
        return None
    data = path.read_bytes()
    if data.startswith(_COMPRESSED):
        return None
    return {module for module in _THREADED_MODULES if module in data}


def library_threads(workers: int) -> int:
    """The thread count an XGBoost or LightGBM model is told to use: each worker's share of the
    cores, or OMP_NUM_THREADS if that is smaller. Both libraries' own default is OMP_NUM_THREADS,
    which `sagehost serve` sets to the same share unless the user set it (config.thread_limits):
    a user who sets it to 1 gets one thread in every library, and the models shared by the workers
    (sagehost.prefork.openmp_preloadable)."""
    share = threads_per_worker(workers)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(share, int(omp)) if omp.isdigit() and int(omp) > 0 else share


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
    threads = library_threads(settings.workers)
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
