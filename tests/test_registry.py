"""The format registry: the names the CLI offers, one module per format, no import cycles."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import sagehost.models
from sagehost.config import FLAVORS
from sagehost.models import registry

MODELS = Path(sagehost.models.__file__).parent


def test_the_cli_offers_exactly_the_registered_formats() -> None:
    # config.FLAVORS is kept apart so the CLI can offer the names without importing numpy.
    assert registry.NAMES == FLAVORS


def test_each_format_lives_in_the_module_named_after_it() -> None:
    for fmt in registry.FORMATS:
        module = importlib.import_module(f"sagehost.models.{fmt.name}")
        assert module.FORMAT is fmt
        assert fmt.find.__module__ == fmt.load.__module__ == module.__name__


def _imports(path: Path) -> set[str]:
    """The sibling modules of sagehost.models that `path` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if node.module == "sagehost.models":
            found.update(alias.name for alias in node.names)
        elif node.module.startswith("sagehost.models."):
            found.add(node.module.split(".")[2])
    return found & {p.stem for p in MODELS.glob("*.py")}


def test_the_models_package_has_no_import_cycle() -> None:
    graph = {p.stem: _imports(p) for p in MODELS.glob("*.py") if p.stem != "__init__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph[module]:
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
