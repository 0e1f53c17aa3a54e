"""What goes wrong on the AWS side, as sagehost errors a person can act on.

```
StartupError                      (sagehost.errors)
└── AwsError                      AWS refused a call or could not be reached (the CLI exits 1)
    ├── AwsCredentialsError       no credentials, an expired token, an unknown profile, no region
    ├── AwsUnreachable            no connection to the service's endpoint
    ├── AwsPermissionDenied       the caller or the role lacks an IAM action (named in the message)
    ├── AwsNotFound               a role, bucket, object, image or endpoint that is not there
    ├── AwsQuotaExceeded          an account quota, or throttling that outlasted the retries
    ├── AwsConflict               a name held by something sagehost did not create, or busy
    ├── AwsModelError             InvokeEndpoint's ModelError: the container's own status and message
    ├── PreflightFailed           a check before any paid call found what AWS would refuse later
    └── DeployFailed              the endpoint ended Failed or rolled back (reason, logs, diagnosis)
ConfigError                       (sagehost.errors)
└── AwsOptionError                a bad option, found before any call (the CLI exits 2)
```

Every botocore exception becomes one of these in `sagehost.aws.boundary`, and nowhere else.
Messages never hold credentials, tokens or signed URLs.
"""

from __future__ import annotations

from sagehost.errors import ConfigError, StartupError


class AwsError(StartupError):
    """AWS refused a call or could not be reached."""


class AwsCredentialsError(AwsError):
    pass


class AwsUnreachable(AwsError):
    pass


class AwsPermissionDenied(AwsError):
    pass


class AwsNotFound(AwsError):
    pass


class AwsQuotaExceeded(AwsError):
    pass


class AwsConflict(AwsError):
    pass


class AwsModelError(AwsError):
    """The container behind an endpoint refused or failed an invocation (InvokeEndpoint's ModelError)."""

    def __init__(self, status: int, said: str) -> None:
        self.status = status
        """The container's HTTP status (OriginalStatusCode); 0 when it gave no answer at all."""
        self.said = said
        """The container's own message (OriginalMessage), scrubbed."""
        if status:
            super().__init__(f"The model answered HTTP {status}: {said}")
        else:  # e.g. the 60 s invocation timeout
            super().__init__(f"The model gave no answer: {said}")


class PreflightFailed(AwsError):
    pass


class DeployFailed(AwsError):
    pass


class AwsOptionError(ConfigError):
    """A deploy option that SageMaker would refuse, found before any call."""
