"""The Lambda function behind `sagehost gateway`: API Gateway's `POST /predict` -> InvokeEndpoint.

`sagehost gateway` zips this file alone, so it imports only the standard library and boto3, which
Lambda's Python runtime provides. It reads an API Gateway REST proxy event, passes the body
(base64-decoded when API Gateway marks it so), Content-Type, Accept and SageMaker's custom
attributes to the endpoint named by SAGEHOST_ENDPOINT, and answers with the endpoint's bytes and
Content-Type: as text when they are text, else base64 for API Gateway to send as binary.
A `ModelError` (the container answered an error) keeps the container's own status and body, so a
caller sees the 400 the model server meant; other failures are sagehost's JSON error body, with
the AWS detail in the function's log, not in the answer.
https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-lambda-proxy-integrations.html
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

ENDPOINT_VARIABLE = "SAGEHOST_ENDPOINT"
# Request headers passed on, by InvokeEndpoint's parameter (API Gateway keeps the caller's spelling).
PASSED_HEADERS = {
    "content-type": "ContentType",
    "accept": "Accept",
    "x-amzn-sagemaker-custom-attributes": "CustomAttributes",
}
_TEXT_TYPES = ("text/", "application/json", "application/jsonlines", "application/x-ndjson", "application/xml")
# InvokeEndpoint's errors other than ModelError: the caller's status and what it may be told.
_REFUSALS = {
    "ValidationError": (400, "invalid_request", "The endpoint refused the request (check Content-Type and size)."),
    "ThrottlingException": (429, "throttled", "Too many requests for the model endpoint; retry shortly."),
    "ModelNotReadyException": (503, "model_not_ready", "The model is not ready yet; retry shortly."),
    "ServiceUnavailable": (503, "unavailable", "The model endpoint is unavailable; retry shortly."),
}
# API Gateway waits 29 s for this function, the endpoint 60 s for its container: at most one retry,
# and only of what botocore counts as transient (a ModelError is never retried).
_CONFIG = Config(read_timeout=70, connect_timeout=5, retries={"mode": "standard", "max_attempts": 2})

log = logging.getLogger("sagehost.gateway")
log.setLevel(logging.INFO)


@functools.lru_cache(maxsize=1)
def _runtime() -> Any:
    """One client per Lambda execution environment, reused across invocations."""
    return boto3.client("sagemaker-runtime", config=_CONFIG)


def handler(event: dict[str, Any], context: object = None) -> dict[str, Any]:
    """API Gateway (REST, Lambda proxy) event -> InvokeEndpoint -> proxy response."""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    try:
        body = request_body(event)
    except ValueError:
        return error(400, "bad_body", "The body is marked base64-encoded but is not valid base64.")
    params: dict[str, Any] = {"EndpointName": os.environ[ENDPOINT_VARIABLE], "Body": body}
    params.update({param: headers[name] for name, param in PASSED_HEADERS.items() if headers.get(name)})
    try:
        answer = _runtime().invoke_endpoint(**params)
    except ClientError as exc:
        return refused(exc)
    except BotoCoreError as exc:
        log.error("InvokeEndpoint failed: %s", type(exc).__name__)
        return error(502, "endpoint_unreachable", "The model endpoint could not be reached; retry shortly.")
    extra = {"X-Amzn-Invoked-Production-Variant": answer.get("InvokedProductionVariant")}
    extra["X-Amzn-SageMaker-Custom-Attributes"] = answer.get("CustomAttributes")
    content_type = str(answer.get("ContentType") or "application/octet-stream")
    return reply(200, answer["Body"].read(), content_type, {k: v for k, v in extra.items() if v})


def request_body(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            raise ValueError("not base64") from None
    return str(body).encode("utf-8")


def refused(exc: Any) -> dict[str, Any]:
    """InvokeEndpoint's error answer as the caller's: a ModelError keeps the container's status and body."""
    response = exc.response
    code = str(response.get("Error", {}).get("Code", ""))
    if code == "ModelError":
        status = int(response.get("OriginalStatusCode") or 0)
        message = str(response.get("OriginalMessage") or response.get("Error", {}).get("Message") or "")
        log.info("ModelError: the container answered %s", status)
        if 400 <= status <= 599:
            return reply(status, message.encode("utf-8"), _error_type(message))
        # 0: no answer from the container at all (it timed out or closed the connection).
        timed_out = "timed out" in message.lower()
        return error(504 if timed_out else 502, "model_error", message or "The model server gave no answer.")
    status, kind, text = _REFUSALS.get(code, (502, "endpoint_error", "The model endpoint failed; see the logs."))
    log.error("InvokeEndpoint refused: %s: %s", code, response.get("Error", {}).get("Message", ""))
    return error(status, kind, text)


def reply(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A proxy response: text stays text; anything else goes base64, for API Gateway to send as bytes."""
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if is_text(content_type):
        try:
            return {
                "statusCode": status,
                "headers": all_headers,
                "body": body.decode("utf-8"),
                "isBase64Encoded": False,
            }
        except UnicodeDecodeError:
            pass
    encoded = base64.b64encode(body).decode("ascii")
    return {"statusCode": status, "headers": all_headers, "body": encoded, "isBase64Encoded": True}


def error(status: int, code: str, message: str) -> dict[str, Any]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
    return reply(status, body, "application/json")


def is_text(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base.startswith(_TEXT_TYPES) or base.endswith(("+json", "+xml"))


def _error_type(message: str) -> str:
    try:
        json.loads(message)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json"
