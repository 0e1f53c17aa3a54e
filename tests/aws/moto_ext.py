"""A test-side extension of moto's SageMaker, for what moto 5.2 lacks (research/deploy-anchors.md §3).

- UpdateEndpoint (moto answers 500 NotImplemented): switches the endpoint to the new config and
  records each request, DeploymentConfig included, in `UPDATES`.
- Status progressions: `script(NAME, Step("Creating"), Step("Failed", reason=...))` makes the next
  CreateEndpoint or UpdateEndpoint of NAME show those statuses on successive DescribeEndpoint
  calls (the last one stays); `Step(..., config=OLD)` puts the endpoint back on an old config, as
  an auto-rollback does. Unscripted, an update shows Updating once, then InService, and a
  create is InService at once (moto's own behaviour).
- Duplicate names: CreateModel, CreateEndpointConfig and CreateEndpoint refuse an existing name
  as SageMaker does ("Cannot create already existing ..."); moto overwrites silently.
- `refuse(monkeypatch, "create_model", code, message)`: the next calls of one operation answer an
  AWS error (AccessDenied, ResourceLimitExceeded, ...) that moto cannot produce by itself.
- Batch Transform: `script_transform(MODEL, Step("InProgress", logs=...), Step("Failed", reason=...))`
  makes the next CreateTransformJob on MODEL play those statuses on successive
  DescribeTransformJob calls, its log lines written to /aws/sagemaker/TransformJobs under the job's
  streams (moto's jobs are Completed at once and never fail).

It is installed in the test process around moto's ThreadedMotoServer, never in sagehost's code.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from moto.core.exceptions import JsonRESTError
from moto.core.responses import ActionResult
from moto.logs.models import logs_backends
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.models import FakeEndpoint, FakeTransformJob, SageMakerModelBackend
from moto.sagemaker.responses import SageMakerResponse
from moto.sagemaker.utils import arn_formatter


@dataclass(frozen=True)
class Step:
    status: str
    reason: str | None = None
    config: str | None = None
    """The config the endpoint runs from this step on (an auto-rollback's old one)."""
    logs: tuple[str, ...] = ()
    """Lines the container writes to /aws/sagemaker/Endpoints/NAME when this step is reached."""


PENDING: dict[str, list[Step]] = {}
"""Scripts waiting for the next CreateEndpoint/UpdateEndpoint of an endpoint name."""
RUNNING: dict[str, deque[Step]] = {}
"""Scripts being played, one step per DescribeEndpoint."""
UPDATES: list[dict[str, Any]] = []
"""Every UpdateEndpoint request, as sent."""


def script(name: str, *steps: Step) -> None:
    PENDING[name] = list(steps)


def reset() -> None:
    PENDING.clear()
    RUNNING.clear()
    UPDATES.clear()
    _reset_transforms()


def _start(name: str, default: list[Step]) -> None:
    RUNNING[name] = deque(PENDING.pop(name, default))


def _advance(endpoint: FakeEndpoint) -> None:
    steps = RUNNING.get(endpoint.endpoint_name)
    if not steps:
        return
    last = len(steps) == 1
    step = steps[0] if last else steps.popleft()
    if step.logs:
        _write_logs(endpoint, step.logs)
        if last:
            steps[0] = Step(step.status, step.reason, step.config)  # written once
    endpoint.endpoint_status = step.status
    endpoint.failure_reason = step.reason  # type: ignore[assignment]
    if step.config is not None:
        endpoint.endpoint_config_name = step.config


def _write_logs(endpoint: FakeEndpoint, lines: tuple[str, ...]) -> None:
    account, region = endpoint.arn.split(":")[4], endpoint.arn.split(":")[3]
    backend = logs_backends[account][region]
    group, stream = f"/aws/sagemaker/Endpoints/{endpoint.endpoint_name}", "AllTraffic/i-0123456789abcdef0"
    backend.ensure_log_group(group)
    backend.ensure_log_stream(group, stream)
    now = int(time.time() * 1000)
    backend.put_log_events(group, stream, [{"timestamp": now, "message": line} for line in lines])


def _refuse_duplicate(kind: str, exists: bool, arn: str) -> None:
    if exists:
        raise ValidationError(message=f'Cannot create already existing {kind} "{arn}".')


def _patched_backend(original: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    def create_model(self: SageMakerModelBackend, model_name: str, *args: Any, **kwargs: Any) -> Any:
        arn = arn_formatter("model", model_name, self.account_id, self.region_name)
        _refuse_duplicate("model", model_name in self._models, arn)
        return original["create_model"](self, model_name, *args, **kwargs)

    def create_endpoint_config(self: SageMakerModelBackend, endpoint_config_name: str, *args: Any, **kw: Any) -> Any:
        arn = arn_formatter("endpoint-config", endpoint_config_name, self.account_id, self.region_name)
        _refuse_duplicate("endpoint configuration", endpoint_config_name in self.endpoint_configs, arn)
        return original["create_endpoint_config"](self, endpoint_config_name, *args, **kw)

    def create_endpoint(self: SageMakerModelBackend, endpoint_name: str, *args: Any, **kwargs: Any) -> Any:
        arn = arn_formatter("endpoint", endpoint_name, self.account_id, self.region_name)
        _refuse_duplicate("endpoint", endpoint_name in self.endpoints, arn)
        endpoint = original["create_endpoint"](self, endpoint_name, *args, **kwargs)
        _start(endpoint_name, [])
        _advance(endpoint)
        return endpoint

    def describe_endpoint(self: SageMakerModelBackend, endpoint_name: str) -> Any:
        if endpoint_name in self.endpoints:
            _advance(self.endpoints[endpoint_name])
        return original["describe_endpoint"](self, endpoint_name)

    def update_endpoint(self: SageMakerModelBackend, request: dict[str, Any]) -> str:
        name, config_name = request["EndpointName"], request["EndpointConfigName"]
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            arn = arn_formatter("endpoint", name, self.account_id, self.region_name)
            raise ValidationError(message=f"Could not find endpoint '{arn}'.")
        if endpoint.endpoint_status not in ("InService", "OutOfService", "UpdateRollbackFailed"):
            raise ValidationError(message=f"Cannot update in-progress endpoint '{endpoint.arn}'.")
        config = self.describe_endpoint_config(config_name)  # a missing config is a ValidationException
        UPDATES.append(request)
        endpoint.endpoint_config_name = config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        _start(name, [Step("Updating"), Step("InService")])
        _advance(endpoint)
        return str(endpoint.arn)

    return {
        "create_model": create_model,
        "create_endpoint_config": create_endpoint_config,
        "create_endpoint": create_endpoint,
        "describe_endpoint": describe_endpoint,
        "update_endpoint": update_endpoint,
    }


def _update_endpoint_response(self: SageMakerResponse) -> ActionResult:
    request = {
        key: self._get_param(key)
        for key in (
            "EndpointName",
            "EndpointConfigName",
            "RetainAllVariantProperties",
            "ExcludeRetainedVariantProperties",
            "DeploymentConfig",
            "RetainDeploymentConfig",
        )
        if self._get_param(key) is not None
    }
    backend: Any = self.sagemaker_backend  # update_endpoint: added by installed()
    return ActionResult({"EndpointArn": backend.update_endpoint(request)})


@contextmanager
def installed() -> Iterator[None]:
    """moto's SageMaker with the extension, for as long as the context lasts."""
    names = ("create_model", "create_endpoint_config", "create_endpoint", "describe_endpoint")
    original = {name: getattr(SageMakerModelBackend, name) for name in names}
    with pytest.MonkeyPatch.context() as patch:
        for name, method in _patched_backend(original).items():
            patch.setattr(SageMakerModelBackend, name, method, raising=name != "update_endpoint")
        patch.setattr(SageMakerResponse, "update_endpoint", _update_endpoint_response, raising=False)
        _install_transforms(patch)
        yield


def refuse(monkeypatch: pytest.MonkeyPatch, operation: str, code: str, message: str) -> None:
    """Make SageMaker's `operation` (e.g. "create_model") answer the AWS error `code`."""

    def refused(self: SageMakerResponse) -> ActionResult:
        raise JsonRESTError(code, message)  # answered as is, whether SageMaker's model names the code or not

    monkeypatch.setattr(SageMakerResponse, operation, refused)


# ---- Batch Transform: scripted statuses, a FailureReason and log lines -------------------------

TRANSFORM_PENDING: dict[str, list[Step]] = {}
"""Scripts waiting for the next CreateTransformJob on a model name."""
TRANSFORM_RUNNING: dict[str, deque[Step]] = {}
"""Scripts being played, by job name, one step per DescribeTransformJob."""
TRANSFORM_LOG_GROUP = "/aws/sagemaker/TransformJobs"


def script_transform(model_name: str, *steps: Step) -> None:
    TRANSFORM_PENDING[model_name] = list(steps)


def _reset_transforms() -> None:
    TRANSFORM_PENDING.clear()
    TRANSFORM_RUNNING.clear()


def _advance_transform(job: FakeTransformJob) -> None:
    steps = TRANSFORM_RUNNING.get(job.transform_job_name)
    if not steps:
        return
    last = len(steps) == 1
    step = steps[0] if last else steps.popleft()
    if step.logs:
        _write_transform_logs(job, step.logs)
        if last:
            steps[0] = Step(step.status, step.reason)  # written once
    job.transform_job_status = step.status
    job.failure_reason = step.reason or ""


def _write_transform_logs(job: FakeTransformJob, lines: tuple[str, ...]) -> None:
    """The job's lines, in the stream SageMaker names JOB/INSTANCE-EPOCH."""
    account, region = job.arn.split(":")[4], job.arn.split(":")[3]
    backend = logs_backends[account][region]
    stream = f"{job.transform_job_name}/i-0123456789abcdef0-1700000000"
    backend.ensure_log_group(TRANSFORM_LOG_GROUP)
    backend.ensure_log_stream(TRANSFORM_LOG_GROUP, stream)
    now = int(time.time() * 1000)
    backend.put_log_events(TRANSFORM_LOG_GROUP, stream, [{"timestamp": now, "message": line} for line in lines])


def _install_transforms(patch: pytest.MonkeyPatch) -> None:
    create, describe = SageMakerModelBackend.create_transform_job, SageMakerModelBackend.describe_transform_job

    def create_transform_job(
        self: SageMakerModelBackend, transform_job_name: str, model_name: str, *a: Any, **kw: Any
    ) -> Any:
        job = create(self, transform_job_name, model_name, *a, **kw)
        if model_name in TRANSFORM_PENDING:
            TRANSFORM_RUNNING[transform_job_name] = deque(TRANSFORM_PENDING.pop(model_name))
            _advance_transform(job)
        return job

    def describe_transform_job(self: SageMakerModelBackend, transform_job_name: str) -> Any:
        if transform_job_name in self.transform_jobs:
            _advance_transform(self.transform_jobs[transform_job_name])
        return describe(self, transform_job_name)

    patch.setattr(SageMakerModelBackend, "create_transform_job", create_transform_job)
    patch.setattr(SageMakerModelBackend, "describe_transform_job", describe_transform_job)
