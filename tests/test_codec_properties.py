"""Properties of every decoder, with hypothesis (issue 14):

- any bytes, and payloads that are well-formed but wrong (huge declared shapes, indices past the
  width, lengths past the end, deep nesting, ragged rows), end in a table or in one of our 4xx
  errors, through decode and the schema alike: never another exception;
- a payload that claims more values than the body's budget (codecs/limits.py) is refused, and
  no decode allocates more than the budget (tracemalloc's peak), under an address-space ceiling
  that turns a regression into a MemoryError rather than a machine out of memory;
- a valid payload gives exactly one row per row sent, with the values sent.

Example counts are bounded so the module runs in seconds; it is part of the default suite.
"""

from __future__ import annotations

import csv
import io
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from sagehost.codecs import csv_chunks, decode, encode, limits
from sagehost.errors import EmptyPayload, InvalidPayload, SagehostError, UnsupportedMediaType
from sagehost.models.schema import conform, conform_chunks
from sagehost.predictor import ColumnKind, ModelSpec, Rows, Table
from tests.recordio_reference import dense, sparse
from tests.test_codec_bounds import GIB, ceiling, npy_body

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(PROPERTY, max_examples=60)  # the costlier strategies

CONTENT_TYPES = [
    "application/json",
    "application/jsonlines",
    "text/csv",
    "application/x-npy",
    "application/octet-stream",
    "text/libsvm",
    "application/x-recordio-protobuf",
]
widths = st.none() | st.integers(min_value=1, max_value=64)


@pytest.fixture(autouse=True, scope="module")
def address_space_ceiling() -> Iterator[None]:
    yield from ceiling(2 * GIB)


def decoded(body: bytes, content_type: str, width: int | None = None) -> Table | None:
    """The table, or None when refused with one of our 4xx errors; anything else fails the test.
    The decode's peak allocation must stay within the body's budget."""
    tracemalloc.start()
    try:
        table = decode(body, content_type, width=width)
    except (InvalidPayload, EmptyPayload, UnsupportedMediaType) as exc:
        assert 400 <= exc.status < 500
        assert exc.message
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= max(limits.FLOOR_BYTES, limits.BYTES_PER_BODY_BYTE * len(body)), peak
    assert len(table) > 0
    assert width is None or not table.sparse or np.shape(table.rows)[1] == width
    return table


def conformed(table: Table, width: int | None, mixed: bool = False) -> Any:
    """The schema on a decoded table: rows, or None when refused with a 4xx."""
    kinds = (ColumnKind.NUMBER,) * (width - 1) + (ColumnKind.TEXT,) if mixed and width else None
    spec = ModelSpec(methods=frozenset({"predict"}), n_features=width, kinds=kinds)
    try:
        return conform(table, spec).values
    except SagehostError as exc:
        assert 400 <= exc.status < 500, exc
        return None


def values_in(table: Table) -> int:
    rows = table.rows
    return int(rows.size) if isinstance(rows, np.ndarray) else sum(len(row) for row in rows)


# ---- anything at all -------------------------------------------------------------------


@PROPERTY
@given(body=st.binary(max_size=3000), content_type=st.sampled_from(CONTENT_TYPES), width=widths, mixed=st.booleans())
def test_any_bytes_decode_or_give_a_4xx(body: bytes, content_type: str, width: int | None, mixed: bool) -> None:
    table = decoded(body, content_type, width)
    if table is not None:
        assert values_in(table) <= limits.max_values(len(body))
        conformed(table, width, mixed)


prefixes = st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", struct.pack("<I", 0xCED7230A), b"[", b"{"])


@PROPERTY
@given(prefix=prefixes, rest=st.binary(max_size=600), content_type=st.sampled_from(CONTENT_TYPES), width=widths)
def test_bytes_that_start_like_a_format_decode_or_give_a_4xx(
    prefix: bytes, rest: bytes, content_type: str, width: int | None
) -> None:
    table = decoded(prefix + rest, content_type, width)
    if table is not None:
        conformed(table, width)


# ---- JSON: arbitrary documents, deep nesting -----------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@FEW
@given(value=json_values, width=widths, mixed=st.booleans(), lines=st.booleans())
def test_any_json_document_decodes_or_gives_a_4xx(value: Any, width: int | None, mixed: bool, lines: bool) -> None:
    body = orjson.dumps(value)
    table = decoded(body + b"\n" + body if lines else body, "application/jsonlines" if lines else "application/json")
    if table is not None:
        conformed(table, width, mixed)


@st.composite
def nested(draw: st.DrawFn) -> tuple[bytes, int]:
    """A document `depth` levels deep, of lists and objects, with brackets hidden in strings."""
    depth = draw(st.integers(min_value=1, max_value=140))
    kinds = draw(st.lists(st.sampled_from(["list", "object"]), min_size=depth, max_size=depth))
    decoy = draw(st.text(alphabet='[]{}"\\ab', max_size=30))
    value: Any = [draw(scalars), decoy]
    for kind in reversed(kinds[1:]):
        value = [value, decoy] if kind == "list" else {"v" + decoy: value, "k": [decoy]}
    value = [value] if kinds[0] == "list" else {"v": value}
    return orjson.dumps(value), depth + 1


@PROPERTY
@given(document=nested())
def test_json_deeper_than_the_limit_is_refused_and_shallower_is_not(document: tuple[bytes, int]) -> None:
    body, depth = document
    try:
        decode(body, "application/json")
    except InvalidPayload as exc:  # too deep, or too deep a field for a record: the depth decides which
        assert ("nested more than 64 levels" in exc.message) == (depth > limits.MAX_DEPTH), exc.message
        return
    assert depth <= limits.MAX_DEPTH


# ---- CSV -------------------------------------------------------------------------------

cells = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)


@PROPERTY
@given(rows=st.lists(st.lists(cells, max_size=12), max_size=20), width=widths, mixed=st.booleans())
def test_any_csv_text_decodes_or_gives_a_4xx(rows: list[list[str]], width: int | None, mixed: bool) -> None:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    table = decoded(out.getvalue().encode(), "text/csv", width)
    if table is not None:
        conformed(table, width, mixed)


matrices = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 30), st.integers(1, 8)),
    elements=st.floats(-1e9, 1e9, allow_nan=False, width=32),
)


@PROPERTY
@given(matrix=matrices)
def test_valid_csv_gives_one_row_per_line_with_its_values(matrix: np.ndarray[Any, Any]) -> None:
    body = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in matrix).encode()
    table = decoded(body, "text/csv", matrix.shape[1])
    assert table is not None
    np.testing.assert_array_equal(conformed(table, matrix.shape[1]), matrix)


@PROPERTY
@given(matrix=matrices, layout=st.sampled_from(["rows", "records", "columns", "split", "instances", "lines"]))
def test_valid_json_gives_one_row_per_row_in_every_layout(matrix: np.ndarray[Any, Any], layout: str) -> None:
    names = [f"f{i}" for i in range(matrix.shape[1])]
    rows = matrix.tolist()
    content_type = "application/json"
    if layout == "rows":
        body = orjson.dumps(rows)
    elif layout == "records":
        body = orjson.dumps([dict(zip(names, row, strict=True)) for row in rows])
    elif layout == "columns":
        body = orjson.dumps({name: matrix[:, i].tolist() for i, name in enumerate(names)})
    elif layout == "split":
        body = orjson.dumps({"dataframe_split": {"columns": names, "data": rows}})
    elif layout == "instances":
        body = orjson.dumps({"instances": rows})
    else:
        body, content_type = b"\n".join(orjson.dumps(row) for row in rows), "application/jsonlines"
    table = decoded(body, content_type, matrix.shape[1])
    assert table is not None
    np.testing.assert_array_equal(conformed(table, matrix.shape[1]), matrix)


# ---- application/x-npy -----------------------------------------------------------------

descrs = st.sampled_from(["'<f8'", "'<f4'", "'|b1'", "'<i8'", "'|u1'", "'<U3'", "'|S2'", "'|O'", "'<c8'", "'|S0'"])
dims = st.integers(min_value=-2, max_value=10**13)


@PROPERTY
@given(
    descr=descrs,
    shape=st.lists(dims, max_size=3),
    fortran=st.booleans(),
    data=st.binary(max_size=512),
    version=st.sampled_from([1, 2]),
)
def test_npy_headers_that_claim_anything_decode_within_the_body_or_give_a_4xx(
    descr: str, shape: list[int], fortran: bool, data: bytes, version: int
) -> None:
    shown = "(" + "".join(f"{d}, " for d in shape) + ")"
    body = npy_body(f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shown}, }}", data, version)
    table = decoded(body, "application/x-npy")
    claimed = int(np.prod(shape, dtype=object)) if shape else 1
    if claimed * 8 > max(limits.FLOOR_BYTES, limits.BYTES_PER_BODY_BYTE * len(body)):
        assert table is None  # the budget: always refused
    if table is not None:
        rows = table.rows
        assert isinstance(rows, np.ndarray)
        assert rows.nbytes <= len(data)
        assert rows.shape[0] == (1 if len(shape) == 1 else shape[0])


@PROPERTY
@given(array=hnp.arrays(hnp.scalar_dtypes().filter(lambda d: d.kind in "biuf"), hnp.array_shapes(max_dims=2)))
def test_valid_npy_gives_one_row_per_row_with_its_values(array: np.ndarray[Any, Any]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    table = decoded(buffer.getvalue(), "application/x-npy")
    assert table is not None
    expected = array.reshape(1, -1) if array.ndim == 1 else array
    np.testing.assert_array_equal(table.rows, expected)


# ---- text/libsvm ---------------------------------------------------------------------------

indices = st.integers(min_value=-3, max_value=10**12)


@PROPERTY
@given(
    lines=st.lists(st.lists(st.tuples(indices, st.floats(allow_nan=False)), max_size=6), min_size=1, max_size=30),
    width=widths,
)
def test_libsvm_indices_that_claim_anything_decode_within_the_budget_or_give_a_4xx(
    lines: list[list[tuple[int, float]]], width: int | None
) -> None:
    body = "".join("1 " + " ".join(f"{i}:{v!r}" for i, v in line) + "\n" for line in lines).encode()
    table = decoded(body, "text/libsvm", width)
    all_indices = [i for line in lines for i, _ in line]
    top = max(all_indices, default=0)
    past_width = width is not None and top >= width
    over_budget = len(lines) * (width or top + 1) > limits.max_values(len(body))
    if min(all_indices, default=0) < 0 or past_width or over_budget:
        assert table is None
    else:
        assert table is not None
        assert len(table) == len(lines)
        conformed(table, width)


sparse_rows = st.lists(
    st.dictionaries(st.integers(0, 30), st.floats(-1e6, 1e6, allow_nan=False, width=32), max_size=8),
    min_size=1,
    max_size=25,
)


@PROPERTY
@given(rows=sparse_rows)
def test_valid_libsvm_gives_one_row_per_line_with_its_values(rows: list[dict[int, float]]) -> None:
    body = "".join("0 " + " ".join(f"{i}:{v!r}" for i, v in sorted(row.items())) + "\n" for row in rows).encode()
    table = decoded(body, "text/libsvm", 31)
    assert table is not None
    np.testing.assert_array_equal(table.rows, expected_dense(rows, 31))


def expected_dense(rows: list[dict[int, float]], width: int) -> np.ndarray[Any, Any]:
    out = np.full((len(rows), width), np.nan)
    for r, row in enumerate(rows):
        for i, v in row.items():
            out[r, i] = v
    return out


# ---- application/x-recordio-protobuf -------------------------------------------------------


@PROPERTY
@given(rows=sparse_rows)
def test_valid_recordio_gives_one_row_per_record_with_its_values(rows: list[dict[int, float]]) -> None:
    table = decoded(sparse(rows, width=31), "application/x-recordio-protobuf", 31)
    assert table is not None
    np.testing.assert_array_equal(table.rows, expected_dense(rows, 31))
    matrix = np.nan_to_num(expected_dense(rows, 31)).astype(np.float32)
    table = decoded(dense(matrix), "application/x-recordio-protobuf")
    assert table is not None
    np.testing.assert_array_equal(table.rows, matrix)


@FEW
@given(
    rows=sparse_rows,
    keys=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4),
    width=widths,
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
def test_recordio_with_huge_keys_cut_or_corrupted_decodes_within_the_budget_or_gives_a_4xx(
    rows: list[dict[int, float]], keys: list[int], width: int | None, cut: int, flips: list[tuple[int, int]]
) -> None:
    claim = sparse([dict.fromkeys(keys, 1.0)], width=max(keys))  # the shape is a claim too
    body = bytearray(sparse(rows, width=31) + claim)
    for position, byte in flips:
        body[position % len(body)] = byte
    body = body[: len(body) - cut % len(body)]
    table = decoded(bytes(body), "application/x-recordio-protobuf", width)
    if table is not None:
        assert values_in(table) <= limits.max_values(len(body))
        conformed(table, width)


# ---- answers ---------------------------------------------------------------------------------


@PROPERTY
@given(
    array=hnp.arrays(
        hnp.scalar_dtypes().filter(lambda d: d.kind in "biuf"),
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=40),
    )
)
def test_numeric_csv_answers_are_the_text_of_each_value_one_row_a_line(array: np.ndarray[Any, Any]) -> None:
    out = io.StringIO()
    rows = array.tolist()
    csv.writer(out, lineterminator="\n").writerows(row if array.ndim == 2 else [row] for row in rows)
    assert encode(array, "text/csv") == out.getvalue().encode()


# ---- big numeric CSV, chunk by chunk -------------------------------------------------------


@st.composite
def numeric_csv(draw: st.DrawFn) -> tuple[bytes, ModelSpec]:
    """A numeric CSV, perhaps with a header in another column order, perhaps quoted, perhaps
    with a ragged or non-numeric row; and the model it is sent to."""
    matrix = draw(matrices)
    names = tuple(f"f{i}" for i in range(matrix.shape[1]))
    lines = [[repr(float(v)) for v in row] for row in matrix.tolist()]
    if draw(st.booleans()):
        order = draw(st.permutations(range(len(names))))
        lines = [[names[i] for i in order]] + [[row[i] for i in order] for row in lines]
    if draw(st.booleans()) and len(lines) > 1:
        spoiled = draw(st.integers(1, len(lines) - 1))
        lines[spoiled] = draw(st.sampled_from([lines[spoiled][:-1], [*lines[spoiled], "1"], ["x"] * len(names)]))
    quoted = draw(st.booleans())
    text = "".join(",".join(f'"{c}"' if quoted else c for c in row) + "\n" for row in lines)
    named = draw(st.booleans())
    spec = ModelSpec(methods=frozenset({"predict"}), feature_names=names if named else None, n_features=len(names))
    return text.encode(), spec


@PROPERTY
@given(case=numeric_csv(), chunk_chars=st.integers(min_value=1, max_value=200))
def test_numeric_csv_chunk_by_chunk_is_the_whole_body_at_once(case: tuple[bytes, ModelSpec], chunk_chars: int) -> None:
    body, spec = case

    def outcome(rows: Callable[[], Rows]) -> Any:
        try:
            return rows().values
        except SagehostError as exc:
            assert 400 <= exc.status < 500
            return None

    whole = outcome(lambda: conform(decode(body, "text/csv", width=spec.n_features), spec))
    chunked = outcome(lambda: conform_chunks(csv_chunks(body, spec.n_features, chunk_chars), spec))
    if whole is None or chunked is None:
        assert whole is None and chunked is None
    else:
        np.testing.assert_array_equal(chunked, whole)
