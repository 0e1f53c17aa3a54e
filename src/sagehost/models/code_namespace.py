"""Each model's code/ in a namespace of its own, so that models served side by side in one process
(multi-model) do not share `inference` or a same-named helper such as `utils`.

The AWS toolkit imports code/inference.py as the top-level module `inference`, with code/ on
sys.path so that `import utils` finds code/utils.py. In one process serving several models that
cannot hold: sys.modules keeps one `utils`, and the second model would get the first one's.
So an isolated script is loaded as `sagehost_code_<n>.inference`, `sagehost_code_<n>` being a
package whose `__path__` is that model's code dir, and every module loaded from there runs with
its own `__import__` (in the module's `__builtins__`, which CPython's import statement consults)
that maps a top-level name found in code/ onto that package: at import time and in a lazy import
inside predict_fn alike, whatever other models are doing meanwhile.

A namespace's modules are kept by the namespace, not by sys.modules (only while it imports are
they put there), so an unloaded model's code is freed with the model.

Pickles name their classes by plain module name (`inference.Foo`, `utils.Scaler`) and are
resolved through sys.modules. While the script is imported and while model_fn loads the model,
those plain names mean this model's modules (`plain_names`, one model at a time), and are put back
after. A pickle loaded later, in predict_fn, cannot see them: load it in model_fn.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

PREFIX = "sagehost_code_"
_ORIGINAL_IMPORT = builtins.__import__
_SERIAL = itertools.count(1)
_LIVE: weakref.WeakValueDictionary[str, CodeNamespace] = weakref.WeakValueDictionary()
_PLAIN_LOCK = threading.RLock()  # plain names in sys.modules mean one model's modules at a time


class CodeNamespace:
    """One model's code dir: its modules under `sagehost_code_<n>.`, found by its own `__import__`."""

    def __init__(self, code_dir: Path) -> None:
        self.code_dir = code_dir
        self.package = f"{PREFIX}{next(_SERIAL)}"
        self.modules: dict[str, ModuleType] = {}
        """Short name ("utils", "pkg.sub") -> module, for every module loaded from code_dir."""
        self.builtins: dict[str, Any] = {**builtins.__dict__, "__import__": self._import}
        self.root = ModuleType(self.package)
        self.root.__path__ = [str(code_dir)]
        self.root.__package__ = self.package
        self.root.__spec__ = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
        self.root.__spec__.submodule_search_locations = [str(code_dir)]
        self._local: dict[str, bool] = {}
        self._lock = threading.RLock()
        self._depth = 0
        _install_finder()
        _LIVE[self.package] = self

    # ---- loading the script ----------------------------------------------------------------

    def exec_script(self, path: Path) -> ModuleType:
        """Import `path` (in code_dir) as `<package>.<stem>`; the caller holds `plain_names()`."""
        fullname = f"{self.package}.{path.stem}"
        loader = _Loader(fullname, str(path), self)
        spec = importlib.util.spec_from_file_location(fullname, path, loader=loader)
        assert spec is not None  # a file location with a loader always makes a spec
        module = importlib.util.module_from_spec(spec)
        with self.mounted():
            sys.modules[fullname] = module
            try:
                loader.exec_module(module)
            except BaseException:
                sys.modules.pop(fullname, None)
                raise
        return module

    def with_plain_names(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (model_fn) run inside `plain_names()`; its signature stays fn's."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.plain_names():
                return fn(*args, **kwargs)

        return wrapper

    @contextmanager
    def plain_names(self) -> Iterator[None]:
        """sys.modules's plain names for code_dir's modules mean this model's, until the block ends."""
        with _PLAIN_LOCK, self.mounted():
            names = self._listed()
            hidden = {key: sys.modules.pop(key) for key in list(sys.modules) if _top(key) in names}
            sys.modules.update({short: module for short, module in self.modules.items() if _top(short) in names})
            finder = _PlainFinder(self, names)
            sys.meta_path.insert(0, finder)
            try:
                yield
            finally:
                sys.meta_path.remove(finder)
                for key in [key for key in sys.modules if _top(key) in names]:
                    del sys.modules[key]
                sys.modules.update(hidden)

    # ---- imports -----------------------------------------------------------------------------

    def module(self, short: str) -> ModuleType:
        """This namespace's module `short`, imported if it is not yet."""
        found = self.modules.get(short)
        if found is not None:
            return found
        with self.mounted():
            return importlib.import_module(f"{self.package}.{short}")

    @contextmanager
    def mounted(self) -> Iterator[None]:
        """The namespace's modules in sys.modules (under their long names) while the block imports."""
        with self._lock:
            if self._depth == 0:
                sys.modules[self.package] = self.root
                for short, module in self.modules.items():
                    sys.modules[f"{self.package}.{short}"] = module
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._unmount()

    def _unmount(self) -> None:
        start = self.package + "."
        for key in [key for key in sys.modules if key == self.package or key.startswith(start)]:
            module = sys.modules.pop(key)
            if key != self.package:
                self.modules[key[len(start) :]] = module

    def _import(
        self,
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        """`__import__` for this namespace's modules: a name found in code_dir is this model's."""
        if level > 0:  # relative: resolved against the importing module's (long) package name
            package = str((globals or {}).get("__package__") or "")
            if package != self.package and not package.startswith(self.package + "."):
                return _ORIGINAL_IMPORT(name, globals, locals, fromlist or (), level)
            with self.mounted():
                return _ORIGINAL_IMPORT(name, globals, locals, fromlist or (), level)
        top = _top(name)
        if not self.is_local(top):
            return _ORIGINAL_IMPORT(name, globals, locals, fromlist or (), level)
        leaf = self.modules.get(name)
        wanted = [item for item in fromlist or () if item != "*"]
        if leaf is None or any(not hasattr(leaf, item) for item in wanted):
            with self.mounted():
                _ORIGINAL_IMPORT(f"{self.package}.{name}", None, None, fromlist or (), 0)
                leaf = sys.modules[f"{self.package}.{name}"]
                head = sys.modules[f"{self.package}.{top}"]
        else:
            head = self.modules[top]
        return leaf if fromlist else head

    def is_local(self, top: str) -> bool:
        """Whether `import top` means code_dir's module, as with code_dir first on sys.path: a
        module already imported from elsewhere (numpy, json) stays that one, as it would there."""
        known = self._local.get(top)
        if known is None:
            try:
                spec = importlib.machinery.PathFinder.find_spec(top, [str(self.code_dir)])
            except (ImportError, ValueError):
                spec = None
            loaded = sys.modules.get(top)
            known = spec is not None and (loaded is None or _from_code_dir(loaded))
            self._local[top] = known
        return known

    def _listed(self) -> set[str]:
        """The top-level names code_dir's files and folders import as."""
        suffixes = tuple(importlib.machinery.all_suffixes())
        names: set[str] = set()
        try:
            entries = list(self.code_dir.iterdir())
        except OSError:
            return names
        for entry in entries:
            name = entry.name.partition(".")[0]
            importable = entry.is_dir() or entry.name.endswith(suffixes)
            if importable and name.isidentifier() and not name.startswith("__") and self.is_local(name):
                names.add(name)
        return names


class _Loader(importlib.machinery.SourceFileLoader):
    """Runs a code_dir module with its namespace's `__import__` (exec keeps a `__builtins__` it is given)."""

    def __init__(self, fullname: str, path: str, namespace: CodeNamespace) -> None:
        super().__init__(fullname, path)
        self.namespace = namespace

    def exec_module(self, module: ModuleType) -> None:
        module.__builtins__ = self.namespace.builtins  # type: ignore[attr-defined]
        super().exec_module(module)


class _Existing(importlib.abc.Loader):
    """Answers an import with a module that already exists (another name for it), unchanged."""

    def __init__(self, get: Callable[[], ModuleType]) -> None:
        self._get = get
        self._spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = self._get()
        self._spec = getattr(module, "__spec__", None)
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the import machinery set it to the alias's spec


class _IsolatedFinder(importlib.abc.MetaPathFinder):
    """Finds `sagehost_code_<n>.x` in that namespace's code_dir, loaded with its `__import__`; a
    module it already holds is given back (a pickle or a lookup by long name, while unmounted)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PREFIX):
            return None
        package, _, short = fullname.partition(".")
        namespace = _LIVE.get(package)
        if namespace is None:
            return None
        existing = namespace.root if not short else namespace.modules.get(short)
        if existing is not None:
            module = existing
            return importlib.util.spec_from_loader(fullname, _Existing(lambda: module))
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader) and spec.origin:
            spec.loader = _Loader(fullname, spec.origin, namespace)
        return spec


class _PlainFinder(importlib.abc.MetaPathFinder):
    """While `plain_names()` holds: `import utils` by plain name (as pickle does) is the namespace's,
    in the thread loading it. Another thread's import finds what it would without (and never waits
    for this namespace's lock, which the loading thread holds while it may wait for that import)."""

    def __init__(self, namespace: CodeNamespace, names: set[str]) -> None:
        self._namespace = namespace
        self._names = names
        self._thread = threading.get_ident()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if _top(fullname) not in self._names or threading.get_ident() != self._thread:
            return None
        namespace = self._namespace
        return importlib.util.spec_from_loader(fullname, _Existing(lambda: namespace.module(fullname)))


_FINDER = _IsolatedFinder()


def _install_finder() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _top(name: str) -> str:
    return name.partition(".")[0]


_SCRIPT_DIRS: set[Path] = set()
"""Code dirs a script was imported from under plain names (the toolkit's way)."""


def plain_is_free(code_dir: Path) -> bool:
    """Whether a script in code_dir may take the plain names: no other code dir's script has."""
    return not _SCRIPT_DIRS or code_dir.resolve() in _SCRIPT_DIRS


def claim_plain(code_dir: Path) -> None:
    _SCRIPT_DIRS.add(code_dir.resolve())


def _from_code_dir(module: ModuleType) -> bool:
    return _code_dir_of(module) is not None or getattr(module, "__name__", "").startswith(PREFIX)


def _code_dir_of(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    return next((folder for folder in _SCRIPT_DIRS if path.is_relative_to(folder)), None)
