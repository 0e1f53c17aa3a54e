"""Checks, by free read-only calls, of what would otherwise fail a paid endpoint many minutes in.

A missing execution role, a role SageMaker may not assume, an image that is not in ECR, or one
pushed with an OCI manifest each surface here in a second. When the caller may not read the role
or the image (no iam:GetRole, no ecr:DescribeImages), the check is skipped: it is a courtesy,
not a requirement. https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html
"""

from __future__ import annotations

import json
import logging

from sagehost.aws.errors import AwsNotFound, AwsPermissionDenied, PreflightFailed
from sagehost.aws.session import Aws
from sagehost.aws.spec import DeploySpec

log = logging.getLogger("sagehost.aws")

SAGEMAKER_PRINCIPAL = "sagemaker.amazonaws.com"
DOCKER_V2_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def check(aws: Aws, spec: DeploySpec) -> None:
    check_role(aws, spec.role)
    check_image(aws, spec)
    if spec.update is not None and spec.update.alarms:
        check_alarms(aws, spec.update.alarms)


def check_alarms(aws: Aws, names: tuple[str, ...]) -> None:
    """Alarms that do not exist never fire: the update would have no rollback at all."""
    try:
        found = aws.read("cloudwatch", "describe_alarms", AlarmNames=list(names)).get("MetricAlarms", [])
    except AwsPermissionDenied:
        log.info("cloudwatch:DescribeAlarms refused; the rollback alarms are not checked")
        return
    missing = sorted(set(names) - {alarm["AlarmName"] for alarm in found})
    if missing:
        raise AwsNotFound(
            f"--rollback-alarm {', '.join(missing)}: no such CloudWatch alarm in {aws.region}. "
            "Create it first (e.g. on the endpoint's Invocation5XXErrors), or drop the option."
        )


def check_role(aws: Aws, arn: str) -> None:
    account = arn.split(":")[4]
    if account != aws.account:
        return  # another account's role is not readable from here
    name = arn.rsplit("/", 1)[-1]
    try:
        role = aws.read("iam", "get_role", RoleName=name)["Role"]
    except AwsPermissionDenied:
        log.info("iam:GetRole refused; the execution role is not checked")
        return
    except AwsNotFound:
        raise AwsNotFound(
            f"--role {arn}: there is no such role in account {account}. Create one that trusts "
            f"{SAGEMAKER_PRINCIPAL} (the README's 'Execution role' shows how), or pass the right ARN."
        ) from None
    if SAGEMAKER_PRINCIPAL not in json.dumps(role.get("AssumeRolePolicyDocument", "")):
        raise PreflightFailed(
            f"--role {arn} does not trust {SAGEMAKER_PRINCIPAL}, so SageMaker cannot assume it. Add it to the "
            'role\'s trust policy: {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, '
            '"Action": "sts:AssumeRole"}.'
        )


def check_image(aws: Aws, spec: DeploySpec) -> None:
    image = spec.image
    try:
        found = aws.read(
            "ecr",
            "describe_images",
            registryId=image.account,
            repositoryName=image.repository,
            imageIds=[image.image_id],
        )
    except AwsPermissionDenied:
        log.info("ecr:DescribeImages refused; the image is not checked")
        return
    except AwsNotFound:
        raise AwsNotFound(
            f"--image {image.uri} is not in ECR (no such repository or tag in {image.region}). Push it there first."
        ) from None
    details = found.get("imageDetails") or [{}]
    media_type = details[0].get("imageManifestMediaType", DOCKER_V2_MANIFEST)
    if "oci" in media_type:
        raise PreflightFailed(
            f"--image {image.uri} was pushed with an OCI manifest ({media_type}), which SageMaker refuses "
            '("Unsupported manifest media type"). Push it again as Docker v2 schema 2: `podman push --format v2s2`, '
            "or build with `docker buildx build --provenance=false --output type=docker`."
        )
