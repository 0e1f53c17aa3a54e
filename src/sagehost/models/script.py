"""A user's inference.py, run exactly as aws/sagemaker-inference-toolkit runs it.

Hooks: `model_fn(model_dir)`, `input_fn(input_data, content_type)`, `predict_fn(data, model)`,
`output_fn(prediction, accept)`, or `transform_fn(model, input_data, content_type, accept)`;
each may take a trailing `context` argument, as in the toolkit. As there, JSON and CSV bodies
reach `input_fn` as `str`, other types as `bytes`; a missing or `*/*` Accept becomes the default
Accept; `output_fn` may return bytes/str or `(body, content_type)`; an exception carrying an
integer `status_code` (the toolkit's `BaseInferenceToolkitError`) sets the response status.

Hooks left out fall back to ours. A script that defines only `model_fn` is served through the
zero-code path (micro-batched); the others are called per request, since a user's
`predict_fn` may assume it sees one request at a time.

Several scripts in one process (multi-model) each get a namespace of their own, so their
`inference` and sibling modules (code/utils.py, …) stay theirs: see code_namespace.py.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sagehost import codecs
from sagehost.codecs import media
from sagehost.errors import ModelError, ModelLoadError, SagehostError
from sagehost.models import code_namespace
from sagehost.models.code_namespace import CodeNamespace
from sagehost.predictor import Table

log = logging.getLogger("sagehost.models")

HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")
_UTF8_TYPES = (media.JSON, media.CSV)


@dataclass(frozen=True)
class Script:
    path: Path
    module: ModuleType
    namespace: CodeNamespace | None = None
    """Set when the script was imported in a namespace of its own (see code_namespace.py)."""

    def hook(self, name: str) -> Callable[..., Any] | None:
        fn: object = getattr(self.module, name, None)
        if not callable(fn):
            return None
        if name == "model_fn" and self.namespace is not None:
            # A pickle model_fn loads names `inference.Foo` or `utils.Bar`: this model's.
            return self.namespace.with_plain_names(fn)
        return fn

    @property
    def defined(self) -> list[str]:
        return [name for name in HOOKS if self.hook(name) is not None]

    @property
    def model_fn_only(self) -> bool:
        return self.defined in ([], ["model_fn"])


def import_script(path: Path, *, isolated: bool = False) -> Script:
    """Import the user's script as the toolkit does: as the top-level module `inference` (its
    stem), with its folder on sys.path. In a namespace of its own instead (`isolated`, or when
    another folder's script already holds those names: several models in one process), so that
    its `inference` and sibling modules are its own."""
    requirements = path.parent / "requirements.txt"
    if requirements.exists():
        log.warning(
            "%s is not installed at start (no network calls at start, and it belongs in the image): "
            "bake it into the image with `pip install -r requirements.txt`.",
            requirements,
        )
    namespace = None
    try:
        if isolated or not code_namespace.plain_is_free(path.parent):
            namespace = CodeNamespace(path.parent)
            with namespace.plain_names():
                module = namespace.exec_script(path)
        else:
            module = _import_plain(path)
    except ModelLoadError:
        raise
    except Exception as exc:
        log.exception("Importing %s failed", path)
        raise ModelLoadError(
            f"Importing {path} raised {type(exc).__name__}: {exc}. Fix the script or the image "
            "(a missing package belongs in the image build, not in requirements.txt at start)."
        ) from None
    script = Script(path, module, namespace)
    if script.hook("transform_fn") and {"input_fn", "predict_fn", "output_fn"} & set(script.defined):
        raise ModelLoadError(
            f"{path} defines transform_fn together with input_fn/predict_fn/output_fn; "
            "the toolkit refuses that mix too. Keep transform_fn alone, or drop it."
        )
    where = f" as {namespace.package}.{path.stem}" if namespace is not None else ""
    log.info("Loaded %s%s with hooks: %s", path, where, ", ".join(script.defined) or "none")
    return script


def _import_plain(path: Path) -> ModuleType:
    code_dir = str(path.parent)
    code_namespace.claim_plain(path.parent)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)  # the toolkit puts code/ on the path, so sibling imports work
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path} is not an importable Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def call_hook(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a hook with or without the toolkit's trailing `context` argument."""
    try:
        count = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        count = len(args)
    if count == len(args) + 1:
        return fn(*args, None)
    return fn(*args)


class ScriptHandler:
    """Per-request hooks; runs on the worker's model thread."""

    def __init__(self, script: Script, model: Any, default_accept: str) -> None:
        self._script = script
        self._model = model
        self._default_accept = default_accept
        self._transform = script.hook("transform_fn")
        self._input = script.hook("input_fn")
        self._predict = script.hook("predict_fn")
        self._output = script.hook("output_fn")

    @property
    def description(self) -> str:
        return f"{self._script.path} ({', '.join(self._script.defined)})"

    def handle(self, body: bytes, content_type: str, accept: str | None) -> tuple[bytes, str]:
        if not accept or accept.strip() in ("*/*", ""):
            accept = self._default_accept
        data: Any = body
        if media.media_type(content_type) in _UTF8_TYPES:
            data = body.decode("utf-8")
        if self._transform is not None:
            result = self._run("transform_fn", self._transform, self._model, data, content_type, accept)
        else:
            decoded = (
                self._run("input_fn", self._input, data, content_type) if self._input else _input(body, content_type)
            )
            prediction = (
                self._run("predict_fn", self._predict, decoded, self._model)
                if self._predict
                else self._run("predict", self._model.predict, decoded)
            )
            if self._output is not None:
                result = self._run("output_fn", self._output, prediction, accept)
            else:
                kind = codecs.negotiate(accept, self._default_accept)
                result = (codecs.encode(_as_outputs(prediction), kind), kind)
        return _response(result, accept)

    def _run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return call_hook(fn, *args)
        except SagehostError:
            raise
        except Exception as exc:
            log.exception("inference.py %s raised", name)
            raise HookError(name, exc) from None


class HookError(ModelError):
    """A user hook raised: its `status_code` (toolkit errors carry one) decides the HTTP status."""

    def __init__(self, hook: str, exc: Exception) -> None:
        status = getattr(exc, "status_code", None)
        super().__init__(f"inference.py's {hook} raised {type(exc).__name__}; the server log has the traceback.")
        self._status = status if isinstance(status, int) and 400 <= status <= 599 else self.status

    @property
    def http_status(self) -> int:
        return self._status


def _input(body: bytes, content_type: str) -> Any:
    """Our default input_fn: the toolkit gives an ndarray; named columns come as a DataFrame."""
    table = codecs.decode(body, content_type)
    return table_to_input(table)


def table_to_input(table: Table) -> Any:
    if table.columns is not None:
        import pandas as pd

        return pd.DataFrame(table.rows, columns=list(table.columns))
    if isinstance(table.rows, np.ndarray):
        return table.rows
    try:
        return np.asarray(table.rows, dtype=np.float64)
    except (ValueError, TypeError):
        return np.asarray(table.rows, dtype=object)


def _as_outputs(prediction: Any) -> Any:
    if isinstance(prediction, (np.ndarray, list, tuple)):
        return prediction
    tolist = getattr(prediction, "tolist", None)  # pandas Series/DataFrame
    if callable(tolist):
        return tolist() if not hasattr(prediction, "to_numpy") else prediction.to_numpy()
    return [prediction]


def _response(result: Any, accept: str) -> tuple[bytes, str]:
    content_type = accept
    if isinstance(result, tuple) and len(result) == 2:
        result, content_type = result
    if isinstance(result, str):
        result = result.encode("utf-8")
    elif isinstance(result, (bytearray, memoryview)):
        result = bytes(result)
    if not isinstance(result, bytes):
        raise ModelError(
            f"inference.py's output must be bytes, str or (body, content_type); got {type(result).__name__}."
        )
    return result, str(content_type)
