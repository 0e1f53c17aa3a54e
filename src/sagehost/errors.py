"""The whole sagehost error tree.

```
SagehostError                    500 internal_error
├── RequestError                 400 bad_request
│   ├── EmptyPayload             400 empty_payload
│   ├── InvalidPayload           400 invalid_payload
│   ├── SchemaMismatch           400 schema_mismatch      (missing field, wrong width, bad value)
│   ├── UnsupportedMethod        400 unsupported_method   (e.g. predict_proba on a regressor)
│   └── ModelUnservable          400 model_unservable     (POST /models: the directory cannot be served)
├── UpstreamRejected             400 upstream_rejected    (proxy: the scoring server's 4xx)
├── NotFound                     404 not_found
├── MethodNotAllowed             405 method_not_allowed
├── NotAcceptable                406 not_acceptable       (Accept)
├── ModelAlreadyLoaded           409 model_already_loaded (POST /models: that name is loaded)
├── RequestTimeout               408 request_timeout      (head or body too slow)
├── PayloadTooLarge              413 payload_too_large
│   └── _RuntimeTooLarge         413 payload_too_large    (local/gateway.py: in InvokeEndpoint's words)
├── UnsupportedMediaType         415 unsupported_media_type (Content-Type)
├── HeaderTooLarge               431 header_too_large     (request line + headers over the cap)
├── ModelError                   500 model_error          (the model or a user hook raised)
│   └── HookError                    its exception's status_code, else 500 (models/script.py)
├── InternalError                500 internal_error       (a bug of ours; traceback to the log only)
├── UnsupportedTransferCoding    501 not_implemented      (a Transfer-Encoding other than chunked)
├── UpstreamUnavailable          502 upstream_unavailable (proxy: down, refused, or its 5xx)
├── UpstreamTooLarge             502 upstream_too_large   (proxy: its answer is over the cap)
├── ModelNotReady                503 model_not_ready      (/ping before load completes)
├── Overloaded                   503 overloaded           (the bounded queue is full)
├── PredictionTimeout            504 prediction_timeout
├── InsufficientMemory           507 insufficient_memory  (POST /models: over the models' memory budget)
└── UpstreamTimeout              504 upstream_timeout     (proxy: no answer within --timeout)
StartupError                     (not HTTP: the process exits with its paragraph)
├── ConfigError                  (a bad setting; the CLI answers it as a usage error, exit 2)
│   └── AwsOptionError           (aws/errors.py: a deploy option SageMaker would refuse)
├── ModelLoadError
├── EngineError                  (image/engine.py: the container engine is missing or refused)
├── WheelhouseError              (image/wheelhouse.py: dependencies would not resolve to wheels)
├── HealthCheckFailed            (local/launch.py: no 200 from /ping in time)
└── AwsError                     (aws/errors.py, which details these: AWS refused or is unreachable)
    ├── AwsCredentialsError
    ├── AwsUnreachable
    ├── AwsPermissionDenied
    ├── AwsNotFound
    ├── AwsQuotaExceeded
    ├── AwsConflict
    ├── AwsModelError
    ├── PreflightFailed
    └── DeployFailed
```

Classes defined beside the code that raises them are drawn with their module; a private
exception that never leaves its module or package (a parser's signal to stop; `models/lean`'s
`_Uncovered`, caught where a lean path is compiled) is not part of the tree.
tests/test_errors.py holds this drawing to the code.

Messages are written for a person to act on. They never carry the request's data or a
traceback: those go to the log, under the request id.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class SagehostError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str = "An unexpected error occurred; see the server log.") -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return self.status

    def body(self, request_id: str | None = None) -> bytes:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if request_id:
            error["request_id"] = request_id
        return orjson.dumps({"error": error})


class RequestError(SagehostError):
    status = 400
    code = "bad_request"


class EmptyPayload(RequestError):
    code = "empty_payload"


class InvalidPayload(RequestError):
    code = "invalid_payload"


class SchemaMismatch(RequestError):
    code = "schema_mismatch"


class UnsupportedMethod(RequestError):
    code = "unsupported_method"


class ModelUnservable(RequestError):
    """Multi-model: the directory POST /models names holds nothing sagehost can serve."""

    code = "model_unservable"


class NotFound(SagehostError):
    status = 404
    code = "not_found"


class MethodNotAllowed(SagehostError):
    status = 405
    code = "method_not_allowed"


class NotAcceptable(SagehostError):
    status = 406
    code = "not_acceptable"


class ModelAlreadyLoaded(SagehostError):
    """Multi-model: POST /models names a model that is loaded (or loading)."""

    status = 409
    code = "model_already_loaded"


class RequestTimeout(SagehostError):
    """The head or the body came too slowly (SAGEHOST_HEADER_TIMEOUT, SAGEHOST_BODY_TIMEOUT)."""

    status = 408
    code = "request_timeout"


class HeaderTooLarge(SagehostError):
    """The request line and headers are over SAGEHOST_MAX_HEADER_KB (RFC 6585 §5)."""

    status = 431
    code = "header_too_large"


class PayloadTooLarge(SagehostError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(SagehostError):
    status = 415
    code = "unsupported_media_type"


class ModelError(SagehostError):
    status = 500
    code = "model_error"


class InternalError(SagehostError):
    """A bug of ours: logged with its traceback, answered without it."""

    status = 500
    code = "internal_error"


class UnsupportedTransferCoding(SagehostError):
    """A Transfer-Encoding other than chunked (RFC 9112 §6.1)."""

    status = 501
    code = "not_implemented"


class ModelNotReady(SagehostError):
    status = 503
    code = "model_not_ready"


class Overloaded(SagehostError):
    status = 503
    code = "overloaded"


class PredictionTimeout(SagehostError):
    status = 504
    code = "prediction_timeout"

    @classmethod
    def after(cls, timeout_s: float) -> PredictionTimeout:
        return cls(
            f"The prediction took longer than {timeout_s:g} s (SAGEMAKER_MODEL_SERVER_TIMEOUT). "
            "Send fewer rows per request, or use Batch Transform or asynchronous inference for long work."
        )


class InsufficientMemory(SagehostError):
    """Multi-model: the model would not fit in the models' memory budget; SageMaker then unloads
    models and retries (RFC 4918 §11.5, 507 Insufficient Storage)."""

    status = 507
    code = "insufficient_memory"


class UpstreamRejected(SagehostError):
    """Proxy mode: the scoring server refused a translated request (its 4xx)."""

    status = 400
    code = "upstream_rejected"


class UpstreamUnavailable(SagehostError):
    """Proxy mode: the scoring server is down, refused the connection, or failed (its 5xx)."""

    status = 502
    code = "upstream_unavailable"


class UpstreamTooLarge(SagehostError):
    """Proxy mode: the scoring server's answer is over SAGEHOST_UPSTREAM_MAX_BODY_MB; the
    connection to it is dropped rather than read to the end."""

    status = 502
    code = "upstream_too_large"


class UpstreamTimeout(SagehostError):
    status = 504
    code = "upstream_timeout"


class StartupError(Exception):
    """Stops the process before it serves; the message is the paragraph a user reads in CloudWatch."""


class ConfigError(StartupError):
    pass


class ModelLoadError(StartupError):
    pass
