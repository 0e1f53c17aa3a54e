"""moto's server in the test process (with tests/aws/moto_ext.py), on 127.0.0.1 only.

Each test gets a reset moto, credentials that are distinctive strings (so a test can search every
output for them), no shared config files and no instance metadata (botocore would otherwise try
169.254.169.254), and an execution role and an image in moto's ECR, as a user would have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner, Result
from moto.server import ThreadedMotoServer

from sagehost.aws.cli import aws as aws_group
from tests.aws import moto_ext

REGION = "us-east-1"
ACCOUNT = "123456789012"
ACCESS_KEY_ID = "AKIASAGEHOSTTESTKEY7"
SECRET = "sagehostSecretQx7Wv9Zr2Lp4Nt6Ks8Jm"
TOKEN = "sagehostSessionTokenFq3Hd5Gy7Bv9Cx1Mz"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/sagehost-test"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagehost-iris:1"
BUCKET = f"sagemaker-{REGION}-{ACCOUNT}"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per call otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    with moto_ext.installed():
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@dataclass
class Cloud:
    """moto, reset, as seen by a user with a role and an image; and the CLI to run against it."""

    url: str
    tmp: Path
    outputs: list[str] = field(default_factory=list)

    def client(self, service: str, region: str = REGION) -> Any:
        return boto3.client(service, region_name=region, endpoint_url=self.url)

    def run(self, *args: str, input: str | None = None) -> Result:
        """`sagehost ARGS` through click, in process; every output is kept for the secret check."""
        result = CliRunner().invoke(aws_group, list(args), input=input, catch_exceptions=False)
        self.outputs.append(result.output)
        return result

    def deploy(self, name: str, *args: str, image: str = IMAGE, role: str = ROLE_ARN) -> Result:
        return self.run("deploy", name, "--image", image, "--role", role, *args)

    def put_image(self, repository: str, tag: str, media_type: str = DOCKER_V2) -> str:
        ecr = self.client("ecr")
        with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
            ecr.create_repository(repositoryName=repository)
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 2,
                "digest": "sha256:" + "0" * 64,
            },
            "layers": [],
        }
        ecr.put_image(
            repositoryName=repository,
            imageManifest=json.dumps(manifest),
            imageManifestMediaType=media_type,
            imageTag=tag,
        )
        return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{repository}:{tag}"

    def tags(self, arn: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.client("sagemaker").list_tags(ResourceArn=arn)["Tags"]}

    def models(self) -> list[str]:
        return sorted(m["ModelName"] for m in self.client("sagemaker").list_models()["Models"])

    def configs(self) -> list[str]:
        return sorted(
            c["EndpointConfigName"] for c in self.client("sagemaker").list_endpoint_configs()["EndpointConfigs"]
        )

    def endpoint(self, name: str) -> dict[str, Any]:
        described: dict[str, Any] = self.client("sagemaker").describe_endpoint(EndpointName=name)
        return described


@pytest.fixture
def aws_env(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's environment: moto's address, distinctive credentials, nothing read from ~/.aws."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def cloud(moto_url: str, aws_env: None, tmp_path: Path) -> Iterator[Cloud]:
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    moto_ext.reset()
    found = Cloud(moto_url, tmp_path)
    found.client("iam").create_role(RoleName="sagehost-test", AssumeRolePolicyDocument=json.dumps(TRUST))
    found.put_image("sagehost-iris", "1")
    yield found
    moto_ext.reset()


@pytest.fixture
def model_dir(iris_dir: Path, tmp_path: Path) -> Path:
    """A copy of the really trained demo model, free to change."""
    copy = tmp_path / "model"
    shutil.copytree(iris_dir, copy)
    return copy
