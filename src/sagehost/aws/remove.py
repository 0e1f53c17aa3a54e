"""`sagehost delete NAME`: everything sagehost made for an endpoint, and nothing else.

The gateway `sagehost gateway NAME` made (its API, key, usage plan, Lambda function, log group
and role; see gateway.py), the endpoint (only when tagged for NAME), its autoscaling target and
policies, the alarms sagehost made for it, its endpoint configurations and models, and the model
archives sagehost uploaded (s3://BUCKET/sagehost/NAME/…) unless kept. SageMaker keeps
configurations and models after the endpoint goes, so deleting only the endpoint leaks them
(sagemaker-python-sdk #447).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sagehost.aws import gateway, inventory
from sagehost.aws.artifact import KEY_PREFIX, default_bucket
from sagehost.aws.autoscale import ALARM_PREFIX, DIMENSION
from sagehost.aws.invoke import ASYNC_INPUTS
from sagehost.aws.session import Aws
from sagehost.aws.spec import TAG_KEY


@dataclass
class Found:
    """What `delete NAME` would remove."""

    name: str
    endpoint: bool = False
    scaling_targets: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    archives: list[tuple[str, str]] = field(default_factory=list)
    front_door: gateway.Pieces = field(default_factory=gateway.Pieces)

    def lines(self) -> list[str]:
        found = self.front_door.lines()
        found += [f"endpoint {self.name}"] if self.endpoint else []
        found += [f"autoscaling target {t} (and its policies)" for t in self.scaling_targets]
        found += [f"alarm {a}" for a in self.alarms]
        found += [f"endpoint config {c}" for c in self.configs]
        found += [f"model {m}" for m in self.models]
        found += [f"s3://{bucket}/{key}" for bucket, key in self.archives]
        return found


def find(aws: Aws, name: str, keep_archives: bool = False) -> Found:
    found = Found(name)
    endpoint = aws.find("sagemaker", "describe_endpoint", EndpointName=name)
    if endpoint is not None:
        inventory.require_owned(aws, endpoint["EndpointArn"], name, "endpoint")
        found.endpoint = True
        found.scaling_targets = scaling_targets(aws, name)
    # Not strict: a user who never made a gateway may lack the rights to look for one.
    found.front_door = gateway.find(aws, name, strict=False)
    found.alarms = alarms(aws, name)
    found.configs = inventory.configs_of(aws, name)
    found.models = inventory.models_of(aws, name)
    if not keep_archives:
        found.archives = archives(aws, name, found.models) + async_inputs(aws, name)
    return found


def remove(aws: Aws, found: Found) -> None:
    name = found.name
    gateway.remove(aws, found.front_door)  # first: no traffic toward an endpoint being deleted
    for resource_id in found.scaling_targets:
        aws.write(
            "application-autoscaling",
            "deregister_scalable_target",
            ServiceNamespace="sagemaker",
            ResourceId=resource_id,
            ScalableDimension=DIMENSION,
        )
    if found.alarms:
        aws.write("cloudwatch", "delete_alarms", AlarmNames=found.alarms)
    if found.endpoint:
        aws.write("sagemaker", "delete_endpoint", EndpointName=name)
    for config in found.configs:
        aws.write("sagemaker", "delete_endpoint_config", EndpointConfigName=config)
    for model in found.models:
        aws.write("sagemaker", "delete_model", ModelName=model)
    for bucket, key in found.archives:
        aws.write("s3", "delete_object", Bucket=bucket, Key=key)


def scaling_targets(aws: Aws, name: str) -> list[str]:
    prefix = f"endpoint/{name}/variant/"
    targets = aws.list(
        "application-autoscaling", "describe_scalable_targets", "ScalableTargets", ServiceNamespace="sagemaker"
    )
    return [t["ResourceId"] for t in targets if str(t["ResourceId"]).startswith(prefix)]


def alarms(aws: Aws, name: str) -> list[str]:
    found = aws.list("cloudwatch", "describe_alarms", "MetricAlarms", AlarmNamePrefix=f"{ALARM_PREFIX}{name}-")
    mine = []
    for alarm in found:
        tags = aws.read("cloudwatch", "list_tags_for_resource", ResourceARN=alarm["AlarmArn"]).get("Tags", [])
        if {"Key": TAG_KEY, "Value": name} in tags:
            mine.append(alarm["AlarmName"])
    return mine


def archives(aws: Aws, name: str, models: list[str]) -> list[tuple[str, str]]:
    """The archives sagehost uploaded for these models (under sagehost/NAME/), by their ModelDataUrl."""
    found: list[tuple[str, str]] = []
    for model in models:
        described = aws.find("sagemaker", "describe_model", ModelName=model) or {}
        url = str(described.get("PrimaryContainer", {}).get("ModelDataUrl", ""))
        bucket, _, key = url.removeprefix("s3://").partition("/")
        if url.startswith("s3://") and key.startswith(f"{KEY_PREFIX}/{name}/") and (bucket, key) not in found:
            found.append((bucket, key))
    return found


def async_inputs(aws: Aws, name: str) -> list[tuple[str, str]]:
    """The payloads `sagehost invoke NAME --async` staged in the default bucket."""
    bucket = default_bucket(aws)
    params = {"Bucket": bucket, "Prefix": f"{KEY_PREFIX}/{name}/{ASYNC_INPUTS}/"}
    found: list[tuple[str, str]] = []
    while True:
        page = aws.find("s3", "list_objects_v2", **params)
        if page is None:  # no bucket: nothing was staged
            return found
        found += [(bucket, str(item["Key"])) for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return found
        params["ContinuationToken"] = page["NextContinuationToken"]
