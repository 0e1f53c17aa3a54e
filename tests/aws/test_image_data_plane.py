"""The data plane against the real image: `sagehost local serve IMAGE` (a code-only image built by
`sagehost build`, the packaged demo model given as --model-data, as SageMaker delivers it) is the
SageMaker runtime's stand-in; boto3's runtime client reaches it through
AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, and its async half reads and writes S3 on moto. `sagehost invoke
NAME` (sync and async) and the gateway's Lambda handler (in process, an API Gateway proxy event)
both end in our container.

tests/aws/test_invoke.py and test_gateway.py run the same calls against `--no-container`; this
module holds the image to them. One image and one stand-in per module: the build dominates.
Needs `scripts/setup-containers` (podman and the local Python base image).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sagehost.aws import lambda_handler
from sagehost.config import Settings
from sagehost.package import package
from tests.aws.conftest import BUCKET, SECRET, TOKEN, Cloud
from tests.aws.test_gateway import expected, proxy_event
from tests.aws.test_invoke import FAILURE, OUTPUT, ROWS, User, stand_in_env
from tests.conftest import SAGEHOST, free_port
from tests.integration.test_container import BASE, build, podman

pytestmark = [pytest.mark.container, pytest.mark.slow]

TAG = f"localhost/sagehost-data-plane-{os.getpid()}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A code-only sagehost image: the model comes as model.tar.gz, as on SageMaker."""
    assert shutil.which("podman"), "podman is missing: run scripts/setup-containers"
    assert podman("image", "exists", BASE, check=False).returncode == 0, f"no {BASE}: run scripts/setup-containers"
    build(TAG, tmp_path_factory.mktemp("code-context"))
    try:
        yield TAG
    finally:
        podman("rmi", "-f", TAG, check=False)


@dataclass
class StandIn:
    """`sagehost local serve IMAGE` on a loopback port: InvokeEndpoint and InvokeEndpointAsync."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    container: str = ""  # its name in podman, once ready
    published: str = ""  # the loopback address podman publishes its port 8080 on, once ready

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def forwarded(self) -> int:
        """Invocations the stand-in passed to the container's published port (its httpx log lines)."""
        return self.log.count(f"POST http://{self.published}/invocations ")


def containers_of(image: str) -> list[str]:
    """Names of the containers (running or not) made from IMAGE: ours alone, its tag is this run's."""
    listed = podman("ps", "-a", "--filter", f"ancestor={image}", "--format", "{{.Names}}", check=False)
    return listed.stdout.split()


@pytest.fixture(scope="module")
def stand_in(moto_url: str, image: str, iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """The runtime's stand-in in front of our container, S3 (for async) on moto."""
    tmp = tmp_path_factory.mktemp("image-runtime")
    archive = tmp / "model.tar.gz"
    package(iris_dir, archive, Settings())
    port = free_port()
    env = stand_in_env(moto_url, tmp)
    command = [SAGEHOST, "local", "serve", image, "--builder", "podman", "--model-data", str(archive)]
    command += ["--port", str(port), "--async-output", OUTPUT, "--async-failure", FAILURE]
    log_path = tmp / "local-serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    found = StandIn(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 180
        while "Ready in" not in found.log and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Ready in" in found.log, found.log
        [found.container] = containers_of(image)
        found.published = podman("port", found.container, "8080").stdout.strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", found.published), found.published
        yield found
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == 0, found.log[-3000:]
    assert "Stopped after SIGTERM in" in found.log
    assert containers_of(image) == []  # `--rm`, stopped by local serve itself


@pytest.fixture
def user(cloud: Cloud, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> User:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", stand_in.url)
    return User(cloud, [])


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(ROWS)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("1,2\n")  # the demo model takes 4 columns
    return path


def served_by_the_container(stand_in: StandIn, before: int) -> None:
    """More invocations went to the container's published port than `before`: the calls reached it."""
    assert stand_in.forwarded() > before, stand_in.log[-2000:]


# ---- the stand-in runs our image --------------------------------------------------------------


def test_the_stand_in_runs_the_image_without_the_hosts_credentials(stand_in: StandIn, image: str) -> None:
    config = json.loads(podman("inspect", stand_in.container).stdout)[0]
    assert config["ImageName"] == f"{image}:latest"
    assert config["Config"]["Cmd"][-1] == "serve" and config["HostConfig"]["ReadonlyRootfs"] is True
    env = "\n".join(config["Config"]["Env"])
    # Async's S3 is the stand-in's (on the host), never the container's: no AWS_* goes in.
    assert "AWS_" not in env and SECRET not in env and TOKEN not in env
    mounts = {m["Destination"]: m for m in config["Mounts"]}
    assert mounts["/opt/ml/model"]["RW"] is False


# ---- InvokeEndpoint ---------------------------------------------------------------------------


def test_invoke_csv_and_json_reach_the_container(user: User, stand_in: StandIn, rows: Path) -> None:
    before = stand_in.forwarded()

    as_csv = user.run("invoke", "iris", str(rows), "--content-type", "text/csv", "--accept", "text/csv")
    as_json = user.run("invoke", "iris", "-", "-t", "application/json", input="[[6.7, 3.0, 5.2, 2.3]]")

    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.stdout == "setosa\nvirginica\n"
    assert as_json.exit_code == 0, as_json.output
    assert as_json.stdout == '["virginica"]\n'
    served_by_the_container(stand_in, before)


def test_a_model_error_prints_the_containers_status_and_message(user: User, bad: Path) -> None:
    result = user.run("invoke", "iris", str(bad))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "The model behind endpoint iris answered HTTP 400" in result.stderr
    assert "Expected 4 values per row, got 2" in result.stderr and "schema_mismatch" in result.stderr
    assert "Traceback" not in result.output


# ---- InvokeEndpointAsync ------------------------------------------------------------------------


def test_invoke_async_goes_through_s3_and_the_container(user: User, stand_in: StandIn, rows: Path) -> None:
    before = stand_in.forwarded()

    result = user.run("invoke", "iris", str(rows), "--async", "--accept", "text/csv", "--wait", "60")

    assert result.exit_code == 0, result.output
    assert result.stdout == "setosa\nvirginica\n"
    inputs = user.objects("sagehost/iris/async-inputs/")
    assert list(inputs.values()) == [ROWS]
    inference_id = next(iter(inputs)).rsplit("/", 1)[-1]
    output_key = f"async-out/{inference_id}.out"
    assert user.objects("async-out/") == {output_key: "setosa\nvirginica\n"}
    assert user.cloud.client("s3").head_object(Bucket=BUCKET, Key=output_key)["ContentType"].startswith("text/csv")
    assert f"Queued {inference_id}: its answer goes to s3://{BUCKET}/{output_key}" in result.stderr
    served_by_the_container(stand_in, before)


def test_a_failed_async_invocation_keeps_the_containers_400(user: User, bad: Path) -> None:
    result = user.run("invoke", "iris", str(bad), "--async", "--wait", "60")

    assert result.exit_code == 1
    assert result.stdout == ""
    found = re.search(rf"The async invocation failed \(s3://{BUCKET}/async-failed/([\w-]+)-error\.out\)", result.stderr)
    assert found, result.stderr
    assert "Received client error (400) from primary" in result.stderr and "schema_mismatch" in result.stderr
    assert user.objects("async-out/") == {}
    assert list(user.objects("async-failed/")) == [f"async-failed/{found[1]}-error.out"]


# ---- the gateway's Lambda handler, in process -------------------------------------------------


@pytest.fixture
def handler_runtime(stand_in: StandIn, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The handler's environment as Lambda gives it, its runtime client pointed at the stand-in."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", stand_in.url)
    monkeypatch.setenv(lambda_handler.ENDPOINT_VARIABLE, "iris")
    lambda_handler._runtime.cache_clear()
    yield
    lambda_handler._runtime.cache_clear()


def test_handler_csv_answer_from_the_container(
    handler_runtime: None, stand_in: StandIn, iris_model: Any, iris_frame: pd.DataFrame
) -> None:
    before = stand_in.forwarded()
    event = proxy_event(ROWS.encode(), {"Content-Type": "text/csv", "Accept": "text/csv"})

    answer = lambda_handler.handler(event, None)

    assert answer["statusCode"] == 200, answer
    assert answer["headers"]["Content-Type"].startswith("text/csv")
    assert answer["isBase64Encoded"] is False
    assert answer["body"].splitlines() == expected(iris_model, iris_frame)
    served_by_the_container(stand_in, before)


def test_handler_a_model_error_is_the_containers_400(handler_runtime: None) -> None:
    answer = lambda_handler.handler(proxy_event(b"1,2\n", {"Content-Type": "text/csv"}), None)

    assert answer["statusCode"] == 400, answer
    assert answer["headers"]["Content-Type"] == "application/json"
    error = json.loads(answer["body"])
    assert error["error"]["code"] == "schema_mismatch"
    assert "Expected 4 values per row, got 2" in error["error"]["message"]
    assert "Received client error" not in answer["body"]  # the container's words, not the runtime's wrapper
