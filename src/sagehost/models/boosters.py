"""Native XGBoost and LightGBM Boosters as Models, however they were loaded: from their own
files (the xgboost and lightgbm formats), unpickled (the sklearn format), or from a model_fn.

A Booster answers `predict` as Booster.predict does (and as SageMaker's XGBoost container
does: probabilities for binary:logistic); `predict_proba` gives scikit-learn's (n, classes)
shape for the objectives that give probabilities. XGBoost calls use `inplace_predict`: no
DMatrix per batch.

Where the trees allow it (models/trees/), a lean walk of all trees in numpy answers instead of
the library, once it has given the library's answers on probe rows at load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from sagehost.models import fast
from sagehost.models.arrays import Array, ArrayModel, two_columns
from sagehost.models.trees import lgbm, xgb
from sagehost.predictor import Model, ModelSpec, Outputs

_XGBOOST_BINARY = ("binary:logistic",)
_XGBOOST_MULTI_PROBA = ("multi:softprob",)
_LIGHTGBM_BINARY = ("binary", "cross_entropy", "xentropy")
_LIGHTGBM_MULTICLASS = ("multiclass", "softmax", "multiclassova", "ova")


def adopt(obj: Any, description: str, threads: int, fast_path: bool = True) -> Model | None:
    """The Model for a native Booster; None for any other object."""
    if _is_booster(obj, "xgboost"):
        return xgboost(obj, description, threads, fast_path)
    if _is_booster(obj, "lightgbm"):
        return lightgbm(obj, description, threads, fast_path)
    return None


def xgboost(booster: Any, description: str, threads: int, fast_path: bool = True) -> BoosterModel:
    booster.set_param({"nthread": threads})
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    n_features = booster.num_features()
    names = tuple(booster.feature_names) if booster.feature_names else None

    from xgboost import DMatrix  # loaded already: this is its Booster

    inplace = learner["gradient_booster"]["name"] != "gblinear"  # inplace_predict refuses linear ones

    def library(x: Array) -> Array:
        out: Array = booster.inplace_predict(x) if inplace else booster.predict(DMatrix(x))
        return out

    lean = fast.built(xgb.booster_path, booster) if fast_path else None
    predict = _lean_or(library, lean, n_features, "XGBoost Booster")

    n_classes = None
    if objective in _XGBOOST_BINARY:
        n_classes = 2
    elif objective in _XGBOOST_MULTI_PROBA:
        n_classes = _num_class(booster)
    return _gradient_boosted(
        predict,
        n_classes=n_classes,
        names=names,
        n_features=n_features,
        description=f"{description}: XGBoost Booster ({objective})",
        dtype=np.float32,
    )


def lightgbm(booster: Any, description: str, threads: int, fast_path: bool = True) -> BoosterModel:
    objective = str(booster.params.get("objective") or booster.dump_model(num_iteration=0)["objective"])
    objective = objective.split(maxsplit=1)[0]
    n_features = booster.num_feature()
    names = tuple(booster.feature_name())
    if all(name == f"Column_{i}" for i, name in enumerate(names)):
        names = ()  # LightGBM's own placeholder names: the user gave none

    def library(x: Array) -> Array:
        out: Array = booster.predict(x, num_threads=threads)
        return out

    lean = fast.built(lgbm.booster_path, booster) if fast_path else None
    predict = _lean_or(library, lean, n_features, "LightGBM Booster")

    n_classes = None
    if objective in _LIGHTGBM_BINARY:
        n_classes = 2
    elif objective in _LIGHTGBM_MULTICLASS:
        n_classes = booster.num_model_per_iteration()
    return _gradient_boosted(
        predict,
        n_classes=n_classes,
        names=names or None,
        n_features=n_features,
        description=f"{description}: LightGBM Booster ({objective})",
        dtype=np.float64,
    )


class BoosterModel(ArrayModel):
    """A Booster's Model; `uses_fast_path` tells whether the lean walk answers for the library."""

    def __init__(self, spec: ModelSpec, methods: dict[str, Callable[[Array], Outputs]], dtype: Any) -> None:
        super().__init__(spec, methods, dtype)
        self.uses_fast_path = isinstance(methods["predict"], _Lean)


class _Lean:
    """The Booster's predict by the lean path; the library's for any batch the path declines."""

    def __init__(self, path: fast.FastPath, library: Callable[[Array], Array]) -> None:
        self._path = path
        self._library = library

    def __call__(self, x: Array) -> Array:
        out = self._path.predict(x, "predict")
        return self._library(x) if out is None else out


def _lean_or(
    library: Callable[[Array], Array], path: fast.FastPath | None, n_features: int, name: str
) -> Callable[[Array], Array]:
    if path is None:
        return library
    proven = fast.proven(path, lambda x, _: library(x), n_features, name)
    return library if proven is None else _Lean(proven, library)


def _gradient_boosted(
    predict: Callable[[Array], Array],
    *,
    n_classes: int | None,
    names: tuple[str, ...] | None,
    n_features: int,
    description: str,
    dtype: Any,
) -> BoosterModel:
    """`predict` as the Booster answers, and `predict_proba` in scikit-learn's (n, classes) shape
    when its objective gives probabilities (`n_classes` 2 for P(class 1) only, more for one
    column per class, None for none)."""
    methods: dict[str, Callable[[Array], Outputs]] = {"predict": predict}
    if n_classes == 2:
        methods["predict_proba"] = lambda x: two_columns(predict(x))
    elif n_classes is not None:
        methods["predict_proba"] = predict
    spec = ModelSpec(
        methods=frozenset(methods),
        feature_names=names,
        n_features=n_features,
        classes=tuple(range(n_classes)) if n_classes else None,
        sample=[[0.0] * n_features],
        fork_safe=False,
        steady_cost=True,
        description=description,
    )
    return BoosterModel(spec, methods, dtype)


def _num_class(booster: Any) -> int:
    config = json.loads(booster.save_config())
    return int(config["learner"]["learner_model_param"]["num_class"])


def _is_booster(obj: Any, library: str) -> bool:
    return type(obj).__module__.startswith(library) and type(obj).__name__ == "Booster"
