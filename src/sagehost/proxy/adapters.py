"""Payload translation for scoring servers whose API is not SageMaker-shaped.

An adapter turns named rows into one upstream request and the upstream's answer back into
named output rows; sagehost's codecs do the rest (every Content-Type in, every Accept out).

- `scr`: SAS Container Runtime — `POST /<module>` with `{"inputs": [{"name", "value"}, …]}`, one
  row per call; answers `{"data": {…}}` or `{"outputs": [{"name", "value"}, …]}`.
- `h2o`: H2O's REST scorer — `{"fields": […], "rows": [[…], …]}` (values as text), several rows
  per call; answers `{"fields": […], "score": [[…], …]}`.

Values are never retyped on the way (issue 14): a JSON string stays a string (`"007"` is a
category, not 7.0), a JSON number stays a number, an int an int. CSV cells are all text: a
column declared with a type (`--upstream-columns zip:str,age:int`) is converted to it here
(`typed`), or refused with a 400 naming the column; undeclared cells stay text, and `scr`, whose
API takes JSON numbers, guesses them: a cell that reads as a number goes as a float (SAS has
one numeric type, a double). `h2o` takes every value as text, so its cells go as sent.

Other APIs: `--adapter-request module:function` / `--adapter-response module:function` (see
`hooks`), which transform the raw bodies of a transparent forward.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from sagehost.errors import ConfigError, SchemaMismatch, UpstreamUnavailable

JSON = b"application/json"
Fields = tuple[str, ...]
Untyped = frozenset[str]
"""Fields whose values are CSV text with no declared type: an adapter may guess their type."""


@dataclass(frozen=True, slots=True)
class Scored:
    fields: Fields
    rows: list[list[Any]]


class Adapter(Protocol):
    name: str
    batchable: bool
    """Whether several rows may go in one upstream call (then concurrent requests are batched)."""

    def request(self, fields: Fields, rows: Sequence[Sequence[Any]], untyped: Untyped = frozenset()) -> bytes: ...

    def response(self, body: bytes) -> Scored: ...


class ScrAdapter:
    name = "scr"
    batchable = False

    def request(self, fields: Fields, rows: Sequence[Sequence[Any]], untyped: Untyped = frozenset()) -> bytes:
        [row] = rows
        inputs = [
            {"name": name, "value": _guess(value) if name in untyped else value}
            for name, value in zip(fields, row, strict=True)
        ]
        return orjson.dumps({"inputs": inputs})  # NaN (from .npy bodies) goes as null

    def response(self, body: bytes) -> Scored:
        answer = _json(body, "SAS Container Runtime")
        if isinstance(answer.get("data"), dict):
            data: dict[str, Any] = answer["data"]
            return Scored(tuple(data), [list(data.values())])
        outputs = answer.get("outputs")
        if isinstance(outputs, list) and all(isinstance(o, dict) and "name" in o for o in outputs):
            return Scored(tuple(str(o["name"]) for o in outputs), [[o.get("value") for o in outputs]])
        raise UpstreamUnavailable("The scoring server's answer has neither 'data' nor 'outputs' (not SCR-shaped).")


class H2oAdapter:
    name = "h2o"
    batchable = True

    def request(self, fields: Fields, rows: Sequence[Sequence[Any]], untyped: Untyped = frozenset()) -> bytes:
        # H2O's API takes every value as text: CSV cells go as sent, typed or not.
        return orjson.dumps({"fields": list(fields), "rows": [[_h2o_value(v) for v in row] for row in rows]})

    def response(self, body: bytes) -> Scored:
        answer = _json(body, "H2O scorer")
        fields, score = answer.get("fields"), answer.get("score")
        if not isinstance(fields, list) or not isinstance(score, list):
            raise UpstreamUnavailable("The scoring server's answer has no 'fields' and 'score' (not H2O-shaped).")
        return Scored(tuple(str(f) for f in fields), [list(row) for row in score])


ADAPTERS: dict[str, Callable[[], Adapter]] = {"scr": ScrAdapter, "h2o": H2oAdapter}


def adapter(name: str | None) -> Adapter | None:
    if name is None or name == "none":
        return None
    if name not in ADAPTERS:
        raise ConfigError(f"Unknown adapter {name!r}; built in: {', '.join(ADAPTERS)}, or none.")
    return ADAPTERS[name]()


# ---- hooks: raw-body transforms for any other API ------------------------------------------

RequestHook = Callable[[bytes, str, str], tuple[bytes, str]]
"""(body, content_type, accept) -> (upstream body, upstream content type)"""
ResponseHook = Callable[[int, bytes, str, str], tuple[bytes, str]]
"""(upstream status, upstream body, upstream content type, accept) -> (body, content type)"""


def hook(spec: str | None, what: str) -> Callable[..., Any] | None:
    """`module:function`, imported from sys.path (the model dir's code/ is on it)."""
    if not spec:
        return None
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise ConfigError(f"{what} must be module:function, not {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r} ({exc}).") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise ConfigError(f"{what} {spec!r}: {module_name} has no function {function!r}.")
    return found  # type: ignore[no-any-return]


def _json(body: bytes, who: str) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable(f"The {who} answered with something that is not JSON.") from None
    if not isinstance(answer, dict):
        raise UpstreamUnavailable(f"The {who} answered with JSON that is not an object.")
    return answer


# ---- CSV cells: typed from the declared schema, guessed only without one ------------------

_TRUE, _FALSE = frozenset({"true", "1", "yes", "t", "y"}), frozenset({"false", "0", "no", "f", "n"})
_INT = re.compile(r"[+-]?\d+")


def typed(fields: Fields, rows: list[list[Any]], declared: Mapping[str, str | None]) -> tuple[list[list[Any]], Untyped]:
    """CSV rows with each declared field's cells converted to its type (an empty cell is a missing
    value, None, except for `str`); and the fields left as text for want of a declared type."""
    kinds = [declared.get(name) for name in fields]
    untyped = frozenset(name for name, kind in zip(fields, kinds, strict=True) if kind is None)
    converters = [(i, fields[i], kind) for i, kind in enumerate(kinds) if kind not in (None, "str")]
    if not converters:
        return rows, untyped
    for number, row in enumerate(rows, 1):
        for i, name, kind in converters:
            row[i] = _convert(row[i], kind, name, number)
    return rows, untyped


def _convert(cell: Any, kind: str | None, name: str, row: int) -> Any:
    text = str(cell).strip()
    if not text:
        return None
    if kind == "int":
        if _INT.fullmatch(text) and len(text) <= 4000:  # int() refuses over 4,300 digits (ValueError)
            return int(text)  # "007" is 7: declared a number, it is one
        whole = _number(text)
        if whole is not None and whole.is_integer():
            return int(whole)  # "7.0", as a float column of whole numbers is often written
    if kind == "float":
        number = _number(text)
        if number is not None:
            return number
    if kind == "bool" and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    raise SchemaMismatch(
        f"Field {name!r} is declared {kind} (--upstream-columns), but row {row} has a value that is not."
    )


def _number(text: str) -> float | None:
    """What float() reads, but not Python's own spellings (`1_000`): those are text in a CSV."""
    if "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _guess(value: Any) -> Any:
    """An undeclared CSV cell for an API that takes JSON numbers: a number if it reads as one
    (NaN and infinities go as null), a blank is missing (null), anything else text."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    number = _number(text)
    return value if number is None else number


def _h2o_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"  # JSON's spelling, as the client sent it
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
