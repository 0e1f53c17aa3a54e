"""One worker's side of the registry: its loaded copies, and the two flows that change them.

The worker that gets POST /models loads the model first (its cost decides 507), then has every
other worker load its own copy and answers 200 once all have. DELETE has every worker drop its
copy and answers once all have. Between, each worker reconciles what it holds with the shared
state whenever another one tells it to look (sagehost.multimodel.shared).

Loads run on one thread per worker, one at a time (so each is measured alone), never on the
event loop: invocations of the other models and /ping go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagehost.config import Settings
from sagehost.errors import (
    InsufficientMemory,
    InvalidPayload,
    ModelAlreadyLoaded,
    ModelError,
    ModelUnservable,
    NotFound,
    SagehostError,
    StartupError,
)
from sagehost.models import Loaded
from sagehost.multimodel import budget
from sagehost.multimodel.shared import WANTED, Models, Record, Shared
from sagehost.server import build_service, load_and_warm
from sagehost.service import Invocation, Reply, Service

log = logging.getLogger("sagehost.multimodel")

# SageMaker waits up to 360 s for a model to load (sagemaker-contract.md §4).
LOAD_DEADLINE_S = 360.0
_RECHECK_S = 0.5  # how often a waiting worker looks again without being told (a worker may die)
_REFUSED_ROOTS = ("/dev", "/proc", "/sys")
MIB = 1024 * 1024


@dataclass
class Copy:
    """This worker's copy of a model."""

    serial: str
    service: Service
    cost: int


class Home:
    """The Service behind /ping and /invocations on a multi-model server: healthy with no model
    loaded (SageMaker pings before it loads any), and /invocations says where models answer."""

    uses_methods = False
    description = "multi-model server"

    async def healthy(self) -> bool:
        return True

    async def invoke(self, invocation: Invocation) -> Reply:
        raise NotFound(
            "This is a multi-model server (SAGEMAKER_MULTI_MODEL): load a model with POST /models "
            '{"model_name": NAME, "url": DIR} and invoke it with POST /models/NAME/invoke.'
        )


class Registry:
    """A worker's loaded copies; `add` and `remove` run the two flows across every worker."""

    def __init__(self, shared: Shared, settings: Settings) -> None:
        self.shared = shared
        self.settings = settings
        self.home = Home()
        self.copies: dict[str, Copy] = {}
        self._pid = os.getpid()
        self._loader: ThreadPoolExecutor | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._dirty = False
        self._reconciling: asyncio.Task[None] | None = None
        self._inbox: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the others and load what they serve (a worker replacing one that died)."""
        self._pid = os.getpid()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="sagehost-load")
        self._inbox = self.shared.register(self._pid)  # before reading the state: no change is missed
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inbox.fileno(), self._on_notice)
        self._on_notice()
        assert self._reconciling is not None
        await self._reconciling

    def close(self) -> None:
        """Leave the others."""
        if self._inbox is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
        self.shared.leave(self._pid)
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)

    def service(self, name: str) -> Service:
        copy = self.copies.get(name)
        if copy is None:
            raise NotFound(f"Model {name[:200]!r} is not loaded: load it with POST /models first.")
        return copy.service

    # ---- POST /models -----------------------------------------------------------------------

    async def add(self, name: str, url: str) -> None:
        """Load `name` from `url` in every worker; returns once every one can serve it."""
        model_dir = _model_dir(url)
        estimate = await asyncio.to_thread(budget.files_bytes, model_dir)
        serial = uuid.uuid4().hex
        with self.shared.changing() as models:
            if name in models:
                raise ModelAlreadyLoaded(f"Model {name[:200]!r} is already loaded; DELETE /models/NAME first.")
            self._check_fits(models, name, estimate, "is expected to")
            models[name] = Record(url, "first", self._pid, serial, estimate)
        try:
            copy = await self._load(model_dir, serial)
        except BaseException:
            self._forget(name, serial)
            raise
        cost = copy.cost
        try:
            with self.shared.changing() as models:
                record = _mine(models, name, serial)
                self._check_fits(models, name, cost, "takes")
                record.copies[self._pid] = record.estimate = cost
                record.phase = "all"
                self.copies[name] = copy
        except BaseException:
            del copy  # before giving its memory back
            self._forget(name, serial)
            await self._give_back()
            raise
        log.info("Loaded model %s from %s: %.1f MiB a copy", name, url, cost / MIB)
        await self._everywhere(name, serial)

    def _check_fits(self, models: Models, name: str, per_copy: int, verb: str) -> None:
        shared = self.shared
        used = shared.used(models, but=name)
        need = per_copy * shared.workers
        if used + need <= shared.budget:
            return
        others = sum(1 for n in models if n != name)
        raise InsufficientMemory(
            f"Model {name[:200]!r} {verb} take {need / MIB:.1f} MiB ({per_copy / MIB:.1f} MiB in each of "
            f"{shared.workers} workers), and {others} loaded models take {used / MIB:.1f} of the "
            f"{shared.budget / MIB:.0f} MiB budget. Unload one (DELETE /models/NAME; SageMaker does this "
            "and retries), or raise the budget with --model-memory-mb / SAGEHOST_MODEL_MEMORY_MB."
        )

    async def _everywhere(self, name: str, serial: str) -> None:
        """Wait for every worker's copy; if one cannot load it, none keeps it."""
        self.shared.notify(self.shared.live())
        failed = await self._until(lambda record: _all_have(record, self.shared.live()), name, serial)
        if failed:
            await self._unload_everywhere(name, serial)
            raise ModelError(f"Model {name[:200]!r} could not be loaded in every worker: {failed}")
        with self.shared.changing() as models:
            _mine(models, name, serial).phase = "ready"

    # ---- DELETE /models/<name> --------------------------------------------------------------

    async def remove(self, name: str) -> None:
        with self.shared.changing() as models:
            record = models.get(name)
            if record is None or record.phase != "ready":
                raise NotFound(f"Model {name[:200]!r} is not loaded.")
            record.phase, record.owner = "unload", self._pid
            serial = record.serial
        await self._unload_everywhere(name, serial)
        log.info("Unloaded model %s", name)

    async def _unload_everywhere(self, name: str, serial: str) -> None:
        with self.shared.changing() as models:
            record = _mine(models, name, serial)
            record.phase, record.owner = "unload", self._pid
            record.copies.pop(self._pid, None)
        if self.copies.get(name, None) is not None and self.copies[name].serial == serial:
            del self.copies[name]
            await self._give_back()
        self.shared.notify(self.shared.live())
        await self._until(lambda record: "" if not record.copies else None, name, serial)
        self._forget(name, serial)

    # ---- keeping up with the others ---------------------------------------------------------

    def _on_notice(self) -> None:
        """Another worker changed the state: wake whoever waits on it, and look again."""
        while True:
            try:
                self._inbox.recv(64)
            except OSError:  # BlockingIOError: nothing more to read
                break
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._dirty = True
        if self._reconciling is None or self._reconciling.done():
            self._reconciling = asyncio.ensure_future(self._reconcile())

    async def _reconcile(self) -> None:
        """Load the copies the state wants, drop the ones it does not, until told nothing new."""
        while self._dirty:
            self._dirty = False
            models = self.shared.read()
            todo = [(n, r) for n, r in models.items() if _wanted(r, self._pid) and _stale(self.copies.get(n), r)]
            dropped = [n for n, c in self.copies.items() if not _keeps(models.get(n), c)]
            for name in dropped:
                del self.copies[name]
                with self.shared.changing() as models:
                    if (record := models.get(name)) is not None:
                        record.copies.pop(self._pid, None)
                await self._give_back()
                self.shared.notify(self.shared.live())
            for name, record in todo:
                await self._copy(name, record)

    async def _copy(self, name: str, record: Record) -> None:
        """Load this worker's copy of a model another worker owns, and say so."""
        try:
            copy: Copy | None = await self._load(Path(record.url), record.serial)
            why = ""
        except SagehostError as exc:
            copy, why = None, exc.message
        with self.shared.changing() as models:
            current = models.get(name)
            if current is None or current.serial != record.serial or current.phase not in WANTED:
                copy = None  # unloaded meanwhile: drop it again
            elif copy is not None:
                current.copies[self._pid] = copy.cost
                self.copies[name] = copy
            else:
                current.failed[self._pid] = why
        if copy is None:
            await self._give_back()
        self.shared.notify(self.shared.live())

    async def _until(self, done: Callable[[Record], str | None], name: str, serial: str) -> str:
        """Wait until `done(record)` says: None to go on waiting, "" when done, else a failure."""
        deadline = time.monotonic() + LOAD_DEADLINE_S
        while True:
            record = self.shared.read().get(name)
            if record is None or record.serial != serial:
                return ""
            verdict: str | None = done(record)
            if verdict is not None:
                return verdict
            if time.monotonic() > deadline:
                return f"not every worker finished within {LOAD_DEADLINE_S:.0f} s"
            # No await since the read: a notice cannot slip between it and this future.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter, _RECHECK_S)

    # ---- loading ----------------------------------------------------------------------------

    async def _load(self, model_dir: Path, serial: str) -> Copy:
        # Each model's own code/ (SAGEMAKER_SUBMIT_DIRECTORY names the container's one script).
        settings = self.settings.replace(model_dir=model_dir, code_dir=None)
        loop = asyncio.get_running_loop()
        try:
            loaded, cost = await loop.run_in_executor(self._loader, _load_measured, settings)
        except StartupError as exc:
            raise ModelUnservable(str(exc)) from None
        except MemoryError:
            raise InsufficientMemory(f"The worker ran out of memory loading {model_dir}.") from None
        except Exception as exc:  # a loader's own bug: still a directory that cannot be served
            log.exception("Loading %s failed", model_dir)
            raise ModelUnservable(f"Loading the model in {model_dir} raised {type(exc).__name__}: {exc}.") from None
        return Copy(serial, build_service(loaded, settings), cost)

    async def _give_back(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._loader, budget.give_back)

    def _forget(self, name: str, serial: str) -> None:
        with self.shared.changing() as models:
            record = models.get(name)
            if record is not None and record.serial == serial:
                del models[name]
        copy = self.copies.get(name)
        if copy is not None and copy.serial == serial:
            del self.copies[name]


def _load_measured(settings: Settings) -> tuple[Loaded, int]:
    return budget.measured(lambda: load_and_warm(settings), settings.model_dir)


def _model_dir(url: str) -> Path:
    """The directory `url` names: refused under /dev, /proc and /sys (however it is spelt),
    NotFound when missing."""
    path = Path(url)
    for spelling in (os.path.abspath(url), os.path.realpath(url)):
        if any(spelling == root or spelling.startswith(root + "/") for root in _REFUSED_ROOTS):
            raise InvalidPayload(
                f"url {url[:200]!r} is under /dev, /proc or /sys, where no model is loaded from: "
                "give the model's directory, e.g. /opt/ml/models/NAME/model."
            )
    if not path.exists():
        raise NotFound(f"url {url[:200]!r} does not exist: give the directory the model was unpacked into.")
    if not path.is_dir():
        raise ModelUnservable(f"url {url[:200]!r} is a file: give the directory the model was unpacked into.")
    return path


def _mine(models: Models, name: str, serial: str) -> Record:
    record = models.get(name)
    if record is None or record.serial != serial:
        raise NotFound(f"Model {name[:200]!r} was unloaded while it loaded.")
    return record


def _all_have(record: Record, live: set[int]) -> str | None:
    if record.failed:
        return "; ".join(sorted(set(record.failed.values())))
    return "" if live <= record.copies.keys() else None


def _wanted(record: Record, pid: int) -> bool:
    return record.phase in WANTED and pid not in record.failed


def _stale(copy: Copy | None, record: Record) -> bool:
    return copy is None or copy.serial != record.serial


def _keeps(record: Record | None, copy: Copy) -> bool:
    """Whether this worker keeps its copy: the state still wants this very load of it."""
    if record is None or record.serial != copy.serial:
        return False
    return record.phase != "unload"
