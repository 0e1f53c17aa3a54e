"""`sagehost package DIR -o model.tar.gz`: the archive SageMaker unpacks into /opt/ml/model.

Files go at the archive root. `tar czf model.tar.gz model/` nests them one folder down, and
SageMaker unpacks that into /opt/ml/model/model/, where no server finds them: the classic cause
of "model not found". The archive is checked the way `serve` would look at it (`sagehost.models.describe`)
before it is written.
https://docs.aws.amazon.com/sagemaker/latest/dg/realtime-endpoints-deploy-models.html
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models import ARCHIVE, describe

log = logging.getLogger("sagehost.package")

_SKIPPED = frozenset({"__pycache__", ".git", ".ipynb_checkpoints", ".DS_Store", ARCHIVE})


def package(model_dir: Path, output: Path, settings: Settings) -> str:
    """Write the archive; the one-line description of what `serve` will find in it."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir} is not a directory.")
    served = describe(model_dir, settings)
    if served.archive is not None:
        raise ModelLoadError(
            f"{model_dir} holds its model only inside {served.archive.name}, which is already the archive "
            "SageMaker takes: use that file as it is, or package the directory it was made from."
        )
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not _skipped(p, model_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output, "w:gz") as tar:
        for path in files:
            if path.resolve() == output.resolve():
                continue
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return f"{output} ({output.stat().st_size:,} bytes, {len(files)} files at the root): {served}"


def _skipped(path: Path, root: Path) -> bool:
    return any(part in _SKIPPED for part in path.relative_to(root).parts)
