"""The local runtime stand-in's InvokeEndpointAsync (sagehost.local.gateway), driven in process in
front of a real `sagehost serve`. S3 is a dictionary here (the outside world, standing in for the
callables sagehost.aws hands the gateway); tests/aws/test_invoke.py runs it all on moto's S3."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagehost.aws.errors import AwsNotFound
from sagehost.local.gateway import AsyncConfig, Gateway
from sagehost.local.modes import Limits
from tests.conftest import Server, running

ROWS = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
REALTIME = Limits(payload_bytes=6 * 1024 * 1024, timeout_s=30.0)
OUT = "s3://answers/out"
FAILED = "s3://answers/failed"


@dataclass
class Bucket:
    """S3 as a dictionary: URI -> (bytes, content type)."""

    objects: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def read(self, uri: str, limit: int) -> bytes:
        if uri not in self.objects:
            raise AwsNotFound(f"s3:GetObject: not found: {uri}.")
        return self.objects[uri][0][: limit + 1]

    def write(self, uri: str, body: bytes, content_type: str) -> None:
        self.objects[uri] = (body, content_type)

    def config(self, failure: str | None = FAILED) -> AsyncConfig:
        return AsyncConfig(OUT, failure, self.read, self.write)


@pytest.fixture(scope="module")
def container(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(iris_dir, tmp_path_factory.mktemp("logs")) as server:
        yield server


def calls(gateway: Gateway, *requests: dict[str, Any]) -> list[httpx.Response]:
    """Each request's answer; then the gateway stops, which waits for its queued work."""

    async def call() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=gateway)
        async with gateway, httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return [await client.post("/endpoints/iris/async-invocations", **r) for r in requests]

    return asyncio.run(call())


def queued(location: str, **headers: str) -> dict[str, Any]:
    return {"headers": {"X-Amzn-SageMaker-InputLocation": location, **headers}}


def test_202_with_the_locations_then_the_answer_is_written_there(container: Server) -> None:
    bucket = Bucket({"s3://in/rows.csv": (ROWS, "text/csv")})
    headers = {"X-Amzn-SageMaker-Content-Type": "text/csv", "X-Amzn-SageMaker-Accept": "text/csv"}
    (answer,) = calls(Gateway(REALTIME, container.url, bucket.config()), queued("s3://in/rows.csv", **headers))

    assert answer.status_code == 202
    inference_id = answer.json()["InferenceId"]
    assert answer.headers["x-amzn-sagemaker-outputlocation"] == f"{OUT}/{inference_id}.out"
    assert answer.headers["x-amzn-sagemaker-failurelocation"] == f"{FAILED}/{inference_id}-error.out"
    body, content_type = bucket.objects[f"{OUT}/{inference_id}.out"]
    assert body == b"setosa\nvirginica\n" and content_type.startswith("text/csv")


def test_the_callers_id_extension_filename_and_custom_attributes_are_honoured(container: Server) -> None:
    bucket = Bucket({"s3://in/rows.csv": (ROWS, "text/csv")})
    headers = {
        "X-Amzn-SageMaker-Content-Type": "text/csv",
        "X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba",
        "X-Amzn-SageMaker-Inference-Id": "job-7",
        "X-Amzn-SageMaker-S3OutputPathExtension": "/daily/",
        "X-Amzn-SageMaker-Filename": "iris.json",
    }
    (answer,) = calls(Gateway(REALTIME, container.url, bucket.config()), queued("s3://in/rows.csv", **headers))

    assert answer.json() == {"InferenceId": "job-7"}
    assert answer.headers["x-amzn-sagemaker-outputlocation"] == f"{OUT}/daily/iris.json"
    assert answer.headers["x-amzn-sagemaker-failurelocation"] == f"{FAILED}/daily/job-7-error.out"
    probabilities = json.loads(bucket.objects[f"{OUT}/daily/iris.json"][0])
    assert len(probabilities) == 2 and len(probabilities[0]) == 3


def test_a_model_error_is_written_to_the_failure_location_in_the_runtimes_words(container: Server) -> None:
    bucket = Bucket({"s3://in/bad.csv": (b"1,2\n", "text/csv")})
    content = {"X-Amzn-SageMaker-Content-Type": "text/csv"}
    (answer,) = calls(Gateway(REALTIME, container.url, bucket.config()), queued("s3://in/bad.csv", **content))

    inference_id = answer.json()["InferenceId"]
    body, content_type = bucket.objects[f"{FAILED}/{inference_id}-error.out"]
    assert body.startswith(b'Received client error (400) from primary with message "{')
    assert b"schema_mismatch" in body and content_type == "text/plain"
    assert f"{OUT}/{inference_id}.out" not in bucket.objects


def test_without_a_failure_path_failures_go_beside_the_answers(container: Server) -> None:
    bucket = Bucket()
    (answer,) = calls(Gateway(REALTIME, container.url, bucket.config(failure=None)), queued("s3://in/missing.csv"))

    inference_id = answer.json()["InferenceId"]
    assert answer.headers["x-amzn-sagemaker-failurelocation"] == f"{OUT}/{inference_id}-error.out"
    body, _ = bucket.objects[f"{OUT}/{inference_id}-error.out"]
    assert (
        body.decode() == "Could not read the input s3://in/missing.csv: s3:GetObject: not found: s3://in/missing.csv."
    )


def test_an_inline_body_is_taken_instead_of_an_input_location(container: Server) -> None:
    bucket = Bucket()
    inline = {"content": ROWS, "headers": {"X-Amzn-SageMaker-Content-Type": "text/csv"}}
    (answer,) = calls(Gateway(REALTIME, container.url, bucket.config()), inline)

    assert answer.status_code == 202
    assert bucket.objects[f"{OUT}/{answer.json()['InferenceId']}.out"][0] == b'["setosa","virginica"]'


def test_several_queued_at_once_all_finish_before_the_gateway_stops(container: Server) -> None:
    bucket = Bucket({"s3://in/rows.csv": (ROWS, "text/csv")})
    content = {"X-Amzn-SageMaker-Content-Type": "text/csv"}
    answers = calls(Gateway(REALTIME, container.url, bucket.config()), *[queued("s3://in/rows.csv", **content)] * 10)

    outputs = {f"{OUT}/{a.json()['InferenceId']}.out" for a in answers}
    assert len(outputs) == 10
    assert {uri for uri in bucket.objects if uri.startswith(OUT)} == outputs


def test_a_flood_of_async_invocations_is_throttled_not_queued_without_bound(container: Server) -> None:
    gate = threading.Event()

    class SlowBucket(Bucket):
        def read(self, uri: str, limit: int) -> bytes:
            gate.wait(timeout=30)  # every job stays queued until the flood is in
            return super().read(uri, limit)

    bucket = SlowBucket()
    gateway = Gateway(REALTIME, container.url, bucket.config())

    async def flood() -> list[int]:
        transport = httpx.ASGITransport(app=gateway)
        async with gateway, httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            statuses = []
            for _ in range(1001):
                answer = await client.post("/endpoints/iris/async-invocations", **queued("s3://in/missing.csv"))
                statuses.append(answer.status_code)
            last = answer
            gate.set()
        assert last.headers["x-amzn-errortype"] == "ThrottlingException:"
        assert "already queued" in last.json()["message"]
        return statuses

    statuses = asyncio.run(flood())
    assert statuses == [202] * 1000 + [429]
    assert len([uri for uri in bucket.objects if uri.startswith(FAILED)]) == 1000  # every queued one answered


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({"headers": {}}, "Give exactly one of InputLocation"),
        ({"content": b"1,2", **queued("s3://in/rows.csv")}, "Give exactly one of InputLocation"),
        (queued("https://example.com/rows.csv"), "is not an s3:// URI"),
        (queued("s3://in/rows.csv", **{"X-Amzn-SageMaker-InvocationTimeoutSeconds": "3601"}), "1 to 3600"),
        ({"content": b"1" * 128_001}, "at most 128000 bytes"),
    ],
)
def test_what_the_runtime_refuses_is_a_validation_error(container: Server, request_: dict[str, Any], says: str) -> None:
    bucket = Bucket()
    (answer,) = calls(Gateway(REALTIME, container.url, bucket.config()), request_)
    assert answer.status_code == 400
    assert answer.headers["x-amzn-errortype"] == "ValidationError:"
    assert says in answer.json()["message"]
    assert bucket.objects == {}


def test_a_gateway_without_async_config_says_how_to_start_one(container: Server) -> None:
    (answer,) = calls(Gateway(REALTIME, container.url), queued("s3://in/rows.csv"))
    assert answer.status_code == 400 and answer.headers["x-amzn-errortype"] == "ValidationError:"
    assert "--async-output s3://" in answer.json()["message"]
