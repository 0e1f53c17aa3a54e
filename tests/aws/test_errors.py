"""AWS failures reach the user as sagehost errors they can act on, never as a traceback, and no
credential ever shows: neither in output nor in the log."""

from __future__ import annotations

import logging
from pathlib import Path

import botocore.exceptions as bce  # type: ignore[import-untyped]
import pytest

from sagehost.aws import errors
from sagehost.aws.boundary import botocore_error, client_error, iam_action, scrub
from tests.aws import moto_ext
from tests.aws.conftest import ACCESS_KEY_ID, SECRET, TOKEN, Cloud
from tests.aws.moto_ext import Step
from tests.conftest import free_port


def answer(code: str, message: str = "", status: int = 400, operation: str = "CreateModel") -> object:
    """A real botocore ClientError, as botocore raises it for an AWS error answer."""
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bce.ClientError(response, operation)


@pytest.mark.parametrize(
    ("code", "message", "status", "kind", "says"),
    [
        (
            "AccessDeniedException",
            "User: arn:aws:sts::1:assumed-role/dev/x is not authorized to perform: iam:PassRole",
            400,
            errors.AwsPermissionDenied,
            "Grant sagemaker:CreateModel",
        ),
        (
            "ExpiredTokenException",
            "The security token included in the request is expired",
            400,
            errors.AwsCredentialsError,
            "aws sso login",
        ),
        (
            "ValidationException",
            "Could not find model 'arn:aws:sagemaker:us-east-1:1:model/x'.",
            400,
            errors.AwsNotFound,
            "not found",
        ),
        (
            "ResourceLimitExceeded",
            "The account-level service limit 'ml.m5.large for endpoint usage' is 2",
            400,
            errors.AwsQuotaExceeded,
            "Service Quotas",
        ),
        ("ThrottlingException", "Rate exceeded", 400, errors.AwsQuotaExceeded, "try again shortly"),
        (
            "ValidationException",
            'Cannot create already existing model "arn:aws:sagemaker:us-east-1:1:model/x".',
            400,
            errors.AwsConflict,
            "taken",
        ),
        ("BucketAlreadyExists", "", 409, errors.AwsConflict, "--bucket"),
        ("InternalFailure", "<html><body>oops</body></html>", 500, errors.AwsError, "HTTP 500"),
        (
            "ValidationException",
            "1 validation error detected",
            400,
            errors.AwsError,
            "AWS refused sagemaker:CreateModel",
        ),
    ],
)
def test_aws_error_answers_become_errors_that_say_what_to_do(
    code: str, message: str, status: int, kind: type[Exception], says: str
) -> None:
    error = client_error(answer(code, message, status), "sagemaker", "CreateModel")
    assert type(error) is kind
    assert says in str(error)
    assert "<html>" not in str(error)


@pytest.mark.parametrize(
    ("exc", "kind", "says"),
    [
        (bce.NoCredentialsError(), errors.AwsCredentialsError, "No AWS credentials"),
        (bce.ProfileNotFound(profile="nope"), errors.AwsCredentialsError, "--profile"),
        (bce.NoRegionError(), errors.AwsCredentialsError, "--region"),
        (
            bce.EndpointConnectionError(endpoint_url="https://api.sagemaker.us-east-1.amazonaws.com/"),
            errors.AwsUnreachable,
            "HTTPS_PROXY",
        ),
        (bce.ParamValidationError(report="Invalid length for parameter ModelName"), errors.AwsOptionError, "ModelName"),
    ],
)
def test_botocore_failures_become_errors_that_say_what_to_do(exc: Exception, kind: type[Exception], says: str) -> None:
    error = botocore_error(exc, "sagemaker", "CreateModel")
    assert type(error) is kind
    assert says in str(error)


def test_s3_actions_are_named_as_iam_names_them() -> None:
    assert iam_action("s3", "HeadObject") == "s3:GetObject"
    assert iam_action("s3", "PutObject") == "s3:PutObject"
    assert iam_action("sagemaker", "CreateEndpoint") == "sagemaker:CreateEndpoint"


def test_scrub_removes_what_could_be_a_credential() -> None:
    signed = (
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAABCDEFGHIJKLMNOP%2F2026"
        "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-Signature=0a1b2c3d"
    )
    text = scrub(
        f"see {signed} and key ASIAQWERTYUIOPASDFGH; Authorization: AWS4-HMAC-SHA256 Credential=x, Signature=y"
    )
    for secret in ("AKIAABCDEFGHIJKLMNOP", "FwoGZXIvYXdzEXAMPLE", "0a1b2c3d", "ASIAQWERTYUIOPASDFGH", "Signature=y"):
        assert secret not in text
    assert "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256" in text


# ---- through the CLI ---------------------------------------------------------------------------


def test_no_credentials_at_all(cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    result = cloud.deploy("iris", "--model-dir", str(model_dir))
    assert result.exit_code == 1
    assert "No AWS credentials" in result.output and "aws configure" in result.output
    assert "Traceback" not in result.output


def test_no_region_and_an_unknown_profile(cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    no_region = cloud.deploy("iris", "--model-dir", str(model_dir))
    assert no_region.exit_code == 1 and "No AWS region is configured" in no_region.output

    no_profile = cloud.deploy("iris", "--model-dir", str(model_dir), "--region", "us-east-1", "--profile", "nope")
    assert no_profile.exit_code == 1 and "--profile/AWS_PROFILE is not configured" in no_profile.output


def test_aws_out_of_reach(cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    result = cloud.deploy("iris", "--model-dir", str(model_dir))
    assert result.exit_code == 1
    assert "Could not reach AWS for" in result.output and "AWS_ENDPOINT_URL" in result.output


def test_a_permission_the_caller_lacks_is_named(cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    denied = (
        f"User: arn:aws:sts::123456789012:assumed-role/dev/{ACCESS_KEY_ID} is not authorized to perform: "
        "iam:PassRole on resource: arn:aws:iam::123456789012:role/sagehost-test"
    )
    moto_ext.refuse(monkeypatch, "create_model", "AccessDeniedException", denied)

    result = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert result.exit_code == 1
    assert "Permission denied: sagemaker:CreateModel was refused" in result.output
    assert "iam:PassRole" in result.output
    assert ACCESS_KEY_ID not in result.output
    assert cloud.configs() == []


def test_a_quota_is_named_with_where_to_raise_it(
    cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota = "The account-level service limit 'ml.m5.large for endpoint usage' is 0 Instances"
    moto_ext.refuse(monkeypatch, "create_endpoint", "ResourceLimitExceeded", quota)

    result = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert result.exit_code == 1
    assert "An AWS quota stops sagemaker:CreateEndpoint" in result.output
    assert "ml.m5.large for endpoint usage" in result.output and "servicequotas" in result.output


def test_no_credential_ever_shows_in_output_or_log(
    cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    moto_ext.script("iris", Step("Creating", logs=("starting",)), Step("Failed", reason="ping health check"))
    cloud.deploy("iris", "--model-dir", str(model_dir))  # fails
    cloud.deploy("iris", "--model-dir", str(model_dir), "--dry-run")
    cloud.deploy("iris", "--model-dir", str(model_dir))  # replaces
    cloud.deploy("iris", "--model-dir", str(model_dir), "-e", "A=1")  # updates
    cloud.run("endpoints")
    moto_ext.refuse(monkeypatch, "delete_endpoint", "AccessDeniedException", "not authorized")
    cloud.run("delete", "iris", "--yes")
    monkeypatch.undo()
    cloud.run("delete", "iris", "--yes")

    assert len(cloud.outputs) == 7 and any("Permission denied" in out for out in cloud.outputs)
    everything = "\n".join([*cloud.outputs, caplog.text])
    for secret in (SECRET, TOKEN, ACCESS_KEY_ID):
        assert secret not in everything
