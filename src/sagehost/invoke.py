"""`sagehost invoke --url URL FILE`: send a payload file to /invocations and print the answer,
the classic recipe's `predict.sh` as one command. Errors go to stderr with a non-zero exit."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sagehost import contract


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def invoke(
    url: str,
    payload: Path,
    content_type: str,
    *,
    accept: str | None = None,
    custom_attributes: str | None = None,
    timeout: float = contract.DEFAULT_TIMEOUT_S,
) -> Answer:
    target = url.rstrip("/")
    if not target.endswith("/invocations"):
        target += "/invocations"
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    if custom_attributes:
        headers[contract.CUSTOM_ATTRIBUTES_HEADER] = custom_attributes
    request = urllib.request.Request(target, data=payload.read_bytes(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.headers.get("Content-Type", ""), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers.get("Content-Type", ""), error.read())
