"""Safe updates (`--update`, DeploymentConfig) and autoscaling (`--autoscale`) against moto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sagehost.aws import guardrails
from tests.aws import moto_ext
from tests.aws.conftest import Cloud

RESOURCE = "endpoint/iris/variant/AllTraffic"


def make_alarm(cloud: Cloud, name: str) -> None:
    cloud.client("cloudwatch").put_metric_alarm(
        AlarmName=name,
        MetricName="Invocation5XXErrors",
        Namespace="AWS/SageMaker",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        Dimensions=[{"Name": "EndpointName", "Value": "iris"}, {"Name": "VariantName", "Value": "AllTraffic"}],
    )


def scaling(cloud: Cloud) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    aas = cloud.client("application-autoscaling")
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    return targets, {p["PolicyName"]: p for p in policies}


def test_a_canary_update_with_a_rollback_alarm_sends_its_deployment_config(cloud: Cloud, model_dir: Path) -> None:
    make_alarm(cloud, "iris-5xx")
    assert cloud.deploy("iris", "--model-dir", str(model_dir), "--instance-count", "4").exit_code == 0
    old_config, old_models = cloud.configs(), cloud.models()

    result = cloud.deploy(
        "iris", "--model-dir", str(model_dir), "--instance-count", "4", "-e", "A=1",
        "--update", "canary:10:5", "--rollback-alarm", "iris-5xx", "--bake-minutes", "10",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "Updating endpoint iris (canary 10%)" in result.output
    (update,) = moto_ext.UPDATES
    assert update["DeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                "WaitIntervalInSeconds": 300,
            },
            "TerminationWaitInSeconds": 600,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "iris-5xx"}]},
    }
    assert cloud.configs() == [update["EndpointConfigName"]] and cloud.configs() != old_config
    assert not set(cloud.models()) & set(old_models)


@pytest.mark.parametrize(
    ("update", "alarms", "bake", "expected"),
    [
        (
            "linear:20:3",
            (),
            None,
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "LINEAR",
                        "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 20},
                        "WaitIntervalInSeconds": 180,
                    },
                    "TerminationWaitInSeconds": 0,
                }
            },
        ),
        (
            "rolling:25",
            ("a", "b"),
            5,
            {
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
                    "WaitIntervalInSeconds": 300,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "a"}, {"AlarmName": "b"}]},
            },
        ),
        (
            None,
            ("a",),
            None,
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                    "TerminationWaitInSeconds": 0,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "a"}]},
            },
        ),
        (
            "blue-green",
            (),
            15,
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                    "TerminationWaitInSeconds": 900,
                }
            },
        ),
    ],
)
def test_each_strategy_is_the_deployment_config_sagemaker_documents(
    update: str | None, alarms: tuple[str, ...], bake: int | None, expected: dict[str, Any]
) -> None:
    policy = guardrails.parse(update, alarms, bake)
    assert policy is not None and policy.deployment_config() == expected


def test_no_update_options_send_no_deployment_config() -> None:
    assert guardrails.parse(None, (), None) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--update", "canary:60:5"], "1-50 percent"),
        (["--update", "linear:5:1"], "10-50 percent"),
        (["--update", "rolling:2"], "5-50 percent"),
        (["--update", "canary:10"], "canary:PERCENT:WAIT_MINUTES"),
        (["--update", "sideways"], "expected all-at-once|blue-green"),
        (["--update", "canary:10:61"], "at most 60 minutes"),
        (["--update", "rolling:20", "--serverless", "2048"], "rolling updates of serverless"),
        (["--autoscale", "0:3"], "MIN 0 is for --async"),
        (["--autoscale", "3:2"], "0 <= MIN <= MAX"),
        (["--autoscale", "1:4:-5"], "TARGET > 0"),
        (["--autoscale", "many"], "MIN:MAX[:TARGET]"),
        (["--autoscale", "2:4"], "--instance-count 1 is outside --autoscale 2:4"),
        (["--autoscale", "1:4", "--no-wait"], "--autoscale needs --wait"),
        (["--autoscale", "1:4", "--serverless", "2048"], "scales by itself"),
    ],
)
def test_update_and_autoscale_options_sagemaker_would_refuse(
    cloud: Cloud, model_dir: Path, args: list[str], message: str
) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert cloud.models() == []


def test_a_rollback_alarm_that_does_not_exist_is_refused(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir), "--update", "canary:10:5", "--rollback-alarm", "nope")
    assert result.exit_code == 1
    assert "--rollback-alarm nope: no such CloudWatch alarm in us-east-1" in result.output
    assert cloud.models() == []


def test_autoscale_an_instance_endpoint_on_invocations_per_instance(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy("iris", "--model-dir", str(model_dir), "--autoscale", "1:4:500")

    assert result.exit_code == 0, result.output
    (target,), policies = scaling(cloud)
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (RESOURCE, 1, 4)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    config = policies["sagehost-iris-target"]["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 500
    assert config["PredefinedMetricSpecification"] == {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
    assert (config["ScaleInCooldown"], config["ScaleOutCooldown"]) == (600, 300)

    again = cloud.deploy("iris", "--model-dir", str(model_dir), "--autoscale", "1:4:500")
    assert again.exit_code == 0 and "Autoscaling 1-4 is up to date" in again.output
    wider = cloud.deploy("iris", "--model-dir", str(model_dir), "--autoscale", "1:8:500")
    assert wider.exit_code == 0 and scaling(cloud)[0][0]["MaxCapacity"] == 8
    assert moto_ext.UPDATES == []  # scaling alone changes no model or config


def test_autoscale_an_async_endpoint_from_zero(cloud: Cloud, model_dir: Path) -> None:
    result = cloud.deploy(
        "iris", "--model-dir", str(model_dir), "--async", "s3://out-bucket/iris", "--autoscale", "0:3"
    )

    assert result.exit_code == 0, result.output
    (target,), policies = scaling(cloud)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 3)
    tracking = policies["sagehost-iris-target"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert tracking["CustomizedMetricSpecification"]["Dimensions"] == [{"Name": "EndpointName", "Value": "iris"}]
    step = policies["sagehost-iris-from-zero"]
    assert step["PolicyType"] == "StepScaling"
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}
    ]
    (alarm,) = cloud.client("cloudwatch").describe_alarms(AlarmNames=["sagehost-iris-has-backlog"])["MetricAlarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity" and alarm["AlarmActions"] == [step["PolicyARN"]]

    assert cloud.run("delete", "iris", "--yes").exit_code == 0
    assert scaling(cloud)[0] == []
    assert cloud.client("cloudwatch").describe_alarms(AlarmNamePrefix="sagehost-iris-")["MetricAlarms"] == []


def test_updating_an_autoscaled_endpoint_keeps_its_instance_count(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir), "--autoscale", "1:4").exit_code == 0

    result = cloud.deploy("iris", "--model-dir", str(model_dir), "--autoscale", "1:4", "-e", "A=1")

    assert result.exit_code == 0, result.output
    (update,) = moto_ext.UPDATES
    assert update["RetainAllVariantProperties"] is True
    assert update["ExcludeRetainedVariantProperties"] == [{"VariantPropertyType": "DataCaptureConfig"}]


def test_a_new_instance_type_for_an_autoscaled_endpoint(cloud: Cloud, model_dir: Path) -> None:
    assert cloud.deploy("iris", "--model-dir", str(model_dir), "--autoscale", "1:4").exit_code == 0

    refused = cloud.deploy("iris", "--model-dir", str(model_dir), "--instance-type", "ml.c5.large")
    assert refused.exit_code == 1 and "Pass --autoscale MIN:MAX[:TARGET]" in refused.output
    assert moto_ext.UPDATES == []

    done = cloud.deploy("iris", "--model-dir", str(model_dir), "--instance-type", "ml.c5.large", "--autoscale", "1:6")
    assert done.exit_code == 0, done.output
    assert "Autoscaling is off during the update" in done.output
    (update,) = moto_ext.UPDATES
    assert "RetainAllVariantProperties" not in update
    (target,), _ = scaling(cloud)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 6)
