"""The one loader: what a model directory holds, and that model loaded.

`describe(model_dir, settings)` says what `serve` would load, from the files alone (no model
loaded, no script imported); `load(settings)` loads it. `serve`, `package`, `build`, `train`,
multi-model loading and `transform` all ask these two, so they cannot disagree.

Order: the user's script (code/inference.py, or SAGEMAKER_PROGRAM in SAGEMAKER_SUBMIT_DIRECTORY),
then a model file of any format in `sagehost.models.registry` (found from its files alone), then a
`model.tar.gz` (unpacked to scratch: the model dir may be read-only). A directory we cannot serve
stops the process with one paragraph: what was found, what was expected, what to do.
"""

from __future__ import annotations

import logging
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import ConfigError, ModelLoadError
from sagehost.models import registry
from sagehost.models.estimator import EstimatorModel
from sagehost.models.registry import Found
from sagehost.models.script import ScriptHandler, call_hook, import_script
from sagehost.models.sklearn import from_object
from sagehost.models.trees import compiled
from sagehost.predictor import Model

log = logging.getLogger("sagehost.models")

Loaded = Model | ScriptHandler
ARCHIVE = "model.tar.gz"


@dataclass(frozen=True)
class Servable:
    """What `serve` finds in a model directory; `str()` says it in one line."""

    model_dir: Path
    script: Path | None = None
    """The user's script, whose hooks run as the AWS toolkits run them."""
    found: Found | None = None
    """The model file and its format. Beside a script: the file a script without model_fn serves
    (a model_fn loads what it likes), or None when there is no one such file."""
    archive: Path | None = None
    """The model.tar.gz `found` was unpacked from, when the directory held no model file itself."""

    @property
    def extras(self) -> tuple[str, ...]:
        """The install extra of its model file's runtime (a script's own needs aside)."""
        return (self.found.format.extra,) if self.found is not None else ()

    @property
    def fork_safe(self) -> bool:
        """Whether it may be loaded once and shared by forked workers, known before loading.

        A script is trusted to be (it may be told otherwise with --no-preload); for a model file
        the format says, from the file alone."""
        return self.script is not None or (self.found is not None and self.found.fork_safe)

    def load(self, settings: Settings) -> Loaded:
        if self.script is not None:
            return _load_script(self.script, self.model_dir, settings)
        return self.load_model(settings)

    def load_model(self, settings: Settings) -> Model:
        if self.found is None:
            raise ModelLoadError(_nothing_found(self.model_dir, settings))
        log.info("Loading %s as %s", self.found.path, self.found.format.name)
        return self.found.load(settings)

    def __str__(self) -> str:
        model = "" if self.found is None else str(self.found)
        if self.archive is not None:
            model += f", in {self.archive.name}"
        if self.script is None:
            return model
        hooks = f"code/{self.script.name} (the AWS toolkit's hooks)"
        return f"{hooks}, beside {model}" if model else hooks


def describe(model_dir: Path, settings: Settings) -> Servable:
    """What `serve` would load from model_dir, or ModelLoadError with the paragraph it would stop
    with. A model.tar.gz alone in the directory is unpacked to look inside (once per process)."""
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"The model directory {model_dir} does not exist. On SageMaker it is where model.tar.gz is "
            "unpacked; locally, pass --model-dir DIR (or set SM_MODEL_DIR)."
        )
    script = _script_path(settings.replace(model_dir=model_dir))
    if script is not None:
        return Servable(model_dir, script=script, found=_beside_script(model_dir, settings))
    return _model_file(model_dir, settings)


def load(settings: Settings) -> Loaded:
    """What settings.model_dir holds, loaded: a Model, or the handler of the user's script."""
    compiled.use(settings.compiled_trees)  # before any tree path is built: it picks its crossover
    return describe(settings.model_dir, settings).load(settings)


def fork_safe(settings: Settings) -> bool:
    """Whether settings.model_dir's model may be loaded before the workers fork (`Servable.fork_safe`)."""
    if not settings.model_dir.is_dir():
        return True  # the load says why not
    return describe(settings.model_dir, settings).fork_safe


def _model_file(model_dir: Path, settings: Settings) -> Servable:
    found = registry.detect(model_dir, settings.flavor)
    if found is not None:
        return Servable(model_dir, found=found)
    archive = model_dir / ARCHIVE
    if archive.is_file():
        inner = _model_file(unpack(archive, settings.scratch_dir), settings)
        return Servable(model_dir, found=inner.found, archive=archive)
    raise ModelLoadError(_nothing_found(model_dir, settings))


def _beside_script(model_dir: Path, settings: Settings) -> Found | None:
    """The model file beside a script, if one is plain to see: a model_fn may load several files,
    so an ambiguous directory is the script's business, and is only an error once it has no model_fn."""
    try:
        return registry.detect(model_dir, settings.flavor)
    except (ConfigError, ModelLoadError):
        return None


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


# SAGEMAKER_SUBMIT_DIRECTORY may be the S3 URL of the SDK's sourcedir.tar.gz (a Path keeps it
# as "s3:/bucket/…"); its code is then repacked into model.tar.gz under code/.
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")


def _script_path(settings: Settings) -> Path | None:
    code_dir = settings.resolved_code_dir
    if _URL.match(str(code_dir)):
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
    script = import_script(path, isolated=settings.multi_model)
    model_fn = script.hook("model_fn")
    if model_fn is None:
        model = _model_file(model_dir, settings).load_model(settings)
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
    entries = sorted(model_dir.iterdir())
    visible = [p for p in entries if not p.name.startswith(".")]
    if len(visible) == 1 and visible[0].is_dir():
        # The classic mistake again, in a directory: SageMaker unpacks model.tar.gz as it is.
        return (
            f"{model_dir} holds only the folder {visible[0].name}/: package that folder instead "
            f"(sagehost package {visible[0]}), so its files end up at the archive's root."
        )
    found = [p.name + ("/" if p.is_dir() else "") for p in entries]
    shown = ", ".join(found[:15]) + (f" and {len(found) - 15} more" if len(found) > 15 else "")
    return (
        f"{model_dir} holds no model sagehost can serve. Found: {shown or 'nothing (the directory is empty)'}. "
        f"Expected one of: {registry.expected()}, a {ARCHIVE}, or code/{settings.program} defining model_fn. "
        "To fix: save the model as its library does (joblib.dump(model, 'model.joblib'), "
        "booster.save_model('model.json'), …) into that directory (on SageMaker: at the root of "
        "model.tar.gz, not in a sub-folder), or add code/inference.py."
    )
