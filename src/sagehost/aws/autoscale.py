"""`--autoscale MIN:MAX[:TARGET]`: Application Auto Scaling on the endpoint's variant.

A real-time endpoint tracks SageMakerVariantInvocationsPerInstance (invocations per instance per
minute). An async endpoint tracks its backlog per instance and may scale in to zero; a step
policy on the HasBacklogWithoutCapacity alarm brings the first instance back, as AWS documents.
https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-add-code-define.html
https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sagehost.aws.errors import AwsOptionError
from sagehost.aws.session import Aws

ALARM_PREFIX = "sagehost-"
"""Alarms and policies sagehost makes are named sagehost-NAME-…; alarms are also tagged for NAME."""
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
DEFAULT_INVOCATIONS_TARGET = 1000.0  # per instance per minute; measure your model and pass TARGET
DEFAULT_BACKLOG_TARGET = 5.0  # queued requests per instance, AWS's example value
SCALE_IN_COOLDOWN_S = 600  # new instances take minutes to start: scale in slowly, out sooner
SCALE_OUT_COOLDOWN_S = 300


@dataclass(frozen=True)
class Autoscale:
    min: int
    max: int
    target: float | None = None


def parse(text: str, is_async: bool) -> Autoscale:
    parts = text.split(":")
    try:
        low, high = int(parts[0]), int(parts[1])
        target = float(parts[2]) if len(parts) == 3 else None
    except (ValueError, IndexError):
        raise AwsOptionError(f"--autoscale {text!r}: expected MIN:MAX[:TARGET], e.g. 1:4 or 1:4:500.") from None
    if len(parts) > 3 or low < 0 or high < max(low, 1) or (target is not None and target <= 0):
        raise AwsOptionError(f"--autoscale {text!r}: needs 0 <= MIN <= MAX, MAX >= 1 and TARGET > 0.")
    if low == 0 and not is_async:
        raise AwsOptionError("--autoscale MIN 0 is for --async endpoints; a real-time endpoint keeps one instance.")
    return Autoscale(low, high, target)


def resource_id(name: str, variant: str) -> str:
    return f"endpoint/{name}/variant/{variant}"


def policy_names(name: str) -> tuple[str, str]:
    return f"{ALARM_PREFIX}{name}-target", f"{ALARM_PREFIX}{name}-from-zero"


def current(aws: Aws, name: str, variant: str) -> dict[str, Any] | None:
    found = aws.read(
        "application-autoscaling",
        "describe_scalable_targets",
        ServiceNamespace=NAMESPACE,
        ResourceIds=[resource_id(name, variant)],
        ScalableDimension=DIMENSION,
    ).get("ScalableTargets", [])
    return dict(found[0]) if found else None


def deregister(aws: Aws, name: str, variant: str) -> None:
    """Also deletes its policies (Application Auto Scaling does)."""
    aws.write(
        "application-autoscaling",
        "deregister_scalable_target",
        ServiceNamespace=NAMESPACE,
        ResourceId=resource_id(name, variant),
        ScalableDimension=DIMENSION,
    )


def apply(aws: Aws, name: str, variant: str, scale: Autoscale, *, is_async: bool, tags: list[dict[str, str]]) -> None:
    resource = resource_id(name, variant)
    aws.echo(f"Autoscaling {resource}: {scale.min}-{scale.max} instances.")
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource, "ScalableDimension": DIMENSION}
    aws.write(
        "application-autoscaling", "register_scalable_target", **target, MinCapacity=scale.min, MaxCapacity=scale.max
    )
    tracking, from_zero = policy_names(name)
    aws.write(
        "application-autoscaling",
        "put_scaling_policy",
        PolicyName=tracking,
        PolicyType="TargetTrackingScaling",
        **target,
        TargetTrackingScalingPolicyConfiguration=_tracking(name, scale, is_async),
    )
    if is_async and scale.min == 0:
        _scale_from_zero(aws, name, target, from_zero, tags)


def _tracking(name: str, scale: Autoscale, is_async: bool) -> dict[str, Any]:
    cooldowns = {"ScaleInCooldown": SCALE_IN_COOLDOWN_S, "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S}
    if not is_async:
        return {
            "TargetValue": scale.target or DEFAULT_INVOCATIONS_TARGET,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            **cooldowns,
        }
    return {
        "TargetValue": scale.target or DEFAULT_BACKLOG_TARGET,
        "CustomizedMetricSpecification": {
            "MetricName": "ApproximateBacklogSizePerInstance",
            "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": name}],
            "Statistic": "Average",
        },
        **cooldowns,
    }


def _scale_from_zero(aws: Aws, name: str, target: dict[str, str], policy: str, tags: list[dict[str, str]]) -> None:
    """Target tracking cannot leave zero instances (no instance, no backlog per instance): a step
    policy adds one when the HasBacklogWithoutCapacity alarm fires."""
    made = aws.write(
        "application-autoscaling",
        "put_scaling_policy",
        PolicyName=policy,
        PolicyType="StepScaling",
        **target,
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": SCALE_OUT_COOLDOWN_S,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
        },
    )
    policy_arn = made["PolicyARN"] if made else "(the step policy's ARN)"
    aws.write(
        "cloudwatch",
        "put_metric_alarm",
        AlarmName=f"{ALARM_PREFIX}{name}-has-backlog",
        MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker",
        Statistic="Average",
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        Dimensions=[{"Name": "EndpointName", "Value": name}],
        Period=60,
        AlarmActions=[policy_arn],
        Tags=tags,
    )


def up_to_date(aws: Aws, name: str, variant: str, scale: Autoscale, *, is_async: bool) -> bool:
    """The variant already scales within these bounds, towards this target."""
    found = current(aws, name, variant)
    if found is None or (found["MinCapacity"], found["MaxCapacity"]) != (scale.min, scale.max):
        return False
    policies = {
        p["PolicyName"]: p
        for p in aws.list(
            "application-autoscaling",
            "describe_scaling_policies",
            "ScalingPolicies",
            ServiceNamespace=NAMESPACE,
            ResourceId=resource_id(name, variant),
            ScalableDimension=DIMENSION,
        )
    }
    tracking, from_zero = policy_names(name)
    wanted = _tracking(name, scale, is_async)["TargetValue"]
    config = policies.get(tracking, {}).get("TargetTrackingScalingPolicyConfiguration", {})
    return config.get("TargetValue") == wanted and (from_zero in policies or not (is_async and scale.min == 0))
