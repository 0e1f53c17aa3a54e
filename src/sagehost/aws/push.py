"""`sagehost push IMAGE`: a local image into Amazon ECR, in the form SageMaker accepts.

- The repository is created when missing (DescribeRepositories, then CreateRepository).
- The engine logs in with ECR's token (GetAuthorizationToken). The password goes in through
  stdin and lands in an auth file in a private temporary directory, deleted afterwards. It never
  goes on a command line (any user of the machine can read those), into ~/.docker or
  ~/.config/containers, or into a log.
  https://docs.aws.amazon.com/AmazonECR/latest/userguide/registry_auth.html
- The push sends a Docker v2 schema 2 manifest. SageMaker refuses OCI manifests ("Unsupported
  manifest media type application/vnd.oci.image.manifest.v1+json"), and podman pushes OCI
  unless told `--format v2s2`. DescribeImages confirms the type afterwards.
- An image built for a CPU other than amd64 is refused before anything is sent: SageMaker's x86
  instances would fail it at start with "exec format error".

Importing this module needs click only (boto3 is loaded when the command runs).
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from sagehost.aws.errors import AwsConflict, AwsOptionError, AwsPermissionDenied, PreflightFailed
from sagehost.image.engine import ENGINES, Engine, EngineError, find_engine

if TYPE_CHECKING:
    from sagehost.aws.session import Aws
    from sagehost.aws.spec import EcrImage

Say = Callable[[str], None]

DOCKER_V2_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
REPOSITORY_TAGS = ({"Key": "sagehost:made-by", "Value": "sagehost"},)
"""On repositories sagehost creates. Not an endpoint's tag: images are shared by content, so
`sagehost delete NAME` leaves repositories alone."""

# https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_CreateRepository.html
_REPOSITORY = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")  # the Docker reference grammar's tag
_DOCKER_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
_UNAUTHORIZED = re.compile(r"unauthorized|authentication required|no basic auth credentials|denied", re.IGNORECASE)


@dataclass(frozen=True)
class Pushed:
    """An image in ECR: its repository's URI, the tag and the manifest's digest."""

    repository_uri: str
    registry_id: str
    repository: str
    tag: str
    digest: str | None  # None only in a dry run

    @property
    def pinned(self) -> str:
        """URI@sha256:…, what SageMaker should run: a tag can be moved, a digest cannot."""
        return f"{self.repository_uri}@{self.digest}" if self.digest else f"{self.repository_uri}:{self.tag}"

    def ecr_image(self, region: str) -> EcrImage:
        from sagehost.aws.spec import EcrImage

        return EcrImage(self.pinned, self.registry_id, region, self.repository, self.tag, self.digest)


def names(image: str, repository: str | None, tag: str | None) -> tuple[str, str]:
    """The repository and tag to push to: as given, else IMAGE's own name (without its registry)
    and tag (else `latest`)."""
    reference = image.split("@", 1)[0]
    path, _, own_tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (reference, "", "")
    parts = path.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # a registry host: localhost/…, docker.io/…, 127.0.0.1:5000/…
    if parts[:1] == ["library"] and len(parts) > 1:
        parts = parts[1:]
    repository = repository or "/".join(parts).lower()
    tag = tag or own_tag or "latest"
    if not 2 <= len(repository) <= 256 or not _REPOSITORY.match(repository):
        raise AwsOptionError(
            f"--repository {repository!r} cannot name an ECR repository: lowercase letters, digits and . _ - "
            "(between letters or digits), with / between parts; 2-256 characters."
        )
    if not _TAG.match(tag):
        raise AwsOptionError(f"--tag {tag!r}: letters, digits, _ . and -, starting with a letter, digit or _; ≤128.")
    return repository, tag


def require_amd64(engine: Engine, image: str) -> None:
    """SageMaker's x86 instances run linux/amd64; anything else fails at start, 20 minutes later."""
    config = engine.inspect_image(image)
    arch, system = config.get("Architecture") or "unknown", config.get("Os") or "linux"
    if (system, arch) != ("linux", "amd64"):
        raise PreflightFailed(
            f"{image} is built for {system}/{arch}. SageMaker's instances run linux/amd64 and would stop it "
            f'at start with "exec format error". Build it for linux/amd64: `sagehost build --platform '
            "linux/amd64` (its default), or `docker build --platform linux/amd64`."
        )


def push(
    aws: Aws, engine: Engine, image: str, *, repository: str | None = None, tag: str | None = None, say: Say = print
) -> Pushed:
    """Push local `image` to ECR as repository:tag (see the module's docstring)."""
    repository, tag = names(image, repository, tag)
    require_amd64(engine, image)
    found = ensure_repository(aws, repository, say)
    uri, registry_id = str(found["repositoryUri"]), str(found["registryId"])
    if aws.dry_run:
        aws.echo(f"  would log {engine.name} in to ECR and push {image} to {uri}:{tag} (Docker v2 schema 2)")
        return Pushed(uri, registry_id, repository, tag, None)
    with logged_in(aws, engine) as registry:
        engine.run("tag", image, f"{uri}:{tag}")
        say(f"Pushing {image} to {uri}:{tag} with {engine.name}")
        pushed = registry.push(f"{uri}:{tag}", say)
    digest = check_manifest(aws, registry_id, repository, tag, say) or pushed
    return Pushed(uri, registry_id, repository, tag, digest)


def ensure_repository(aws: Aws, name: str, say: Say) -> dict[str, Any]:
    found = aws.find("ecr", "describe_repositories", repositoryNames=[name])
    if found:
        return dict(found["repositories"][0])
    say(f"Creating ECR repository {name} in {aws.region}")
    try:
        made = aws.write("ecr", "create_repository", repositoryName=name, tags=list(REPOSITORY_TAGS))
    except AwsConflict:  # created meanwhile, by another push
        return dict(aws.read("ecr", "describe_repositories", repositoryNames=[name])["repositories"][0])
    if made is None:  # a dry run: the URI ECR would give it
        account = aws.account
        return {"repositoryUri": f"{account}.dkr.ecr.{aws.region}.amazonaws.com/{name}", "registryId": account}
    return dict(made["repository"])


def check_manifest(aws: Aws, registry_id: str, repository: str, tag: str, say: Say) -> str | None:
    """The digest ECR holds for repository:tag, once its manifest is known to be Docker v2 schema 2."""
    try:
        found = aws.read(
            "ecr",
            "describe_images",
            registryId=registry_id,
            repositoryName=repository,
            imageIds=[{"imageTag": tag}],
        )
    except AwsPermissionDenied:
        say("Warning: ecr:DescribeImages was refused, so the manifest's type is not checked.")
        return None
    detail = (found.get("imageDetails") or [{}])[0]
    media_type = detail.get("imageManifestMediaType")
    if media_type not in (DOCKER_V2_MANIFEST, None):
        raise PreflightFailed(
            f"{repository}:{tag} is in ECR with a {media_type} manifest, which SageMaker refuses "
            f'("Unsupported manifest media type"). Push a Docker v2 schema 2 manifest: `podman push --format v2s2`, '
            "or build with `docker buildx build --provenance=false --output type=docker` and push again."
        )
    digest = detail.get("imageDigest")
    return str(digest) if digest else None


@dataclass(frozen=True)
class Registry:
    """The engine, logged in to one registry through an auth file only this run can see."""

    engine: Engine
    host: str
    private: Path
    insecure: bool
    """The registry speaks plain HTTP (its endpoint says http://): a loopback one, never ECR."""

    @property
    def options(self) -> list[str]:
        if self.engine.name != "podman":
            return []  # docker: DOCKER_CONFIG (see env); it treats 127.0.0.0/8 as plain HTTP itself
        return ["--authfile", str(self.private / "auth.json"), *(["--tls-verify=false"] if self.insecure else [])]

    @property
    def env(self) -> dict[str, str] | None:
        return None if self.engine.name == "podman" else {**os.environ, "DOCKER_CONFIG": str(self.private)}

    def login(self, user: str, password: str) -> None:
        if self.engine.name != "podman":
            # An auths entry keeps docker on this file: with none, it would pick the platform's
            # credential helper (a keychain), which outlives this run.
            # https://github.com/docker/cli/blob/master/cli/config/configfile/file.go (ContainsAuth)
            (self.private / "config.json").write_text(json.dumps({"auths": {self.host: {}}}))
        try:
            self.engine.run(
                "login", *self.options, "--username", user, "--password-stdin", self.host, stdin=password, env=self.env
            )
        except EngineError as exc:
            raise EngineError(f"{self.engine.name} could not log in to {self.host} with ECR's token: {exc}") from None

    def push(self, reference: str, say: Say) -> str | None:
        """Push `reference`; the manifest's digest as the engine reports it."""
        digest_file = self.private / "digest"
        extra = ["--format", "v2s2", "--digestfile", str(digest_file)] if self.engine.name == "podman" else []
        code, last = self.engine.stream("push", *self.options, *extra, reference, say=say, env=self.env)
        if code != 0:
            raise push_failed(self.engine, reference, last)
        if digest_file.is_file():
            return digest_file.read_text().strip() or None
        found = [m for line in last if (m := _DOCKER_DIGEST.search(line))]
        return found[-1].group(1) if found else None


@contextmanager
def logged_in(aws: Aws, engine: Engine) -> Iterator[Registry]:
    data = aws.read("ecr", "get_authorization_token")["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    endpoint = urlsplit(str(data["proxyEndpoint"]))
    with tempfile.TemporaryDirectory(prefix="sagehost-ecr-") as private:  # 0700: this user only
        registry = Registry(engine, endpoint.netloc, Path(private), insecure=endpoint.scheme == "http")
        registry.login(user, password)
        yield registry


def push_failed(engine: Engine, reference: str, last: list[str]) -> Exception:
    said = [line.strip() for line in last if line.strip()]
    detail = " / ".join([line for line in said if line.lower().startswith("error")] or said[-3:])
    if _UNAUTHORIZED.search(detail):
        return AwsPermissionDenied(
            f"ECR refused the push of {reference}: {detail}. The login expired or is missing, or this identity "
            "lacks ecr:BatchCheckLayerAvailability, ecr:InitiateLayerUpload, ecr:UploadLayerPart, "
            "ecr:CompleteLayerUpload, ecr:PutImage and ecr:BatchGetImage on the repository "
            "(https://docs.aws.amazon.com/AmazonECR/latest/userguide/image-push-iam.html)."
        )
    return EngineError(f"{engine.name} push of {reference} failed: {detail}")


# ---- the command -------------------------------------------------------------------------------


@click.argument("image")
@click.option("--repository", help="The ECR repository [IMAGE's name without its registry]; created if missing.")
@click.option("--tag", help="[IMAGE's tag, else latest].")
@click.option(
    "--builder", type=click.Choice(ENGINES), help="The engine holding IMAGE [docker if it answers, else podman]."
)
def push_command(
    image: str, *, repository: str | None, tag: str | None, builder: str | None, region: str | None, profile: str | None
) -> None:
    """Push local IMAGE to Amazon ECR as SageMaker accepts it (Docker v2 manifest, amd64); print URI@sha256:…"""
    from sagehost.aws.session import Aws

    def say(line: str) -> None:
        click.echo(line, err=True)

    names(image, repository, tag)  # a bad name is refused before anything else
    engine = find_engine(builder)
    aws = Aws.connect(region, profile, echo=say)
    click.echo(push(aws, engine, image, repository=repository, tag=tag, say=say).pinned)
