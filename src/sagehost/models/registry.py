"""Every model format sagehost serves with zero code, and which one a directory holds.

A format is one module ending with its FORMAT (see `sagehost.models.format`), listed here. The
order is only the order of the messages; a directory that two formats claim is ambiguous unless
`--flavor` / `SAGEHOST_FLAVOR` picks one. config.FLAVORS names them for the CLI (tests keep the
two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import ConfigError, ModelLoadError
from sagehost.models import catboost, h2o, lightgbm, mlflow, onnx, sklearn, torch, xgboost
from sagehost.models.format import Format
from sagehost.predictor import Model

FORMATS: tuple[Format, ...] = (
    mlflow.FORMAT,
    sklearn.FORMAT,
    xgboost.FORMAT,
    lightgbm.FORMAT,
    catboost.FORMAT,
    onnx.FORMAT,
    torch.FORMAT,
    h2o.FORMAT,
)
NAMES = tuple(f.name for f in FORMATS)
EXTRAS = tuple(dict.fromkeys(f.extra for f in FORMATS))


@dataclass(frozen=True)
class Found:
    format: Format
    path: Path

    @property
    def fork_safe(self) -> bool:
        return self.format.fork_safe(self.path)

    def load(self, settings: Settings) -> Model:
        return self.format.load(self.path, settings)

    def __str__(self) -> str:
        return f"{self.path.name} as {self.format.name} (pip install 'sagehost[{self.format.extra}]')"


def detect(model_dir: Path, flavor: str | None) -> Found | None:
    """The one artifact to serve, or None when the directory holds no known model file."""
    if flavor is not None and flavor not in NAMES:
        raise ConfigError(f"Unknown flavor {flavor!r}. Choose one of: {', '.join(NAMES)}.")
    claims = {f.name: (f, paths) for f in FORMATS if (paths := f.find(model_dir))}
    whole = [name for name, (f, _) in claims.items() if f.whole_directory]
    if whole and flavor is None:
        claims = {whole[0]: claims[whole[0]]}  # the other files are its parts
    if flavor is not None:
        if flavor not in claims:
            raise ModelLoadError(
                f"--flavor {flavor} was asked for, but {model_dir} holds no {flavor} model "
                f"(looked for {by_name(flavor).files})."
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


def expected() -> str:
    """Every format and what it is recognised by, for messages."""
    return "; ".join(f"{f.name}: {f.files}" for f in FORMATS)


def by_name(name: str) -> Format:
    return next(f for f in FORMATS if f.name == name)


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
