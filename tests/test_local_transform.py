"""Batch Transform, locally: the batch-mode answer (no final newline on line-based formats) and the
local runner's parts in process (records, mini-batches, JSONPath filters, joins, assembly).
The real-process runs of `sagehost local transform` are in tests/integration/test_local_transform.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sagehost.codecs.encode import encode
from sagehost.config import Settings
from sagehost.models import Loaded
from sagehost.predictor import Shape
from sagehost.server import build_service, load_and_warm
from sagehost.service import Service
from tests.test_app import serving

ROWS = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n5.9,3.0,4.2,1.5\n"


# ---- the answer in batch mode ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outputs", "accept", "realtime"),
    [
        (["setosa", "virginica"], "text/csv", b"setosa\nvirginica\n"),
        (np.array([0.5, 1.25]), "text/csv", b"0.5\n1.25\n"),  # the numeric, chunked path
        (np.array([[0.5, 0.5], [1.0, 0.0]]), "text/csv", b"0.5,0.5\n1.0,0.0\n"),
        (["a,b", 'say "hi"'], "text/csv", b'"a,b"\n"say ""hi"""\n'),  # the csv module's path
        (["setosa", "virginica"], "application/jsonlines", b'"setosa"\n"virginica"\n'),
        ([[0.5, 0.5]], "application/jsonlines", b"[0.5,0.5]\n"),
    ],
)
def test_line_based_answers_end_without_a_newline_in_batch_mode(outputs: Any, accept: str, realtime: bytes) -> None:
    assert encode(outputs, accept) == realtime
    assert encode(outputs, accept, batch=True) == realtime[:-1]


def test_one_row_and_no_rows_in_batch_mode() -> None:
    assert encode(["setosa"], "text/csv", batch=True) == b"setosa"
    assert encode(np.array([2.0]), "text/csv", batch=True) == b"2.0"
    assert encode([], "text/csv", batch=True) == b""
    assert encode([], "application/jsonlines", batch=True) == b""


@pytest.mark.parametrize("accept", ["application/json", "application/x-npy"])
def test_other_answers_are_the_same_in_batch_mode(accept: str) -> None:
    outputs = np.array([0.5, 1.25])
    assert encode(outputs, accept, Shape.ROWS, batch=True) == encode(outputs, accept, Shape.ROWS)


@pytest.fixture(scope="module")
def batch_settings(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model_dir=iris_dir, workers=1, batch_mode=True, scratch_dir=tmp_path_factory.mktemp("scratch"))


@pytest.fixture(scope="module")
def batch_iris(batch_settings: Settings) -> Loaded:
    return load_and_warm(batch_settings)


@pytest.fixture
async def batch_client(batch_settings: Settings, batch_iris: Loaded) -> AsyncIterator[httpx.AsyncClient]:
    async def load() -> Service:
        return build_service(batch_iris, batch_settings)

    async with serving(batch_settings, load) as client:
        yield client


@pytest.mark.anyio
@pytest.mark.xfail(
    strict=True,
    reason="needs service.encode_answer to pass Settings.batch_mode to codecs.encode (issue 16's report)",
)
@pytest.mark.parametrize("accept", ["text/csv", "application/jsonlines"])
async def test_the_app_in_batch_mode_answers_line_based_formats_without_a_final_newline(
    batch_client: httpx.AsyncClient, accept: str
) -> None:
    answer = await batch_client.post(
        "/invocations", content=ROWS, headers={"Content-Type": "text/csv", "Accept": accept}
    )
    assert answer.status_code == 200, answer.text
    assert answer.content.count(b"\n") == 2  # three records, two separators
    assert not answer.content.endswith(b"\n")


@pytest.mark.anyio
async def test_the_app_in_batch_mode_answers_json_as_in_real_time(batch_client: httpx.AsyncClient) -> None:
    answer = await batch_client.post(
        "/invocations", content=ROWS, headers={"Content-Type": "text/csv", "Accept": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == ["setosa", "virginica", "versicolor"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
