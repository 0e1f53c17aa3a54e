"""What an image needs, decided from the model it will serve.

The model's format picks the install extra (`sagehost[xgboost]` …) and what the format needs
from the operating system: OpenMP for XGBoost and LightGBM (their wheels link the system's
libgomp), a headless JRE for H2O MOJOs. A model with its own `code/inference.py` gets the
scikit-learn stack and its `code/requirements.txt`, which the AWS toolkits would pip-install
at container start; baking it in keeps the start fast and works under network isolation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sagehost import contract
from sagehost.config import Settings
from sagehost.errors import ConfigError

DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_PLATFORM = "linux/amd64"  # what SageMaker's instances run (Graviton instances aside)

# Debian package names that hold on the slim images of every current Debian release.
_SYSTEM_PACKAGES = {
    "xgboost": ("libgomp1",),
    "lightgbm": ("libgomp1",),
    "h2o": ("default-jre-headless",),
}
_KNOWN_EXTRAS = ("sklearn", "xgboost", "lightgbm", "catboost", "onnx", "torch", "mlflow", "h2o", "all")


@dataclass(frozen=True)
class ImagePlan:
    extras: tuple[str, ...]
    system_packages: tuple[str, ...] = ()
    model_dir: Path | None = None
    """Baked into /opt/ml/model; None: SageMaker delivers model.tar.gz at run time."""
    requirements: Path | None = None
    serves: str = "a model delivered at run time as model.tar.gz"
    labels: dict[str, str] = field(default_factory=lambda: {contract.LABEL_BIND_TO_PORT: "true"})

    @property
    def requirement(self) -> str:
        return "sagehost" + (f"[{','.join(self.extras)}]" if self.extras else "")


def plan_image(
    model_dir: Path | None,
    settings: Settings,
    extras: tuple[str, ...] = (),
    requirements: Path | None = None,
) -> ImagePlan:
    unknown = [e for e in extras if e not in _KNOWN_EXTRAS]
    if unknown:
        raise ConfigError(f"Unknown extra {', '.join(unknown)}: choose from {', '.join(_KNOWN_EXTRAS)}.")
    serves = ImagePlan.serves
    if model_dir is not None:
        extras, serves = _from_model(model_dir, settings, extras)
        bundled = model_dir / contract.CODE_SUBDIR / "requirements.txt"
        if requirements is None and bundled.is_file():
            requirements = bundled
    chosen = tuple(dict.fromkeys(extras or ("sklearn",)))
    packages = sorted({p for extra in _expanded(chosen) for p in _SYSTEM_PACKAGES.get(extra, ())})
    return ImagePlan(chosen, tuple(packages), model_dir, requirements, serves)


def _from_model(model_dir: Path, settings: Settings, extras: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    # Imported here: the formats import numpy, which the CLI must not load before thread limits are set.
    from sagehost.models import registry
    from sagehost.package import describe  # the same judgement `sagehost package` prints

    serves = describe(model_dir, settings)
    if (settings.replace(model_dir=model_dir).resolved_code_dir / settings.program).is_file():
        return extras or ("sklearn",), serves
    found = registry.detect(model_dir, settings.flavor)
    assert found is not None  # describe() raised otherwise
    return (found.format.extra, *extras), serves


def _expanded(extras: tuple[str, ...]) -> tuple[str, ...]:
    return _KNOWN_EXTRAS if "all" in extras else extras
