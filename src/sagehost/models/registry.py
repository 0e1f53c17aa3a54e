"""Model formats sagehost serves with zero code, each recognised from its files alone.

A Format names its install extra, whether its runtime survives a fork, how to find its
artifacts in a directory (cheap: no heavy import), and how to load one into a Model. The
registry order is only the order of the error messages; a directory that two formats claim
is ambiguous unless `--flavor` / `SAGEHOST_FLAVOR` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sagehost.config import FLAVORS, Settings
from sagehost.errors import ConfigError, ModelLoadError
from sagehost.models import catboost, h2o, lightgbm, mlflow, onnx, sklearn, torch, xgboost
from sagehost.predictor import Model


@dataclass(frozen=True)
class Format:
    name: str
    extra: str
    fork_safe: Callable[[Path], bool]
    """Whether a loaded model of this file may be shared by forked workers (no OpenMP pool, JVM
    or runtime threads started in the parent that a child would inherit half-alive)."""
    find: Callable[[Path], list[Path]]
    load: Callable[[Path, Settings], Model]
    files: str
    """What it is recognised by, for messages and the README."""


def _never(path: Path) -> bool:
    return False


FORMATS: tuple[Format, ...] = (
    Format("mlflow", "mlflow", mlflow.fork_safe, mlflow.find, mlflow.load, "an MLmodel file (MLflow model directory)"),
    Format("sklearn", "sklearn", sklearn.fork_safe, sklearn.find, sklearn.load, "*.joblib, *.pkl, *.pickle"),
    Format("xgboost", "xgboost", _never, xgboost.find, xgboost.load, "xgboost-model, *.ubj, *.bst, XGBoost *.json"),
    Format("lightgbm", "lightgbm", _never, lightgbm.find, lightgbm.load, "LightGBM text model *.txt"),
    Format("catboost", "catboost", _never, catboost.find, catboost.load, "*.cbm"),
    Format("onnx", "onnx", _never, onnx.find, onnx.load, "*.onnx"),
    Format("torch", "torch", _never, torch.find, torch.load, "TorchScript *.pt, *.pth; torch.export *.pt2"),
    Format("h2o", "h2o", _never, h2o.find, h2o.load, "H2O MOJO *.zip (with h2o-genmodel.jar beside it)"),
)
NAMES = tuple(f.name for f in FORMATS)
assert NAMES == FLAVORS, "config.FLAVORS names the formats for the CLI: keep the two in step"


@dataclass(frozen=True)
class Found:
    format: Format
    path: Path

    @property
    def fork_safe(self) -> bool:
        return self.format.fork_safe(self.path)

    def load(self, settings: Settings) -> Model:
        return self.format.load(self.path, settings)


def detect(model_dir: Path, flavor: str | None) -> Found | None:
    """The one artifact to serve, or None when the directory holds no known model file."""
    if flavor is not None and flavor not in NAMES:
        raise ConfigError(f"Unknown flavor {flavor!r}. Choose one of: {', '.join(NAMES)}.")
    claims = {f.name: (f, paths) for f in FORMATS if (paths := f.find(model_dir))}
    if "mlflow" in claims and flavor is None:
        claims = {"mlflow": claims["mlflow"]}  # an MLflow directory holds its flavor's own files too
    if flavor is not None:
        if flavor not in claims:
            raise ModelLoadError(
                f"--flavor {flavor} was asked for, but {model_dir} holds no {flavor} model "
                f"(looked for {_format(flavor).files})."
            )
        claims = {flavor: claims[flavor]}
    if not claims:
        return None
    if len(claims) > 1:
        listed = "; ".join(f"{name}: {', '.join(p.name for p in paths)}" for name, (_, paths) in claims.items())
        raise ModelLoadError(
            f"{model_dir} holds models of several formats ({listed}). Keep one, or choose with "
            f"--flavor / SAGEHOST_FLAVOR (one of {', '.join(claims)})."
        )
    [(fmt, paths)] = claims.values()
    return Found(fmt, _one(paths, fmt, model_dir))


def _one(paths: list[Path], fmt: Format, model_dir: Path) -> Path:
    if len(paths) == 1:
        return paths[0]
    preferred = [p for p in paths if p.stem == "model" or p.name == "xgboost-model"]
    if len(preferred) == 1:
        return preferred[0]
    names = ", ".join(p.name for p in paths)
    raise ModelLoadError(
        f"{model_dir} holds several {fmt.name} model files ({names}) and none is named model.*. "
        "Keep one, or name the one to serve model.<ext>."
    )


def _format(name: str) -> Format:
    return next(f for f in FORMATS if f.name == name)
