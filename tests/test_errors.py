"""The error tree: every sagehost exception class is drawn in errors.py's docstring, under its
real parent, with the status and code it carries."""

from __future__ import annotations

import ast
import functools
import importlib
import re
from pathlib import Path

import pytest

from sagehost import errors
from sagehost.errors import SagehostError, StartupError

SRC = Path(errors.__file__).parent
_LINE = re.compile(r"^(?P<indent>[│├└─ ]*)(?P<name>_?[A-Z]\w+)(\s+(?P<status>\d{3}) (?P<code>[a-z_]+))?")


@functools.cache
def drawn() -> dict[str, tuple[str | None, int | None, str | None]]:
    """The docstring's tree: class name -> (parent, status, code) as drawn."""
    block = (errors.__doc__ or "").split("```")[1]
    tree: dict[str, tuple[str | None, int | None, str | None]] = {}
    parents: list[str] = []
    for line in block.strip("\n").splitlines():
        match = _LINE.match(line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match["indent"]) // 4
        parents[depth:] = [match["name"]]
        status = int(match["status"]) if match["status"] else None
        tree[match["name"]] = (parents[depth - 1] if depth else None, status, match["code"])
    return tree


@functools.cache
def exception_classes() -> dict[str, str]:
    """Every exception class in src/ (found by its bases' names) but private signals: name -> module."""
    defined: dict[str, tuple[str, list[str]]] = {}
    for path in SRC.rglob("*.py"):
        module = ".".join(("sagehost", *path.relative_to(SRC).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                defined[node.name] = (module, bases)

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in seen:
            return False
        if name.endswith(("Error", "Exception", "Exit")) and name not in defined:
            return True  # a builtin or foreign exception
        return any(is_exception(base, seen | {name}) for base in defined.get(name, ("", []))[1])

    def is_ours(name: str) -> bool:
        bases = defined.get(name, ("", []))[1]
        return name in ("SagehostError", "StartupError") or any(is_ours(base) for base in bases)

    # A private exception outside both roots is a signal inside one module and never leaves it.
    return {
        name: module
        for name, (module, _) in defined.items()
        if is_exception(name) and (is_ours(name) or not name.startswith("_"))
    }


def test_every_exception_class_in_src_is_drawn_in_the_tree() -> None:
    found = exception_classes()
    assert {"SagehostError", "StartupError", "HookError", "EngineError"} <= found.keys()  # the scan works
    missing = sorted(f"{name} ({module})" for name, module in found.items() if name not in drawn())
    assert not missing, f"add these to errors.py's docstring tree: {missing}"


@pytest.mark.parametrize("name", sorted(drawn()))
def test_each_drawn_class_exists_under_its_drawn_parent_with_its_status_and_code(name: str) -> None:
    module = exception_classes().get(name)
    assert module is not None, f"{name} is drawn but defined nowhere in src/"
    cls = getattr(importlib.import_module(module), name)
    parent, status, code = drawn()[name]
    assert cls.__bases__[0].__name__ == (parent or "Exception")
    assert issubclass(cls, (SagehostError, StartupError)), "one tree: SagehostError or StartupError"
    if issubclass(cls, SagehostError):
        assert 400 <= cls.status <= 599
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code)
        if status is not None:
            assert (cls.status, cls.code) == (status, code)


def test_http_errors_answer_with_their_code_and_no_traceback() -> None:
    body = errors.UpstreamTooLarge("The scoring server's answer is over 6 MiB.").body("req-1")
    assert body == (
        b'{"error":{"code":"upstream_too_large","message":"The scoring server\'s answer is over 6 MiB.",'
        b'"request_id":"req-1"}}'
    )
    assert (errors.HeaderTooLarge.status, errors.UpstreamTooLarge.status) == (431, 502)
