"""What `serve`'s parent does before forking workers, so that they share its memory pages.

A forked worker shares every page of its parent until one of them writes to it; then that page
is copied. Python writes to an object whenever it counts a reference to it, and its garbage
collector writes to every object it walks, so a worker copies whatever it touches. The parent
therefore does here, once, what each worker would otherwise do on its own: import the modules
serving needs, load and warm up the model where its runtime allows (sagehost.server), and
freeze the heap, so that the workers' collector leaves the parent's objects alone.

Models whose runtime is OpenMP (XGBoost, LightGBM, scikit-learn's HistGradientBoosting) are
loaded here too when every worker runs them on one thread (`openmp_preloadable`). An OpenMP
pool started in the parent hangs a forked worker's first parallel call of more than one thread
on the thread that started it (the main thread, where a worker runs cheap calls inline); but
only a parallel region of more than one thread starts a pool. The parent proves it started
none: it has one thread once the model is loaded and warmed up (`process_threads`), or the
workers load their own copies after the fork as for any other threaded runtime.
Measured by PSS, which counts a shared page once (bench/memory.py,
tests/integration/test_shared_memory.py).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import StartupError
from sagehost.models import describe, lightgbm, sklearn, xgboost

log = logging.getLogger("sagehost.server")


def freeze_heap() -> None:
    """Move the loaded model's objects (and every module's) out of the garbage collector's sight.

    Every full collection walks every tracked object: with a large model loaded that held the GIL
    for 0.4-0.9 s in the middle of requests (issue 14). Frozen before fork, the collector in the
    workers also no longer writes to the parent's pages, so they stay shared instead of being
    copied (https://docs.python.org/3/library/gc.html#gc.freeze): a worker that loads its own
    model collects once it has (`_worker_main`), and without this it copied every page of the
    modules the parent had imported (measured: 2 workers of an XGBClassifier took 1.82 times the
    anonymous memory of one with the modules imported and not frozen, 1.21 times frozen)."""
    gc.collect()
    gc.freeze()


def import_worker_modules() -> None:
    """Import before forking what each worker would import as it starts to serve: imported once
    here, its modules' pages are shared; imported in each worker, they would be private to each."""
    import encodings.utf_8_sig  # noqa: F401  # looked up by the first CSV body (codecs/csvrows.py)

    import uvloop  # noqa: F401  # sagehost.http.server.serve_app imports it where a worker calls it


# Libraries known to start no thread when imported (their OpenMP pools start on the first
# parallel call): a parent may import them before forking workers that then use them.
SHAREABLE_LIBRARIES = frozenset(
    {
        "cloudpickle",
        "dateutil",
        "joblib",
        "lightgbm",
        "llvmlite",
        "narwhals",
        "numba",  # the compiled tree walk; compiling, not importing, starts scipy's BLAS threads
        "numpy",
        "packaging",
        "pandas",
        "pytz",
        "scipy",
        "six",
        "sklearn",
        "threadpoolctl",
        "xgboost",
    }
)
LEARN_IMPORTS_UP_TO_BYTES = 64 * 1024 * 1024  # model files past this size are loaded once per worker only
LEARN_IMPORTS_TIMEOUT_S = 30


def imports_learnable(settings: Settings) -> bool:
    """Whether to learn the model's imports in a throwaway child: not when told not to preload
    (a script's model_fn runs once per worker, as its author asked), only for formats whose
    runtime is among SHAREABLE_LIBRARIES (H2O's JVM, say, would be started for nothing), and
    only for model files small enough that one more load costs little time: for a big one the
    libraries are a small part of a worker's memory, and a second load would delay /ping."""
    if settings.preload is not None or not settings.model_dir.is_dir():
        return False
    try:
        servable = describe(settings.model_dir, settings)
    except StartupError:
        return False  # the workers' load says why
    found = servable.found
    return (
        servable.script is None
        and set(servable.extras) <= SHAREABLE_LIBRARIES
        and found is not None
        and found.path.is_file()
        and found.path.stat().st_size <= LEARN_IMPORTS_UP_TO_BYTES
    )


def modules_loading_imports(load_and_warm: Callable[[], object]) -> list[str]:
    """The modules that `load_and_warm` (the model's) imports, learnt in a throwaway child
    (none if it takes longer than LEARN_IMPORTS_TIMEOUT_S: the workers load it all the same).

    For a model whose runtime does not survive a fork, which each worker loads for itself: the
    parent must not load it, but importing the same libraries here lets the workers share them
    (some 100 MB for scikit-learn, SciPy and pandas) instead of each importing its own copy."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (coverage is saved by os._exit in the child)
        os.close(read_end)
        code = 1
        try:
            logging.disable(logging.CRITICAL)  # the workers say what loading says
            before = set(sys.modules)
            load_and_warm()
            with os.fdopen(write_end, "wb") as out:
                out.write("\n".join(sorted(set(sys.modules) - before)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], LEARN_IMPORTS_TIMEOUT_S)
        names = pipe.read().decode().split() if ready else []
    if not ready:
        log.debug("Loading the model took over %d s in a throwaway child: imports not learnt", LEARN_IMPORTS_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return names


def import_shareable(names: list[str]) -> None:
    """Import the modules of `names` that belong to the standard library or SHAREABLE_LIBRARIES."""
    before = len(sys.modules)
    for name in names:
        top = name.partition(".")[0]
        if name in sys.modules or not (top in SHAREABLE_LIBRARIES or top in sys.stdlib_module_names):
            continue
        with contextlib.suppress(Exception):  # a name only ever set in sys.modules, say
            importlib.import_module(name)
    log.debug(
        "Imported %d modules before forking, of the %d loading the model imports", len(sys.modules) - before, len(names)
    )


# Per format: whether a model file's only threaded runtime is OpenMP, told from the file alone.
_OPENMP_ONLY: dict[str, Callable[[Path], bool]] = {
    "sklearn": sklearn.openmp_only,
    "xgboost": xgboost.openmp_only,
    "lightgbm": lightgbm.openmp_only,
}
_TASKS = Path("/proc/self/task")  # one entry per thread of this process, native ones included


def openmp_preloadable(settings: Settings) -> bool:
    """Whether the model, which does not survive a fork in general, may be loaded before it here:
    its only threaded runtime is OpenMP and every OpenMP call runs one thread (`one_openmp_thread`).
    Linux only: the proof that the parent started no pool counts its threads in /proc."""
    if settings.workers == 1 or settings.preload is not None or not settings.model_dir.is_dir():
        return False
    if not _TASKS.is_dir() or not one_openmp_thread():
        return False
    try:
        servable = describe(settings.model_dir, settings)
    except StartupError:
        return False  # the load says why
    found = servable.found
    openmp_only = _OPENMP_ONLY.get(found.format.name) if found is not None else None
    return servable.script is None and found is not None and openmp_only is not None and openmp_only(found.path)


def one_openmp_thread() -> bool:
    """OMP_NUM_THREADS is 1: scikit-learn's OpenMP loops run one thread, and so do the XGBoost and
    LightGBM calls, which are given at most that many (sklearn.library_threads). `sagehost serve`
    sets it to each worker's share of the cores unless the user set it: 1 by default, with as many
    workers as cores. A user who set it higher keeps a pool per worker, and a copy of the model."""
    return os.environ.get("OMP_NUM_THREADS", "").strip() == "1"


@contextlib.contextmanager
def openmp_limited_to_one() -> Iterator[None]:
    """Every OpenMP library loaded in this process held to one thread (threadpoolctl, which
    scikit-learn depends on), in case one read OMP_NUM_THREADS before sagehost set it."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def process_threads() -> int:
    """This process's threads, native ones (an OpenMP pool's) included."""
    return len(os.listdir(_TASKS))
