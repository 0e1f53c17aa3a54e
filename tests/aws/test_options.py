"""Deploy options: what SageMaker would refuse is refused first, and what it takes reaches it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.aws.conftest import ACCOUNT, REGION, Cloud
from tests.conftest import free_port

ECR = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"

REFUSED_BEFORE_ANY_CALL = [
    (["--role", "sagehost-test"], "arn:aws:iam::ACCOUNT_ID:role/sagehost-test"),
    (["--role", f"arn:aws:iam::{ACCOUNT}:user/alice"], "names a user or a session"),
    (["--instance-type", "m5.large"], "Did you mean ml.m5.large?"),
    (["--instance-type", "ml.m5"], "not a SageMaker instance type"),
    (["--serverless", "1000"], "1024, 2048, 3072, 4096, 5120, 6144"),
    (["--serverless", "2500"], "1 GB steps"),
    (["--serverless", "2048:201"], "outside 1–200"),
    (["--serverless", "2048:0"], "outside 1–200"),
    (["--serverless", "2048:5:6"], "provisioned concurrency 6 must be 1–5"),
    (["--serverless", "2GB"], "MEMORY_MB[:MAX_CONCURRENCY[:PROVISIONED]]"),
    (["--serverless", "2048", "--instance-type", "ml.m5.large"], "have no instances"),
    (["--serverless", "2048", "--instance-count", "2"], "have no instances"),
    (["--serverless", "2048", "--data-capture", "s3://capture-bucket/iris"], "do not support --data-capture"),
    (["--serverless", "2048", "--async", "s3://out-bucket/iris"], "--async needs instances"),
    (["--async-failure", "s3://out-bucket/failed"], "--async-failure needs --async"),
    (["--capture-percent", "50"], "--capture-percent needs --data-capture"),
    (["--async", "s3://out-bucket/x", "--async-error-topic", "errors"], "not an SNS topic ARN"),
    (["--async", "not-s3"], "--async 'not-s3' is not an S3 URI"),
    (["--image", f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/iris:1"], "--image is in eu-west-1"),
    (["--image", "docker.io/library/iris:1"], "not an Amazon ECR image URI"),
    (["-e", "1BAD=x"], "names are letters, digits and _"),
    (["-e", "NOVALUE"], "expected KEY=VALUE"),
    (["--tag", "aws:team=ml"], "reserved"),
    (["--startup-timeout", "30"], "--startup-timeout 30 is outside SageMaker's 60–3600 seconds"),
    (["--download-timeout", "7200"], "--download-timeout 7200 is outside"),
    (["--model-data", "s3://models-bucket/iris/"], "names no object"),
    (["--model-data", "s3://models-bucket/iris.tar.gz"], "exactly one of --model-dir"),
]


@pytest.mark.parametrize(("args", "message"), REFUSED_BEFORE_ANY_CALL)
def test_options_sagemaker_would_refuse_are_refused_before_any_call(
    cloud: Cloud, model_dir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    # Nothing listens here: a call would end in "Could not reach AWS" and exit 1, not 2.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    result = cloud.deploy("iris", "--model-dir", str(model_dir), *args)  # a repeated --role/--image: the last wins

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_neither_model_dir_nor_model_data_is_refused(cloud: Cloud) -> None:
    result = cloud.deploy("iris")
    assert result.exit_code == 2 and "exactly one of --model-dir" in result.output


def test_a_name_sagemaker_refuses_is_refused(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy("iris_model", "--model-dir", str(model_dir))
    assert result.exit_code == 2 and "cannot name a SageMaker endpoint" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--serverless", "2048:10:2"],
            {
                "ProductionVariants.0.ServerlessConfig": {
                    "MemorySizeInMB": 2048,
                    "MaxConcurrency": 10,
                    "ProvisionedConcurrency": 2,
                }
            },
        ),
        (
            ["--startup-timeout", "900", "--download-timeout", "1200", "--instance-type", "ml.c5.xlarge"],
            {
                "ProductionVariants.0.ContainerStartupHealthCheckTimeoutInSeconds": 900,
                "ProductionVariants.0.ModelDataDownloadTimeoutInSeconds": 1200,
                "ProductionVariants.0.InstanceType": "ml.c5.xlarge",
            },
        ),
        (
            [
                *("--async", "s3://out-bucket/iris", "--async-failure", "s3://out-bucket/failed"),
                *("--async-max-concurrency", "4", "--async-success-topic", f"arn:aws:sns:{REGION}:{ACCOUNT}:done"),
            ],
            {
                "AsyncInferenceConfig": {
                    "OutputConfig": {
                        "S3OutputPath": "s3://out-bucket/iris",
                        "S3FailurePath": "s3://out-bucket/failed",
                        "NotificationConfig": {"SuccessTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:done"},
                    },
                    "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
                }
            },
        ),
        (
            ["--data-capture", "s3://capture-bucket/iris", "--capture-percent", "20"],
            {
                "DataCaptureConfig": {
                    "EnableCapture": True,
                    "InitialSamplingPercentage": 20,
                    "DestinationS3Uri": "s3://capture-bucket/iris",
                    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                }
            },
        ),
    ],
    ids=["serverless", "timeouts", "async", "data-capture"],
)
def test_endpoint_configs_carry_what_was_asked(
    cloud: Cloud, model_dir: Path, args: list[str], expected: dict[str, object]
) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir), *args, "--tag", "team=ml")

    assert result.exit_code == 0, result.output
    sm = cloud.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=cloud.endpoint("iris")["EndpointConfigName"])
    for path, value in expected.items():
        found: object = config
        for part in path.split("."):
            found = found[int(part)] if isinstance(found, list) else found[part]  # type: ignore[index]
        assert found == value, path
    assert cloud.tags(config["EndpointConfigArn"]) == {"sagehost:endpoint": "iris", "team": "ml"}


def test_an_instance_endpoint_is_not_turned_serverless(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    models = cloud.models()

    result = cloud.deploy("iris", "--model-dir", str(model_dir), "--serverless", "2048")

    assert result.exit_code == 1
    assert "cannot update it to serverless" in result.output and "sagehost delete iris" in result.output
    assert cloud.models() == models


# ---- checked by free reads before anything is created ------------------------------------------


def test_a_missing_role_is_named(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir), role=f"arn:aws:iam::{ACCOUNT}:role/nope")
    assert result.exit_code == 1
    assert f"arn:aws:iam::{ACCOUNT}:role/nope: there is no such role" in result.output
    assert cloud.models() == []


def test_a_role_sagemaker_cannot_assume_is_refused(cloud: Cloud, model_dir: Path) -> None:
    trust = {
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    }
    cloud.client("iam").create_role(RoleName="for-lambda", AssumeRolePolicyDocument=json.dumps(trust))

    result = cloud.deploy("iris", "--model-dir", str(model_dir), role=f"arn:aws:iam::{ACCOUNT}:role/for-lambda")

    assert result.exit_code == 1
    assert "does not trust sagemaker.amazonaws.com" in result.output
    assert cloud.models() == []


def test_an_image_not_in_ecr_is_refused(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir), image=f"{ECR}/sagehost-iris:2")
    assert result.exit_code == 1
    assert "is not in ECR" in result.output and "Push it there first" in result.output
    assert cloud.models() == []


def test_an_image_pushed_as_oci_is_refused(cloud: Cloud, model_dir: Path) -> None:
    image = cloud.put_image("sagehost-oci", "1", "application/vnd.oci.image.manifest.v1+json")

    result = cloud.deploy("iris", "--model-dir", str(model_dir), image=image)

    assert result.exit_code == 1
    assert "OCI manifest" in result.output and "--format v2s2" in result.output
    assert cloud.models() == []


def test_a_bucket_in_another_region_is_refused(cloud: Cloud, model_dir: Path) -> None:
    cloud.client("s3", "eu-west-1").create_bucket(
        Bucket="models-in-ireland", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )

    result = cloud.deploy("iris", "--model-dir", str(model_dir), "--bucket", "models-in-ireland")

    assert result.exit_code == 1
    assert "s3://models-in-ireland is in eu-west-1, but this deploy goes to us-east-1" in result.output
    assert cloud.models() == []


def test_an_endpoint_sagehost_did_not_create_is_left_alone(cloud: Cloud, model_dir: Path) -> None:
    sm = cloud.client("sagemaker")
    sm.create_model(ModelName="theirs", ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/sagehost-test")
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "theirs",
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
    }
    sm.create_endpoint_config(EndpointConfigName="theirs", ProductionVariants=[variant])
    sm.create_endpoint(EndpointName="iris", EndpointConfigName="theirs")

    result = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert result.exit_code == 1
    assert "The endpoint iris exists, but sagehost did not create it" in result.output
    assert (cloud.models(), cloud.configs(), cloud.endpoint("iris")["EndpointConfigName"]) == (
        ["theirs"],
        ["theirs"],
        "theirs",
    )
