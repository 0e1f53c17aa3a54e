"""From a failed endpoint's FailureReason and log lines to the likely cause and the next step.

The causes are the ones users meet most (research/deploy-anchors.md §1): the ping health check,
an arm64 image, an OCI manifest, the model download, memory and capacity.
https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-troubleshooting.html
"""

from __future__ import annotations

import re
from collections.abc import Iterable

Causes = tuple[tuple[re.Pattern[str], str], ...]
"""Known causes: a pattern of the reason or the log lines, and the advice for it."""


def causes(table: Iterable[tuple[str, str]]) -> Causes:
    return tuple((re.compile(pattern, re.IGNORECASE), advice) for pattern, advice in table)


_CAUSES = causes(
    (
        (
            r"exec format error|exec user process caused",
            "The image was built for another CPU architecture (arm64 on Apple Silicon?). "
            "Build it for linux/amd64: `sagehost build --platform linux/amd64`, or Graviton (ml.*g) instance types.",
        ),
        (
            r"manifest media type|unsupported manifest|oci\.image",
            "SageMaker refuses OCI image manifests. Push a Docker v2 schema 2 manifest: "
            "`podman push --format v2s2`, or build with `docker buildx --provenance=false --output type=docker`.",
        ),
        (
            r"ping health check|did not pass the ping|health check",
            "The container did not answer GET /ping with 200 in time. Run it locally first: "
            "`sagehost verify IMAGE --model-data DIR` shows why in seconds; a slow model load needs a larger "
            "--startup-timeout.",
        ),
        (
            r"out of memory|outofmemory|oom|memoryerror|cannot allocate memory|killed",
            "The model ran out of memory: choose a bigger --instance-type (or more --serverless memory), "
            "or fewer workers (-e SAGEMAKER_MODEL_SERVER_WORKERS=1).",
        ),
        (
            r"model data|modeldataurl|downloading|download|s3.*(access|denied|forbidden)|failed to extract",
            "SageMaker could not fetch or unpack the model: the execution role needs s3:GetObject on the "
            "archive (and kms:Decrypt for an encrypted bucket); a large model needs a longer --download-timeout.",
        ),
        (
            r"requested image|image .*not (found|exist)|ecr|pull",
            "SageMaker could not pull the image: check it exists in ECR in this region and that the execution "
            "role may pull it (ecr:BatchGetImage, ecr:GetDownloadUrlForLayer, ecr:GetAuthorizationToken).",
        ),
        (
            r"capacity|insufficient|resourcelimitexceeded|quota",
            "AWS had no capacity or quota for this instance type: try another --instance-type or region, "
            "or ask for a quota increase in the Service Quotas console.",
        ),
        (
            r"rolled back|rollback|alarm",
            "The update was rolled back (an alarm fired or the new fleet failed); the endpoint still runs the "
            "previous configuration. Check the alarm's metric and the log lines above.",
        ),
    )
)


def diagnose(reason: str, log_lines: Iterable[str] = (), first: Causes = ()) -> list[str]:
    """The advice for each known cause in the logs, then in the reason: the logs name the root cause
    (exec format error) where the reason names its effect (the ping health check failed). `first`:
    a caller's own causes (a transform job's), tried before the endpoint's."""
    table = (*first, *_CAUSES)
    text = "\n".join(log_lines)
    found = [advice for pattern, advice in table if pattern.search(text)]
    return found + [advice for pattern, advice in table if pattern.search(reason) and advice not in found]
