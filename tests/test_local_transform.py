"""Batch Transform, locally: the batch-mode answer (no final newline on line-based formats) and the
local runner's parts in process (records, mini-batches, JSONPath filters, joins, assembly).
The real-process runs of `sagehost local transform` are in tests/integration/test_local_transform.py."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import io
import re
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from sagehost.cli import main
from sagehost.codecs.decode import csv_chunks, decode
from sagehost.codecs.encode import encode
from sagehost.config import Settings
from sagehost.errors import ConfigError
from sagehost.local import jsonpath
from sagehost.local.processing import Processing, split_answer
from sagehost.local.progress import progress
from sagehost.local.records import RECORDIO_MAGIC, batches, line_batches, records
from sagehost.local.transform import Resolved, TransformRequest, check, local_transform, resolve
from sagehost.local.transform_io import InputFile, LocalOutput, check_apart, check_s3_apart, local_inputs
from sagehost.local.transform_run import FileReport, Plan, run_files
from sagehost.models import Loaded
from sagehost.models.schema import conform, conform_chunks
from sagehost.predictor import ModelSpec, Shape
from sagehost.server import build_service, load_and_warm
from sagehost.service import Service
from tests.loopback import LoopbackServer
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


# ---- SageMaker's JSONPath subset -------------------------------------------------------------------

RECORD = {"id": 7, "features": [5.1, 3.5, 1.4, 0.2], "meta": {"source": "a", "day": 3}}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", RECORD),
        ("$.features", [5.1, 3.5, 1.4, 0.2]),
        ("$['features']", [5.1, 3.5, 1.4, 0.2]),
        ("$.['features']", [5.1, 3.5, 1.4, 0.2]),
        ("$.features[0]", 5.1),
        ("$.features[-1]", 0.2),
        ("$.features[1:]", [3.5, 1.4, 0.2]),
        ("$.features[:2]", [5.1, 3.5]),
        ("$.features[1:3]", [3.5, 1.4]),
        ("$.features[0,2:]", [5.1, 1.4, 0.2]),
        ("$.features[0, -1]", [5.1, 0.2]),
        ("$.features[*]", [5.1, 3.5, 1.4, 0.2]),
        ("$['id','features']", {"id": 7, "features": [5.1, 3.5, 1.4, 0.2]}),
        ("$['id', 'meta']", {"id": 7, "meta": {"source": "a", "day": 3}}),
        ("$.meta.day", 3),
        ("$.meta.*", ["a", 3]),
    ],
)
def test_jsonpath_selects_as_sagemaker_documents(path: str, expected: Any) -> None:
    assert jsonpath.parse(path, "--input-filter").select(RECORD) == expected


@pytest.mark.parametrize(
    "path",
    [
        "$..features",
        "$[?(@.id > 1)]",
        "features",
        "$.features.length()",
        "$[1",
        "$['a'.b]",
        "$[a]",
        "$.",
        "$" + ".x" * 40,
    ],
)
def test_jsonpath_outside_the_subset_is_refused_with_the_option_named(path: str) -> None:
    with pytest.raises(ConfigError, match="--output-filter") as refused:
        jsonpath.parse(path, "--output-filter")
    assert "63" in str(refused.value) or "subset" in str(refused.value) or "root" in str(refused.value)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("$.missing", "no field 'missing' (the record has 'id', 'features', 'meta')"),
        ("$.features[4]", "index 4 is outside the record's 4 elements"),
        ("$.id[0]", "elements of a number, not of an array"),
        ("$.features.x", "a field of an array, not of an object"),
    ],
)
def test_jsonpath_says_what_is_missing_from_a_record(path: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        jsonpath.parse(path, "--input-filter").select(RECORD)


# ---- DataProcessing: filters and joins, record by record ---------------------------------------------


def test_csv_rows_are_filtered_joined_and_filtered_again_by_index() -> None:
    csv_processing = Processing(
        csv=True,
        input_filter=jsonpath.parse("$[1:]", "--input-filter"),
        output_filter=jsonpath.parse("$[0,-1]", "--output-filter"),
        join=True,
    )
    row = b"id-7,5.1,3.5,1.4,0.2\n"
    assert csv_processing.model_input(row) == b"5.1,3.5,1.4,0.2\n"
    assert csv_processing.result(row, b"setosa") == b"id-7,setosa"
    assert csv_processing.result(b'"a, b",1\r\n', b"0.1,0.9") == b'"a, b",0.9'  # quoting kept where needed


def test_json_objects_get_the_answer_under_sagemakeroutput_and_other_values_are_wrapped() -> None:
    joined = Processing(csv=False, join=True)
    assert joined.result(b'{"id":1,"features":[1,2]}\n', b'"setosa"') == (
        b'{"id":1,"features":[1,2],"SageMakerOutput":"setosa"}'
    )
    assert joined.result(b"[1,2]\n", b"[0.1,0.9]") == b'{"SageMakerInput":[1,2],"SageMakerOutput":[0.1,0.9]}'
    picked = Processing(csv=False, output_filter=jsonpath.parse("$['id','SageMakerOutput']", "-"), join=True)
    assert picked.result(b'{"id":1,"features":[1,2]}', b'"setosa"') == b'{"id":1,"SageMakerOutput":"setosa"}'
    with pytest.raises(ValueError, match="reserves"):
        joined.result(b'{"SageMakerOutput":1}', b'"setosa"')
    with pytest.raises(ValueError, match="not JSON"):
        joined.result(b"{oops", b'"setosa"')


def test_an_answer_is_split_into_one_per_record() -> None:
    assert split_answer(b"a\nb\nc", "text/csv", 3) == [b"a", b"b", b"c"]
    assert split_answer(b"a\r\nb\r\nc\r\n", "text/csv", 3) == [b"a", b"b", b"c"]
    assert split_answer(b'["a","b"]', "application/json", 2) == [b'"a"', b'"b"']
    assert split_answer(b'{"predictions":[[0.1,0.9]]}', "application/json", 1) == [b"[0.1,0.9]"]
    assert split_answer(b"[0.1,0.9]", "application/json", 1) == [b"[0.1,0.9]"]
    with pytest.raises(ValueError, match="2 lines for 3 records"):
        split_answer(b"a\nb\n", "application/jsonlines", 3)
    with pytest.raises(ValueError, match="2 predictions for 3 records"):
        split_answer(b'["a","b"]', "application/json", 3)


# ---- records and mini-batches --------------------------------------------------------------------------


def test_lines_are_records_with_their_line_numbers_and_blank_lines_are_none() -> None:
    found = list(records(io.BytesIO(b"a,1\n\nb,2\r\n  \nc,3"), "Line", single=False))
    assert [(r.number, r.data) for r in found] == [(1, b"a,1\n"), (3, b"b,2\r\n"), (5, b"c,3")]
    whole = list(records(io.BytesIO(b"a,1\nb,2\n"), "None", single=True))
    assert [(r.number, r.data) for r in whole] == [(1, b"a,1\nb,2\n")]


def test_multirecord_packs_whole_records_up_to_the_payload_and_never_past_it() -> None:
    lines = [f"{i},{'x' * (i % 7)}\n".encode() for i in range(200)]
    found = records(io.BytesIO(b"".join(lines)), "Line", single=False)
    packed = list(batches(found, limit=100, single=False))
    assert b"".join(b.body for b in packed) == b"".join(lines)
    assert all(b.size <= 100 and b.size == len(b.body) for b in packed)
    assert all(len(b.body) + len(lines[b.numbers[-1]]) > 100 for b in packed[:-1])  # each as full as it can be
    assert [n for b in packed for n in b.numbers] == list(range(1, 201))
    assert [b.index for b in packed] == list(range(len(packed)))


def test_singlerecord_sends_one_record_a_request_and_no_limit_packs_the_whole_file() -> None:
    data = b"1\n2\n3\n"
    single = list(batches(records(io.BytesIO(data), "Line", single=True), limit=None, single=True))
    assert [b.body for b in single] == [b"1\n", b"2\n", b"3\n"]
    whole = list(batches(records(io.BytesIO(data), "Line", single=False), limit=None, single=False))
    assert [b.body for b in whole] == [data]


def test_a_record_over_the_payload_fails_there_and_nothing_after_it_is_read() -> None:
    data = b"1\n" + b"9" * 50 + b"\n3\n"
    packed = list(batches(records(io.BytesIO(data), "Line", single=False), limit=20, single=False))
    assert [b.body for b in packed[:1]] == [b"1\n"]
    assert packed[-1].numbers == [2]
    assert packed[-1].problem is not None and "51 bytes, over MaxPayloadInMB (20 bytes)" in packed[-1].problem
    assert len(packed) == 2


class _Trickle(io.RawIOBase):
    """A stream that answers every read with at most `step` bytes, as a pipe or gunzip may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step = data, step

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        part, self._data = self._data[: self._step], self._data[self._step :]
        return part


LINE_CASES = [
    b"1,2\n3,4\n5,6\n",
    b"1,2\n3,4\n5,6",  # no final newline
    b"1,2\n\n3,4\n  \n5,6\n",  # blank lines are no records
    b"\r\n1,2\r\n3,4\r\n",  # a first line of whitespace only
    b"1,2\n" + b"9" * 40 + b"\n3,4\n",  # a record over the limit
    b"1,2\n3,4\n \t",  # a last line of whitespace only
    b"".join(f"{i},{'x' * (i % 9)}\n".encode() for i in range(300)),
    b"",
]


@pytest.mark.parametrize("data", LINE_CASES)
@pytest.mark.parametrize("limit", [1, 4, 5, 12, 33, 1000])
@pytest.mark.parametrize("step", [3, 1 << 20])
def test_line_batches_read_in_blocks_are_the_batches_of_line_by_line(data: bytes, limit: int, step: int) -> None:
    def seen(found: list[Any]) -> list[tuple[int, list[int], bytes, str | None]]:
        return [(b.index, b.numbers, b.body, b.problem) for b in found]

    expected = seen(list(batches(records(io.BytesIO(data), "Line", single=False), limit, single=False)))
    got = list(line_batches(_Trickle(data, step), limit))  # type: ignore[arg-type]
    assert seen(got) == expected
    for batch in got:  # a part sent again alone (finding a bad record) holds those very lines
        assert batch.count == len(batch.numbers)
        assert batch.part(0, batch.count).body == batch.body
        if batch.count > 1:
            assert batch.part(1, 2).body == batch.body.split(b"\n")[1] + b"\n"


def test_an_input_filter_that_cannot_apply_fails_its_record() -> None:
    keep = Processing(csv=False, input_filter=jsonpath.parse("$.features", "-"))
    found = records(io.BytesIO(b'{"features":[1]}\n{"other":2}\n{"features":[3]}\n'), "Line", single=False)
    packed = list(batches(found, limit=None, single=False, prepare=keep.model_input))
    assert packed[0].body == b"[1]\n"
    assert packed[-1].numbers == [2] and "no field 'features'" in str(packed[-1].problem)


NUMERIC_BODIES = [
    b"1.5,2\n-3e2,4\n5,6\n7,8\n",  # read by numpy's C reader (codecs/csvrows.py _numbers)
    b"1.5,2\r\n-3e2,4\r\n\r\n5, 6 \r\n7,8",  # CRLF, a blank line, spaces, no final newline
    b"a,b\n1,2\n3,4\n5,6\n",  # a header: the first chunk goes cell by cell
    b"1,2\n3,\n5,nan\nNone,8\n",  # missing values: cell by cell (NaN)
    b"1,2\x0b3,4\n5,6\n7,8\n",  # a line break str.splitlines knows and numpy does not
    b"1,2\n3,4\n5,6,7\n8,9\n",  # ragged: refused either way
]


@pytest.mark.parametrize("body", NUMERIC_BODIES)
def test_a_numeric_batch_body_reads_the_same_by_numpys_reader_as_cell_by_cell(body: bytes) -> None:
    spec = ModelSpec(methods=frozenset({"predict"}), n_features=2)

    def read(how: Callable[[], Any]) -> Any:
        try:
            return how().values
        except Exception as exc:
            return type(exc).__name__

    whole = read(lambda: conform(decode(body, "text/csv", width=2), spec))
    chunked = read(lambda: conform_chunks(csv_chunks(body, width=2, chunk_chars=9), spec))
    if isinstance(whole, str):
        assert chunked == whole
    else:
        np.testing.assert_array_equal(chunked, whole)
    if body is NUMERIC_BODIES[0]:  # the plain body took the C reader, not a string a cell
        assert all(isinstance(table.rows, np.ndarray) for table in csv_chunks(body, width=2, chunk_chars=9))


def frame(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack("<II", RECORDIO_MAGIC, (flag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def test_recordio_splits_frames_whole_for_multirecord_and_unwrapped_for_singlerecord() -> None:
    data = frame(b"abc") + frame(b"defgh") + frame(b"one", 1) + frame(b"two", 3)
    multi = [r.data for r in records(io.BytesIO(data), "RecordIO", single=False)]
    assert multi == [frame(b"abc"), frame(b"defgh"), frame(b"one", 1) + frame(b"two", 3)]
    single = [r.data for r in records(io.BytesIO(data), "RecordIO", single=True)]
    assert single == [b"abc", b"defgh", b"one" + struct.pack("<I", RECORDIO_MAGIC) + b"two"]
    with pytest.raises(ValueError, match="record 2 is cut short"):
        list(records(io.BytesIO(frame(b"abc") + frame(b"defgh")[:-4]), "RecordIO", single=False))
    with pytest.raises(ValueError, match="no frame starts after record 1"):
        list(records(io.BytesIO(frame(b"abc") + b"junkjunk"), "RecordIO", single=False))


# ---- SageMaker's rules, and whose setting wins ------------------------------------------------------


def request(**given: Any) -> TransformRequest:
    return TransformRequest(None, "in", "out", model_data=Path("model"), **given)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"strategy": "SingleRecord"}, "--strategy SingleRecord needs --split-type"),
        (
            {"split_type": "Line", "concurrency": 20},
            "--concurrency 20 x 6 MB is over SageMaker's 100 MB: use --concurrency 16",
        ),
        ({"split_type": "Line", "concurrency": 3, "max_payload_mb": 50}, "use --concurrency 2 or less"),
        ({"content_type": "image/png", "join_source": "Input"}, "CSV and JSON only"),
        ({"content_type": "text/csv", "accept": "application/json", "join_source": "Input"}, "--accept text/csv"),
        ({"content_type": "application/jsonlines", "input_filter": "$.x"}, "--accept application/jsonlines"),
        (
            {"content_type": "text/csv", "accept": "text/csv", "join_source": "Input"},
            "--split-type Line and --assemble-with Line",
        ),
        (
            {
                "content_type": "text/csv",
                "accept": "text/csv",
                "split_type": "Line",
                "assemble_with": "Line",
                "input_filter": "$.a",
            },
            "use indexes",
        ),
        ({"input_filter": "$..a"}, "JSONPath subset"),
    ],
)
def test_what_createtransformjob_refuses_is_refused_before_anything_starts(given: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        check(request(**given))


def test_zero_mb_and_whole_filters_need_no_product_and_no_processing() -> None:
    assert check(request(split_type="Line", concurrency=100, max_payload_mb=0)) is None
    assert check(request(input_filter="$", output_filter="$", join_source="None")) is None


def test_the_jobs_values_then_the_containers_then_the_defaults() -> None:
    container = {"MaxConcurrentTransforms": 8, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 20}
    assert resolve(request(), {}) == Resolved(1, 6, "MultiRecord", ("default", "default", "default"))
    from_container = resolve(request(), container)
    assert (from_container.concurrency, from_container.payload_mb, from_container.strategy) == (8, 20, "SingleRecord")
    flags = resolve(request(concurrency=2, max_payload_mb=0, strategy="MultiRecord"), container)
    assert (flags.concurrency, flags.payload_mb, flags.strategy) == (2, 0, "MultiRecord")
    assert flags.describe() == (
        "MaxConcurrentTransforms=2 (--concurrency), MaxPayloadInMB=0 (--max-payload-mb), "
        "BatchStrategy=MULTI_RECORD (--strategy)"
    )
    nonsense = {"MaxConcurrentTransforms": 0, "BatchStrategy": "ALL", "MaxPayloadInMB": 101}
    assert resolve(request(), nonsense).sources == ("default", "default", "default")


# ---- the run against a scripted container on loopback ----------------------------------------------


@dataclass
class Container(LoopbackServer):
    """A scripted container: answers each POST /invocations with one line per record line it got
    (`<line>!`), after `delay(body)` seconds; or with `status(body)`'s error. Counts what it saw."""

    delay: Callable[[bytes], float] = lambda body: 0.0
    status: Callable[[bytes], int] = lambda body: 200
    bodies: list[bytes] = field(default_factory=list)
    chunked: list[bool] = field(default_factory=list)
    heads: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                headers = dict(
                    line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
                )
                self.heads.append(headers)
                body = await self._body(reader, headers)
                await self._answer(writer, body, headers.get("transfer-encoding") == "chunked")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding") != "chunked":
            return await reader.readexactly(int(headers.get("content-length", "0")))
        parts = []
        while size := int((await reader.readline()).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        return b"".join(parts)

    async def _answer(self, writer: asyncio.StreamWriter, body: bytes, chunked: bool) -> None:
        self.bodies.append(body)
        self.chunked.append(chunked)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.delay(body))
        self.in_flight -= 1
        status = self.status(body)
        if status == 200:
            answer = b"\n".join(line + b"!" for line in body.splitlines() if line.strip())
            kind = b"text/csv"
        else:
            answer, kind = (
                b'{"error":{"code":"schema_mismatch","message":"Expected 4 values per row."}}',
                b"application/json",
            )
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (status, kind, len(answer), answer)
        )
        await writer.drain()


def plan(url: str, **given: Any) -> Plan:
    settings: dict[str, Any] = {
        "url": url,
        "split": "Line",
        "single": False,
        "payload_limit": 1024,
        "concurrency": 1,
        "assemble_lines": True,
        "content_type": "text/csv",
        "accept": "text/csv",
        "processing": None,
        "gzip": False,
        "retries": 3,
        "timeout_s": 10.0,
        **given,
    }
    return Plan(**settings)


def inputs(tmp_path: Path, files: dict[str, bytes]) -> list[InputFile]:
    folder = tmp_path / "in"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return local_inputs(folder)


def rows(count: int, start: int = 0) -> bytes:
    return b"".join(b"%d,%d\n" % (i, i * i) for i in range(start, start + count))


async def transform(
    the_plan: Plan, tmp_path: Path, files: dict[str, bytes]
) -> tuple[list[FileReport], dict[str, bytes], list[str]]:
    said: list[str] = []
    found = inputs(tmp_path, files)
    reports = await run_files(the_plan, found, LocalOutput(tmp_path / "out"), progress(len(found), said.append))
    written = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    return reports, written, said


@pytest.mark.anyio
async def test_concurrent_requests_come_back_out_of_order_and_are_written_in_input_order(tmp_path: Path) -> None:
    # Later batches answer sooner: the .out is still in input order, one line per record.
    async with Container(delay=lambda body: 0.2 / (1 + int(body.split(b",")[0]) // 20)) as container:
        data = rows(300)
        reports, written, _ = await transform(
            plan(container.url, concurrency=4, payload_limit=200), tmp_path, {"a.csv": data}
        )
    assert container.most_in_flight == 4
    assert len(container.bodies) > 10 and all(len(b) <= 200 for b in container.bodies)
    assert written["a.csv.out"] == b"".join(line + b"!\n" for line in data.splitlines())
    assert reports[0].records == 300 and reports[0].failure is None


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [64, None])
async def test_each_request_names_its_types_and_asks_for_its_answer_uncompressed(
    tmp_path: Path, limit: int | None
) -> None:
    # Whole bodies go through sagehost's pooled client, streamed ones (MaxPayloadInMB=0) through
    # httpx: the same headers either way, and the answer written as it came.
    async with Container() as container:
        _, written, _ = await transform(plan(container.url, payload_limit=limit), tmp_path, {"a.csv": rows(30)})
    assert written["a.csv.out"] == b"".join(line + b"!\n" for line in rows(30).splitlines())
    assert container.heads and all(
        (h["content-type"], h["accept"], h["accept-encoding"]) == ("text/csv", "text/csv", "identity")
        for h in container.heads
    )


@pytest.mark.anyio
async def test_zero_mb_streams_each_request_chunked(tmp_path: Path) -> None:
    async with Container() as container:
        data = rows(20_000)  # over one chunk
        _, written, _ = await transform(plan(container.url, payload_limit=None), tmp_path, {"a.csv": data})
    assert container.chunked == [True] and container.bodies == [data]
    assert written["a.csv.out"].count(b"!\n") == 20_000


@pytest.mark.anyio
async def test_a_bad_record_is_found_by_its_line_and_its_file_gets_no_out(tmp_path: Path) -> None:
    async with Container(status=lambda body: 400 if b"\n7,49\n" in b"\n" + body else 200) as container:
        files = {"bad.csv": rows(10), "good.csv": rows(10, start=20)}
        reports, written, said = await transform(plan(container.url, payload_limit=1024), tmp_path, files)
    assert list(written) == ["good.csv.out"]
    bad = next(r for r in reports if r.source.name == "bad.csv")
    assert bad.failure == ("line 8: the container answered HTTP 400: schema_mismatch: Expected 4 values per row.")
    assert not list((tmp_path / "out").glob(".*"))  # no half-written file left
    assert "10 records, 2/2 files" in said[-1] or any("2/2 files" in line for line in said)


@pytest.mark.anyio
async def test_a_5xx_is_retried_as_sagemaker_retries_then_fails_the_file(tmp_path: Path) -> None:
    async with Container(status=lambda body: 503) as container:
        reports, written, _ = await transform(
            plan(container.url, retries=2, payload_limit=None), tmp_path, {"a.csv": rows(3)}
        )
    assert len(container.bodies) == 3  # 1 + 2 retries
    assert written == {} and reports[0].failure is not None and reports[0].failure.startswith("lines 1-3: ")

    attempts = iter([503, 503, 200])
    async with Container(status=lambda body: next(attempts)) as flaky:
        reports, written, _ = await transform(
            plan(flaky.url, payload_limit=None), tmp_path / "again", {"a.csv": rows(3)}
        )
    assert reports[0].failure is None and written["a.csv.out"] == b"0,0!\n1,1!\n2,4!\n"


@pytest.mark.anyio
async def test_no_answer_in_time_fails_the_file_after_the_retries(tmp_path: Path) -> None:
    async with Container(delay=lambda body: 1.0) as container:
        the_plan = plan(container.url, retries=1, timeout_s=0.2, payload_limit=None)
        reports, _, _ = await transform(the_plan, tmp_path, {"a.csv": rows(2)})
    assert reports[0].failure is not None
    assert "within 0.2 s (2 attempts)" in reports[0].failure


@pytest.mark.anyio
async def test_an_answer_with_fewer_lines_than_records_is_a_warning(tmp_path: Path) -> None:
    async with Container() as container:
        reports, written, _ = await transform(plan(container.url), tmp_path, {"a.csv": b"1,1\n2,2\n\n3,3\n"})
    assert reports[0].warnings == []  # blank lines are no records
    assert written["a.csv.out"] == b"1,1!\n2,2!\n3,3!\n"


@pytest.mark.anyio
async def test_a_file_that_is_not_gzip_fails_alone(tmp_path: Path) -> None:
    async with Container() as container:
        files = {"a.csv.gz": gzip.compress(rows(3)), "b.csv.gz": rows(3), "c.csv.gz": gzip.compress(rows(3))[:-9]}
        reports, written, _ = await transform(plan(container.url, gzip=True), tmp_path, files)
    assert written == {"a.csv.gz.out": b"0,0!\n1,1!\n2,4!\n"}
    failures = {r.source.name: r.failure for r in reports}
    assert str(failures["b.csv.gz"]).startswith("the file: it is not whole gzip data (--gzip): ")
    assert str(failures["c.csv.gz"]).startswith("the file: it is not whole gzip data (--gzip): ")


# ---- the command ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ([], 2, "Give an IMAGE, or --no-container"),
        (["some-image:1", "--no-container"], 2, "(not both)"),
        (["--no-container"], 1, "--no-container needs --model-data"),
        (["--no-container", "--split-type", "Line", "--concurrency", "50"], 1, "use --concurrency 16 or less"),
        (["--no-container", "--max-payload-mb", "101"], 2, "--max-payload-mb"),
        (["--no-container", "--retries", "4"], 2, "--retries"),
        (["--no-container", "--invocation-timeout", "3601"], 2, "--invocation-timeout"),
    ],
)
def test_the_command_refuses_before_starting_anything(args: list[str], code: int, words: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["local", "transform", "--input", str(tmp_path), "--output", "out", *args])
    assert result.exit_code == code, result.output
    assert words in result.output


@pytest.mark.parametrize(
    ("source", "target"), [("s3://b/in", "s3://b/in/out"), ("s3://b/in/", "s3://b/in"), ("{tmp}", "{tmp}/out")]
)
def test_an_output_inside_the_input_is_refused(source: str, target: str, tmp_path: Path) -> None:
    source, target = source.format(tmp=tmp_path), target.format(tmp=tmp_path)
    with pytest.raises(ConfigError, match="the next run would read these .out files as input"):
        check_s3_apart(source, target)
        check_apart(Path(source), Path(target))


# ---- --url: a server already running ---------------------------------------------------------


class _Running(http.server.BaseHTTPRequestHandler):
    """A server someone else started (the classic recipe, say): /ping, and one answer a line."""

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/ping" else 404, b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(200, b"".join(b"p" + line.split(b",")[0] + b"\n" for line in body.splitlines()))

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_url_sends_the_job_to_a_server_already_running(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Running)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "data.csv").write_bytes(b"1,a\n2,b\n\n3,c\n")
        said: list[str] = []
        request = TransformRequest(
            None,
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            url=f"http://127.0.0.1:{server.server_address[1]}/",
            content_type="text/csv",
            split_type="Line",
            assemble_with="Line",
        )
        assert local_transform(request, said.append) == 0, said
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "out" / "data.csv.out").read_bytes() == b"p1\np2\np3\n"
    assert any("answers /ping" in line for line in said)


def test_url_with_nothing_answering_says_so_and_fails(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens on it
    (tmp_path / "data.csv").write_bytes(b"1\n")
    said: list[str] = []
    request = TransformRequest(None, str(tmp_path / "data.csv"), str(tmp_path / "out"), url=f"http://127.0.0.1:{port}")
    assert local_transform(request, said.append) == 1
    assert "not 200: start the server first" in said[-1]
    assert not (tmp_path / "out" / "data.csv.out").exists()


@pytest.mark.parametrize(
    ("image", "model_data", "url", "words"),
    [
        ("img", None, "http://127.0.0.1:1", "give no IMAGE or --model-data with it"),
        (None, Path("m"), "http://127.0.0.1:1", "give no IMAGE or --model-data with it"),
        (None, None, "127.0.0.1:8080", "give the running server's http://HOST:PORT"),
    ],
)
def test_url_refuses_what_it_would_not_use(image: str | None, model_data: Path | None, url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        check(TransformRequest(image, "in", "out", model_data=model_data, url=url))
