"""Several models' inference.py in one process: each sees its own `inference`, its own sibling
modules (code/helpers.py, a code/pkg package with a relative import) and its own pickled classes.

Each model is a directory as a user ships it: code/ with inference.py and helpers.py of the same
names but different behaviour, and pickles written by importing that code as the user did
(`import inference`, in code/), so they name `inference.Model` and `helpers.Scaler`."""

from __future__ import annotations

import gc
import importlib
import json
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sagehost.config import Settings
from sagehost.errors import ModelLoadError
from sagehost.models import code_namespace, load
from sagehost.models.script import ScriptHandler, call_hook, import_script

INFERENCE = """
import json, os, pickle

import joblib

import helpers
from pkg.sub import tag


class Model:
    def __init__(self, scaler):
        self.scaler = scaler


def model_fn(model_dir):
    with open(os.path.join(model_dir, "model.pkl"), "rb") as file:
        model = pickle.load(file)  # names inference.Model and helpers.Scaler
    scaler = joblib.load(os.path.join(model_dir, "scaler.joblib"))
    assert isinstance(model, Model) and isinstance(scaler, helpers.Scaler), (type(model), type(scaler))
    return model


def input_fn(body, content_type):
    return json.loads(body)


def predict_fn(rows, model):
    from helpers import describe  # a lazy import, on every request

    return [describe(model.scaler.scale(sum(row))) + tag() for row in rows]


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""
HELPERS = """
FACTOR = {factor}


class Scaler:
    def scale(self, value):
        return value * FACTOR


def describe(value):
    return "{letter}" + str(value)
"""
SUB = "from . import leaf\n\n\ndef tag():\n    return leaf.TAG\n"
# One model, its rows and what it answers for them.
ROWS = [[1, 2], [3, 4]]
ANSWERS = {"a": ["a6:leaf-a", "a14:leaf-a"], "b": ["b-3:leaf-b", "b-7:leaf-b"]}


def model_dir(root: Path, letter: str) -> Path:
    """Model `letter`: helpers of its own behaviour, and pickles of its own classes."""
    folder = root / f"model-{letter}"
    code = folder / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "inference.py").write_text(INFERENCE)
    (code / "helpers.py").write_text(HELPERS.format(factor=2 if letter == "a" else -1, letter=letter))
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "sub.py").write_text(SUB)
    (code / "pkg" / "leaf.py").write_text(f"TAG = ':leaf-{letter}'\n")
    train = """
        import pickle, sys, joblib, helpers, inference
        with open(sys.argv[1] + "/model.pkl", "wb") as file:
            pickle.dump(inference.Model(helpers.Scaler()), file)
        joblib.dump(helpers.Scaler(), sys.argv[1] + "/scaler.joblib")
    """
    command = [sys.executable, "-c", textwrap.dedent(train), str(folder)]
    subprocess.run(command, cwd=code, check=True, timeout=60)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("isolation")
    return {letter: model_dir(root, letter) for letter in ANSWERS}


def answer(handler: ScriptHandler) -> list[str]:
    body, content_type = handler.handle(json.dumps(ROWS).encode(), "application/json", None)
    assert content_type == "application/json"
    result: list[str] = json.loads(body)
    return result


def handler(folder: Path, *, isolated: bool) -> ScriptHandler:
    script = import_script(folder / "code" / "inference.py", isolated=isolated)
    model_fn = script.hook("model_fn")
    assert model_fn is not None
    return ScriptHandler(script, call_hook(model_fn, str(folder)), "application/json")


def test_two_models_with_same_named_modules_each_answer_their_own_way(models: dict[str, Path]) -> None:
    plain_before = {name: sys.modules.get(name) for name in ("inference", "helpers", "pkg", "pkg.sub")}
    first, second = handler(models["a"], isolated=True), handler(models["b"], isolated=True)
    # Alternating, so that a module cached for one would show in the other's answer.
    assert [answer(first), answer(second), answer(first), answer(second)] == [ANSWERS["a"], ANSWERS["b"]] * 2
    # Their plain names were theirs only while they loaded; sys.modules is as it was.
    assert {name: sys.modules.get(name) for name in plain_before} == plain_before
    assert not any(key.startswith(code_namespace.PREFIX) for key in sys.modules)


def test_the_loader_isolates_a_second_script_of_another_folder(models: dict[str, Path], tmp_path: Path) -> None:
    loaded = {letter: load(Settings(model_dir=folder, scratch_dir=tmp_path)) for letter, folder in models.items()}
    for letter, handled in loaded.items():
        assert isinstance(handled, ScriptHandler)
        assert answer(handled) == ANSWERS[letter]


def test_a_model_s_code_is_freed_with_the_model(models: dict[str, Path]) -> None:
    handled = handler(models["b"], isolated=True)
    package = handled._script.namespace.package if handled._script.namespace else ""
    assert package in code_namespace._LIVE
    del handled
    gc.collect()
    assert package not in code_namespace._LIVE


def test_a_script_that_fails_to_import_leaves_no_module_behind(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "helpers.py").write_text("VALUE = 1\n")
    (code / "inference.py").write_text("import helpers\nraise RuntimeError('broken on purpose')\n")
    before = set(sys.modules)
    with pytest.raises(ModelLoadError, match="broken on purpose"):
        import_script(code / "inference.py", isolated=True)
    assert set(sys.modules) - before == set()


def test_one_model_alone_is_imported_as_the_toolkit_imports_it(models: dict[str, Path]) -> None:
    """A fresh process (as `serve` is): the script is the top-level module `inference`, its
    siblings plain modules on sys.path, and its pickles load — exactly as before isolation."""
    check = """
        import sys
        from pathlib import Path
        from sagehost.models.script import ScriptHandler, call_hook, import_script
        folder = Path(sys.argv[1])
        script = import_script(folder / "code" / "inference.py")
        assert script.namespace is None and script.module.__name__ == "inference"
        assert sys.modules["inference"] is script.module and str(folder / "code") == sys.path[0]
        model = call_hook(script.hook("model_fn"), str(folder))
        assert type(model) is sys.modules["inference"].Model
        assert type(model.scaler) is sys.modules["helpers"].Scaler
        handler = ScriptHandler(script, model, "application/json")
        print(handler.handle(b"[[1, 2], [3, 4]]", "application/json", None)[0].decode())
    """
    command = [sys.executable, "-c", textwrap.dedent(check), str(models["a"])]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ANSWERS["a"]


def test_another_thread_s_import_during_a_load_neither_waits_for_it_nor_gets_its_module(tmp_path: Path) -> None:
    """SageMaker loads a model while others answer: an import by plain name in another thread
    (a lazy import, a pickle) must not wait for the load, nor get the loading model's module."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "lonely_helpers.py").write_text("WHO = 'loading model'\n")
    (code / "inference.py").write_text(
        "import threading\n"
        "started, release = threading.Event(), threading.Event()\n"
        "def model_fn(model_dir):\n"
        "    started.set()\n"
        "    release.wait(30)\n"
        "    import lonely_helpers\n"
        "    return lonely_helpers.WHO\n"
    )
    script = import_script(code / "inference.py", isolated=True)
    model_fn = script.hook("model_fn")
    assert model_fn is not None
    found: list[object] = []

    def plain_import() -> None:
        try:
            found.append(importlib.import_module("lonely_helpers"))
        except ModuleNotFoundError as exc:
            found.append(exc)

    with ThreadPoolExecutor(2) as pool:
        loading = pool.submit(call_hook, model_fn, str(tmp_path))
        try:
            assert script.module.started.wait(30)
            other = threading.Thread(target=plain_import, daemon=True)
            other.start()
            other.join(10)
            assert not other.is_alive(), "a plain import waited for another model's load"
        finally:
            script.module.release.set()
        assert loading.result(30) == "loading model"
    assert len(found) == 1 and isinstance(found[0], ModuleNotFoundError)
