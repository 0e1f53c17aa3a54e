from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from sagehost.codecs import decode, encode, media_type, negotiate
from sagehost.errors import EmptyPayload, InvalidPayload, NotAcceptable, UnsupportedMediaType
from sagehost.predictor import Shape


@pytest.mark.parametrize(
    ("body", "rows", "columns", "shape"),
    [
        (b"[1, 2]", [[1, 2]], None, Shape.ROW),
        (b"[[1, 2], [3, 4]]", [[1, 2], [3, 4]], None, Shape.ROWS),
        (b'{"data": [[1, 2]]}', [[1, 2]], None, Shape.ROWS),
        (b'{"data": [1, 2]}', [[1, 2]], None, Shape.ROW),
        (b'{"instances": [[1, 2], [3, 4]]}', [[1, 2], [3, 4]], None, Shape.WRAPPED),
        (b'{"inputs": [[1, 2]]}', [[1, 2]], None, Shape.WRAPPED),
        (b'{"inputs": {"a": [1, 3], "b": [2, 4]}}', [[1, 2], [3, 4]], ("a", "b"), Shape.WRAPPED),
        (b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}', [[1, 2]], ("a", "b"), Shape.WRAPPED),
        (b'{"dataframe_records": [{"a": 1, "b": 2}]}', [[1, 2]], ("a", "b"), Shape.WRAPPED),
        (b'{"age": 4, "gender": "M"}', [[4, "M"]], ("age", "gender"), Shape.RECORD),
        (b'[{"a": 1, "b": 2}, {"b": 4, "a": 3}]', [[1, 2], [3, 4]], ("a", "b"), Shape.RECORDS),
    ],
)
def test_json_shapes(body: bytes, rows: list[list[object]], columns: tuple[str, ...] | None, shape: Shape) -> None:
    table = decode(body, "application/json; charset=utf-8")
    assert table.rows == rows
    assert table.columns == columns
    assert table.shape is shape


def test_record_missing_field_becomes_none() -> None:
    assert decode(b'[{"a": 1, "b": 2}, {"a": 3}]', "application/json").rows == [[1, 2], [3, None]]


def test_csv_fast_and_quoted_paths_agree() -> None:
    plain = decode(b"1,2\n3,4\n", "text/csv")
    quoted = decode(b'"1","2"\n"3","4"\n', "text/csv")
    assert plain.rows == quoted.rows == [["1", "2"], ["3", "4"]]


def test_jsonlines_rows_and_records() -> None:
    assert decode(b"[1, 2]\n[3, 4]\n", "application/jsonlines").rows == [[1, 2], [3, 4]]
    records = decode(b'{"a": 1}\n{"a": 2}\n', "application/jsonlines")
    assert records.columns == ("a",)
    assert records.rows == [[1], [2]]


def test_npy_one_and_two_dimensions() -> None:
    for array, expected_rows in ((np.arange(3.0), 1), (np.ones((4, 3)), 4)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        assert len(decode(buffer.getvalue(), "application/x-npy")) == expected_rows


def test_npy_refuses_pickled_objects() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidPayload, match="object arrays are refused"):
        decode(buffer.getvalue(), "application/x-npy")


def test_octet_stream_is_sniffed() -> None:
    assert decode(b' {"age": 4}', "application/octet-stream").shape is Shape.RECORD
    assert decode(b"1,2\n", "application/octet-stream").rows == [["1", "2"]]


def test_errors_name_the_problem_without_echoing_data() -> None:
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        decode(b"1", "text/plain")
    with pytest.raises(EmptyPayload):
        decode(b"  ", "text/csv")
    with pytest.raises(InvalidPayload, match="not valid JSON") as info:
        decode(b'{"secret": ', "application/json")
    assert "secret" not in info.value.message
    with pytest.raises(EmptyPayload):
        decode(b"[]", "application/json")


def test_media_type_and_negotiation() -> None:
    assert media_type("Text/CSV; charset=utf-8") == "text/csv"
    assert negotiate(None, "application/json") == "application/json"
    assert negotiate("*/*", "text/csv") == "text/csv"
    assert negotiate("text/html;q=0.9, text/csv", "application/json") == "text/csv"
    assert negotiate("application/x-npy;q=0.1, application/jsonlines", "application/json") == "application/jsonlines"
    with pytest.raises(NotAcceptable, match="text/html"):
        negotiate("text/html", "application/json")


def test_encode_mirrors_request_shape() -> None:
    proba = np.array([[0.25, 0.75]])
    assert orjson.loads(encode(proba, "application/json", Shape.RECORD, ["no", "yes"])) == {"no": 0.25, "yes": 0.75}
    assert orjson.loads(encode(proba, "application/json", Shape.WRAPPED)) == {"predictions": [[0.25, 0.75]]}
    assert orjson.loads(encode(np.array(["a", "b"]), "application/json")) == ["a", "b"]
    assert encode(np.array([1, 2]), "text/csv") == b"1\n2\n"
    assert encode(proba, "text/csv") == b"0.25,0.75\n"
    assert encode(np.array(["x,y"]), "text/csv") == b'"x,y"\n'
    assert encode(np.array([1, 2]), "application/jsonlines") == b"1\n2\n"
    assert np.array_equal(np.load(io.BytesIO(encode(proba, "application/x-npy"))), proba)
