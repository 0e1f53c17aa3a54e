"""Process model: bind, load (answering 503 meanwhile), warm up, fork workers, supervise, drain.

- The socket is bound first, so SageMaker's connections are accepted at once (it wants them
  within 250 ms) and its pings get a 503 while the model loads, not silence.
- Where the model allows it, it is loaded and warmed up once before forking (the warm-up is a
  request's whole path, so lazy imports and caches happen there), and the heap is frozen, so
  workers share its pages instead of copying them (measured by PSS: bench/memory.py).
  Runtimes that do not survive a fork (OpenMP pools, a JVM, onnxruntime, torch) load in each
  worker after the fork instead (OpenMP ones only when they run more than one thread per worker:
  sagehost.prefork.openmp_preloadable), while the parent answers 503 until the first worker is ready;
  for the libraries known to start no thread on import, the parent imports what loading the
  model imports (learnt in a throwaway child), so the workers still share those.
- Each worker is sagehost's HTTP server (sagehost.http.server, on uvloop) on the shared socket
  with one model thread.
- SIGTERM: stop intake, finish in-flight requests, exit 0 inside SageMaker's 30 s window.
  A worker that dies is replaced; a worker that cannot start stops the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from sagehost import codecs, prefork, supervisor
from sagehost.app import App, ServiceFactory
from sagehost.batching import MicroBatcher
from sagehost.config import Method, Settings
from sagehost.errors import ConfigError, ModelLoadError, SagehostError, StartupError
from sagehost.http.limits import Limits
from sagehost.http.loading import LoadingResponder
from sagehost.http.server import ConnectionType, serve_app
from sagehost.models import Loaded, fork_safe, load
from sagehost.models.script import ScriptHandler
from sagehost.predictor import MODEL_THREAD, ColumnKind, InThread, Model, ModelSpec
from sagehost.service import Invocation, RowService, ScriptService, Service

if TYPE_CHECKING:
    from sagehost.multimodel.routes import Routes

log = logging.getLogger("sagehost.server")

STARTUP_FAILED = supervisor.STARTUP_FAILED
INPUT_EXAMPLE = "input_example.json"


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM; the exit code for the process."""
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:  # a port in use, an address not on this machine
        report_startup_failure(ConfigError(f"Cannot listen on {settings.host}:{settings.port} ({exc.strerror})."))
        return 1
    log.info("Listening on %s:%d with %d worker(s)", settings.host, settings.port, settings.workers)
    if settings.multi_model:  # no model at start: POST /models loads them
        from sagehost.multimodel.host import serve_models

        return serve_models(sock, settings)
    preloaded: Loaded | None = None
    one_openmp_thread = _one_openmp_thread(settings)
    loaded_before = settings.workers == 1 or one_openmp_thread or _preload(settings)
    try:
        if loaded_before:
            preloaded = load_answering_503(sock, settings, one_openmp_thread)
            if one_openmp_thread:
                preloaded = _unless_threads_started(preloaded)
            elif settings.workers > 1 and settings.preload is None and not _fork_safe(preloaded):
                preloaded = None  # each worker loads its own copy after fork
    except StartupError as exc:
        report_startup_failure(exc)
        return 1
    if preloaded is None and not loaded_before and prefork.imports_learnable(settings):
        with _answering_503(sock):
            prefork.import_shareable(prefork.modules_loading_imports(lambda: load_and_warm(settings)))
    prefork.import_worker_modules()
    prefork.freeze_heap()
    if preloaded is not None and settings.workers == 1:
        return run_worker(sock, settings, preloaded)
    return supervise(sock, settings, preloaded)


def _preload(settings: Settings) -> bool:
    if settings.preload is not None:
        return settings.preload
    safe = fork_safe(settings)
    if not safe:
        log.info("This model's runtime does not survive fork: each worker loads its own copy")
    return safe


def _one_openmp_thread(settings: Settings) -> bool:
    """Whether the model, unsafe to fork in general, is an OpenMP one loaded before the fork since
    every worker runs it on one thread (sagehost.prefork.openmp_preloadable)."""
    if fork_safe(settings) or not prefork.openmp_preloadable(settings):
        return False
    log.info("This model's runtime (OpenMP) runs one thread per worker: it is loaded once, before forking")
    return True


def _unless_threads_started(loaded: Loaded) -> Loaded | None:
    """The model the parent loaded single-threaded, if loading and warming it up started no thread
    (no OpenMP pool for a forked worker to inherit half-alive); otherwise None: each worker loads
    its own copy after the fork, as for any runtime with threads. Those workers run every call on
    one thread, which a pool inherited half-alive does not hang: only a parallel region of more
    than one thread does (tests/integration/test_shared_memory.py shows both)."""
    threads = prefork.process_threads()
    if threads == 1:
        return loaded
    log.warning(
        "Loading the model left %d threads in the server's parent process, where one was expected (an OpenMP "
        "pool?): each worker loads its own copy after forking instead of sharing this one",
        threads,
    )
    return None


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def load_and_warm(settings: Settings) -> Loaded:
    loaded = load(settings)
    warm_up(loaded, settings)
    return loaded


def warm_up(loaded: Loaded, settings: Settings) -> None:
    """One request's path (decode, conform, predict, encode) before /ping says 200.

    With a row known to be valid (input_example.json, or a numeric model's zeros) this is a check:
    a model that fails it would fail every request, so the server does not start. Without one, a
    row of the right kinds is tried and may fail: it is there so the libraries' lazy imports and
    caches are made now, before the workers fork and share them, not in each worker."""
    if isinstance(loaded, ScriptHandler):
        return
    method = settings.default_method or loaded.spec.default_method
    method = method if method in loaded.spec.methods else "predict"
    body = _sample(loaded, settings.model_dir)
    if body is None:
        _rehearse(loaded, settings, method)
        return
    try:
        rows = _through_request_path(loaded, settings, body, method)
    except ModelLoadError:
        raise
    except (Exception, SagehostError) as exc:
        log.exception("Warm-up prediction failed")
        raise ModelLoadError(
            f"The model loaded ({loaded.spec.description}) but a warm-up {method} on a sample row raised "
            f"{type(exc).__name__}: {exc}. It would fail every request, so the server does not start. "
            "Check that the model file and the installed library versions match."
        ) from None
    log.info("Warm-up %s passed on %d row(s)", method, rows)


def _rehearse(model: Model, settings: Settings, method: Method) -> None:
    body = _guessed_record(model.spec)
    if body is None:
        return
    try:
        _through_request_path(model, settings, body, method)
    except (Exception, SagehostError) as exc:  # a guessed row: the model may refuse it, that is no fault
        log.debug("A warm-up %s on a guessed row raised %s", method, type(exc).__name__)


def _through_request_path(model: Model, settings: Settings, body: bytes, method: Method) -> int:
    """`body` (JSON) served as a request is, on this thread, without HTTP; how many rows it held.
    No event loop and no thread: a caller may be on a loop, and a thread started here would leave
    the forked workers its malloc arena (see load_answering_503)."""
    accept = codecs.negotiate(None, settings.default_accept)
    rows, shape = RowService(InThread(model), settings).prepare(Invocation(body, "application/json", accept))
    outputs = model.predict(rows, method)
    if len(outputs) != len(rows):
        raise ModelLoadError(f"The warm-up {method} returned {len(outputs)} outputs for {len(rows)} rows.")
    classes = model.spec.classes if method == "predict_proba" else None
    codecs.encode(outputs, accept, shape, [str(c) for c in classes] if classes else None)
    return len(rows)


def _sample(model: Model, model_dir: Path) -> bytes | None:
    """A JSON body of rows known to be valid, or None."""
    example = model_dir / INPUT_EXAMPLE
    if example.is_file():
        return example.read_bytes()
    if model.spec.sample:
        return orjson.dumps(model.spec.sample)
    return None


def _guessed_record(spec: ModelSpec) -> bytes | None:
    """One named record of the model's columns: text where it reads text, else 0."""
    if spec.feature_names is None or spec.kinds is None:
        return None
    values = ("sagehost-warm-up" if kind is ColumnKind.TEXT else 0.0 for kind in spec.kinds)
    return orjson.dumps(dict(zip(spec.feature_names, values, strict=True)))


def build_service(loaded: Loaded, settings: Settings) -> Service:
    if isinstance(loaded, ScriptHandler):
        return ScriptService(loaded, settings)
    batcher = MicroBatcher(
        InThread(loaded, inline_below_s=settings.inline_below_us / 1e6),
        max_rows=settings.max_batch_rows,
        max_wait_s=settings.max_batch_wait_ms / 1000,
        max_queue=settings.max_queue,
        timeout_s=settings.timeout_s,
    )
    return RowService(batcher, settings)


def run_worker(sock: socket.socket, settings: Settings, loaded: Loaded) -> int:
    async def load_service() -> Service:
        return build_service(loaded, settings)

    return run_app(sock, settings, load_service)


def run_app(
    sock: socket.socket,
    settings: Settings,
    load_service: ServiceFactory,
    connection: ConnectionType | None = None,
    models: Routes | None = None,
) -> int:
    """sagehost's HTTP server running the app on the shared socket until SIGTERM; the exit code.
    `models`: a multi-model server's /models routes."""
    app = App(settings, load_service, models)
    code = serve_app(sock, app, Limits.of(settings), connection)
    # Drained: a second SIGTERM while Python shuts down must not turn exit 0 into death by signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    MODEL_THREAD.shutdown()
    return STARTUP_FAILED if app.failed else code


def supervise(sock: socket.socket, settings: Settings, preloaded: Loaded | None) -> int:
    def work(ready_fd: int) -> int:
        return _worker_main(sock, settings, preloaded, ready_fd)

    return supervisor.supervise(sock, settings.workers, work, wait_ready=preloaded is None)


def _worker_main(sock: socket.socket, settings: Settings, preloaded: Loaded | None, ready_fd: int) -> int:
    """A forked worker: load (unless the parent did), tell the parent, serve. Its exit code."""
    try:
        loaded = preloaded
        if loaded is None:
            try:
                loaded = load_and_warm(settings)
            except StartupError as exc:
                report_startup_failure(exc)
                return STARTUP_FAILED
            except Exception as exc:  # a loader's own bug: still a model that cannot start, not a crash
                log.exception("Loading the model failed")
                report_startup_failure(ModelLoadError(f"Loading the model raised {type(exc).__name__}: {exc}."))
                return STARTUP_FAILED
            prefork.freeze_heap()
        if ready_fd >= 0:  # only the first workers report; a replacement gets -1
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"r")
            os.close(ready_fd)
        return run_worker(sock, settings, loaded)
    except BaseException:
        log.exception("Worker %d crashed", os.getpid())
        return 1


def load_answering_503(sock: socket.socket, settings: Settings, one_openmp_thread: bool = False) -> Loaded:
    """Load (and warm up) on this thread while another answers every connection 503.
    `one_openmp_thread`: an OpenMP model to be shared by forked workers, warmed up with every
    OpenMP library held to one thread (the caller then checks that no thread was started).

    The load runs on the main thread so that the model's memory comes from the main malloc arena.
    Loaded on a thread that then exits, it sat in that thread's arena, which glibc hands to the
    next thread a process starts: each forked worker's model thread then allocated among the
    model's pages and copied them (measured on issue 17's pipeline: 2 workers took 1.15 times the
    anonymous memory of one when it was loaded on a thread, 1.12 times on the main thread)."""
    with _answering_503(sock):
        try:
            loaded = load(settings)
            if one_openmp_thread:
                with prefork.openmp_limited_to_one():  # the libraries are loaded now: the limit reaches them
                    warm_up(loaded, settings)
            elif settings.workers == 1 or _fork_safe(loaded):
                warm_up(loaded, settings)
            # else: a warm-up here would start thread pools that forked workers inherit half-alive;
            # the parent drops this copy and each worker loads and warms its own.
        except StartupError:
            raise
        except (Exception, SystemExit) as error:  # a model module that exits as it is imported, say
            log.error("Loading the model failed", exc_info=error)
            raise ModelLoadError(
                f"Loading the model raised {type(error).__name__}: {error}. The traceback is above."
            ) from None
    return loaded


@contextlib.contextmanager
def _answering_503(sock: socket.socket) -> Iterator[None]:
    done = threading.Event()

    def answer() -> None:
        with LoadingResponder(sock) as responder:
            while not done.is_set():
                responder.poll(0.05)

    responder = threading.Thread(target=answer, name="sagehost-503", daemon=True)
    responder.start()
    try:
        yield
    finally:
        done.set()
        responder.join()


def _fork_safe(loaded: Loaded) -> bool:
    return isinstance(loaded, ScriptHandler) or loaded.spec.fork_safe


def report_startup_failure(exc: StartupError) -> None:
    """The paragraph a user reads in CloudWatch (container stderr)."""
    print(f"sagehost: cannot start. {exc}", file=sys.stderr, flush=True)
