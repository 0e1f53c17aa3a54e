"""`sagehost endpoints` and `sagehost delete` against moto: only what sagehost made, all of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.aws.conftest import ACCOUNT, BUCKET, IMAGE, ROLE_ARN, Cloud


def make_theirs(cloud: Cloud, name: str) -> None:
    """An endpoint someone made without sagehost, named like ours."""
    sm = cloud.client("sagemaker")
    sm.create_model(ModelName=name, ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/sagehost-test")
    variant = {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)


def test_endpoints_lists_what_sagehost_deployed_with_status_and_capacity(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir), "--instance-count", "2").exit_code == 0
    assert cloud.deploy("iris-small", "--model-dir", str(model_dir), "--serverless", "2048:4").exit_code == 0
    make_theirs(cloud, "iris-theirs")
    cloud.client("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId="endpoint/iris/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=2,
        MaxCapacity=6,
    )

    result = cloud.run("endpoints")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "CAPACITY", "AUTOSCALING", "UPDATED"]
    assert [line.split()[0] for line in lines[1:]] == ["iris", "iris-small"]
    assert lines[1].split()[1:6] == ["InService", "2", "x", "ml.m5.large", "2-6"]
    assert "serverless 2048 MB x4" in lines[2]


def test_endpoints_when_there_are_none(cloud: Cloud) -> None:
    result = cloud.run("endpoints")
    assert result.exit_code == 0 and "No endpoints made by sagehost" in result.output


def test_delete_removes_everything_tagged_for_the_name_and_nothing_else(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    assert cloud.deploy("iris2", "--model-dir", str(model_dir)).exit_code == 0  # NameContains "iris" finds it too
    make_theirs(cloud, "iris-theirs")
    cloud.client("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId="endpoint/iris/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=1,
        MaxCapacity=3,
    )
    s3 = cloud.client("s3")
    iris_archive = next(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"] if "/iris/" in o["Key"])

    result = cloud.run("delete", "iris", "--yes")

    assert result.exit_code == 0, result.output
    assert "Deleted" in result.output
    sm = cloud.client("sagemaker")
    assert sorted(e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]) == ["iris-theirs", "iris2"]
    assert all(not name.startswith("iris-") or name == "iris-theirs" for name in cloud.models() + cloud.configs())
    assert "iris-theirs" in cloud.models() and "iris-theirs" in cloud.configs()
    assert len([m for m in cloud.models() if m.startswith("iris2-")]) == 1
    targets = cloud.client("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")
    assert targets["ScalableTargets"] == []
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert iris_archive not in keys and any("/iris2/" in key for key in keys)


def test_delete_asks_first_and_a_no_deletes_nothing(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    before = (cloud.models(), cloud.configs())

    result = cloud.run("delete", "iris", input="n\n")

    assert result.exit_code == 1
    assert "endpoint iris" in result.output and "Delete them all?" in result.output
    assert "Nothing deleted" in result.output
    assert (cloud.models(), cloud.configs()) == before
    assert cloud.endpoint("iris")["EndpointStatus"] == "InService"


def test_delete_dry_run_and_keep_artifacts(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0

    dry = cloud.run("delete", "iris", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would call sagemaker DeleteEndpoint EndpointName=iris" in dry.output
    assert "would call s3 DeleteObject" in dry.output
    assert cloud.endpoint("iris")["EndpointStatus"] == "InService"

    kept = cloud.run("delete", "iris", "--yes", "--keep-artifacts")
    assert kept.exit_code == 0, kept.output
    assert cloud.models() == [] and cloud.configs() == []
    assert len(cloud.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]) == 1


def test_delete_refuses_an_endpoint_sagehost_did_not_create(cloud: Cloud) -> None:
    make_theirs(cloud, "iris")

    result = cloud.run("delete", "iris", "--yes")

    assert result.exit_code == 1
    assert "sagehost did not create it" in result.output
    assert cloud.endpoint("iris")["EndpointStatus"] == "InService"


def test_delete_of_nothing_says_so(cloud: Cloud) -> None:
    result = cloud.run("delete", "ghost", "--yes")
    assert result.exit_code == 0 and "Nothing sagehost made for ghost" in result.output


def test_the_commands_run_as_a_program_against_the_same_moto(cloud: Cloud, model_dir: Path) -> None:
    """`python -m sagehost.aws`: the real entry, its own process, moto's address from the env."""
    deploy = [sys.executable, "-m", "sagehost.aws", "deploy", "iris", "--image", IMAGE, "--role", ROLE_ARN]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*deploy, *args], check=False, capture_output=True, text=True, timeout=120)

    done = run("--model-dir", str(model_dir))
    assert done.returncode == 0, done.stderr
    assert "Endpoint iris is InService" in done.stdout and "iris: InService" in done.stderr

    bad = run("--model-dir", str(model_dir), "--serverless", "999")
    assert bad.returncode == 2
    assert "1 GB steps" in bad.stderr and "Traceback" not in bad.stderr
