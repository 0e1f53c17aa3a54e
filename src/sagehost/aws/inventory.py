"""What sagehost made for an endpoint, found by its tag `sagehost:endpoint=NAME`, and only that.

SageMaker models and endpoint configurations outlive the endpoint that used them; tools that do
not track theirs leave them to pile up (sagemaker-python-sdk #447). The tag is how `deploy`
cleans up after an update, how `delete` knows what is its own, and how cost reports group them.
A resource without the tag is never changed or removed: its name is simply in use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sagehost.aws.errors import AwsConflict
from sagehost.aws.session import Aws
from sagehost.aws.spec import TAG_KEY

_DELETE_COMMAND = {"endpoint": "delete-endpoint", "endpoint config": "delete-endpoint-config", "model": "delete-model"}


def tags_of(aws: Aws, arn: str) -> dict[str, str]:
    found = aws.list("sagemaker", "list_tags", "Tags", ResourceArn=arn)
    return {tag["Key"]: tag["Value"] for tag in found}


def owned(aws: Aws, arn: str, name: str) -> bool:
    return tags_of(aws, arn).get(TAG_KEY) == name


def require_owned(aws: Aws, arn: str, name: str, kind: str) -> None:
    if not owned(aws, arn, name):
        resource = arn.rsplit("/", 1)[-1]
        raise AwsConflict(
            f"The {kind} {resource} exists, but sagehost did not create it for {name} (it lacks the tag "
            f"{TAG_KEY}={name}), so sagehost leaves it alone. Pick another name, or, if it is yours to "
            f"drop, remove it first (aws sagemaker {_DELETE_COMMAND[kind]}) and deploy again."
        )


def configs_of(aws: Aws, name: str) -> list[str]:
    found = aws.list("sagemaker", "list_endpoint_configs", "EndpointConfigs", NameContains=name)
    return [c["EndpointConfigName"] for c in found if owned(aws, c["EndpointConfigArn"], name)]


def models_of(aws: Aws, name: str) -> list[str]:
    found = aws.list("sagemaker", "list_models", "Models", NameContains=name)
    return [m["ModelName"] for m in found if owned(aws, m["ModelArn"], name)]


def endpoints(aws: Aws) -> list[dict[str, Any]]:
    """Every endpoint sagehost made in this region and account, with its NAME tag."""
    return [
        e for e in aws.list("sagemaker", "list_endpoints", "Endpoints") if TAG_KEY in tags_of(aws, e["EndpointArn"])
    ]


def sweep(aws: Aws, name: str, keep_configs: Iterable[str], keep_models: Iterable[str]) -> list[str]:
    """Delete the configurations and models made for `name` that the endpoint no longer uses."""
    kept_configs, kept_models = set(keep_configs), set(keep_models)
    removed = []
    for config in configs_of(aws, name):
        if config not in kept_configs:
            aws.write("sagemaker", "delete_endpoint_config", EndpointConfigName=config)
            removed.append(f"endpoint config {config}")
    for model in models_of(aws, name):
        if model not in kept_models:
            aws.write("sagemaker", "delete_model", ModelName=model)
            removed.append(f"model {model}")
    return removed


def variant_of(aws: Aws, config_name: str, variant: str) -> dict[str, Any]:
    """The named production variant of an endpoint configuration (empty when it is gone)."""
    config = aws.find("sagemaker", "describe_endpoint_config", EndpointConfigName=config_name) or {}
    found = [v for v in config.get("ProductionVariants", []) if v.get("VariantName") == variant]
    return dict(found[0]) if found else {}


def models_in(aws: Aws, config_name: str) -> list[str]:
    config = aws.find("sagemaker", "describe_endpoint_config", EndpointConfigName=config_name) or {}
    return [variant["ModelName"] for variant in config.get("ProductionVariants", []) if "ModelName" in variant]
