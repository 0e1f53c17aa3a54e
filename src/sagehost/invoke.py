"""`sagehost invoke --url URL FILE`: send a payload file to /invocations and print the answer,
the classic recipe's `predict.sh` as one command. Errors go to stderr with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

from sagehost import contract
from sagehost.http.outbound import Answer, send

# Batch Transform's largest MaxPayloadInMB: no endpoint, local or not, answers more.
MAX_ANSWER_BYTES = 100 * contract.MIB


def invoke(
    url: str,
    payload: Path,
    content_type: str,
    *,
    accept: str | None = None,
    custom_attributes: str | None = None,
    timeout: float = contract.DEFAULT_TIMEOUT_S,
) -> Answer:
    """The server's answer, whatever its status; UpstreamTimeout, UpstreamTooLarge (over 100 MB)
    or UpstreamUnavailable when there was none to print (see sagehost.http.outbound)."""
    target = url.rstrip("/")
    if not target.endswith("/invocations"):
        target += "/invocations"
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    if custom_attributes:
        headers[contract.CUSTOM_ATTRIBUTES_HEADER] = custom_attributes
    body = payload.read_bytes()
    return send("POST", target, body=body, headers=headers, timeout=timeout, max_body=MAX_ANSWER_BYTES)
