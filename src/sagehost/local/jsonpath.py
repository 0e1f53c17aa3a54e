"""The JSONPath subset Batch Transform's InputFilter and OutputFilter take, parsed and applied.

SageMaker documents these operators, and no others (no `..`, no `?()` filters, no functions):
`$` the root; `.name` or `['name']` a child; `['a','b']` several children (names only, not
paths); `*` or `[*]` every element; `[1]`, `[-1]` an element; `[1,3]` several; `[2:5]`, `[:5]`,
`[2:]` a slice, and indexes and slices mixed (`[0,5:]`). At most 63 characters.
https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-data-processing.html#data-processing-operators

A selector that picks one element yields that value; one that picks several yields them as a
collection (a list, or an object for several names), and what follows in the path applies to each
of them: `$['id','SageMakerOutput']` -> `{"id": ..., "SageMakerOutput": ...}`, `$[0,-1]` on a CSV
row -> its first and last cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sagehost.errors import ConfigError

MAX_CHARS = 63
HELP = "$, .name, ['a','b'], *, [1], [-1], [0,3], [2:5], [:5], [2:] (no .. or ?() filters)"

_NAME = re.compile(r"\.([^.\[\]'\"*\s,:()?@$]+)")
_QUOTED = re.compile(r"\s*'([^'.\[\]]+)'\s*")  # a quoted name is one field, not a nested path
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Names:
    names: tuple[str, ...]


@dataclass(frozen=True)
class Items:
    items: tuple[int | slice, ...]


@dataclass(frozen=True)
class Every:
    pass


Segment = Names | Items | Every


@dataclass(frozen=True)
class JsonPath:
    text: str
    segments: tuple[Segment, ...]

    @property
    def whole(self) -> bool:
        """`$`: the record as it is."""
        return not self.segments

    @property
    def indexes_only(self) -> bool:
        """Only element selectors: what a CSV row (an array of cells) can take."""
        return all(isinstance(s, Items) for s in self.segments)

    def select(self, value: Any) -> Any:
        """The part of `value` this path selects; ValueError, in words, when it is not there."""
        return _apply(self.segments, value)


def parse(text: str, option: str) -> JsonPath:
    """`option` names the flag in the error a person reads."""
    path = text.strip()
    if len(path) > MAX_CHARS:
        raise ConfigError(f"{option} is {len(path)} characters; SageMaker takes at most {MAX_CHARS}.")
    if not path.startswith("$"):
        raise ConfigError(f"{option} {text!r} must start at the record's root, $ (e.g. $.features or $[1:]).")
    segments: list[Segment] = []
    at = 1
    while at < len(path):
        segment, at = _segment(path, at, option)
        segments.append(segment)
    return JsonPath(path, tuple(segments))


def _segment(path: str, at: int, option: str) -> tuple[Segment, int]:
    if path.startswith((".*", "[*]"), at):
        return Every(), at + (2 if path[at] == "." else 3)
    if path.startswith(".[", at):
        at += 1  # `.['name']` and `.[*]` are spelled either way
        if path.startswith("[*]", at):
            return Every(), at + 3
    if path.startswith("[", at):
        end = path.find("]", at)
        if end < 0:
            raise _unsupported(path, option)
        return _bracket(path[at + 1 : end], path, option), end + 1
    name = _NAME.match(path, at)
    if name is None:
        raise _unsupported(path, option)
    return Names((name[1],)), name.end()


def _bracket(inside: str, path: str, option: str) -> Segment:
    parts = inside.split(",")
    if "'" in inside:
        quoted = [_QUOTED.fullmatch(part) for part in parts]
        if not all(quoted):
            raise _unsupported(path, option)
        return Names(tuple(match[1] for match in quoted if match))
    items: list[int | slice] = []
    for part in (p.strip() for p in parts):
        if _NUMBER.fullmatch(part):
            items.append(int(part))
        elif ":" in part and all(not bound or _NUMBER.fullmatch(bound) for bound in part.split(":", 1)):
            start, stop = (int(bound) if bound else None for bound in part.split(":", 1))
            items.append(slice(start, stop))
        else:
            raise _unsupported(path, option)
    return Items(tuple(items))


def _unsupported(path: str, option: str) -> ConfigError:
    return ConfigError(f"{option} {path!r} is not in SageMaker's JSONPath subset: {HELP}.")


def _apply(segments: tuple[Segment, ...], value: Any) -> Any:
    if not segments:
        return value
    segment, rest = segments[0], segments[1:]
    if isinstance(segment, Every):
        members = list(value.values()) if isinstance(value, dict) else _sequence(value, "*")
        return [_apply(rest, member) for member in members]
    if isinstance(segment, Names):
        if not isinstance(value, dict):
            raise ValueError(f"['{segment.names[0]}'] asks for a field of {_kind(value)}, not of an object")
        if len(segment.names) == 1:
            return _apply(rest, _field(value, segment.names[0]))
        return {name: _apply(rest, _field(value, name)) for name in segment.names}
    sequence = _sequence(value, "[…]")
    if len(segment.items) == 1 and isinstance(segment.items[0], int):
        return _apply(rest, _element(sequence, segment.items[0]))
    picked: list[Any] = []
    for item in segment.items:
        picked += sequence[item] if isinstance(item, slice) else [_element(sequence, item)]
    return [_apply(rest, member) for member in picked]


def _field(value: dict[str, Any], name: str) -> Any:
    if name not in value:
        raise ValueError(f"there is no field '{name}' (the record has {_fields(value)})")
    return value[name]


def _element(sequence: list[Any], index: int) -> Any:
    if not -len(sequence) <= index < len(sequence):
        raise ValueError(f"index {index} is outside the record's {len(sequence)} elements")
    return sequence[index]


def _sequence(value: Any, selector: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{selector} asks for elements of {_kind(value)}, not of an array")
    return value


def _fields(value: dict[str, Any]) -> str:
    names = list(value)[:8]
    more = ", …" if len(value) > len(names) else ""
    return ", ".join(repr(n) for n in names) + more if names else "no fields"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else "a scalar"
