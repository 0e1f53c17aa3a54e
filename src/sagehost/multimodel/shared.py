"""The registry every worker shares: one directory, made before the workers fork.

- `state.json`: each model by name, with its directory, its phase, the worker that answers its
  POST /models (the owner) and what each worker's copy costs. Changed only under an exclusive
  `flock` on `lock`, and replaced whole (write, then rename), so a reader needs no lock.
- `workers/<pid>`: one file per worker, locked by it for its life. A file whose lock can be
  taken belongs to a worker that is gone (the kernel drops a dead process's locks): its copies
  are no longer counted. No pid is ever signalled, so a recycled pid is harmless.
- Notifications: each worker reads an abstract-namespace datagram socket named after the
  directory and its pid; a worker that changes the state sends one byte to every other one.
  Nothing is written to disk for them and a dead worker's name disappears with it.
  https://man7.org/linux/man-pages/man7/unix.7.html (abstract sockets)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

log = logging.getLogger("sagehost.multimodel")

Phase = Literal["first", "all", "ready", "unload"]
"""`first`: only the owner loads (its cost decides 507); `all`: every worker loads a copy;
`ready`: every worker had one when POST /models answered 200; `unload`: every worker drops it."""
WANTED: tuple[Phase, ...] = ("all", "ready")
_STATE = "state.json"
_LOCK = "lock"
_WORKERS = "workers"


@dataclass
class Record:
    """One model in the registry."""

    url: str
    phase: Phase
    owner: int
    serial: str
    """Unique to this load: a copy of an earlier load under the same name is not this one."""
    estimate: int
    """Bytes a copy is expected to cost: its files' size, then the owner's measure."""
    copies: dict[int, int] = field(default_factory=dict)
    """Worker pid -> bytes its copy costs."""
    failed: dict[int, str] = field(default_factory=dict)
    """Worker pid -> why its copy could not load."""

    @staticmethod
    def of(raw: dict[str, object]) -> Record:
        record = Record(**raw)  # type: ignore[arg-type]
        record.copies = {int(pid): int(cost) for pid, cost in record.copies.items()}
        record.failed = {int(pid): str(why) for pid, why in record.failed.items()}
        return record


Models = dict[str, Record]


class Shared:
    """The registry directory, as each process sees it."""

    def __init__(self, root: Path, workers: int, budget: int) -> None:
        self.root = root
        self.workers = workers
        self.budget = budget
        self._token = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]  # unique per registry
        self._own: int | None = None  # this worker's locked file, once registered

    @staticmethod
    def create(root: Path, workers: int, budget: int) -> Shared:
        (root / _WORKERS).mkdir(parents=True)
        (root / _STATE).write_bytes(b"{}")
        (root / _LOCK).touch()
        return Shared(root, workers, budget)

    # ---- the state -------------------------------------------------------------------------

    def read(self) -> Models:
        raw = orjson.loads((self.root / _STATE).read_bytes())
        return {name: Record.of(record) for name, record in raw.items()}

    @contextlib.contextmanager
    def changing(self) -> Iterator[Models]:
        """The state, to change in place under the lock; written back when the block ends
        without an exception. Copies of workers that are gone are dropped on the way."""
        with (self.root / _LOCK).open("rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            models = self.read()
            _forget(models, self.live())
            yield models
            raw = {name: dataclasses.asdict(record) for name, record in models.items()}
            fresh = self.root / f".{_STATE}.{os.getpid()}"
            fresh.write_bytes(orjson.dumps(raw, option=orjson.OPT_NON_STR_KEYS))
            fresh.replace(self.root / _STATE)

    def used(self, models: Models, but: str | None = None) -> int:
        """Bytes the models take, every worker's copy counted; a copy not loaded yet at its estimate."""
        total = 0
        for name, record in models.items():
            if name == but:
                continue
            total += sum(record.copies.values())
            if record.phase != "unload":
                total += record.estimate * max(0, self.workers - len(record.copies))
        return total

    # ---- workers ---------------------------------------------------------------------------

    def register(self, pid: int) -> socket.socket:
        """This worker joins: its file, locked for its life, and its notification socket."""
        path = self.root / _WORKERS / str(pid)
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._own = fd
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(self._address(pid))
        inbox.setblocking(False)
        return inbox

    def leave(self, pid: int) -> None:
        if self._own is not None:
            with contextlib.suppress(OSError):
                (self.root / _WORKERS / str(pid)).unlink()
            os.close(self._own)
            self._own = None

    def live(self) -> set[int]:
        """The pids of the workers running now; files of the dead are removed."""
        alive: set[int] = set()
        for path in (self.root / _WORKERS).iterdir():
            if not path.name.isdigit():
                continue
            if int(path.name) == os.getpid() and self._own is not None:
                alive.add(os.getpid())
                continue
            if _held(path):
                alive.add(int(path.name))
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return alive

    def notify(self, pids: set[int]) -> None:
        """One byte to each worker in `pids` (not this one): the state changed, look again."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for pid in pids - {os.getpid()}:
                # Full inbox: it has a wake-up pending anyway. Refused: it is gone.
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError, FileNotFoundError):
                    out.sendto(b"!", self._address(pid))

    def _address(self, pid: int) -> bytes:
        return f"\0sagehost-{self._token}-{pid}".encode()


def _held(path: Path) -> bool:
    """Whether a live process holds the lock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _forget(models: Models, live: set[int]) -> None:
    """Drop what workers that are gone held. A model whose owner died before it was answered
    is dropped everywhere: nobody will answer its POST /models, and the caller retries."""
    for record in models.values():
        record.copies = {pid: cost for pid, cost in record.copies.items() if pid in live}
        record.failed = {pid: why for pid, why in record.failed.items() if pid in live}
        if record.phase in ("first", "all") and record.owner not in live:
            record.phase = "unload"
    for name in [n for n, r in models.items() if r.phase == "unload" and not r.copies and r.owner not in live]:
        del models[name]
