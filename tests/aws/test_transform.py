"""`sagehost transform` through the real CLI against moto (with tests/aws/moto_ext.py) on 127.0.0.1."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from sagehost.aws.transform import transform_spec
from tests.aws import moto_ext
from tests.aws.conftest import ACCESS_KEY_ID, IMAGE, ROLE_ARN, SECRET, TOKEN, Cloud
from tests.aws.moto_ext import Step

DATA = "sagehost-batch-data"
IN = f"s3://{DATA}/in/"
OUT = f"s3://{DATA}/out/"
JOB_NAME = re.compile(r"^(?P<base>[a-zA-Z0-9-]+)-\d{8}-\d{6}-[0-9a-f]{6}$")


@pytest.fixture
def data(cloud: Cloud) -> str:
    """An input object under s3://DATA/in/, as a user would have uploaded."""
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=DATA)
    s3.put_object(Bucket=DATA, Key="in/rows.csv", Body=b"1,5.1,3.5,1.4,0.2\n2,6.7,3.0,5.2,2.3\n")
    return DATA


def a_model(cloud: Cloud, name: str, tags: dict[str, str] | None = None) -> None:
    container = {"Image": IMAGE, "ModelDataUrl": f"s3://{DATA}/model.tar.gz"}
    tag_list = [{"Key": k, "Value": v} for k, v in (tags or {}).items()]
    cloud.client("sagemaker").create_model(
        ModelName=name, ExecutionRoleArn=ROLE_ARN, PrimaryContainer=container, Tags=tag_list
    )


def jobs(cloud: Cloud) -> list[dict[str, Any]]:
    sm = cloud.client("sagemaker")
    names = [j["TransformJobName"] for j in sm.list_transform_jobs()["TransformJobSummaries"]]
    return [sm.describe_transform_job(TransformJobName=name) for name in names]


def test_a_job_on_an_endpoints_model_with_every_option_sent_and_tagged(
    cloud: Cloud, model_dir: Path, data: str
) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    sm = cloud.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=cloud.endpoint("iris")["EndpointConfigName"])
    model = config["ProductionVariants"][0]["ModelName"]

    result = cloud.run(
        "transform", "iris", IN, OUT,
        "--content-type", "text/csv", "--split-type", "Line", "--strategy", "MultiRecord",
        "--max-payload-mb", "10", "--concurrency", "4", "--assemble-with", "Line", "--accept", "text/csv",
        "--input-filter", "$[1:]", "--output-filter", "$[0,-1]", "--join-source", "Input",
        "--instance-type", "ml.m5.xlarge", "--instance-count", "2", "--tag", "team=ml",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    [job] = jobs(cloud)
    name = job["TransformJobName"]
    assert JOB_NAME.match(name) and name.startswith("iris-")
    assert job["ModelName"] == model
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": IN}},
        "ContentType": "text/csv",
        "SplitType": "Line",
    }
    assert job["TransformOutput"] == {"S3OutputPath": OUT, "Accept": "text/csv", "AssembleWith": "Line"}
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}
    assert (job["BatchStrategy"], job["MaxPayloadInMB"], job["MaxConcurrentTransforms"]) == ("MultiRecord", 10, 4)
    assert job["DataProcessing"] == {"InputFilter": "$[1:]", "OutputFilter": "$[0,-1]", "JoinSource": "Input"}
    assert cloud.tags(job["TransformJobArn"]) == {"sagehost:endpoint": "iris", "team": "ml"}
    assert f"{name}: Completed" in result.output
    assert f"Transform job {name} Completed: one .out per input object under {OUT}" in result.output


def test_a_model_by_name_sends_only_what_was_given_and_carries_its_endpoint_tag(cloud: Cloud, data: str) -> None:
    a_model(cloud, "iris-0123abcd", {"sagehost:endpoint": "iris"})
    a_model(cloud, "theirs")

    assert cloud.run("transform", "iris-0123abcd", IN, OUT).exit_code == 0
    assert cloud.run("transform", "theirs", f"s3://{DATA}/in/rows.csv", OUT, "--no-wait").exit_code == 0

    first, second = sorted(jobs(cloud), key=lambda j: str(j["ModelName"]))
    assert first["ModelName"] == "iris-0123abcd" and second["ModelName"] == "theirs"
    for job in (first, second):  # SageMaker's and the container's defaults apply to the rest
        assert job["TransformInput"] == {
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"],
                }
            }
        }
        assert job["TransformOutput"] == {"S3OutputPath": OUT}
        assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}
        assert not {"BatchStrategy", "MaxPayloadInMB", "MaxConcurrentTransforms", "DataProcessing"} & {
            k for k, v in job.items() if v
        }
    assert cloud.tags(first["TransformJobArn"]) == {"sagehost:endpoint": "iris"}
    assert cloud.tags(second["TransformJobArn"]) == {"sagehost:endpoint": "theirs"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-payload-mb", "101"], "101 is not in the range 0<=x<=100"),
        (["--max-payload-mb", "-1"], "--max-payload-mb"),
        (["--concurrency", "20", "--max-payload-mb", "6"], "--concurrency 20 x 6 MB (--max-payload-mb)"),
        (["--concurrency", "17"], "17 x 6 MB (the default payload)"),
        (["--strategy", "MultiRecord"], "--strategy MultiRecord needs --split-type"),
        (["--strategy", "SingleRecord", "--split-type", "None"], "needs --split-type"),
        (["--split-type", "Lines"], "'Lines' is not one of"),
        (["--assemble-with", "Newline"], "'Newline' is not one of"),
        (["--join-source", "Output"], "'Output' is not one of"),
        (["--content-type", "csv"], "--content-type 'csv' is not a media type"),
        (["--accept", "text csv"], "--accept 'text csv' is not a media type"),
        (["--input-filter", "features"], "must start at the record's root, $"),
        (["--input-filter", "$..price"], "no .. or ?() filters"),
        (["--output-filter", "$.items[?(@.price < 10)]"], "not in SageMaker's JSONPath subset"),
        (["--input-filter", "$.field1.['child1','child2.grandchild']"], "not in SageMaker's JSONPath subset"),
        (["--input-filter", "$['" + "a" * 60 + "']"], "at most 63"),
        (
            [
                "--content-type",
                "text/csv",
                "--accept",
                "text/csv",
                "--split-type",
                "Line",
                "--assemble-with",
                "Line",
                "--input-filter",
                "$.features",
            ],
            "a CSV row is an array",
        ),  # fmt: skip
        (["--content-type", "application/x-npy", "--join-source", "Input"], "--join-source needs --content-type"),
        (
            ["--content-type", "application/json", "--input-filter", "$.features"],
            "--input-filter needs --accept set to one of",
        ),
        (
            ["--content-type", "text/csv", "--accept", "text/csv", "--join-source", "Input"],
            "--join-source needs --split-type Line and --assemble-with Line on CSV",
        ),
        (["--instance-type", "ml.t2.medium"], "'ml.t2.medium' is not offered for Batch Transform"),
        (["--instance-type", "m5.large"], "Did you mean ml.m5.large?"),
        (["--instance-count", "0"], "--instance-count"),
        (["--tag", "sagehost:endpoint=x"], "reserved"),
    ],
)
def test_what_sagemaker_would_refuse_is_refused_before_any_call(
    cloud: Cloud, data: str, args: list[str], says: str
) -> None:
    a_model(cloud, "iris-model")
    result = cloud.run("transform", "iris-model", IN, OUT, *args)

    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert jobs(cloud) == []


@pytest.mark.parametrize(
    ("source", "uris", "says"),
    [
        ("iris model", [IN, OUT], "cannot name a SageMaker endpoint"),
        ("iris-model", ["/local/rows.csv", OUT], "S3_INPUT '/local/rows.csv' is not an S3 URI"),
        ("iris-model", [IN, "s3://X"], "S3_OUTPUT 's3://X' is not an S3 URI"),
        ("iris-model", [f"s3://{DATA}/in", f"s3://{DATA}/in-out/"], "is under the input"),
    ],
)
def test_names_and_places_are_checked_before_any_call(
    cloud: Cloud, data: str, source: str, uris: list[str], says: str
) -> None:
    a_model(cloud, "iris-model")
    result = cloud.run("transform", source, *uris)
    assert result.exit_code == 2, result.output
    assert says in result.output and jobs(cloud) == []


def test_the_payload_product_is_fine_within_100_mb_and_when_streamed(cloud: Cloud, data: str) -> None:
    a_model(cloud, "iris-model")
    assert cloud.run("transform", "iris-model", IN, OUT, "--concurrency", "16").exit_code == 0
    assert cloud.run("transform", "iris-model", IN, OUT, "--concurrency", "50", "--max-payload-mb", "2").exit_code == 0
    assert cloud.run("transform", "iris-model", IN, OUT, "--concurrency", "64", "--max-payload-mb", "0").exit_code == 0
    assert sorted(j["MaxConcurrentTransforms"] for j in jobs(cloud)) == [16, 50, 64]


@pytest.mark.parametrize(
    ("source", "uris", "says"),
    [
        ("nothing-here", [IN, OUT], "nothing-here is neither an endpoint nor a model"),
        ("iris-model", [f"s3://{DATA}/empty/", OUT], f"There is nothing under s3://{DATA}/empty/"),
        ("iris-model", ["s3://no-such-bucket-sagehost/in/", OUT], "There is no bucket no-such-bucket-sagehost for the"),
        ("iris-model", [IN, "s3://no-such-bucket-sagehost/out/"], "There is no bucket no-such-bucket-sagehost"),
    ],
)
def test_what_is_missing_is_named_before_the_job_is_made(
    cloud: Cloud, data: str, source: str, uris: list[str], says: str
) -> None:
    a_model(cloud, "iris-model")
    result = cloud.run("transform", source, *uris)
    assert result.exit_code == 1, result.output
    assert says in result.output and jobs(cloud) == []


def test_a_failed_job_exits_non_zero_with_its_reason_its_log_lines_and_the_cause(cloud: Cloud, data: str) -> None:
    a_model(cloud, "other-model")
    moto_ext.script_transform("other-model", Step("InProgress", logs=("another job's line",)), Step("Completed"))
    assert cloud.run("transform", "other-model", IN, OUT).exit_code == 0
    a_model(cloud, "iris-model")
    reason = "ClientError: See job logs for more information"
    moto_ext.script_transform(
        "iris-model",
        Step("InProgress", logs=("starting the model server", "POST /invocations 413: payload over 6291456 bytes")),
        Step("InProgress"),
        Step("Failed", reason=reason),
    )

    result = cloud.run("transform", "iris-model", IN, OUT, "--content-type", "text/csv")

    assert result.exit_code == 1, result.output
    name = next(j["TransformJobName"] for j in jobs(cloud) if j["ModelName"] == "iris-model")
    assert f"Transform job {name} is Failed." in result.output
    assert f"Reason: {reason}" in result.output
    assert "POST /invocations 413: payload over 6291456 bytes" in result.output
    assert "Likely cause: A request was over the container's payload limit" in result.output
    assert f"{name}: InProgress" in result.output and f"{name}: Failed" in result.output
    assert "another job's line" not in result.output
    assert "Traceback" not in result.output


def test_no_wait_and_dry_run(cloud: Cloud, data: str) -> None:
    a_model(cloud, "iris-model")
    moto_ext.script_transform("iris-model", Step("InProgress"), Step("Failed", reason="never looked at"))

    dry = cloud.run("transform", "iris-model", IN, OUT, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would call sagemaker CreateTransformJob TransformJobName=iris-model-" in dry.output
    assert "ModelName=iris-model" in dry.output and jobs(cloud) == []

    result = cloud.run("transform", "iris-model", IN, OUT, "--no-wait")
    assert result.exit_code == 0, result.output
    assert "Not waiting" in result.output and "never looked at" not in result.output
    summaries = cloud.client("sagemaker").list_transform_jobs()["TransformJobSummaries"]
    assert [j["TransformJobStatus"] for j in summaries] == ["InProgress"]  # nobody described it since


def test_an_endpoint_with_two_models_asks_for_the_model(cloud: Cloud, data: str) -> None:
    a_model(cloud, "blue")
    a_model(cloud, "green")
    sm = cloud.client("sagemaker")
    variants = [
        {"VariantName": v, "ModelName": v, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
        for v in ("blue", "green")
    ]
    sm.create_endpoint_config(EndpointConfigName="ab", ProductionVariants=variants)
    sm.create_endpoint(EndpointName="ab", EndpointConfigName="ab")

    result = cloud.run("transform", "ab", IN, OUT)

    assert result.exit_code == 2 and "Endpoint ab runs 2 models (blue, green): name the model" in result.output


def test_no_credential_shows_in_transform_output_or_log(
    cloud: Cloud, data: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a_model(cloud, "iris-model")
    moto_ext.script_transform("iris-model", Step("InProgress", logs=("line",)), Step("Failed", reason="bad"))
    cloud.run("transform", "iris-model", IN, OUT)
    cloud.run("transform", "iris-model", IN, OUT, "--dry-run")
    cloud.run("transform", "nothing", IN, OUT)

    everything = "\n".join([*cloud.outputs, caplog.text])
    assert "Reason: bad" in everything
    for secret in (SECRET, TOKEN, ACCESS_KEY_ID):
        assert secret not in everything


@pytest.mark.parametrize(
    "path",
    ["$", "$.features", "$.id.*", "$['id','SageMakerOutput']", "$.field1.['child1','child2']", "$[1]", "$[1,3,5]",
     "$[-1]", "$[2:5]", "$[:5]", "$[2:]", "$[0,5:]", "$[*]"],
)  # fmt: skip
def test_sagemakers_documented_jsonpath_forms_are_accepted(path: str) -> None:
    """The examples of https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-data-processing.html"""
    options = {
        "content_type": "application/jsonlines",
        "split_type": "Line",
        "strategy": None,
        "max_payload_mb": None,
        "concurrency": None,
        "assemble_with": "Line",
        "accept": "application/jsonlines",
        "input_filter": path,
        "output_filter": path,
        "join_source": "Input",
        "instance_type": "ml.m5.large",
        "instance_count": 1,
        "tag_pairs": (),
    }
    spec = transform_spec("iris", IN, OUT, options)
    assert spec.processing == {"InputFilter": path, "OutputFilter": path, "JoinSource": "Input"}
