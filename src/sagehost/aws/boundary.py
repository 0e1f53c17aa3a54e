"""The one place where botocore's exceptions become sagehost errors a person can act on.

Every AWS call sagehost makes runs inside `translated(service, operation)`; nothing else catches a
botocore exception. The message names what was refused and the fix (the IAM action to grant, the
bucket to create, the quota to raise), and is scrubbed of anything that could be a credential: an
access key id, a signature or a token in a signed URL.
Error codes: https://docs.aws.amazon.com/sagemaker/latest/APIReference/CommonErrors.html
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import botocore.exceptions as bce  # type: ignore[import-untyped]

from sagehost.aws.errors import (
    AwsConflict,
    AwsCredentialsError,
    AwsError,
    AwsModelError,
    AwsNotFound,
    AwsOptionError,
    AwsPermissionDenied,
    AwsQuotaExceeded,
    AwsUnreachable,
    DeployFailed,
)
from sagehost.errors import StartupError

IAM_POLICY_HINT = "the README's 'IAM permissions' lists what each sagehost command needs"

_ACCESS = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError", "403"})
_CREDENTIALS = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "RequestExpired",
        "IncompleteSignature",
    }
)
_MISSING = frozenset(
    {
        "404",
        "NoSuchBucket",
        "NoSuchKey",
        "NoSuchEntity",
        "RepositoryNotFoundException",
        "ImageNotFoundException",
        "ResourceNotFoundException",
        "ObjectNotFoundException",
        "NotFoundException",  # API Gateway's
    }
)
# Calls that hand a role to a service: the caller needs iam:PassRole on it too.
_PASSES_ROLE = frozenset({"sagemaker:CreateModel", "lambda:CreateFunction"})
_QUOTA = frozenset({"ResourceLimitExceeded", "LimitExceededException", "ServiceQuotaExceededException"})
_THROTTLED = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "SlowDown", "RequestLimitExceeded"}
)
_TAKEN = frozenset({"ResourceInUse", "ConflictException", "EntityAlreadyExists", "ConcurrentModificationException"})

# S3's IAM actions are not named after its operations.
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-actions.html
_S3_ACTIONS = {
    "HeadObject": "s3:GetObject",
    "HeadBucket": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "DeleteObjects": "s3:DeleteObject",
}
# IAM's action prefix where it differs from the client's name (sagemaker-runtime's calls are sagemaker:*).
_IAM_PREFIX = {
    "application-autoscaling": "application-autoscaling",
    "cloudwatch": "cloudwatch",
    "logs": "logs",
    "sagemaker-runtime": "sagemaker",
}

# Things that may carry a credential: access key ids, SigV4 query parameters, Authorization headers.
_SECRETS = re.compile(
    r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"
    r"|(?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|x-amz-security-token)=[^&\s\"'<>]+"
    r"|Authorization[\"']?:\s*[^\n]+",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    """`text` without anything that could be a credential (kept out of messages and logs)."""
    return _SECRETS.sub("[redacted]", text)


def iam_action(service: str, operation: str) -> str:
    """The IAM action a call needs, e.g. `sagemaker:CreateModel`, `s3:GetObject` for HeadObject."""
    if service == "s3":
        return _S3_ACTIONS.get(operation, f"s3:{operation}")
    return f"{_IAM_PREFIX.get(service, service)}:{operation}"


@contextmanager
def translated(service: str, operation: str) -> Iterator[None]:
    """Run an AWS call; a botocore exception leaves as the AwsError a person can act on."""
    try:
        yield
    except StartupError:
        raise
    except bce.ClientError as exc:
        raise client_error(exc, service, operation) from None
    except bce.BotoCoreError as exc:
        raise botocore_error(exc, service, operation) from None
    except Exception as exc:
        wrapped = exc.__context__
        # boto3's managed upload re-raises a ClientError as S3UploadFailedError, from it.
        if type(exc).__name__ == "S3UploadFailedError" and isinstance(wrapped, bce.ClientError):
            raise client_error(wrapped, service, operation) from None
        raise


def client_error(exc: Any, service: str, operation: str) -> AwsError:
    """An AWS error answer (botocore ClientError) as the sagehost error that says what to do."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = _message(error.get("Message") or error.get("message") or "")
    action = iam_action(service, operation)
    if code == "ModelError":  # the container's answer, not AWS's: its own status and words
        # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html#API_runtime_InvokeEndpoint_Errors
        answer = exc.response
        said = scrub(str(answer.get("OriginalMessage") or error.get("Message") or "").strip())
        return AwsModelError(int(answer.get("OriginalStatusCode") or 0), said)
    if code in _ACCESS:
        also = " and iam:PassRole on the execution role" if action in _PASSES_ROLE else ""
        return AwsPermissionDenied(
            f"Permission denied: {action} was refused{_detail(message)}. Grant {action}{also} to the identity "
            f"sagehost runs as; {IAM_POLICY_HINT}."
        )
    if code in _CREDENTIALS:
        return AwsCredentialsError(
            f"AWS did not accept the credentials ({code}) for {action}: they are wrong or expired. "
            "Refresh them (`aws sso login`, or new keys in `aws configure`), or pick another --profile."
        )
    if code in _MISSING or (code == "ValidationException" and "could not find" in message.lower()):
        return AwsNotFound(f"{action}: not found{_detail(message)}.")
    if code in _QUOTA:
        return AwsQuotaExceeded(
            f"An AWS quota stops {action}{_detail(message)}. Delete what you no longer use "
            "(`sagehost endpoints`, `sagehost delete NAME`) or ask for more in the Service Quotas console: "
            "https://console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas"
        )
    if code in _THROTTLED:
        return AwsQuotaExceeded(
            f"AWS throttled {action} beyond botocore's retries{_detail(message)}; try again shortly."
        )
    if code == "BucketAlreadyExists":
        return AwsConflict(
            f"{action}: that bucket name belongs to another AWS account; pass --bucket with a bucket of yours."
        )
    if code in _TAKEN or "already exist" in message.lower():
        return AwsConflict(f"{action}: the name is taken or busy{_detail(message)}.")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if isinstance(status, int) and status >= 500:
        return AwsError(f"AWS failed on its side for {action} (HTTP {status}, {code}) after retries; try again.")
    return AwsError(f"AWS refused {action} ({code}){_detail(message)}.")


def botocore_error(exc: Exception, service: str, operation: str) -> AwsError | AwsOptionError:
    """A botocore failure before or around the call: credentials, region, network, waiting."""
    action = iam_action(service, operation)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return AwsCredentialsError(
            f"No AWS credentials for {action}. Set them up as for the AWS CLI: `aws configure` or "
            "`aws sso login`, AWS_PROFILE or --profile, or an instance/container role."
        )
    if isinstance(exc, bce.ProfileNotFound | bce.NoRegionError):
        what = "That --profile/AWS_PROFILE is not" if isinstance(exc, bce.ProfileNotFound) else "No AWS region is"
        return AwsCredentialsError(
            f"{what} configured. Pass --region (and --profile), set AWS_DEFAULT_REGION, or add them to ~/.aws/config."
        )
    if isinstance(exc, bce.TokenRetrievalError | bce.SSOError | bce.CredentialRetrievalError):
        return AwsCredentialsError(f"AWS credentials could not be loaded ({type(exc).__name__}); run `aws sso login`.")
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectTimeoutError | bce.ConnectionClosedError):
        return AwsUnreachable(
            f"Could not reach AWS for {action}: {scrub(str(exc))}. Check the network, a proxy "
            "(HTTPS_PROXY) or AWS_ENDPOINT_URL, and the region."
        )
    if isinstance(exc, bce.ReadTimeoutError | bce.ConnectionError):
        return AwsUnreachable(f"The connection to AWS broke during {action}; try again.")
    if isinstance(exc, bce.ParamValidationError):
        return AwsOptionError(f"{action} would be refused: {scrub(str(exc))}")
    if isinstance(exc, bce.WaiterError):
        return DeployFailed(f"Gave up waiting on {action}: {scrub(str(exc))}")
    return AwsError(f"{action} failed: {type(exc).__name__}: {scrub(str(exc))}")


def _message(raw: object) -> str:
    text = str(raw).strip()
    if text.startswith("<"):  # an HTML error page from a proxy or a 5xx: nothing a person can use
        return ""
    return scrub(text)


def _detail(message: str) -> str:
    return f": {message.rstrip('.')}" if message else ""
