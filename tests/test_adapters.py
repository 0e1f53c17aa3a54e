"""The proxy's adapters keep each value's type: what the client sent is what the scoring server
gets, and CSV text is typed only as --upstream-columns declares (or, for SCR, guessed without it)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sagehost.config import parse_columns
from sagehost.errors import SchemaMismatch
from sagehost.proxy.adapters import H2oAdapter, ScrAdapter, typed
from sagehost.proxy.service import _cells_are_text

FIELDS = ("zip", "age", "amount", "member")


def scr_values(row: list[Any], untyped: frozenset[str] = frozenset()) -> list[Any]:
    return [i["value"] for i in orjson.loads(ScrAdapter().request(FIELDS, [row], untyped))["inputs"]]


def h2o_rows(rows: list[list[Any]], untyped: frozenset[str] = frozenset()) -> Any:
    return orjson.loads(H2oAdapter().request(FIELDS, rows, untyped))["rows"]


def test_scr_sends_json_values_as_they_came() -> None:
    row = ["007", 30, 80.5, True]
    assert scr_values(row) == ["007", 30, 80.5, True]
    assert [type(v) for v in scr_values(row)] == [str, int, float, bool]
    assert scr_values(["28007", "30", None, float("nan")]) == ["28007", "30", None, None]  # NaN: JSON's null


def test_scr_guesses_only_untyped_csv_cells() -> None:
    cells = ["007", "30", " ", "yes"]
    assert scr_values(cells, frozenset(FIELDS)) == [7.0, 30.0, None, "yes"]
    assert scr_values(cells, frozenset({"age"})) == ["007", 30.0, " ", "yes"]
    assert scr_values(["1_000", "1e3", "nan", "-2.5"], frozenset(FIELDS)) == ["1_000", 1000.0, None, -2.5]


def test_h2o_sends_every_value_as_its_text() -> None:
    assert h2o_rows([["007", 30, 80.5, True], ["28007", 30.0, None, False]]) == [
        ["007", "30", "80.5", "true"],
        ["28007", "30", "", "false"],
    ]
    assert h2o_rows([["007", "30", "80.50", "yes"]], frozenset(FIELDS)) == [["007", "30", "80.50", "yes"]]


def test_declared_types_convert_csv_cells() -> None:
    declared = dict(parse_columns("SAGEHOST_UPSTREAM_COLUMNS", "zip:str,age:int,amount:float,member:bool"))
    rows, untyped = typed(
        FIELDS, [["007", "030", "8", "TRUE"], ["", "7.0", "-1.5e2", "0"], ["x", "", "", ""]], declared
    )
    assert rows == [["007", 30, 8.0, True], ["", 7, -150.0, False], ["x", None, None, None]]
    assert untyped == frozenset()
    assert [type(v) for v in rows[0]] == [str, int, float, bool]


def test_undeclared_fields_are_left_as_text_and_named() -> None:
    declared = dict(parse_columns("SAGEHOST_UPSTREAM_COLUMNS", "zip,age:int"))
    rows, untyped = typed(FIELDS, [["007", "30", "8", "y"]], declared)
    assert rows == [["007", 30, "8", "y"]] and untyped == frozenset({"zip", "amount", "member"})


@pytest.mark.parametrize(
    ("column", "cell"), [("age:int", "7.5"), ("age:int", "thirty"), ("age:float", "1_0"), ("age:bool", "maybe")]
)
def test_a_cell_that_is_not_its_declared_type_is_a_400_without_the_value(column: str, cell: str) -> None:
    declared = dict(parse_columns("SAGEHOST_UPSTREAM_COLUMNS", column))
    with pytest.raises(SchemaMismatch) as raised:
        typed(("age",), [["1"], [cell]], declared)
    assert "'age' is declared" in raised.value.message and "row 2" in raised.value.message
    assert cell not in raised.value.message  # the user's data never goes into an answer


@pytest.mark.parametrize(
    ("body", "content_type", "text"),
    [
        (b"1,2", "text/csv", True),
        (b"1,2", "text/csv; charset=utf-8", True),
        (b"1,2", "application/octet-stream", True),
        (b'{"a": "1"}', "application/octet-stream", False),
        (b"\x93NUMPY...", "application/octet-stream", False),
        (b'{"a": "1"}', "application/json", False),
        (b'{"a": "1"}', "application/jsonlines", False),
    ],
)
def test_which_bodies_hold_text_cells(body: bytes, content_type: str, text: bool) -> None:
    assert _cells_are_text(body, content_type) is text
