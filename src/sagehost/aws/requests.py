"""The CreateModel and CreateEndpointConfig requests a deploy makes, and their versioned names.

A model or configuration is immutable on SageMaker, so each carries a short hash of what it
holds: the same deploy yields the same names (and nothing to do), a changed one yields new
names that UpdateEndpoint switches to.
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateEndpointConfig.html
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from sagehost.aws.spec import DeploySpec

NAME_HASH_CHARS = 8
_MAX_NAME = 63


def versioned(name: str, content: Mapping[str, Any]) -> str:
    """`NAME-1a2b3c4d`: the endpoint's name (cut to fit 63 characters) and the content's hash."""
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:NAME_HASH_CHARS]
    return f"{name[: _MAX_NAME - NAME_HASH_CHARS - 1].rstrip('-')}-{digest}"


def model_request(spec: DeploySpec, model_url: str) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": spec.image.uri, "ModelDataUrl": model_url, "Mode": "SingleModel"}
    if spec.environment:
        container["Environment"] = dict(spec.environment)
    return {"ExecutionRoleArn": spec.role, "PrimaryContainer": container}


def config_request(spec: DeploySpec, model_name: str, variant: str) -> dict[str, Any]:
    request: dict[str, Any] = {"ProductionVariants": [_variant(spec, model_name, variant)]}
    if spec.capture is not None:
        # Both directions, as the SDK's DataCaptureConfig does by default.
        request["DataCaptureConfig"] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": spec.capture.percent,
            "DestinationS3Uri": str(spec.capture.destination),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        }
    if spec.async_output is not None:
        request["AsyncInferenceConfig"] = _async(spec)
    return request


def _variant(spec: DeploySpec, model_name: str, variant: str) -> dict[str, Any]:
    production: dict[str, Any] = {"VariantName": variant, "ModelName": model_name, "InitialVariantWeight": 1.0}
    if spec.serverless is not None:
        config = {"MemorySizeInMB": spec.serverless.memory_mb, "MaxConcurrency": spec.serverless.max_concurrency}
        if spec.serverless.provisioned is not None:
            config["ProvisionedConcurrency"] = spec.serverless.provisioned
        production["ServerlessConfig"] = config
    else:
        production["InstanceType"] = spec.instance_type
        production["InitialInstanceCount"] = spec.instance_count
    if spec.startup_timeout_s is not None:
        production["ContainerStartupHealthCheckTimeoutInSeconds"] = spec.startup_timeout_s
    if spec.download_timeout_s is not None:
        production["ModelDataDownloadTimeoutInSeconds"] = spec.download_timeout_s
    return production


def _async(spec: DeploySpec) -> dict[str, Any]:
    assert spec.async_output is not None
    out = spec.async_output
    output: dict[str, Any] = {"S3OutputPath": str(out.output)}
    if out.failure is not None:
        output["S3FailurePath"] = str(out.failure)
    topics = {"SuccessTopic": out.success_topic, "ErrorTopic": out.error_topic}
    if any(topics.values()):
        output["NotificationConfig"] = {k: v for k, v in topics.items() if v}
    config: dict[str, Any] = {"OutputConfig": output}
    if out.max_concurrency is not None:
        config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": out.max_concurrency}
    return config
