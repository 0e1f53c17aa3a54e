"""`sagehost build [MODEL_DIR] -t TAG`: a build context with its Dockerfile, built by docker or podman.

The context (default `./sagehost-build/`) is kept: its Dockerfile is the user's to read, keep
and rebuild with their own tooling.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sagehost import contract
from sagehost.config import Settings
from sagehost.errors import ConfigError
from sagehost.image import dockerfile, wheelhouse
from sagehost.image.engine import Engine, EngineError, find_engine
from sagehost.image.plan import DEFAULT_BASE_IMAGE, DEFAULT_PLATFORM, ImagePlan, plan_image

_HOST_PLATFORMS = {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64", "arm64": "linux/arm64"}
_IGNORED = shutil.ignore_patterns("__pycache__", ".git", ".ipynb_checkpoints", ".DS_Store")
Say = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    tag: str
    model_dir: Path | None = None
    context: Path = Path("sagehost-build")
    base_image: str = DEFAULT_BASE_IMAGE
    platform: str = DEFAULT_PLATFORM
    builder: str | None = None
    extras: tuple[str, ...] = ()
    requirements: Path | None = None
    render_only: bool = False
    multi_model: bool = False
    """Labelled for SageMaker's multi-model endpoints (`Mode=MultiModel`); the models come at run time."""


@dataclass(frozen=True)
class Built:
    tag: str
    dockerfile: Path
    size_bytes: int | None  # None when only rendered


def build(request: BuildRequest, settings: Settings, say: Say) -> Built:
    plan = plan_image(request.model_dir, settings, request.extras, request.requirements)
    if request.multi_model:
        plan = _multi_model(plan)
    say(f"Image serves {plan.serves}; installs {plan.requirement}" + _system_note(plan))
    recipe = write_context(plan, request.context)
    say(f"Dockerfile: {recipe}")
    if request.render_only:
        return Built(request.tag, recipe, None)
    engine = find_engine(request.builder)
    _warn_foreign_platform(request.platform, say)
    target = probe(engine, request.base_image, request.platform)
    wheels = request.context / dockerfile.WHEELHOUSE
    own = wheelhouse.own_wheel(wheels)
    count = wheelhouse.resolve(wheels, own, plan.extras, plan.requirements, target)
    say(f"Wheelhouse: {count} wheels for Python {target.python}, glibc {target.glibc}, {request.platform}")
    _run_build(engine, request, say)
    size = int(engine.inspect_image(request.tag).get("Size", 0))
    say(f"Built {request.tag} with {engine.name}: {size / 1e6:.0f} MB")
    return Built(request.tag, recipe, size)


def write_context(plan: ImagePlan, context: Path) -> Path:
    """A fresh build context holding the Dockerfile, the model and the requirements."""
    if context.exists() and any(context.iterdir()):
        if not _ours(context):
            raise EngineError(
                f"{context} is not empty and is not a context sagehost wrote: give --context a new or empty "
                "folder (it is replaced on every build)."
            )
        shutil.rmtree(context)
    context.mkdir(parents=True, exist_ok=True)
    if plan.model_dir is not None:
        shutil.copytree(plan.model_dir, context / dockerfile.MODEL_IN_CONTEXT, ignore=_IGNORED)
    if plan.requirements is not None:
        shutil.copy2(plan.requirements, context / dockerfile.REQUIREMENTS_IN_CONTEXT)
    recipe = context / "Dockerfile"
    recipe.write_text(dockerfile.render(plan))
    return recipe


def _ours(context: Path) -> bool:
    recipe = context / "Dockerfile"
    return recipe.is_file() and recipe.read_text(errors="replace").startswith(dockerfile.SIGNATURE)


def probe(engine: Engine, base_image: str, target_platform: str) -> wheelhouse.Target:
    """The Python version and glibc of the base image, asked of the image itself."""
    code = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1])"
    try:
        run = ("run", "--rm", "--platform", target_platform, "--entrypoint", "python3", base_image)
        python, glibc = engine.run(*run, "-c", code).split()
    except (EngineError, ValueError) as exc:
        raise EngineError(
            f"Could not run python3 in the base image {base_image}: {exc}. The base image needs python3 "
            "with venv (the official python:3.x-slim images have both)."
        ) from None
    return wheelhouse.Target(python, glibc, target_platform)


def _run_build(engine: Engine, request: BuildRequest, say: Say) -> None:
    # The engine's own progress is shown as it happens: builds take minutes.
    code, _ = engine.stream(
        "build", "--platform", request.platform, "--build-arg", f"BASE_IMAGE={request.base_image}",
        "-t", request.tag, str(request.context), say=say,
    )  # fmt: skip
    if code != 0:
        raise EngineError(f"{engine.name} build failed (exit {code}); its output is above.")


def _multi_model(plan: ImagePlan) -> ImagePlan:
    """SageMaker accepts an image for `Mode=MultiModel` only with this label (sagemaker-contract.md §1.6)."""
    if plan.model_dir is not None:
        raise ConfigError(
            "A multi-model image loads its models at run time (SageMaker calls POST /models): build it "
            "without MODEL_DIR, with --extra for each model format it must serve."
        )
    labels = {**plan.labels, contract.LABEL_MULTI_MODELS: "true"}
    return dataclasses.replace(plan, labels=labels, serves="many models, loaded at run time (multi-model endpoint)")


def _system_note(plan: ImagePlan) -> str:
    return f", plus {', '.join(plan.system_packages)} from the OS" if plan.system_packages else ""


def _warn_foreign_platform(target_platform: str, say: Say) -> None:
    host = _HOST_PLATFORMS.get(platform.machine().lower())
    if host != target_platform:
        say(
            f"Warning: building {target_platform} on a {host or platform.machine()} host runs under emulation "
            "(slow; needs qemu-user-static). SageMaker's x86 instances run linux/amd64."
        )
