"""What every answer carries under the SageMaker contract, whoever builds it: the App for its
routes, or a transparent proxy's relay straight from the scoring server's answer
(sagehost.proxy.relay, issue 4)."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence

from sagehost import contract
from sagehost.errors import PayloadTooLarge, SagehostError

Headers = list[tuple[bytes, bytes]]

ATTRIBUTES = contract.CUSTOM_ATTRIBUTES_HEADER.lower().encode()
JSON = [(b"content-type", b"application/json")]

log = logging.getLogger("sagehost.app")
_ids = itertools.count(1)


def reply_headers(content_type: bytes, extra: Sequence[tuple[bytes, bytes]], attributes: bytes | None) -> Headers:
    """A reply's headers, with the request's custom attributes echoed: SageMaker returns them to
    the caller only when the container sends them back (and a reply's own win)."""
    headers = [(b"content-type", content_type), *extra]
    if attributes is not None and not (extra and any(k.lower() == ATTRIBUTES for k, _ in extra)):
        headers.append((ATTRIBUTES, attributes))
    return headers


def final_headers(headers: Headers, body: bytes, version: str, request_headers: Headers) -> Headers:
    final = [*headers, (b"content-length", b"%d" % len(body))]
    if version == "1.0" and _wants_keep_alive(request_headers):
        # HTTP/1.0 clients (ab -k) keep the connection only when the answer says so.
        final.append((b"connection", b"keep-alive"))
    return final


def _wants_keep_alive(request_headers: Headers) -> bool:
    return any(name == b"connection" and b"keep-alive" in value.lower() for name, value in request_headers)


def error_answer(exc: SagehostError) -> tuple[int, Headers, bytes]:
    """Status, headers and JSON body for an error, logged under the request id it names."""
    request_id = f"{os.getpid():x}-{next(_ids):x}"  # per process: the workers are forked
    status = exc.http_status
    if status >= 500 and status != 507:  # 507: SageMaker unloads a model and retries, as designed
        log.error("request %s failed: %s %s", request_id, exc.code, exc.message)
    else:
        log.info("request %s rejected: %s %s", request_id, exc.code, exc.message)
    headers = [*JSON, (b"x-request-id", request_id.encode())]
    if isinstance(exc, PayloadTooLarge):
        headers.append((b"connection", b"close"))  # the rest of the body was never read
    return status, headers, exc.body(request_id)


def too_large(limit: int) -> PayloadTooLarge:
    """The 413 for a body over the payload limit, whoever notices it first."""
    return PayloadTooLarge(
        f"The body is larger than the {limit // contract.MIB} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB). "
        "Send fewer rows per request, or use Batch Transform or asynchronous inference for large payloads."
    )
