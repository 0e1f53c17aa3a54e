"""`train`: the classic "pre-trained model" training job.

SageMaker runs `docker run IMAGE train`. With a model already trained elsewhere, the job's work
is to put that model into /opt/ml/model (SageMaker then tars it into model.tar.gz): copy it from
the input channel (`/opt/ml/input/data/<channel>/`) or from a path baked into the image, and prove
it loads. On failure the reason goes to /opt/ml/output/failure (SageMaker shows its first 1024
characters as FailureReason) and the exit code is non-zero.
https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-output.html
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

from sagehost import contract
from sagehost.config import Settings
from sagehost.errors import ModelLoadError, StartupError
from sagehost.models import ARCHIVE, load

log = logging.getLogger("sagehost.train")


def train(settings: Settings, source: Path | None = None) -> int:
    base = settings.base_dir
    target = base / contract.MODEL_SUBDIR
    try:
        origin = source or base / "input" / "data" / settings.channel
        copy_model(origin, target)
        load(settings.replace(model_dir=target, code_dir=None))
    except StartupError as exc:
        write_failure(base, str(exc))
        return 1
    except OSError as exc:
        write_failure(base, f"Copying the model failed: {exc}")
        return 1
    log.info("Model copied into %s and loaded successfully.", target)
    return 0


def copy_model(origin: Path, target: Path) -> None:
    if not origin.is_dir() or not any(origin.iterdir()):
        raise ModelLoadError(
            f"No model to copy: {origin} is missing or empty. Give the training job an input channel "
            "holding the model file (or model.tar.gz), or bake one into the image and pass --source."
        )
    target.mkdir(parents=True, exist_ok=True)
    archive = origin / ARCHIVE
    entries = list(origin.iterdir())
    if entries == [archive]:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        return
    for entry in entries:
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target / entry.name)


def write_failure(base: Path, reason: str) -> None:
    log.error("Training failed: %s", reason)
    output = base / "output"
    try:
        output.mkdir(parents=True, exist_ok=True)
        (output / "failure").write_text(reason[: contract.FAILURE_REASON_MAX_CHARS])
    except OSError:
        log.exception("Could not write %s/failure", output)
