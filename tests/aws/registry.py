"""A real registry behind moto's ECR: Debian's `docker-registry` on a free loopback port.

moto's ECR has no registry API (research/deploy-anchors.md §3.1), so pushes go to the CNCF
distribution registry that Debian packages (`apt-get install docker-registry`), run with
filesystem storage in a temporary directory and htpasswd auth for user AWS. The password is
the one in ECR's token, and it is distinctive, so a test can search every output for it.

`backed_ecr` is the ECR part of the test-side moto extension (tests/aws/moto_ext.py has the
SageMaker part). While it is on:
- a repository's URI and GetAuthorizationToken's proxyEndpoint name the registry
  (127.0.0.1:PORT/NAME, http://127.0.0.1:PORT);
- the token carries the registry's password;
- DescribeImages first copies in what the registry holds for the repository (each tag's
  manifest, media type and digest), as ECR knows what was pushed to it.
It is installed in the test process, around moto's in-process server; sagehost's code has no
hook for it.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from moto.core.responses import ActionResult
from moto.ecr.models import ECRBackend
from moto.ecr.responses import ECRResponse

from tests.conftest import free_port

USER = "AWS"
PASSWORD = "sagehostEcrPasswordKt4Ws8Yd2Hn6Vq"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join(
    (
        DOCKER_V2,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


@dataclass
class Registry:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def get(self, path: str, accept: str = ACCEPT) -> tuple[int, dict[str, str], bytes]:
        """GET /v2/PATH as user AWS: the status, headers and body."""
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}/v2/{path}", headers={"Accept": accept, "Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as refused:
            return refused.code, dict(refused.headers), refused.read()

    def tags(self, repository: str) -> list[str]:
        import json

        status, _, body = self.get(f"{repository}/tags/list")
        return list(json.loads(body).get("tags") or []) if status == 200 else []

    def manifest(self, repository: str, tag: str, accept: str = ACCEPT) -> tuple[str, str, bytes]:
        """(media type, digest, bytes) of repository:tag, as the registry serves it for `accept`."""
        status, headers, body = self.get(f"{repository}/manifests/{tag}", accept)
        assert status == 200, (status, body[:300])
        return headers["Content-Type"], headers["Docker-Content-Digest"], body


@contextmanager
def running(root: Path) -> Iterator[Registry]:
    """`docker-registry serve` on a free loopback port until the context ends (stopped by its PID)."""
    executable = shutil.which("docker-registry")
    assert executable, "docker-registry is missing: apt-get install docker-registry"
    root.mkdir(parents=True, exist_ok=True)
    hashed = subprocess.run(
        ["htpasswd", "-niB", USER], input=PASSWORD, capture_output=True, text=True, check=True, timeout=30
    ).stdout  # the password through stdin (-i), never on a command line
    (root / "htpasswd").write_text(hashed)
    port = free_port()
    (root / "registry.yml").write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root / "data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: sagehost-test
    path: {root / "htpasswd"}
"""
    )
    log = root / "registry.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([executable, "serve", str(root / "registry.yml")], stdout=sink, stderr=sink)
    registry = Registry(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_answering(registry)
        yield registry
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_answering(registry: Registry, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert registry.process.poll() is None, registry.log.read_text()
        try:
            status, _, _ = registry.get("")
        except OSError:
            time.sleep(0.1)
            continue
        assert status == 200, status  # /v2/ answers 200 to a user it knows
        return
    raise AssertionError(f"docker-registry did not answer in {deadline_s} s: {registry.log.read_text()}")


def backed_ecr(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    """moto's ECR with `registry` behind it, until `monkeypatch` is undone (see the docstring)."""
    create_repository = ECRBackend.create_repository
    describe_images = ECRBackend.describe_images

    def created(self: ECRBackend, repository_name: str, *args: Any, **kwargs: Any) -> Any:
        repository = create_repository(self, repository_name, *args, **kwargs)
        repository.uri = f"{registry.host}/{repository_name}"
        return repository

    def described(self: ECRBackend, repository_name: str, *args: Any, **kwargs: Any) -> Any:
        if repository_name in self.repositories:
            _copy_in(self, registry, repository_name)
        return describe_images(self, repository_name, *args, **kwargs)

    def token(self: ECRResponse) -> ActionResult:
        secret = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        expires = datetime.now(timezone.utc) + timedelta(hours=12)
        data = {"authorizationToken": secret, "expiresAt": expires, "proxyEndpoint": registry.url}
        return ActionResult({"authorizationData": [data]})

    monkeypatch.setattr(ECRBackend, "create_repository", created)
    monkeypatch.setattr(ECRBackend, "describe_images", described)
    monkeypatch.setattr(ECRResponse, "get_authorization_token", token)


def _copy_in(backend: ECRBackend, registry: Registry, name: str) -> None:
    images = backend.repositories[name].images
    for tag in registry.tags(name):
        media_type, digest, body = registry.manifest(name, tag)
        if any(image.image_digest == digest and tag in image.image_tags for image in images):
            continue
        backend.put_image(name, body.decode(), tag, media_type, digest)
