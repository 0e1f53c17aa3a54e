"""`sagehost deploy` through the real CLI against moto (with tests/aws/moto_ext.py) on 127.0.0.1."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.aws import moto_ext
from tests.aws.conftest import BUCKET, IMAGE, ROLE_ARN, Cloud
from tests.aws.moto_ext import Step


def archive_members(cloud: Cloud, url: str) -> list[str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    body = cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return sorted(tar.getnames())


def test_deploy_creates_model_config_endpoint_and_archive_all_tagged(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert result.exit_code == 0, result.output
    endpoint = cloud.endpoint("iris")
    assert endpoint["EndpointStatus"] == "InService"
    assert "Endpoint iris is InService" in result.output
    sm = cloud.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert (variant["VariantName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        "AllTraffic",
        "ml.m5.large",
        1,
    )
    model = sm.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert model["ExecutionRoleArn"] == ROLE_ARN
    url = container["ModelDataUrl"]
    assert url.startswith(f"s3://{BUCKET}/sagehost/iris/") and url.endswith("/model.tar.gz")
    assert "model.joblib" in archive_members(cloud, url)  # at the archive's root, not under model/
    for arn in (endpoint["EndpointArn"], config["EndpointConfigArn"], model["ModelArn"]):
        assert cloud.tags(arn)["sagehost:endpoint"] == "iris"
    bucket, _, key = url.removeprefix("s3://").partition("/")
    tagging = cloud.client("s3").get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert {"Key": "sagehost:endpoint", "Value": "iris"} in tagging
    assert endpoint["EndpointConfigName"].startswith("iris-") and variant["ModelName"].startswith("iris-")


def test_the_same_deploy_again_is_up_to_date_and_creates_nothing(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    before = (cloud.models(), cloud.configs(), cloud.endpoint("iris")["LastModifiedTime"])
    (model_dir / "model.joblib").touch()  # a new timestamp is not a new model

    again = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert again.exit_code == 0, again.output
    assert "up to date" in again.output
    assert "not uploaded again" in again.output
    assert (cloud.models(), cloud.configs(), cloud.endpoint("iris")["LastModifiedTime"]) == before
    assert moto_ext.UPDATES == []


def test_a_changed_deploy_updates_in_place_keeps_the_variant_and_removes_the_old(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    old_config = cloud.endpoint("iris")["EndpointConfigName"]
    old_models = cloud.models()

    changed = cloud.deploy("iris", "--model-dir", str(model_dir), "-e", "SAGEHOST_WORKERS=2", "--instance-count", "2")

    assert changed.exit_code == 0, changed.output
    assert [u["EndpointName"] for u in moto_ext.UPDATES] == ["iris"]
    new_config = moto_ext.UPDATES[0]["EndpointConfigName"]
    assert new_config != old_config
    assert cloud.endpoint("iris")["EndpointConfigName"] == new_config
    assert cloud.configs() == [new_config]
    (new_model,) = cloud.models()
    assert new_model not in old_models
    sm = cloud.client("sagemaker")
    variant = sm.describe_endpoint_config(EndpointConfigName=new_config)["ProductionVariants"][0]
    assert (variant["VariantName"], variant["InitialInstanceCount"]) == ("AllTraffic", 2)
    assert sm.describe_model(ModelName=new_model)["PrimaryContainer"]["Environment"] == {"SAGEHOST_WORKERS": "2"}
    assert "Updating" in changed.output and "Removed what it no longer uses" in changed.output


def test_progress_shows_each_status_until_in_service(cloud: Cloud, model_dir: Path) -> None:
    loaded = ("sagehost: model.joblib loaded", "listening on 0.0.0.0:8080")
    moto_ext.script("iris", Step("Creating"), Step("Creating", logs=loaded), Step("InService"))

    result = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert result.exit_code == 0, result.output
    assert "iris: Creating (" in result.output and "iris: InService (" in result.output
    assert "| AllTraffic/i-0123456789abcdef0: sagehost: model.joblib loaded" in result.output


def test_a_failed_endpoint_exits_non_zero_with_reason_log_lines_and_diagnosis(cloud: Cloud, model_dir: Path) -> None:
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    crashed = ("exec /usr/local/bin/serve: exec format error",)
    moto_ext.script("iris", Step("Creating"), Step("Creating", logs=crashed), Step("Failed", reason=reason))

    result = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert result.exit_code == 1
    assert "Endpoint iris is Failed." in result.output
    assert f"Reason: {reason}" in result.output
    assert "exec format error" in result.output
    assert "linux/amd64" in result.output  # the root cause, from the log
    assert "sagehost verify" in result.output  # the ping failure's own advice
    assert "Traceback" not in result.output


def test_a_failed_endpoint_is_replaced_by_the_next_deploy(cloud: Cloud, model_dir: Path) -> None:
    moto_ext.script("iris", Step("Failed", reason="did not pass the ping health check"))
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 1

    again = cloud.deploy("iris", "--model-dir", str(model_dir), "--startup-timeout", "600")

    assert again.exit_code == 0, again.output
    assert "is Failed: replacing it" in again.output
    endpoint = cloud.endpoint("iris")
    assert endpoint["EndpointStatus"] == "InService"
    assert cloud.configs() == [endpoint["EndpointConfigName"]]
    assert len(cloud.models()) == 1


def test_a_rolled_back_update_fails_keeps_the_old_config_and_drops_the_new(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir)).exit_code == 0
    old_config, old_models = cloud.endpoint("iris")["EndpointConfigName"], cloud.models()
    reason = "Deployment failed and was rolled back: the new fleet did not pass the ping health check."
    moto_ext.script("iris", Step("Updating"), Step("RollingBack"), Step("InService", reason=reason, config=old_config))

    result = cloud.deploy("iris", "--model-dir", str(model_dir), "-e", "BROKEN=1")

    assert result.exit_code == 1
    assert f"was rolled back; it still runs {old_config}" in result.output
    assert reason in result.output
    assert cloud.endpoint("iris")["EndpointConfigName"] == old_config
    assert (cloud.configs(), cloud.models()) == ([old_config], old_models)


def test_no_wait_returns_once_the_endpoint_is_asked_for(cloud: Cloud, model_dir: Path) -> None:
    moto_ext.script("iris", Step("Creating"))

    result = cloud.deploy("iris", "--model-dir", str(model_dir), "--no-wait")

    assert result.exit_code == 0, result.output
    assert "Not waiting" in result.output
    assert cloud.endpoint("iris")["EndpointStatus"] == "Creating"


def test_a_deploy_waits_on_its_own_endpoint_still_creating(cloud: Cloud, model_dir: Path) -> None:
    moto_ext.script("iris", Step("Creating"), Step("Creating"), Step("Creating"), Step("InService"))
    assert cloud.deploy("iris", "--model-dir", str(model_dir), "--no-wait").exit_code == 0

    result = cloud.deploy("iris", "--model-dir", str(model_dir))

    assert result.exit_code == 0, result.output
    assert "already Creating" in result.output
    assert cloud.endpoint("iris")["EndpointStatus"] == "InService"


def test_a_busy_endpoint_with_another_config_is_refused(cloud: Cloud, model_dir: Path) -> None:
    moto_ext.script("iris", Step("Creating"))
    assert cloud.deploy("iris", "--model-dir", str(model_dir), "--no-wait").exit_code == 0

    result = cloud.deploy("iris", "--model-dir", str(model_dir), "-e", "A=1")

    assert result.exit_code == 1
    assert "is Creating" in result.output and "deploy again" in result.output
    assert moto_ext.UPDATES == []
    assert len(cloud.models()) == len(cloud.configs()) == 1  # nothing made for the refused change


def test_model_data_already_in_s3_is_used_as_is(cloud: Cloud, model_dir: Path, tmp_path: Path) -> None:
    from sagehost.config import Settings
    from sagehost.package import package

    archive = tmp_path / "model.tar.gz"
    package(model_dir, archive, Settings())
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="my-models")
    s3.upload_file(str(archive), "my-models", "iris/model.tar.gz")

    result = cloud.deploy("iris", "--model-data", "s3://my-models/iris/model.tar.gz")

    assert result.exit_code == 0, result.output
    (model,) = cloud.models()
    url = cloud.client("sagemaker").describe_model(ModelName=model)["PrimaryContainer"]["ModelDataUrl"]
    assert url == "s3://my-models/iris/model.tar.gz"
    s3.put_object(Bucket="my-models", Key="iris/model.tar.gz", Body=archive.read_bytes() + b"\0")
    changed = cloud.deploy("iris", "--model-data", "s3://my-models/iris/model.tar.gz")
    assert changed.exit_code == 0 and "up to date" not in changed.output  # new bytes at the same key


def test_missing_model_data_is_refused_before_anything_is_created(cloud: Cloud) -> None:
    result = cloud.deploy("iris", "--model-data", "s3://nowhere-bucket/model.tar.gz")

    assert result.exit_code == 1
    assert "s3://nowhere-bucket/model.tar.gz does not exist" in result.output
    assert (cloud.models(), cloud.configs()) == ([], [])


def test_dry_run_prints_every_change_and_makes_none(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir), "-e", "API_KEY=hunter2-value", "--dry-run")

    assert result.exit_code == 0, result.output
    for call in ("s3 CreateBucket", "s3 PutObject", "sagemaker CreateModel", "sagemaker CreateEndpointConfig"):
        assert f"would call {call}" in result.output
    assert "would call sagemaker CreateEndpoint EndpointName=iris" in result.output
    assert "Image=" + IMAGE in result.output and "InstanceType=ml.m5.large" in result.output
    assert "hunter2-value" not in result.output  # a model's environment may hold secrets
    assert (cloud.models(), cloud.configs()) == ([], [])
    assert cloud.client("s3").list_buckets()["Buckets"] == []
    assert cloud.client("sagemaker").list_endpoints()["Endpoints"] == []
