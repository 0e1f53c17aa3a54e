"""MLflow model directories (an `MLmodel` file), loaded as pyfunc with their signature.

The signature's column names and types order and convert the request's fields. `predict` is
the pyfunc's; when the model also has MLflow's scikit-learn flavor, `predict_proba` and
`decision_function` come from the native estimator it wraps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from sagehost.config import Method, Settings
from sagehost.errors import ModelLoadError
from sagehost.models import sklearn
from sagehost.models.arrays import flat, require_method
from sagehost.models.extras import require
from sagehost.models.format import Format
from sagehost.predictor import ColumnKind, Model, ModelSpec, Outputs, Rows

MLMODEL = "MLmodel"
_TEXT_TYPES = ("string", "binary")
_INTEGERS = ("long", "integer")


def find(model_dir: Path) -> list[Path]:
    return [model_dir] if (model_dir / MLMODEL).is_file() else []


def fork_safe(model_dir: Path) -> bool:
    """Only a scikit-learn flavor whose pickle is itself fork-safe; read from the MLmodel text."""
    text = (model_dir / MLMODEL).read_text(errors="replace")
    match = re.search(r"^\s+pickled_model:\s*(\S+)", text, re.MULTILINE)
    if re.search(r"^  sklearn:", text, re.MULTILINE) is None or match is None:
        return False
    pickled = model_dir / match.group(1)
    return pickled.is_file() and sklearn.fork_safe(pickled)


def load(model_dir: Path, settings: Settings) -> Model:
    mlflow = require("mlflow.pyfunc", "mlflow", f"{model_dir} (an MLflow model)")
    try:
        pyfunc = mlflow.load_model(str(model_dir))
    except Exception as exc:  # MLflow wraps every failure in its own exception types
        raise ModelLoadError(f"MLflow could not load {model_dir}: {type(exc).__name__}: {str(exc)[:300]}") from None
    native = None
    if "sklearn" in pyfunc.metadata.flavors:
        import mlflow.sklearn

        native = mlflow.sklearn.load_model(str(model_dir))
    return MlflowModel(pyfunc, native, model_dir.name, fork_safe(model_dir))


class MlflowModel:
    def __init__(self, pyfunc: Any, native: Any, description: str, is_fork_safe: bool) -> None:
        import pandas  # MLflow's own dependency: a pyfunc takes a DataFrame per batch

        self._pandas = pandas
        self._pyfunc = pyfunc
        self._native = native
        schema = pyfunc.metadata.get_input_schema()
        names = tuple(schema.input_names()) if schema is not None and schema.has_input_names() else None
        kinds = None
        if schema is not None and names is not None:
            kinds = tuple(ColumnKind.TEXT if _is_text(t) else ColumnKind.NUMBER for t in schema.input_types())
        n_features = len(names) if names else getattr(native, "n_features_in_", None)
        methods = {"predict"} | {m for m in ("predict_proba", "decision_function") if hasattr(native, m)}
        numeric = kinds is None or ColumnKind.TEXT not in kinds
        self._names = names
        self._casts = _integer_columns(schema, names)
        self._spec = ModelSpec(
            methods=frozenset(methods),
            feature_names=names,
            n_features=n_features,
            kinds=None if numeric else kinds,
            classes=tuple(native.classes_) if hasattr(native, "classes_") else None,
            sample=[[0.0] * n_features] if numeric and n_features else None,
            fork_safe=is_fork_safe,
            description=f"{description}: MLflow model ({', '.join(pyfunc.metadata.flavors)})",
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def predict(self, rows: Rows, method: Method) -> Outputs:
        require_method(method, self._spec)
        frame = self._pandas.DataFrame(rows.values, columns=list(self._names) if self._names else None)
        if self._casts:
            frame = self._cast(frame)
        if method == "predict":
            return _array(self._pyfunc.predict(frame))
        named = getattr(self._native, "feature_names_in_", None) is not None
        return _array(getattr(self._native, method)(frame if named else frame.to_numpy()))

    def _cast(self, frame: Any) -> Any:
        """Whole numbers into the signature's integer columns: pyfunc refuses float64 -> int64."""
        try:
            return frame.astype(self._casts)
        except (ValueError, TypeError):
            return frame  # missing values: let the pyfunc's schema check say which column


def _integer_columns(schema: Any, names: tuple[str, ...] | None) -> dict[str, str]:
    if schema is None or names is None:
        return {}
    types = [str(getattr(t, "name", t)).lower() for t in schema.input_types()]
    return {name: "int64" if t == "long" else "int32" for name, t in zip(names, types, strict=True) if t in _INTEGERS}


def _is_text(data_type: Any) -> bool:
    return str(getattr(data_type, "name", data_type)).lower() in _TEXT_TYPES


def _array(out: Any) -> Outputs:
    return flat(np.asarray(out))


FORMAT = Format(
    "mlflow",
    extra="mlflow",
    files="an MLmodel file (MLflow model directory)",
    find=find,
    load=load,
    fork_safe=fork_safe,
    whole_directory=True,  # it holds its flavor's own files (a model.pkl …) as its parts
)
