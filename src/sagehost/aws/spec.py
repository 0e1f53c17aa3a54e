"""What `sagehost deploy` was asked for, checked against SageMaker's rules before any call.

Each check fails with AwsOptionError naming the option and the fix, so a wrong ARN or a
serverless size SageMaker does not offer shows in a second, not after a paid endpoint fails.
Limits: https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariant.html,
API_ProductionVariantServerlessConfig.html, API_AsyncInferenceClientConfig.html.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sagehost.aws.autoscale import Autoscale
from sagehost.aws.errors import AwsOptionError
from sagehost.aws.guardrails import UpdatePolicy

TAG_KEY = "sagehost:endpoint"
"""Every resource sagehost creates for an endpoint carries this tag, valued with its name."""
DEFAULT_INSTANCE_TYPE = "ml.m5.large"
DEFAULT_VARIANT = "AllTraffic"  # the SageMaker SDK's name for a single variant
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 200
SERVERLESS_DEFAULT_CONCURRENCY = 5  # the SageMaker SDK's ServerlessInferenceConfig default
TIMEOUT_RANGE_S = (60, 3600)
ASYNC_MAX_CONCURRENCY = 1000
MAX_USER_TAGS = 49  # 50 per resource, one of them ours

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov|-iso[a-z]*)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z]+\d+[a-z0-9-]*\.(nano|micro|small|medium|large|metal|\d*xlarge)$")
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr(-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/"
    r"(?P<repository>[a-z0-9][a-z0-9._/-]*)(:(?P<tag>[\w.-]{1,128})|@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/(?P<key>.*))?$")
_SNS_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$")
_ENV_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$")


@dataclass(frozen=True)
class EcrImage:
    uri: str
    account: str
    region: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def image_id(self) -> dict[str, str]:
        return {"imageDigest": self.digest} if self.digest else {"imageTag": self.tag or "latest"}


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Serverless:
    memory_mb: int
    max_concurrency: int
    provisioned: int | None = None


@dataclass(frozen=True)
class AsyncOutput:
    output: S3Uri
    failure: S3Uri | None = None
    max_concurrency: int | None = None
    success_topic: str | None = None
    error_topic: str | None = None


@dataclass(frozen=True)
class Capture:
    destination: S3Uri
    percent: int = 100


@dataclass(frozen=True)
class DeploySpec:
    name: str
    image: EcrImage
    role: str
    model_dir: Path | None = None
    model_data: S3Uri | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    serverless: Serverless | None = None
    async_output: AsyncOutput | None = None
    capture: Capture | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: int | None = None
    download_timeout_s: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    bucket: str | None = None
    update: UpdatePolicy | None = None
    autoscale: Autoscale | None = None

    def check_region(self, region: str) -> None:
        """The image must live in the region the endpoint is made in: SageMaker pulls from there."""
        if self.image.region != region:
            raise AwsOptionError(
                f"--image is in {self.image.region} but this deploy goes to {region}: SageMaker pulls "
                f"images from ECR in the endpoint's region. Push the image to {region}, or pass "
                f"--region {self.image.region}."
            )

    def all_tags(self) -> list[dict[str, str]]:
        return [{"Key": TAG_KEY, "Value": self.name}, *({"Key": k, "Value": v} for k, v in self.tags.items())]


def endpoint_name(name: str) -> str:
    if not _NAME.match(name):
        raise AwsOptionError(
            f"{name!r} cannot name a SageMaker endpoint: up to 63 letters, digits and hyphens, "
            "starting and ending with a letter or digit."
        )
    return name


def role_arn(text: str) -> str:
    if _ROLE_ARN.match(text):
        return text
    hint = ""
    if re.match(r"^[\w+=,.@-]+$", text):
        hint = f" For a role named {text}: arn:aws:iam::ACCOUNT_ID:role/{text}."
    elif ":user/" in text or ":assumed-role/" in text:
        hint = (
            " That names a user or a session; SageMaker needs a role it can assume (trusting sagemaker.amazonaws.com)."
        )
    raise AwsOptionError(f"--role {text!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT_ID:role/NAME).{hint}")


def instance_type(text: str) -> str:
    if _INSTANCE_TYPE.match(text):
        return text
    hint = f" Did you mean ml.{text}?" if _INSTANCE_TYPE.match(f"ml.{text}") else ""
    raise AwsOptionError(
        f"--instance-type {text!r} is not a SageMaker instance type "
        f"(ml.FAMILY.SIZE, e.g. {DEFAULT_INSTANCE_TYPE}).{hint} Types and prices: https://aws.amazon.com/sagemaker/pricing/"
    )


def ecr_image(text: str) -> EcrImage:
    found = _ECR_IMAGE.match(text)
    if not found:
        raise AwsOptionError(
            f"--image {text!r} is not an Amazon ECR image URI "
            "(ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG or @sha256:…). SageMaker pulls from ECR: "
            "push the image to an ECR repository in the endpoint's region first."
        )
    return EcrImage(text, found["account"], found["region"], found["repository"], found["tag"], found["digest"])


def s3_uri(text: str, option: str) -> S3Uri:
    found = _S3_URI.match(text)
    if not found or ".." in found["bucket"]:
        raise AwsOptionError(f"{option} {text!r} is not an S3 URI (s3://BUCKET/KEY).")
    return S3Uri(found["bucket"], found["key"] or "")


def model_data(text: str) -> S3Uri:
    uri = s3_uri(text, "--model-data")
    if not uri.key or uri.key.endswith("/"):
        raise AwsOptionError(f"--model-data {text!r} names no object: give the model.tar.gz's full key.")
    return uri


def serverless(text: str) -> Serverless:
    """MEMORY_MB[:MAX_CONCURRENCY[:PROVISIONED]], e.g. 2048, 2048:10, 2048:10:2."""
    parts = text.split(":")
    if len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise AwsOptionError(
            f"--serverless {text!r}: expected MEMORY_MB[:MAX_CONCURRENCY[:PROVISIONED]], e.g. 2048:10."
        )
    memory = int(parts[0])
    if memory not in SERVERLESS_MEMORY_MB:
        raise AwsOptionError(
            f"--serverless memory {memory} MB is not offered: pick one of "
            + ", ".join(map(str, SERVERLESS_MEMORY_MB))
            + " (1 GB steps from 1024 to 6144)."
        )
    concurrency = int(parts[1]) if len(parts) > 1 else SERVERLESS_DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= SERVERLESS_MAX_CONCURRENCY:
        raise AwsOptionError(f"--serverless max concurrency {concurrency} is outside 1–{SERVERLESS_MAX_CONCURRENCY}.")
    provisioned = int(parts[2]) if len(parts) > 2 else None
    if provisioned is not None and not 1 <= provisioned <= concurrency:
        raise AwsOptionError(
            f"--serverless provisioned concurrency {provisioned} must be 1–{concurrency} (at most the max concurrency)."
        )
    return Serverless(memory, concurrency, provisioned)


def timeout(value: int | None, option: str) -> int | None:
    low, high = TIMEOUT_RANGE_S
    if value is not None and not low <= value <= high:
        raise AwsOptionError(f"{option} {value} is outside SageMaker's {low}–{high} seconds.")
    return value


def sns_topic(text: str | None, option: str) -> str | None:
    if text is not None and not _SNS_ARN.match(text):
        raise AwsOptionError(f"{option} {text!r} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT_ID:NAME).")
    return text


def environment(pairs: Iterable[str]) -> dict[str, str]:
    env = _pairs(pairs, "-e/--env")
    for key, value in env.items():
        if not _ENV_NAME.match(key) or len(value) > 1024:
            raise AwsOptionError(
                f"-e {key}=…: names are letters, digits and _ (not starting with a digit); "
                "values up to 1024 characters."
            )
    return env


def tags(pairs: Iterable[str]) -> dict[str, str]:
    found = _pairs(pairs, "--tag")
    for key, value in found.items():
        if key.lower().startswith(("aws:", "sagehost:")):
            raise AwsOptionError(f"--tag {key}: keys starting with aws: or sagehost: are reserved.")
        if not 1 <= len(key) <= 128 or len(value) > 256:
            raise AwsOptionError(f"--tag {key}: keys are 1–128 characters, values up to 256.")
    if len(found) > MAX_USER_TAGS:
        raise AwsOptionError(f"--tag: at most {MAX_USER_TAGS} tags (AWS allows 50 and sagehost uses one).")
    return found


def _pairs(pairs: Iterable[str], option: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AwsOptionError(f"{option} {pair.split('=')[0]!r}: expected KEY=VALUE.")
        found[key] = value
    return found


def combination(spec: DeploySpec, instance_options_given: bool) -> DeploySpec:
    """Refuse what SageMaker refuses together, with the reason.
    https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html#serverless-endpoints-how-it-works-exclusions
    """
    if (spec.model_dir is None) == (spec.model_data is None):
        raise AwsOptionError("Give exactly one of --model-dir DIR and --model-data s3://…/model.tar.gz.")
    if spec.serverless is not None:
        if instance_options_given:
            raise AwsOptionError("--serverless endpoints have no instances: drop --instance-type/--instance-count.")
        if spec.capture is not None:
            raise AwsOptionError("SageMaker serverless endpoints do not support --data-capture.")
        if spec.async_output is not None:
            raise AwsOptionError("--async needs instances; SageMaker serverless endpoints are real-time only.")
        if spec.update is not None and spec.update.kind == "rolling":
            raise AwsOptionError("SageMaker does not do rolling updates of serverless endpoints: use canary or linear.")
        if spec.autoscale is not None:
            raise AwsOptionError(
                "--autoscale scales instances; a serverless endpoint scales by itself up to its max concurrency."
            )
    scale = spec.autoscale
    if scale is not None and not scale.min <= spec.instance_count <= scale.max:
        raise AwsOptionError(
            f"--instance-count {spec.instance_count} is outside --autoscale {scale.min}:{scale.max}; start within it."
        )
    return spec
