"""The named attacks on the decoders (issue 14): each small body claims gigabytes, or a shape
that takes unbounded work, and each must be a 400 that says why, refused before the memory is
taken. Every refusal here is measured: tracemalloc's peak during decode stays far below what
the body claims, and the whole module runs under an address-space ceiling, so a decoder that
regresses fails with a MemoryError instead of taking the shared machine's memory."""

from __future__ import annotations

import asyncio
import io
import re
import resource
import struct
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sagehost import codecs
from sagehost.codecs import decode, limits
from sagehost.config import Settings
from sagehost.errors import InvalidPayload, SagehostError, SchemaMismatch
from sagehost.models.schema import conform, conform_chunks
from sagehost.predictor import ModelSpec
from sagehost.server import build_service, load_and_warm
from sagehost.service import Invocation, RowService
from tests.recordio_reference import Record, dense, sparse

GIB = 1024**3
# A refusal allocates no more than parsing the body takes (orjson's objects for a JSON body are
# up to 16 bytes a body byte), and never what the body claims.
REFUSAL_SLACK = 16 * 1024 * 1024
LIBSVM, NPY, RECORDIO, JSON, CSV = (
    "text/libsvm",
    "application/x-npy",
    "application/x-recordio-protobuf",
    "application/json",
    "text/csv",
)
LIBSVM_ATTACK = b"0 999999:1\n" * 2000  # 22 KB claiming a 2,000 x 1,000,000 float64 table (15 GiB)


@pytest.fixture(autouse=True, scope="module")
def address_space_ceiling() -> Iterator[None]:
    """Current usage + 2 GiB: a decoder that allocates what a body claims gets a MemoryError."""
    yield from ceiling(2 * GIB)


def ceiling(headroom: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def refused(body: bytes, content_type: str, width: int | None = None) -> InvalidPayload:
    """Decode, expecting InvalidPayload (a 400), and check how much memory the refusal took."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidPayload) as info:
            decode(body, content_type, width=width)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status == 400
    assert info.value.code == "invalid_payload"
    bound = REFUSAL_SLACK + limits.BYTES_PER_BODY_BYTE * len(body)
    assert peak < bound, f"refusing a {len(body):,}-byte body took {peak:,} bytes"
    return info.value


def npy_body(header: str, data: bytes = b"", version: int = 1) -> bytes:
    size = "<H" if version == 1 else "<I"
    prefix = b"\x93NUMPY" + bytes([version, 0])
    text = header.encode("latin-1")
    padding = (-(len(prefix) + struct.calcsize(size) + len(text) + 1)) % 64
    text += b" " * padding + b"\n"
    return prefix + struct.pack(size, len(text)) + text + data


def framed(record: bytes) -> bytes:
    return struct.pack("<II", 0xCED7230A, len(record)) + record + b"\x00" * ((-len(record)) % 4)


# ---- text/libsvm ------------------------------------------------------------------------


def test_libsvm_wide_index_without_a_width_is_refused_by_the_value_budget() -> None:
    assert len(LIBSVM_ATTACK) == 22_000
    error = refused(LIBSVM_ATTACK, LIBSVM)
    assert "would decode to 2,000 rows × 1,000,000 values (16,000,000,000 bytes)" in error.message
    assert "Send fewer or narrower rows" in error.message


def test_libsvm_index_past_the_models_width_is_refused_and_named() -> None:
    error = refused(b"0 1:1\n" + LIBSVM_ATTACK, LIBSVM, width=10)
    assert error.message == "libsvm row 2 has feature index 999,999, past this model's 10 features (indices 0 to 9)."


def test_libsvm_within_the_width_decodes_to_exactly_the_models_width() -> None:
    table = decode(b"0 1:1 3:2\n" * 2000, LIBSVM, width=10)
    assert isinstance(table.rows, np.ndarray)
    assert np.shape(table.rows) == (2000, 10)
    assert table.rows[0, 3] == 2 and np.isnan(table.rows[0, 0])


def test_one_wide_libsvm_row_is_within_the_64_mib_floor() -> None:
    # A single 1,000,000-wide row is 8 MB as float64: allowed without a width; the schema then
    # compares it with the model.
    assert np.shape(decode(b"0 999999:1\n", LIBSVM).rows) == (1, 1_000_000)


def test_libsvm_negative_and_overflowing_indices_are_refused() -> None:
    assert "indices must be 0 or more" in refused(b"0 -1:2\n", LIBSVM).message
    assert "line 1 is not 'label index:value" in refused(b"0 99999999999999999999999:1\n", LIBSVM).message


# ---- application/x-npy ------------------------------------------------------------------


def test_npy_header_claiming_more_than_the_body_holds_is_refused() -> None:
    body = npy_body("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000, 10), }", b"\x00" * 80)
    error = refused(body, NPY)
    assert "declares shape (1000000000, 10) of <f8 (80,000,000,000 bytes)" in error.message
    assert "the body holds 80 bytes after the header" in error.message


def test_npy_absurd_header_length_is_refused_before_reading_it() -> None:
    body = b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFFF) + b"{}"
    assert "declares 4,294,967,295 bytes; at most 10,000" in refused(body, NPY).message
    assert "ends inside its header" in refused(b"\x93NUMPY\x01\x00\x40\x00{'descr'", NPY).message


@pytest.mark.parametrize(
    ("descr", "reason"),
    [
        ("'|O'", "object arrays are refused"),
        ("'|S0'", "is not accepted"),
        ("'<c16'", "is not accepted"),
        ("[('a', '<f8')]", "is not accepted"),
    ],
)
def test_npy_dtypes_a_row_cannot_hold_are_refused(descr: str, reason: str) -> None:
    body = npy_body(f"{{'descr': {descr}, 'fortran_order': False, 'shape': (100000000000,), }}", b"\x00" * 64)
    assert reason in refused(body, NPY).message


def test_npy_pickle_is_refused() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "object arrays are refused" in refused(buffer.getvalue(), NPY).message


def test_npy_small_dtype_with_a_huge_matching_shape_is_held_to_the_value_budget() -> None:
    # 9,000,000 one-byte bools are 9 MB in the body but 72 MB as float64: over the 64 MiB floor,
    # under 16 bytes per body byte, so allowed; the same cells claimed by 3-D or negative shapes are not.
    body = npy_body("{'descr': '|b1', 'fortran_order': False, 'shape': (9000000,), }", b"\x01" * 9_000_000)
    assert np.shape(decode(body, NPY).rows) == (1, 9_000_000)
    assert "got 3-D" in refused(npy_body("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 1), }"), NPY).message
    negative = npy_body("{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 2), }")
    assert "negative dimension" in refused(negative, NPY).message


def test_npy_fortran_order_matches_numpy() -> None:
    array = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    buffer = io.BytesIO()
    np.save(buffer, array)
    np.testing.assert_array_equal(decode(buffer.getvalue(), NPY).rows, array)


# ---- application/x-recordio-protobuf ----------------------------------------------------


def test_recordio_length_past_the_end_is_refused() -> None:
    body = dense(np.ones((2, 5)))
    cut = body[: len(body) - 12]
    assert "a record's length runs past the end of the body" in refused(cut, RECORDIO).message
    huge = struct.pack("<II", 0xCED7230A, (1 << 29) - 1) + b"\x00" * 16
    assert "a record's length runs past the end of the body" in refused(huge, RECORDIO).message


def test_recordio_field_length_past_its_message_is_refused() -> None:
    # features (field 1, length-delimited) claims 1,000,000 bytes and holds 3.
    record = b"\x0a" + bytes([0xC0, 0x84, 0x3D]) + b"abc"
    assert "a field's length runs past the end of its message" in refused(framed(record), RECORDIO).message


def test_recordio_endless_varint_is_refused() -> None:
    record = b"\x08" + b"\xff" * 5000  # field 1 as a varint that never ends: not a 35,000-bit number
    assert "a number is longer than 10 bytes" in refused(framed(record), RECORDIO).message


def test_recordio_huge_sparse_keys_are_refused() -> None:
    body = sparse([{10**12: 1.0}] * 3, width=10**12 + 1)
    assert "would decode to 3 rows × 1,000,000,000,001 values" in refused(body, RECORDIO).message
    error = refused(body, RECORDIO, width=5)
    assert error.message == (
        "RecordIO-protobuf row 1 has feature index 1,000,000,000,000, past this model's 5 features (indices 0 to 4)."
    )


def test_recordio_declared_sparse_shape_is_a_claim_never_allocated() -> None:
    body = sparse([{0: 1.0, 3: 2.0}], width=10**15)  # shape says 10**15; the keys say 4
    assert np.shape(decode(body, RECORDIO).rows) == (1, 4)
    assert np.shape(decode(body, RECORDIO, width=6).rows) == (1, 6)


def test_recordio_one_long_row_among_many_short_ones_is_held_to_the_budget() -> None:
    # Dense rows of different lengths make one table as wide as the longest.
    wide = dense(np.ones((1, 100_000)))
    short = dense(np.ones((1, 1))) * 2_000
    assert "would decode to 2,001 rows × 100,000 values" in refused(wide + short, RECORDIO).message


def test_recordio_keys_and_values_must_pair() -> None:
    record = Record()
    tensor = record.features["values"].float32_tensor
    tensor.keys.extend([0, 1, 2])
    tensor.values.extend([1.0])
    assert "different number of keys and values" in refused(framed(record.SerializeToString()), RECORDIO).message


# ---- JSON, JSON lines, CSV ------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 1025, 100_000])
def test_json_nested_past_64_levels_is_refused_with_why(depth: int) -> None:
    body = b"[" * depth + b"1" + b"]" * depth
    expected = "The JSON is nested more than 64 levels deep"
    assert expected in refused(body, JSON).message
    assert expected in refused(body + b"\n" + body, "application/jsonlines").message
    assert expected in refused(body, "application/octet-stream").message


def test_json_nesting_hidden_in_strings_and_escapes_does_not_count() -> None:
    inside = '"' + "[" * 100 + '\\"' + "{" * 100 + '"'
    body = ("[" * 60 + inside + "]" * 60).encode()
    assert len(decode(body, JSON)) == 1
    assert len(decode(b"[" * 64 + b"]" * 64, JSON)) == 1
    mixed = b'{"a":' * 40 + b"[" * 25 + b"]" * 25 + b"}" * 40  # 65 levels of both kinds
    assert "nested more than 64" in refused(mixed, JSON).message


def test_records_that_each_name_new_fields_are_refused_before_the_table_is_built() -> None:
    body = b"[" + b",".join(b'{"k%d":1}' % i for i in range(20_000)) + b"]"
    error = refused(body, JSON)
    assert "The records name 20,000 different fields across 20,000 records" in error.message
    lines = b"\n".join(b'{"k%d":1}' % i for i in range(20_000))
    assert "20,000 different fields" in refused(lines, "application/jsonlines").message


def test_a_million_csv_columns_are_refused_before_they_are_split() -> None:
    body = b"0," * 999_999 + b"0\n"
    error = refused(body, CSV)
    assert error.message.startswith("A row holds 1,000,000 values; at most 100,000 per row")
    assert "A row holds 1,000,000 values" in refused(b"[" + b"0," * 999_999 + b"0]", JSON).message
    assert len(decode(body, CSV, width=1_000_000).rows[0]) == 1_000_000  # a model that wide may have them


def test_csv_malformed_quoting_is_a_400() -> None:
    assert "The CSV is malformed" in refused(b'"' + b"x" * 200_000 + b'"\n', CSV).message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"a,b\n1,2\n3\n", "2 columns are named, but rows hold 1 to 2 values"),
        (b"b,a\n1,2\n3,4,5\n", "2 columns are named, but rows hold 2 to 3 values"),
        (b"1,2\n3\n", "Rows have different numbers of values (1 to 2)"),
    ],
)
def test_ragged_csv_rows_are_a_400_naming_the_widths(body: bytes, message: str) -> None:
    spec = ModelSpec(methods=frozenset({"predict"}), feature_names=("a", "b"), n_features=2)
    with pytest.raises(SchemaMismatch, match=re.escape(message)) as info:
        conform(decode(body, CSV, width=2), spec)
    assert info.value.status == 400


def test_the_values_budget_is_64_mib_or_16_bytes_a_body_byte() -> None:
    assert limits.max_values(0) == limits.max_values(4 * 1024 * 1024) == 8 * 1024 * 1024
    assert limits.max_values(6 * 1024 * 1024) == 12 * 1024 * 1024


def test_only_small_csv_and_json_may_decode_on_the_event_loop() -> None:
    small, big = b"1,2\n" * 10, b"1,2\n" * 3000
    for inline in ("text/csv", "application/json", "Application/JSON; charset=utf-8", "application/jsonlines"):
        assert codecs.inline(small, inline), inline
        assert not codecs.inline(big, inline), inline
    for offloaded in (LIBSVM, NPY, RECORDIO, "application/octet-stream", None, "text/plain"):
        assert not codecs.inline(small, offloaded), offloaded


def test_a_big_csv_costs_a_numeric_model_its_floats_not_an_object_per_cell() -> None:
    # Decoded whole, one value per row costs a list and a string a row: 100 bytes a body byte.
    spec = ModelSpec(methods=frozenset({"predict"}), n_features=1)
    body = b"0\n" * 250_000
    tracemalloc.start()
    try:
        rows = conform_chunks(codecs.csv_chunks(body, width=1), spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.shape(rows.values) == (250_000, 1)
    # the text (1 byte a byte), the floats and their concatenation (8), one chunk's objects
    assert peak < 10 * len(body) + 8 * 1024 * 1024, f"{peak:,} bytes for a {len(body):,}-byte body"


# ---- through the service, with a really trained model -------------------------------------


@pytest.fixture(scope="module")
def iris_service(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RowService:
    settings = Settings(model_dir=iris_dir, scratch_dir=tmp_path_factory.mktemp("scratch"))
    service = build_service(load_and_warm(settings), settings)
    assert isinstance(service, RowService)
    return service


def invoke(service: RowService, body: bytes, content_type: str) -> bytes:
    return asyncio.run(service.invoke(Invocation(body, content_type, "text/csv"))).body


def test_the_service_refuses_indices_past_the_models_width(iris_service: RowService) -> None:
    with pytest.raises(SagehostError) as info:
        invoke(iris_service, LIBSVM_ATTACK, LIBSVM)
    assert info.value.status == 400
    assert "past this model's 4 features (indices 0 to 3)" in info.value.message
    assert invoke(iris_service, b"0 0:5.1 1:3.5 2:1.4 3:0.2\n" * 3, LIBSVM).count(b"\n") == 3


def test_the_service_refuses_an_npy_header_that_lies(iris_service: RowService) -> None:
    body = npy_body("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000, 10), }", b"\x00" * 80)
    with pytest.raises(SagehostError) as info:
        invoke(iris_service, body, NPY)
    assert info.value.status == 400
    assert "but the body holds 80 bytes" in info.value.message


def npy_of(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# 2,000 libsvm rows whose indices repeat (the last value wins): hundreds of milliseconds of
# parsing, and an answer small enough to encode in no time.
SLOW_TO_DECODE = Invocation((b"0" + b" 0:5.1 1:3.5 2:1.4 3:0.2" * 50 + b"\n") * 2_000, LIBSVM, "text/csv")
# 200,000 rows that decode at once, whose CSV answer of probabilities takes hundreds of milliseconds.
SLOW_TO_ENCODE = Invocation(npy_of(np.tile([5.1, 3.5, 1.4, 0.2], (200_000, 1))), NPY, "text/csv", "predict_proba")


@pytest.mark.parametrize(("invocation", "rows"), [(SLOW_TO_DECODE, 2_000), (SLOW_TO_ENCODE, 200_000)])
def test_slow_decoding_and_encoding_leave_the_event_loop_free(
    iris_service: RowService, invocation: Invocation, rows: int
) -> None:
    async def invoke_and_watch() -> tuple[float, float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)  # the ticker is running before the request starts
        started = time.perf_counter()
        answer = await iris_service.invoke(invocation)
        elapsed = time.perf_counter() - started
        done.set()
        await ticker
        assert answer.body.count(b"\n") == rows
        return max(gaps), elapsed

    longest_gap, elapsed = asyncio.run(invoke_and_watch())
    assert elapsed > 0.1, "too little work to tell"
    assert longest_gap < elapsed / 3, f"the loop stalled {longest_gap:.3f} s of a {elapsed:.3f} s request"


def test_a_big_csv_with_a_header_maps_its_columns_in_every_chunk(iris_service: RowService) -> None:
    header = b"petal_width,petal_length,sepal_width,sepal_length\n"
    rows = [b"0.2,1.4,3.5,5.1\n", b"2.3,5.2,3.0,6.7\n"]  # a setosa and a virginica, columns reordered
    body = header + b"".join(rows) * 20_000  # 640 KB: ten chunks
    assert len(body) > 8 * codecs.CHUNK_CHARS
    answer = invoke(iris_service, body, CSV).decode().splitlines()
    one_each = invoke(iris_service, header + b"".join(rows), CSV).decode().splitlines()
    assert len(answer) == 40_000
    assert answer == one_each * 20_000
    assert one_each[0] != one_each[1]
