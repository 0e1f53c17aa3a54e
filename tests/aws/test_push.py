"""`sagehost push` and `sagehost deploy` without --image, against moto and a real registry.

The registry is Debian's docker-registry on a loopback port, put behind moto's ECR by
tests/aws/registry.py. Images are real podman images: tiny ones imported from a tarball (no
build), and one real `sagehost build` for the end-to-end deploy. Each test reads back from the
registry what was pushed.
Needs podman (scripts/setup-containers) and `apt-get install docker-registry apache2-utils`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

import sagehost as sagehost_package
from sagehost.aws.autoimage import LOCAL_NAME, REPOSITORY
from sagehost.aws.errors import AwsOptionError, AwsPermissionDenied, PreflightFailed
from sagehost.aws.push import DOCKER_V2_MANIFEST, check_manifest, names, push_failed
from sagehost.aws.session import Aws
from sagehost.image.engine import Engine, EngineError
from tests.aws import registry as reg
from tests.aws.conftest import ACCESS_KEY_ID, ACCOUNT, ROLE_ARN, SECRET, TOKEN, Cloud

pytestmark = pytest.mark.container

BASE = os.environ.get("SAGEHOST_TEST_BASE_IMAGE", "localhost/debian-python:bookworm")
PINNED = re.compile(r"^(?P<repo>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")
SECRETS = (reg.PASSWORD, base64.b64encode(f"AWS:{reg.PASSWORD}".encode()).decode(), SECRET, TOKEN, ACCESS_KEY_ID)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def import_image(tmp: Path, name: str, *changes: str, arch: str = "amd64") -> str:
    """A tiny image from a tarball (no build, no base image): one file, built for `arch`."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "hello.txt").write_text(f"{name} {time.time()}\n")  # a distinct image each time
    with tarfile.open(tmp / "root.tar", "w") as tar:
        tar.add(tmp / "hello.txt", arcname="hello.txt")
    options = [f"--change={change}" for change in changes]
    return podman("import", "--arch", arch, *options, str(tmp / "root.tar"), name).stdout.strip().splitlines()[-1]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[reg.Registry]:
    with reg.running(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def ecr(cloud: Cloud, registry: reg.Registry, monkeypatch: pytest.MonkeyPatch) -> reg.Registry:
    """moto's ECR with the registry behind it, for this test."""
    reg.backed_ecr(monkeypatch, registry)
    return registry


@pytest.fixture
def images() -> Iterator[list[str]]:
    """Image ids a test made; removed with every name they got (the ECR tags included)."""
    made: list[str] = []
    yield made
    for image in made:
        podman("rmi", "-f", image, check=False)


@pytest.fixture
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME and XDG_RUNTIME_DIR, where engines keep logins by default: they must stay empty."""
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    return home


@pytest.fixture
def engine_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """podman behind a wrapper that writes down every command line it is given (and runs it)."""
    real = shutil.which("podman")
    assert real, "podman is missing: run scripts/setup-containers"
    wrappers, log = tmp_path / "bin", tmp_path / "podman-calls.log"
    wrappers.mkdir()
    (wrappers / "podman").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (wrappers / "podman").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    return log


def ecr_tmp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("sagehost-ecr-*")}


# ---- push --------------------------------------------------------------------------------------


def test_push_makes_the_repository_and_sends_a_docker_v2_manifest(
    cloud: Cloud, ecr: reg.Registry, images: list[str], *, private_home: Path, engine_calls: Path, tmp_path: Path
) -> None:
    images.append(import_image(tmp_path / "tiny", "localhost/sagehost-push-tiny:1"))
    before = ecr_tmp_dirs()

    result = cloud.run("push", "localhost/sagehost-push-tiny:1", "--repository", "sagehost/tiny", "--tag", "v1")

    assert result.exit_code == 0, result.output
    assert "Creating ECR repository sagehost/tiny" in result.output
    pinned = PINNED.match(result.stdout.strip())
    assert pinned is not None, result.stdout  # stdout holds URI@sha256:… alone
    assert pinned["repo"] == f"{ecr.host}/sagehost/tiny"
    # What the registry holds, read back as SageMaker's pull would ask for it.
    media_type, digest, body = ecr.manifest("sagehost/tiny", "v1")
    assert media_type == DOCKER_V2_MANIFEST
    assert json.loads(body)["mediaType"] == DOCKER_V2_MANIFEST
    assert digest == pinned["digest"]
    found = cloud.client("ecr").describe_images(repositoryName="sagehost/tiny", imageIds=[{"imageTag": "v1"}])
    assert found["imageDetails"][0]["imageManifestMediaType"] == DOCKER_V2_MANIFEST
    repository = cloud.client("ecr").describe_repositories(repositoryNames=["sagehost/tiny"])["repositories"][0]
    tags = cloud.client("ecr").list_tags_for_resource(resourceArn=repository["repositoryArn"])["tags"]
    assert {"Key": "sagehost:made-by", "Value": "sagehost"} in tags
    # The login lived in a private directory, removed after; nothing in HOME or the runtime dir.
    assert ecr_tmp_dirs() == before
    assert [p for p in private_home.rglob("*") if p.is_file()] == []
    # The password went in through stdin: no command line held it.
    calls = engine_calls.read_text()
    assert "login --authfile " in calls and f"--username AWS --password-stdin {ecr.host}" in calls
    assert "push --authfile " in calls and "--tls-verify=false --format v2s2 --digestfile " in calls

    again = cloud.run("push", "localhost/sagehost-push-tiny:1", "--repository", "sagehost/tiny", "--tag", "v1")

    assert again.exit_code == 0, again.output
    assert "Creating ECR repository" not in again.output
    assert again.stdout.strip() == result.stdout.strip()
    everything = "\n".join([*cloud.outputs, engine_calls.read_text()])
    for secret in SECRETS:
        assert secret not in everything


def test_push_names_the_repository_and_tag_after_the_image(
    cloud: Cloud, ecr: reg.Registry, images: list[str], tmp_path: Path
) -> None:
    images.append(import_image(tmp_path / "tiny", "localhost/sagehost-push-named:2"))

    result = cloud.run("push", "localhost/sagehost-push-named:2")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{ecr.host}/sagehost-push-named@sha256:")
    assert ecr.tags("sagehost-push-named") == ["2"]


@pytest.mark.parametrize(
    ("image", "repository", "tag", "expected"),
    [
        ("my-model:1", None, None, ("my-model", "1")),
        ("my-model", None, None, ("my-model", "latest")),
        ("localhost/sagehost-iris:v2", None, None, ("sagehost-iris", "v2")),
        ("127.0.0.1:5000/team/model:3", None, None, ("team/model", "3")),
        ("docker.io/library/model@sha256:" + "a" * 64, None, None, ("model", "latest")),
        ("Model:1", None, None, ("model", "1")),
        ("my-model:1", "team/served", "prod", ("team/served", "prod")),
    ],
)
def test_the_default_repository_and_tag(
    image: str, repository: str | None, tag: str | None, expected: tuple[str, str]
) -> None:
    assert names(image, repository, tag) == expected


@pytest.mark.parametrize(
    ("repository", "tag", "says"), [("Bad_Name", None, "--repository"), ("ok", "-no", "--tag"), ("a", None, "2-256")]
)
def test_names_ecr_refuses_are_refused_first(repository: str, tag: str | None, says: str) -> None:
    with pytest.raises(AwsOptionError, match=says):
        names("my-model:1", repository, tag)


@pytest.mark.parametrize(
    ("last_line", "kind", "says"),
    [
        (
            "Error: writing blob: initiating layer upload to /v2/x/blobs/uploads/ in 1.dkr.ecr.amazonaws.com: "
            "unauthorized: authentication required",
            AwsPermissionDenied,
            "ecr:InitiateLayerUpload",
        ),
        ("no basic auth credentials", AwsPermissionDenied, "login expired or is missing"),
        ("Error: writing blob: connection reset by peer", EngineError, "podman push of R failed: Error: writing"),
    ],
)
def test_a_failed_push_says_why(last_line: str, kind: type[Exception], says: str) -> None:
    error = push_failed(Engine("podman", "/usr/bin/podman"), "R", ["Copying blob sha256:0123", last_line])
    assert type(error) is kind and says in str(error)


def test_an_image_the_engine_does_not_hold(cloud: Cloud, ecr: reg.Registry) -> None:
    result = cloud.run("push", "localhost/sagehost-push-nothing:1", "--builder", "podman")
    assert result.exit_code == 1
    assert "No image localhost/sagehost-push-nothing:1 in podman: build it first" in result.output
    assert cloud.client("ecr").describe_repositories()["repositories"][0]["repositoryName"] == "sagehost-iris"


def test_an_arm64_image_is_refused_before_anything_is_sent(
    cloud: Cloud, ecr: reg.Registry, images: list[str], tmp_path: Path
) -> None:
    images.append(import_image(tmp_path / "arm", "localhost/sagehost-push-arm:1", arch="arm64"))

    result = cloud.run("push", "localhost/sagehost-push-arm:1")

    assert result.exit_code == 1
    assert "built for linux/arm64" in result.output and "exec format error" in result.output
    assert "--platform linux/amd64" in result.output and "Traceback" not in result.output
    made = [r["repositoryName"] for r in cloud.client("ecr").describe_repositories()["repositories"]]
    assert "sagehost-push-arm" not in made
    assert ecr.tags("sagehost-push-arm") == []


def test_an_oci_manifest_in_ecr_is_refused_and_push_replaces_it(
    cloud: Cloud, ecr: reg.Registry, images: list[str], tmp_path: Path
) -> None:
    image = "localhost/sagehost-push-oci:1"
    images.append(import_image(tmp_path / "tiny", image))
    cloud.client("ecr").create_repository(repositoryName="sagehost/oci")
    # podman's own default, as a user would push without sagehost: an OCI manifest.
    auth = tmp_path / "auth.json"
    token = base64.b64encode(f"AWS:{reg.PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {ecr.host: {"auth": token}}}))
    podman("push", "--authfile", str(auth), "--tls-verify=false", image, f"{ecr.host}/sagehost/oci:v1")
    assert ecr.manifest("sagehost/oci", "v1")[0] == reg.OCI_MANIFEST
    aws = Aws.connect()

    with pytest.raises(PreflightFailed, match="Unsupported manifest media type") as refused:
        check_manifest(aws, ACCOUNT, "sagehost/oci", "v1", print)
    assert "--format v2s2" in str(refused.value)

    result = cloud.run("push", image, "--repository", "sagehost/oci", "--tag", "v1")

    assert result.exit_code == 0, result.output
    assert ecr.manifest("sagehost/oci", "v1")[0] == DOCKER_V2_MANIFEST
    assert check_manifest(aws, ACCOUNT, "sagehost/oci", "v1", print) == PINNED.match(result.stdout.strip())["digest"]  # type: ignore[index]


def test_a_login_the_registry_refuses_is_said_plainly(
    cloud: Cloud, ecr: reg.Registry, images: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images.append(import_image(tmp_path / "tiny", "localhost/sagehost-push-denied:1"))
    stale = "sagehostStalePasswordPq5Lm3"

    def expired(self: ECRResponse) -> ActionResult:
        token = base64.b64encode(f"AWS:{stale}".encode()).decode()
        data = {"authorizationToken": token, "expiresAt": datetime.now(timezone.utc), "proxyEndpoint": ecr.url}
        return ActionResult({"authorizationData": [data]})

    monkeypatch.setattr(ECRResponse, "get_authorization_token", expired)

    result = cloud.run("push", "localhost/sagehost-push-denied:1")

    assert result.exit_code == 1
    assert f"podman could not log in to {ecr.host} with ECR's token" in result.output
    assert "Traceback" not in result.output and stale not in result.output
    assert ecr.tags("sagehost-push-denied") == []


# ---- deploy without --image ----------------------------------------------------------------------


def test_deploy_without_image_needs_the_model_dir_and_takes_no_build_options_with_one(cloud: Cloud) -> None:
    no_dir = cloud.run("deploy", "iris", "--role", ROLE_ARN, "--model-data", "s3://bucket/iris/model.tar.gz")
    assert no_dir.exit_code == 2
    assert "Without --image, deploy builds the image" in no_dir.output and "--model-dir" in no_dir.output

    both = cloud.deploy("iris", "--model-data", "s3://bucket/iris/model.tar.gz", "--base-image", BASE)
    assert both.exit_code == 2 and "--base-image is for the image deploy builds without --image" in both.output
    assert cloud.models() == [] and cloud.configs() == []


def test_deploy_dry_run_without_image_builds_and_pushes_nothing(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.run(
        "deploy", "iris", "--role", ROLE_ARN, "--model-dir", str(model_dir), "--dry-run",
        "--builder", "podman", "--base-image", BASE,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    built = re.search(rf"would build {LOCAL_NAME}:(sklearn-[\w.-]+-[0-9a-f]{{16}}) with podman", result.output)
    assert built is not None and f"sagehost[sklearn] on {BASE}" in result.output
    tag = built[1]
    assert f"would call ecr CreateRepository repositoryName={REPOSITORY}" in result.output
    assert f"would verify it with the packaged model and push it to {ACCOUNT}.dkr.ecr." in result.output
    assert podman("image", "exists", f"{LOCAL_NAME}:{tag}", check=False).returncode == 1
    assert [r["repositoryName"] for r in cloud.client("ecr").describe_repositories()["repositories"]] == [
        "sagehost-iris"
    ]


@dataclass(frozen=True)
class Frozen:
    """sagehost's source copied aside, and run from there: the image's content tag hashes the
    source, which other work on this checkout may change while a test runs."""

    env: dict[str, str]

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """The real CLI in its own process, bounded in time."""
        command = [sys.executable, "-m", "sagehost.aws", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=self.env)

    def sagehost(self, *args: str, timeout: float) -> tuple[int, str]:
        """Its exit code and all it printed."""
        done = self.run(*args, timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    def tag(self, model_dir: Path) -> str:
        """The content tag a deploy of `model_dir` on BASE looks for, as that source computes it."""
        code = (
            "import sys; from pathlib import Path; from sagehost.config import Settings; "
            "from sagehost.image.plan import plan_image; from sagehost.aws.autoimage import content_tag; "
            "print(content_tag(plan_image(Path(sys.argv[1]), Settings()), sys.argv[2]))"
        )
        command = [sys.executable, "-c", code, str(model_dir), BASE]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120, env=self.env)
        return done.stdout.strip()


@pytest.fixture
def frozen(aws_env: None, tmp_path: Path) -> Frozen:
    source = tmp_path / "frozen-src"
    own = Path(sagehost_package.__file__).parent
    shutil.copytree(own, source / "sagehost", ignore=shutil.ignore_patterns("__pycache__"))
    return Frozen({**os.environ, "PYTHONPATH": str(source), "PYTHONDONTWRITEBYTECODE": "1"})


def test_deploy_verifies_the_image_first_then_pushes_and_reuses_it(
    cloud: Cloud, ecr: reg.Registry, images: list[str], model_dir: Path, *, tmp_path: Path, frozen: Frozen
) -> None:
    """An image at hand under the model's content tag: one that cannot start is stopped by the
    local check in seconds (nothing pushed or created); --skip-verify pushes it; a deploy after
    that finds it in ECR and builds nothing."""
    tag = frozen.tag(model_dir)
    local = f"{LOCAL_NAME}:{tag}"
    assert podman("image", "exists", local, check=False).returncode == 1, f"{local} exists: remove it first"
    images.append(import_image(tmp_path / "broken", local, 'ENTRYPOINT ["/no/such/server"]'))
    deploy = ("deploy", "iris", "--role", ROLE_ARN, "--model-dir", str(model_dir), "--base-image", BASE)

    started = time.monotonic()
    code, refused = frozen.sagehost(*deploy, "--builder", "podman", timeout=180)
    took = time.monotonic() - started

    assert code == 1, refused
    assert f"podman holds {local}" in refused and "reused, not built again" in refused
    assert "fails with this model as SageMaker would run it" in refused
    assert "FAIL  Starts with a read-only root and model" in refused and "--skip-verify" in refused
    assert "Traceback" not in refused
    assert took < 60, took
    assert ecr.tags(REPOSITORY) == [] and cloud.models() == [] and cloud.configs() == []

    code, pushed = frozen.sagehost(*deploy, "--builder", "podman", "--skip-verify", timeout=180)

    assert code == 0, pushed
    assert "Verifying" not in pushed
    uri = re.search(r"Pushed (\S+)", pushed)
    assert uri is not None and uri[1].startswith(f"{ecr.host}/{REPOSITORY}@sha256:")
    assert ecr.tags(REPOSITORY) == [tag] and ecr.manifest(REPOSITORY, tag)[1] == uri[1].split("@")[1]
    (model_name,) = cloud.models()
    assert cloud.client("sagemaker").describe_model(ModelName=model_name)["PrimaryContainer"]["Image"] == uri[1]

    podman("rmi", "-f", local)  # not at hand any more: ECR's copy is what a deploy finds
    code, again = frozen.sagehost(*deploy, timeout=180)

    assert code == 0, again
    assert f"ECR holds {REPOSITORY}:{tag} (sagehost[sklearn]): reused, nothing built or pushed" in again
    assert "up to date" in again
    for secret in SECRETS:
        assert secret not in refused + pushed + again


@pytest.mark.slow
def test_deploy_without_image_builds_verifies_pushes_and_serves(
    cloud: Cloud, ecr: reg.Registry, model_dir: Path, frozen: Frozen
) -> None:
    """One command from a model directory to an InService endpoint: a real `sagehost build`
    (code only), `sagehost verify` with the packaged model, the push, the deploy."""
    tag = frozen.tag(model_dir)
    local = f"{LOCAL_NAME}:{tag}"
    podman("rmi", "-f", local, check=False)  # built here, not reused from an earlier run
    command = (
        "deploy", "iris", "--role", ROLE_ARN, "--model-dir", str(model_dir), "--base-image", BASE,
        "--builder", "podman",
    )  # fmt: skip
    try:
        started = time.monotonic()
        done = frozen.run(*command, timeout=1500)
        took = time.monotonic() - started
        print(f"deploy without --image, built from scratch: {took:.0f} s")
        assert done.returncode == 0, done.stdout + done.stderr[-4000:]
        assert f"Building {local} with podman: sagehost[sklearn] on {BASE}" in done.stdout
        assert f"Verified {local}" in done.stderr
        pinned = re.search(r"Pushed (\S+)", done.stdout)
        assert pinned is not None and pinned[1].startswith(f"{ecr.host}/{REPOSITORY}@sha256:")
        assert ecr.manifest(REPOSITORY, tag)[:2] == (DOCKER_V2_MANIFEST, pinned[1].split("@")[1])
        endpoint = cloud.endpoint("iris")
        assert endpoint["EndpointStatus"] == "InService"
        (model_name,) = cloud.models()
        assert cloud.client("sagemaker").describe_model(ModelName=model_name)["PrimaryContainer"]["Image"] == pinned[1]

        again = frozen.run(*command, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr[-2000:]
        assert "reused, nothing built or pushed" in again.stdout and "up to date" in again.stdout
        for secret in SECRETS:
            assert secret not in done.stdout + done.stderr + again.stdout + again.stderr
    finally:
        found = podman("image", "inspect", "--format", "{{.Id}}", local, check=False).stdout.strip()
        podman("rmi", "-f", found or local, check=False)  # by id: its ECR names go too
