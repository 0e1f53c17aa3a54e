"""What an image needs, decided from the model it will serve.

What `serve` will load (`sagehost.models.describe`) picks the install extra of the model's
format (`sagehost[xgboost]` …) and what the format needs from the operating system (its
`system_packages`: OpenMP for XGBoost and LightGBM, a headless JRE for H2O MOJOs). A model with
its own `code/inference.py` also gets the scikit-learn stack and its `code/requirements.txt`,
which the AWS toolkits would pip-install at container start; baking it in keeps the start fast
and works under network isolation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sagehost import contract
from sagehost.config import Settings
from sagehost.errors import ConfigError

DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_PLATFORM = "linux/amd64"  # what SageMaker's instances run (Graviton instances aside)
ALL = "all"  # every format's extra
# Extras that serve no format of their own but make some faster: `trees` (numba) compiles the
# walk of tree ensembles, for about 150 MB per server (README "Lean predict paths").
ADD_ONS = ("trees",)


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
    # Imported here: the formats import numpy, which the CLI must not load before thread limits are set.
    from sagehost.models import describe, registry

    known = (*registry.EXTRAS, *ADD_ONS, ALL)
    unknown = [e for e in extras if e not in known]
    if unknown:
        raise ConfigError(f"Unknown extra {', '.join(unknown)}: choose from {', '.join(known)}.")
    add_ons = tuple(e for e in extras if e in ADD_ONS)  # speed a format up: not a choice of stack
    extras = tuple(e for e in extras if e not in ADD_ONS)
    serves = ImagePlan.serves
    if model_dir is not None:
        servable = describe(model_dir, settings)  # what `serve` will load in the image
        serves = str(servable)
        # A script's own imports are unknown: it gets the scikit-learn stack unless --extra says otherwise.
        own = (extras or ("sklearn",)) if servable.script is not None else extras
        extras = (*servable.extras, *own)
        bundled = model_dir / contract.CODE_SUBDIR / "requirements.txt"
        if requirements is None and bundled.is_file():
            requirements = bundled
    chosen = tuple(dict.fromkeys((*(extras or ("sklearn",)), *add_ons)))
    expanded = registry.EXTRAS if ALL in chosen else chosen
    packages = sorted({p for f in registry.FORMATS if f.extra in expanded for p in f.system_packages})
    return ImagePlan(chosen, tuple(packages), model_dir, requirements, serves)
