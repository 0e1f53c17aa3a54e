"""`sagehost invoke NAME` through boto3's real runtime client: AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME
points it at `sagehost local serve --no-container` (a real process serving the packaged demo
model, answering InvokeEndpoint and InvokeEndpointAsync), AWS_ENDPOINT_URL at moto for S3."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sagehost import cli
from sagehost.config import Settings
from sagehost.package import package
from tests.aws.conftest import ACCESS_KEY_ID, BUCKET, REGION, SECRET, TOKEN, Cloud
from tests.conftest import free_port

ROWS = "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
OUTPUT = f"s3://{BUCKET}/async-out"
FAILURE = f"s3://{BUCKET}/async-failed"
# `sagehost local serve --no-container --model-data ARCHIVE --port PORT --async-output OUTPUT
# --async-failure FAILURE`, started through the same ServeRequest the command builds.
LOCAL_SERVE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from sagehost.local.run import ServeRequest, local_serve\n"
    "archive, port, output, failure = sys.argv[1:]\n"
    "request = ServeRequest(None, Path(archive), port=int(port), async_output=output, async_failure=failure)\n"
    "sys.exit(local_serve(request, lambda line: print(line, file=sys.stderr, flush=True)))\n"
)


@dataclass
class Runtime:
    url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text()


def stand_in_env(moto_url: str, tmp: Path) -> dict[str, str]:
    """A local runtime stand-in's environment: S3 on moto, the test's credentials, nothing else of AWS's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SAGEHOST_", "SM_", "AWS_"))}
    env.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_SESSION_TOKEN=TOKEN,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
    )
    return env


@pytest.fixture(scope="module")
def runtime(moto_url: str, iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """The SageMaker runtime's stand-in in front of the packaged demo model, with S3 on moto."""
    tmp = tmp_path_factory.mktemp("runtime")
    archive = tmp / "model.tar.gz"
    package(iris_dir, archive, Settings())
    port = free_port()
    env = stand_in_env(moto_url, tmp)
    found = Runtime(f"http://127.0.0.1:{port}", tmp / "local-serve.log")
    command = [sys.executable, "-c", LOCAL_SERVE, str(archive), str(port), OUTPUT, FAILURE]
    with found.log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "Ready in" not in found.log and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Ready in" in found.log, found.log
        yield found
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@dataclass
class User:
    """`sagehost ...` in process, as a user runs it against the runtime stand-in and moto."""

    cloud: Cloud
    results: list[Result]

    def run(self, *args: str, input: str | None = None) -> Result:
        result = CliRunner().invoke(cli.main, list(args), input=input, catch_exceptions=False)
        self.results.append(result)
        return result

    def objects(self, prefix: str) -> dict[str, str]:
        listed = self.cloud.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return {o["Key"]: self.get(o["Key"]) for o in listed}

    def get(self, key: str) -> str:
        body: bytes = self.cloud.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body.decode()


@pytest.fixture
def user(cloud: Cloud, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> User:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime.url)
    return User(cloud, [])


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(ROWS)
    return path


# ---- InvokeEndpoint ---------------------------------------------------------------------------


def test_invoke_sends_csv_or_json_and_prints_the_answer(user: User, rows: Path) -> None:
    as_csv = user.run("invoke", "iris", str(rows), "--content-type", "text/csv", "--accept", "text/csv")
    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.stdout == "setosa\nvirginica\n"

    from_stdin = user.run("invoke", "iris", "-", "-t", "application/json", input="[[6.7, 3.0, 5.2, 2.3]]")
    assert from_stdin.exit_code == 0, from_stdin.output
    assert from_stdin.stdout == '["virginica"]\n'


def test_custom_attributes_reach_the_model_and_come_back(user: User, rows: Path) -> None:
    result = user.run("invoke", "iris", str(rows), "--custom-attributes", "method=predict_proba")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("[[") and result.stdout.count("],[") == 1  # two rows of probabilities
    assert "CustomAttributes: method=predict_proba" in result.stderr


def test_a_target_model_is_sent_as_invoke_endpoint_takes_it(user: User, rows: Path) -> None:
    # The stand-in passes X-Amzn-SageMaker-Target-Model on; boto3 refuses a parameter InvokeEndpoint lacks.
    result = user.run("invoke", "iris", str(rows), "--target-model", "iris-v2.tar.gz", "--accept", "text/csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == "setosa\nvirginica\n"


def test_a_model_error_prints_the_containers_status_and_message(user: User, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n")
    result = user.run("invoke", "iris", str(bad))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "The model behind endpoint iris answered HTTP 400" in result.stderr
    assert "Expected 4 values per row, got 2" in result.stderr and "schema_mismatch" in result.stderr
    assert "sagehost logs iris" in result.stderr
    assert "Traceback" not in result.output


def test_the_url_form_is_unchanged(user: User, runtime: Runtime, rows: Path) -> None:
    result = user.run("invoke", "--url", runtime.url, str(rows), "--accept", "text/csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == "setosa\nvirginica\n"
    mixed = user.run("invoke", "--url", runtime.url, str(rows), "--async")
    assert mixed.exit_code == 2 and "--async goes with an endpoint NAME" in mixed.output


def test_a_file_given_as_the_name_points_at_the_url_form(user: User, rows: Path) -> None:
    result = user.run("invoke", str(rows))
    assert result.exit_code == 2
    assert "cannot name a SageMaker endpoint" in result.output and "--url http://127.0.0.1:8080" in result.output


# ---- InvokeEndpointAsync ------------------------------------------------------------------------


def test_invoke_async_uploads_waits_and_prints_the_answer(user: User, rows: Path) -> None:
    result = user.run("invoke", "iris", str(rows), "--async", "--accept", "text/csv", "--wait", "60")

    assert result.exit_code == 0, result.output
    assert result.stdout == "setosa\nvirginica\n"
    inputs = user.objects("sagehost/iris/async-inputs/")
    assert list(inputs.values()) == [ROWS]
    (key,) = inputs
    inference_id = key.rsplit("/", 1)[-1]
    tags = user.cloud.client("s3").get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
    assert tags == [{"Key": "sagehost:endpoint", "Value": "iris"}]
    output_key = f"async-out/{inference_id}.out"
    assert user.objects("async-out/") == {output_key: "setosa\nvirginica\n"}
    head = user.cloud.client("s3").head_object(Bucket=BUCKET, Key=output_key)
    assert head["ContentType"].startswith("text/csv")
    assert f"Queued {inference_id}: its answer goes to s3://{BUCKET}/{output_key}" in result.stderr
    assert f"Creating bucket s3://{BUCKET}" in result.stderr  # deploy's default bucket, made once
    deleted = user.run("delete", "iris", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert user.objects("sagehost/iris/async-inputs/") == {}  # staged payloads go with the endpoint


def test_a_failed_async_invocation_prints_the_failure_and_exits_1(user: User, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n")
    result = user.run("invoke", "iris", str(bad), "--async", "--wait", "60")

    assert result.exit_code == 1
    assert result.stdout == ""
    found = re.search(rf"The async invocation failed \(s3://{BUCKET}/async-failed/([\w-]+)-error\.out\)", result.stderr)
    assert found, result.stderr
    assert "Received client error (400) from primary" in result.stderr and "schema_mismatch" in result.stderr
    assert user.objects("async-out/") == {}
    assert list(user.objects("async-failed/")) == [f"async-failed/{found[1]}-error.out"]


def test_invoke_async_without_waiting_prints_where_the_answer_will_be(user: User, rows: Path) -> None:
    result = user.run("invoke", "iris", str(rows), "--async", "--wait", "0", "--accept", "text/csv")

    assert result.exit_code == 0, result.output
    location = result.stdout.strip()
    assert re.fullmatch(rf"s3://{BUCKET}/async-out/[\w-]+\.out", location), result.stdout
    key = location.removeprefix(f"s3://{BUCKET}/")
    deadline = time.monotonic() + 30
    while key not in user.objects("async-out/") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert user.get(key) == "setosa\nvirginica\n"


def test_an_answer_that_never_comes_is_given_up_after_wait(user: User, runtime: Runtime, rows: Path) -> None:
    # The payload goes to a bucket of its own; the runtime's output bucket does not exist (moto is
    # fresh), so its answer cannot be written and never appears.
    result = user.run("invoke", "iris", str(rows), "--async", "--bucket", "sagehost-inputs", "--wait", "1.5")

    assert result.exit_code == 1
    assert "No answer within 1.5 s. It will be at s3://" in result.stderr and "--wait" in result.stderr
    deadline = time.monotonic() + 10
    while "could not write its" not in runtime.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "could not write its answer to" in runtime.log  # said where the runtime runs


def test_async_options_go_with_an_endpoint_and_async(user: User, rows: Path) -> None:
    no_async = user.run("invoke", "iris", str(rows), "--wait", "5")
    assert no_async.exit_code == 2 and "--wait and --bucket go with --async" in no_async.output
    target = user.run("invoke", "iris", str(rows), "--async", "--target-model", "a.tar.gz")
    assert target.exit_code == 2 and "--target-model goes with InvokeEndpoint only" in target.output


def test_no_credential_shows_in_any_output_or_log(
    user: User, runtime: Runtime, rows: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n")
    user.run("invoke", "iris", str(rows))
    user.run("invoke", "iris", str(bad))
    user.run("invoke", "iris", str(rows), "--async", "--wait", "60")
    user.run("invoke", "iris", str(bad), "--async", "--wait", "60")

    assert [r.exit_code for r in user.results] == [0, 1, 0, 1]
    everything = "\n".join([*(r.output for r in user.results), caplog.text, runtime.log])
    for secret in (SECRET, TOKEN, ACCESS_KEY_ID):
        assert secret not in everything
