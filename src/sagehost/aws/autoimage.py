"""The image `sagehost deploy` runs when no --image is given: built once per content, then reused.

The image holds sagehost and what the model's format needs, and no model: SageMaker delivers
that as model.tar.gz, so one image serves every model of the format. Its tag is a hash of what
goes into it: sagehost's version and source, the extras, the requirements file, the OS packages,
the base image and the platform. A deploy reuses the image ECR holds under that tag (no container
engine needed), else the one the local engine holds, else builds it as `sagehost build` does.
An image at hand is first run as SageMaker would, with `sagehost verify`'s checks and the packaged
model: a health check that fails shows in seconds, not after 20 minutes of a Creating endpoint.
It is then pushed as `sagehost push` does.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sagehost
from sagehost.aws.errors import AwsOptionError, PreflightFailed
from sagehost.aws.push import DOCKER_V2_MANIFEST, Pushed, ensure_repository, push
from sagehost.aws.session import Aws
from sagehost.aws.spec import EcrImage
from sagehost.config import Settings
from sagehost.image.build import BuildRequest, build
from sagehost.image.engine import Engine, find_engine
from sagehost.image.plan import DEFAULT_BASE_IMAGE, DEFAULT_PLATFORM, ImagePlan, plan_image

Say = Callable[[str], None]

REPOSITORY = "sagehost"
"""The ECR repository of the images deploy builds; their tags tell them apart."""
LOCAL_NAME = "sagehost"
UNBUILT = EcrImage(uri="", account="", region="", repository="", tag=None, digest=None)
"""A deploy spec's image until the image is built or found (`Deployer` replaces it first)."""
_NOT_IN_TAGS = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class ImageSource:
    """Where a deploy without --image gets its image: the model's format decides which."""

    model_dir: Path
    base_image: str = DEFAULT_BASE_IMAGE
    builder: str | None = None
    verify: bool = True
    repository: str = REPOSITORY

    def resolve(self, aws: Aws, settings: Settings, chatter: Say) -> EcrImage:
        """The image in ECR, found, or built and pushed. `chatter` gets the engine's own output."""
        plan = plan_image(self.model_dir, settings)
        tag = content_tag(plan, self.base_image)
        stored = stored_image(aws, self.repository, tag)
        if stored is not None:
            aws.echo(f"ECR holds {self.repository}:{tag} ({plan.requirement}): reused, nothing built or pushed.")
            return stored.ecr_image(aws.region)
        engine = find_engine(self.builder)
        local = f"{LOCAL_NAME}:{tag}"
        if engine.image_exists(local):
            aws.echo(f"{engine.name} holds {local} ({plan.requirement}): reused, not built again.")
        elif aws.dry_run:
            aws.echo(f"  would build {local} with {engine.name}: {plan.requirement} on {self.base_image}")
        else:
            aws.echo(f"Building {local} with {engine.name}: {plan.requirement} on {self.base_image}")
            self.build(plan, local, settings, chatter)
        if aws.dry_run:
            return self.planned(aws, tag)
        if self.verify:
            self.check(engine, local, settings, chatter)
        pushed = push(aws, engine, local, repository=self.repository, tag=tag, say=chatter)
        aws.echo(f"Pushed {pushed.pinned}")
        return pushed.ecr_image(aws.region)

    def build(self, plan: ImagePlan, local: str, settings: Settings, chatter: Say) -> None:
        with tempfile.TemporaryDirectory(prefix="sagehost-image-") as scratch:
            request = BuildRequest(
                tag=local,
                context=Path(scratch) / "context",
                base_image=self.base_image,
                builder=self.builder,
                extras=plan.extras,
                requirements=plan.requirements,
            )
            build(request, settings, chatter)

    def check(self, engine: Engine, image: str, settings: Settings, chatter: Say) -> None:
        """`sagehost verify IMAGE` with the model as SageMaker would deliver it."""
        from sagehost.package import package
        from sagehost.verify import report
        from sagehost.verify_image import verify_image

        with tempfile.TemporaryDirectory(prefix="sagehost-verify-") as scratch:
            archive = Path(scratch) / "model.tar.gz"
            package(self.model_dir, archive, settings)
            chatter(f"Verifying {image} with {self.model_dir} as SageMaker would run it (--skip-verify skips this)")
            checks = verify_image(image, [], archive, engine.name)
        if not all(check.passed for check in checks):
            raise PreflightFailed(
                f"{image} fails with this model as SageMaker would run it, so the endpoint would fail too "
                f"(nothing was pushed or created):\n{report(checks)}\n"
                "Fix what the FAIL lines say, or deploy anyway with --skip-verify."
            )
        chatter(f"Verified {image}: {len(checks)} checks passed")

    def planned(self, aws: Aws, tag: str) -> EcrImage:
        found = ensure_repository(aws, self.repository, aws.echo)
        uri, registry_id = str(found["repositoryUri"]), str(found["registryId"])
        aws.echo(f"  would verify it with the packaged model and push it to {uri}:{tag}")
        return Pushed(uri, registry_id, self.repository, tag, None).ecr_image(aws.region)


def image_source(options: dict[str, Any], given: Callable[[str], bool]) -> ImageSource | None:
    """The deploy's image source from its options; None when --image names the image."""
    if options["image"] is not None:
        for name in ("base_image", "builder"):
            if given(name):
                flag = "--" + name.replace("_", "-")
                raise AwsOptionError(f"{flag} is for the image deploy builds without --image; drop one of them.")
        return None
    if options["model_dir"] is None:
        raise AwsOptionError(
            "Without --image, deploy builds the image the model's format needs, which it reads from "
            "--model-dir. Give --model-dir, or --image with --model-data."
        )
    base = options["base_image"] or DEFAULT_BASE_IMAGE
    return ImageSource(options["model_dir"], base, options["builder"], verify=not options["skip_verify"])


def stored_image(aws: Aws, repository: str, tag: str) -> Pushed | None:
    """repository:tag when ECR holds it with a manifest SageMaker accepts."""
    found = aws.find("ecr", "describe_repositories", repositoryNames=[repository])
    if not found:
        return None
    repo = found["repositories"][0]
    images = aws.find(
        "ecr",
        "describe_images",
        registryId=repo["registryId"],
        repositoryName=repository,
        imageIds=[{"imageTag": tag}],
    )
    details = (images or {}).get("imageDetails") or []
    if not details or details[0].get("imageManifestMediaType") != DOCKER_V2_MANIFEST:
        return None
    return Pushed(repo["repositoryUri"], repo["registryId"], repository, tag, details[0]["imageDigest"])


def content_tag(plan: ImagePlan, base_image: str, platform: str = DEFAULT_PLATFORM) -> str:
    """EXTRAS-VERSION-HASH: the hash covers everything that goes into the image."""
    digest = hashlib.sha256()
    own = version("sagehost")
    parts = (own, source_digest(), ",".join(plan.extras), ",".join(plan.system_packages), base_image, platform)
    for part in parts:
        digest.update(part.encode() + b"\0")
    digest.update(plan.requirements.read_bytes() if plan.requirements is not None else b"")
    tag = f"{'_'.join(plan.extras)}-{_NOT_IN_TAGS.sub('-', own)}-{digest.hexdigest()[:16]}"
    return tag[-128:]


def source_digest() -> str:
    """sha256 over sagehost's own files: a changed source is a new image, even at one version."""
    root = Path(sagehost.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
