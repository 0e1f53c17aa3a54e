"""`sagehost package DIR -o model.tar.gz`: the archive SageMaker unpacks into /opt/ml/model.

Files go at the archive root. `tar czf model.tar.gz model/` nests them one folder down, and
SageMaker unpacks that into /opt/ml/model/model/, where no server finds them: the classic cause
of "model not found". The archive is checked the way `serve` would look at it before it is written.
https://docs.aws.amazon.com/sagemaker/latest/dg/realtime-endpoints-deploy-models.html
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models import registry

log = logging.getLogger("sagehost.package")

_SKIPPED = frozenset({"__pycache__", ".git", ".ipynb_checkpoints", ".DS_Store", "model.tar.gz"})


def package(model_dir: Path, output: Path, settings: Settings) -> str:
    """Write the archive; the one-line description of what `serve` will find in it."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir} is not a directory.")
    served = describe(model_dir, settings)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not _skipped(p, model_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output, "w:gz") as tar:
        for path in files:
            if path.resolve() == output.resolve():
                continue
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return f"{output} ({output.stat().st_size:,} bytes, {len(files)} files at the root): {served}"


def describe(model_dir: Path, settings: Settings) -> str:
    """What `sagehost serve` would serve from this directory, or why it would refuse it."""
    code = settings.replace(model_dir=model_dir).resolved_code_dir / settings.program
    if code.is_file():
        return f"code/{settings.program} (the AWS toolkit's hooks)"
    found = registry.detect(model_dir, settings.flavor)
    if found is not None:
        return f"{found.path.name} as {found.format.name} (pip install 'sagehost[{found.format.extra}]')"
    entries = [p for p in model_dir.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        raise ModelLoadError(
            f"{model_dir} holds only the folder {entries[0].name}/: package that folder instead "
            f"(sagehost package {entries[0]}), so its files end up at the archive's root."
        )
    raise ModelLoadError(
        f"{model_dir} holds no model sagehost can serve. Expected: "
        + "; ".join(f"{f.name}: {f.files}" for f in registry.FORMATS)
        + f"; or code/{settings.program}."
    )


def _skipped(path: Path, root: Path) -> bool:
    return any(part in _SKIPPED for part in path.relative_to(root).parts)
