"""What SageMaker sets and enforces for each way it runs a serving container.

Real-time endpoints set nothing special; Batch Transform sets `SAGEMAKER_BATCH` and its three
limits; an inference pipeline (or multi-container endpoint) moves the container off 8080 with
`SAGEMAKER_BIND_TO_PORT` and gives it `SAGEMAKER_SAFE_PORT_RANGE` for any second port; a
multi-model endpoint sets `SAGEMAKER_MULTI_MODEL` and delivers each model under /opt/ml/models.
https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html
https://docs.aws.amazon.com/sagemaker/latest/dg/inference-pipeline-real-time.html
https://docs.aws.amazon.com/sagemaker/latest/dg/build-multi-model-build-container.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sagehost import contract

Mode = Literal["realtime", "batch", "pipeline", "multi-model"]
MODES: tuple[Mode, ...] = ("realtime", "batch", "pipeline", "multi-model")

PIPELINE_PORT = 9081  # any port but 8080 proves the container honours SAGEMAKER_BIND_TO_PORT
PIPELINE_SAFE_RANGE = "9100-9199"
# Batch Transform's ModelClientConfig.InvocationsTimeoutInSeconds defaults to 600 s.
BATCH_TIMEOUT_S = 600.0
# The window SageMaker gives a new container to answer /ping with 200 (the current docs: 8 min;
# ProductionVariant.ContainerStartupHealthCheckTimeoutInSeconds overrides it).
STARTUP_DEADLINE_S = 480.0


@dataclass(frozen=True)
class Limits:
    payload_bytes: int
    timeout_s: float


@dataclass(frozen=True)
class Run:
    mode: Mode
    env: dict[str, str]
    container_port: int
    limits: Limits


def sagemaker_run(
    mode: Mode,
    *,
    max_payload_mb: int = contract.DEFAULT_MAX_PAYLOAD_MB,
    batch_strategy: str = "MULTI_RECORD",
    max_concurrent_transforms: int = 1,
    timeout_s: float | None = None,
) -> Run:
    """`timeout_s` overrides the invocation timeout (Batch Transform's is configurable; for a
    real-time endpoint, 60 s is fixed, and a shorter one only makes a test quicker)."""
    run = _run(mode, max_payload_mb, batch_strategy, max_concurrent_transforms)
    if timeout_s is None:
        return run
    return Run(run.mode, run.env, run.container_port, Limits(run.limits.payload_bytes, timeout_s))


def _run(mode: Mode, max_payload_mb: int, batch_strategy: str, max_concurrent_transforms: int) -> Run:
    if mode == "batch":
        env = {
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(max_payload_mb),
            "SAGEMAKER_BATCH_STRATEGY": batch_strategy,
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(max_concurrent_transforms),
        }
        return Run(mode, env, contract.DEFAULT_PORT, Limits(max_payload_mb * contract.MIB, BATCH_TIMEOUT_S))
    realtime = Limits(contract.DEFAULT_MAX_PAYLOAD_MB * contract.MIB, contract.DEFAULT_TIMEOUT_S)
    if mode == "pipeline":
        env = {"SAGEMAKER_BIND_TO_PORT": str(PIPELINE_PORT), "SAGEMAKER_SAFE_PORT_RANGE": PIPELINE_SAFE_RANGE}
        return Run(mode, env, PIPELINE_PORT, realtime)
    if mode == "multi-model":
        return Run(mode, {"SAGEMAKER_MULTI_MODEL": "true"}, contract.DEFAULT_PORT, realtime)
    return Run(mode, {}, contract.DEFAULT_PORT, realtime)
