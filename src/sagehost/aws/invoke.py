"""`sagehost invoke NAME`: the SageMaker runtime's InvokeEndpoint and InvokeEndpointAsync, and the
S3 side of `sagehost local serve`'s async stand-in.

A sync invocation's ModelError (HTTP 424) carries the container's own status and message
(OriginalStatusCode, OriginalMessage): they are what a person needs, so they are what is said.
An async invocation uploads the payload (s3://BUCKET/sagehost/NAME/async-inputs/ID, tagged for
NAME, in deploy's default bucket unless told), queues it, and polls S3 for the answer or the
failure with a bounded back-off: SageMaker tells nobody else when it is done unless SNS topics
were configured. https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-check-predictions.html
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sagehost.aws.artifact import KEY_PREFIX, default_bucket, ensure_bucket
from sagehost.aws.boundary import translated
from sagehost.aws.errors import AwsError, AwsModelError, AwsOptionError
from sagehost.aws.session import Aws
from sagehost.aws.spec import TAG_KEY, S3Uri, s3_uri

RUNTIME = "sagemaker-runtime"
ASYNC_INPUTS = "async-inputs"
"""Async payloads go to s3://BUCKET/sagehost/NAME/async-inputs/INFERENCE_ID."""
ASYNC_PAYLOAD_BYTES = 1_000_000_000  # InvokeEndpointAsync takes inputs up to 1 GB
FIRST_POLL_S = 0.2
LONGEST_POLL_S = 5.0  # S3 is asked at least this often once the back-off has grown


@dataclass(frozen=True)
class Request:
    endpoint: str
    body: bytes
    content_type: str
    accept: str | None = None
    custom_attributes: str | None = None
    target_model: str | None = None

    def headers(self) -> dict[str, str]:
        """The optional parameters both invoke calls take, as boto3 names them."""
        given = {"Accept": self.accept, "CustomAttributes": self.custom_attributes}
        return {key: value for key, value in given.items() if value}


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str
    custom_attributes: str | None = None
    """What the container sent back in X-Amzn-SageMaker-Custom-Attributes, if anything."""


@dataclass(frozen=True)
class Queued:
    inference_id: str
    input: str
    output: str
    failure: str | None


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    location: str
    body: bytes


def invoke(aws: Aws, request: Request) -> Answer:
    """InvokeEndpoint; a ModelError leaves as an AwsError with the container's status and message."""
    params: dict[str, Any] = {
        "EndpointName": request.endpoint,
        "Body": request.body,
        "ContentType": request.content_type,
        **request.headers(),
    }
    if request.target_model:
        params["TargetModel"] = request.target_model
    try:
        answer = aws.write(RUNTIME, "invoke_endpoint", **params)
    except AwsModelError as exc:  # translated by the boundary; here it learns which endpoint
        raise AwsError(model_error_message(request.endpoint, exc)) from None
    with translated(RUNTIME, "InvokeEndpoint"):  # the body streams: reading it can fail too
        body = answer["Body"].read()
    return Answer(body, str(answer.get("ContentType", "")), answer.get("CustomAttributes"))


def invoke_async(aws: Aws, request: Request, bucket: str | None = None) -> Queued:
    """Upload the payload, then InvokeEndpointAsync with its location; where the answer will be."""
    if request.target_model:
        raise AwsOptionError("--target-model goes with InvokeEndpoint only: an async endpoint hosts one model.")
    if len(request.body) > ASYNC_PAYLOAD_BYTES:
        raise AwsOptionError(f"An async payload is at most {ASYNC_PAYLOAD_BYTES} bytes (1 GB); this one is larger.")
    bucket = bucket or default_bucket(aws)
    ensure_bucket(aws, bucket, request.endpoint)
    inference_id = str(uuid.uuid4())
    staged = S3Uri(bucket, f"{KEY_PREFIX}/{request.endpoint}/{ASYNC_INPUTS}/{inference_id}")
    aws.write(
        "s3",
        "put_object",
        Bucket=staged.bucket,
        Key=staged.key,
        Body=request.body,
        ContentType=request.content_type,
        Tagging=urlencode({TAG_KEY: request.endpoint}),
    )
    answer = aws.write(
        RUNTIME,
        "invoke_endpoint_async",
        EndpointName=request.endpoint,
        InputLocation=str(staged),
        ContentType=request.content_type,
        InferenceId=inference_id,
        **request.headers(),
    )
    return Queued(
        inference_id=str(answer.get("InferenceId") or inference_id),
        input=str(staged),
        output=str(answer["OutputLocation"]),
        failure=answer.get("FailureLocation"),
    )


def wait_for(
    aws: Aws,
    queued: Queued,
    wait_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome | None:
    """The answer, or the failure, once either is in S3; None when `wait_s` passes first. S3 is
    asked at once, then after 0.2 s, 0.4 s, … up to every 5 s."""
    deadline = clock() + wait_s
    delay = FIRST_POLL_S
    while True:
        for succeeded, location in ((True, queued.output), (False, queued.failure)):
            if location and (body := fetch(aws, location)) is not None:
                return Outcome(succeeded, location, body)
        left = deadline - clock()
        if left <= 0:
            return None
        sleep(min(delay, left))
        delay = min(delay * 2, LONGEST_POLL_S)


def fetch(aws: Aws, location: str) -> bytes | None:
    """An S3 object's bytes, or None while it does not exist."""
    uri = s3_uri(location, "the answer's location")
    found = aws.find("s3", "get_object", Bucket=uri.bucket, Key=uri.key)
    if found is None:
        return None
    with translated("s3", "GetObject"):
        data: bytes = found["Body"].read()
    return data


class S3Objects:
    """S3 objects by URI, for the local async stand-in (`sagehost.local.gateway.AsyncConfig`):
    its `read` and `write` run on worker threads."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws
        aws.client("s3")  # made now, on this thread: making a client is not thread-safe in boto3

    def read(self, location: str, limit: int) -> bytes:
        uri = s3_uri(location, "InputLocation")
        found = self.aws.read("s3", "get_object", Bucket=uri.bucket, Key=uri.key)
        with translated("s3", "GetObject"):
            stream = found["Body"]
            data: bytes = stream.read(limit + 1)
            stream.close()
        if len(data) > limit:
            raise AwsError(f"{location} is larger than {limit} bytes, the most an async invocation reads.")
        return data

    def write(self, location: str, body: bytes, content_type: str) -> None:
        uri = s3_uri(location, "the answer's location")
        self.aws.write("s3", "put_object", Bucket=uri.bucket, Key=uri.key, Body=body, ContentType=content_type)


def model_error_message(endpoint: str, error: AwsModelError) -> str:
    """A ModelError in the container's terms, with where its log is."""
    logs = f"Its log: sagehost logs {endpoint}"
    if not error.status:
        return f"The model behind endpoint {endpoint} gave no answer: {error.said}\n{logs}"
    return f"The model behind endpoint {endpoint} answered HTTP {error.status}: {error.said}\n{logs}"
