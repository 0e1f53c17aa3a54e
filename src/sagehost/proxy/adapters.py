"""Payload translation for scoring servers whose API is not SageMaker-shaped.

An adapter turns named rows into one upstream request and the upstream's answer back into
named output rows; sagehost's codecs do the rest (every Content-Type in, every Accept out).

- `scr`: SAS Container Runtime — `POST /<module>` with `{"inputs": [{"name", "value"}, …]}`, one
  row per call; answers `{"data": {…}}` or `{"outputs": [{"name", "value"}, …]}`.
- `h2o`: H2O's REST scorer — `{"fields": […], "rows": [[…], …]}` (values as text), several rows
  per call; answers `{"fields": […], "score": [[…], …]}`.

Other APIs: `--adapter-request module:function` / `--adapter-response module:function` (see
`hooks`), which transform the raw bodies of a transparent forward.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from sagehost.errors import ConfigError, UpstreamUnavailable

JSON = b"application/json"
Fields = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scored:
    fields: Fields
    rows: list[list[Any]]


class Adapter(Protocol):
    name: str
    batchable: bool
    """Whether several rows may go in one upstream call (then concurrent requests are batched)."""

    def request(self, fields: Fields, rows: Sequence[Sequence[Any]]) -> bytes: ...

    def response(self, body: bytes) -> Scored: ...


class ScrAdapter:
    name = "scr"
    batchable = False

    def request(self, fields: Fields, rows: Sequence[Sequence[Any]]) -> bytes:
        [row] = rows
        inputs = [{"name": name, "value": _scr_value(value)} for name, value in zip(fields, row, strict=True)]
        return orjson.dumps({"inputs": inputs})

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

    def request(self, fields: Fields, rows: Sequence[Sequence[Any]]) -> bytes:
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


def _scr_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        try:
            return float(value) if value.strip() else None
        except ValueError:
            return value
    return value


def _h2o_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
