"""Find and load what a model directory holds; zero code for the common cases.

Order: the user's script (code/inference.py, or SAGEMAKER_PROGRAM in SAGEMAKER_SUBMIT_DIRECTORY),
then a model artifact of any format in `sagehost.models.registry` (found from its files alone), then a
`model.tar.gz` (unpacked to scratch: the model dir may be read-only). A directory we cannot serve stops the
process with one paragraph: what was found, what was expected, what to do.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models import registry
from sagehost.models.estimator import EstimatorModel
from sagehost.models.script import ScriptHandler, call_hook, import_script
from sagehost.models.sklearn import from_object
from sagehost.predictor import Model

log = logging.getLogger("sagehost.models")

Loaded = Model | ScriptHandler
ARCHIVE = "model.tar.gz"


def load(settings: Settings) -> Loaded:
    model_dir = settings.model_dir
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"The model directory {model_dir} does not exist. On SageMaker it is where model.tar.gz is "
            "unpacked; locally, pass --model-dir DIR (or set SM_MODEL_DIR)."
        )
    script_path = _script_path(settings)
    if script_path is not None:
        return _load_script(script_path, model_dir, settings)
    return load_model(model_dir, settings)


def load_model(model_dir: Path, settings: Settings) -> Model:
    found = find_model(model_dir, settings)
    log.info("Loading %s as %s", found.path, found.format.name)
    return found.load(settings)


def find_model(model_dir: Path, settings: Settings) -> registry.Found:
    """The artifact to serve, unpacking a model.tar.gz when the directory has nothing else."""
    found = registry.detect(model_dir, settings.flavor)
    if found is not None:
        return found
    archive = model_dir / ARCHIVE
    if archive.is_file():
        return find_model(unpack(archive, settings.scratch_dir), settings)
    raise ModelLoadError(_nothing_found(model_dir, settings))


def fork_safe(settings: Settings) -> bool:
    """Whether the model may be loaded once and shared by forked workers, known before loading.

    A script is trusted to be (it may be told otherwise with --no-preload); for a model file the
    format says, from the file alone. Unpacking a model.tar.gz to find out is cheap and is done
    again, once, by the real load.
    """
    if not settings.model_dir.is_dir() or _script_path(settings) is not None:
        return True
    return find_model(settings.model_dir, settings).fork_safe


_UNPACKED: dict[tuple[Path, float], Path] = {}


def unpack(archive: Path, scratch: Path) -> Path:
    """Unpack once per process tree: forked workers inherit the parent's copy."""
    key = (archive.resolve(), archive.stat().st_mtime)
    if key not in _UNPACKED or not _UNPACKED[key].is_dir():
        _UNPACKED[key] = _unpack(archive, scratch)
    return _UNPACKED[key]


def _unpack(archive: Path, scratch: Path) -> Path:
    scratch.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="model-", dir=scratch))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")  # refuses absolute paths, .. and device files
    except (tarfile.TarError, OSError) as exc:
        raise ModelLoadError(f"{archive} could not be unpacked ({exc}). Is it a complete .tar.gz?") from None
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        # The classic mistake: `tar czf model.tar.gz model/` nests everything one level down.
        log.warning(
            "%s has everything under %s/; SageMaker would unpack it there too. "
            "Build it with `sagehost package` or `tar czf model.tar.gz -C DIR .`.",
            archive,
            entries[0].name,
        )
        return entries[0]
    log.info("Unpacked %s into %s", archive, target)
    return target


def _script_path(settings: Settings) -> Path | None:
    code_dir = settings.resolved_code_dir
    if "://" in str(settings.code_dir or ""):
        # The SDK may name an S3 tarball here; its code is repacked into model.tar.gz under code/.
        code_dir = settings.model_dir / "code"
    path = code_dir / settings.program
    if path.is_file():
        return path
    if settings.code_dir is not None or settings.program != "inference.py":
        raise ModelLoadError(
            f"SAGEMAKER_PROGRAM / SAGEMAKER_SUBMIT_DIRECTORY name {path}, which does not exist. "
            f"Put the script there, or unset them to serve {settings.model_dir} with no code."
        )
    return None


def _load_script(path: Path, model_dir: Path, settings: Settings) -> Loaded:
    script = import_script(path)
    model_fn = script.hook("model_fn")
    if model_fn is None:
        model = load_model(model_dir, settings)
        if script.model_fn_only:
            return model
        if not isinstance(model, EstimatorModel):
            raise ModelLoadError(
                f"{path} defines hooks but no model_fn, and {model.spec.description} is not a pickled estimator "
                "its predict_fn could take. Add model_fn(model_dir) that loads the model for your hooks."
            )
        estimator = model.estimator
    else:
        try:
            estimator = call_hook(model_fn, str(model_dir))
        except Exception as exc:
            log.exception("model_fn raised")
            raise ModelLoadError(
                f"model_fn in {path} raised {type(exc).__name__}: {exc}. The traceback is above."
            ) from None
    if script.model_fn_only:
        return from_object(estimator, f"{path.name}:model_fn", settings)
    return ScriptHandler(script, estimator, settings.default_accept)


def _nothing_found(model_dir: Path, settings: Settings) -> str:
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in model_dir.iterdir())
    shown = ", ".join(found[:15]) + (f" and {len(found) - 15} more" if len(found) > 15 else "")
    return (
        f"sagehost found no model to serve in {model_dir}. Found: {shown or 'nothing (the directory is empty)'}. "
        f"Expected one of: {_expected()}, a {ARCHIVE}, or code/{settings.program} defining model_fn. "
        "To fix: save the model as its library does (joblib.dump(model, 'model.joblib'), "
        "booster.save_model('model.json'), …) into that directory (on SageMaker: at the root of "
        "model.tar.gz, not in a sub-folder), or add code/inference.py."
    )


def _expected() -> str:
    return "; ".join(f"{f.name}: {f.files}" for f in registry.FORMATS)
