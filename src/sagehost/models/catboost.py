"""CatBoost: `.cbm` files (`save_model`'s default format), with categorical columns as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sagehost.config import Method, Settings
from sagehost.errors import ModelLoadError
from sagehost.models.arrays import flat, require_method
from sagehost.models.extras import require, threads_per_worker
from sagehost.models.files import model_files
from sagehost.models.format import Format
from sagehost.predictor import ColumnKind, Model, ModelSpec, Outputs, Rows

_CLASSIFIER_LOSSES = ("Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll")
_PREDICTION_TYPE = {"predict_proba": "Probability", "decision_function": "RawFormulaVal"}


def find(model_dir: Path) -> list[Path]:
    return model_files(model_dir, ".cbm")


def load(path: Path, settings: Settings) -> Model:
    catboost = require("catboost", "catboost", f"{path.name} (a CatBoost model)")
    model = catboost.CatBoost()
    try:
        model.load_model(str(path))
    except catboost.CatBoostError as exc:
        raise ModelLoadError(f"CatBoost could not load {path.name}: {str(exc)[:300]}") from None
    return CatBoostModel(model, path.name, threads_per_worker(settings.workers))


class CatBoostModel:
    def __init__(self, model: Any, description: str, threads: int) -> None:
        self._model = model
        self._threads = threads
        loss = str(model.get_all_params().get("loss_function", ""))
        self._classifier = loss in _CLASSIFIER_LOSSES
        n_features = len(model.feature_names_)
        text = set(model.get_cat_feature_indices()) | set(model.get_text_feature_indices())
        kinds = tuple(ColumnKind.TEXT if i in text else ColumnKind.NUMBER for i in range(n_features))
        names = tuple(model.feature_names_)
        methods = {"predict", "predict_proba", "decision_function"} if self._classifier else {"predict"}
        self._spec = ModelSpec(
            methods=frozenset(methods),
            feature_names=None if names == tuple(str(i) for i in range(n_features)) else names,
            n_features=n_features,
            kinds=kinds if text else None,
            classes=tuple(model.classes_) if self._classifier else None,
            sample=None if text else [[0.0] * n_features],
            fork_safe=False,
            steady_cost=not text,
            description=f"{description}: CatBoost ({loss})",
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def predict(self, rows: Rows, method: Method) -> Outputs:
        require_method(method, self._spec)
        values = rows.values if isinstance(rows.values, np.ndarray) else np.asarray(rows.values, dtype=object)
        kind = _PREDICTION_TYPE.get(method, "Class" if self._classifier else "RawFormulaVal")
        out = self._model.predict(values, prediction_type=kind, thread_count=self._threads)
        return flat(np.asarray(out))


FORMAT = Format("catboost", extra="catboost", files="*.cbm", find=find, load=load)
