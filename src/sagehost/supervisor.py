"""Forked workers on one listening socket: start them, replace the ones that die, drain on
SIGTERM, and stop everything when a worker cannot start, workers keep dying, or a sidecar gives up.

One loop waits on a selector and never sleeps: signals wake it through `signal.set_wakeup_fd`,
a replacement's back-off is a due time, not a `sleep`, so a SIGTERM during a crash loop still
drains at once. A worker that dies (the OOM killer's SIGKILL, a segfault in a native library)
is replaced; `GIVE_UP_DEATHS` deaths within `DEATH_WINDOW_S` stop the server with exit code 1,
so SageMaker replaces the instance rather than keep one that cannot hold its workers.

A sidecar is one more child with its own job (proxy mode's keeper of the scoring server): it is
stopped after the workers have drained, since their in-flight requests may still need it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

from sagehost import contract
from sagehost.http.loading import Callback, LoadingResponder

__all__ = ["GIVE_UP_DEATHS", "STARTUP_FAILED", "Work", "supervise"]

log = logging.getLogger("sagehost.server")

STARTUP_FAILED = 3  # a worker's exit code when it cannot start: do not restart it
SIDECAR = -1  # the sidecar's slot
GIVE_UP_DEATHS = 10
DEATH_WINDOW_S = 60.0
KILL_AFTER_S = contract.SHUTDOWN_GRACE_S + 3  # then SIGKILL: SageMaker's own deadline is 30 s
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_IDLE_WAKE_S = 1.0  # a wake-up with nothing to do, in case a signal's wake-up byte was lost

_Handler = Callable[[int, FrameType | None], object] | int | None
Work = Callable[[int], int]
"""A worker's body after fork: given the fd to write one byte to once ready (-1: none); returns its exit code."""


def supervise(
    sock: socket.socket, workers: int, work: Work, wait_ready: bool, sidecar: Callable[[], int] | None = None
) -> int:
    """Run until SIGTERM (exit 0), or until the server cannot go on (exit 1): a worker cannot
    start, workers die too often, or the sidecar gives up.

    With `wait_ready`, the workers load after the fork: this process answers 503 on `sock`
    until the first of them writes to its ready fd. Returns with SIGTERM and SIGINT ignored:
    the caller is expected to exit with the code.
    """
    return _Supervisor(sock, work, sidecar).run(workers, wait_ready)


class _Supervisor:
    def __init__(self, sock: socket.socket, work: Work, sidecar: Callable[[], int] | None) -> None:
        self.sock = sock
        self.work = work
        self.sidecar = sidecar
        self.children: dict[int, int] = {}  # pid -> slot
        self.pending: list[tuple[float, int, int]] = []  # (due, slot, pid it replaces)
        self.deaths: list[float] = []
        self.stopping = False
        self.failed = False
        self.kill_at: float | None = None
        self.signalled: list[int] = []
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.ready_r = self.ready_w = -1
        self.gate_r = self.gate_w = -1
        self.responder: LoadingResponder | None = None

    def run(self, workers: int, wait_ready: bool) -> int:
        previous = self._install_signals()
        try:
            if wait_ready:
                self._await_ready()
            if self.sidecar is not None:
                self.spawn(SIDECAR)
            self._spawn_together(workers)
            while self.children or (self.pending and not self.stopping):
                self._wait()
                self._on_signals()
                self._reap()
                self._restart_due()
                self._kill_overdue()
        finally:
            self._close(previous)
        return 1 if self.failed else 0

    # ---- the loop's steps ---------------------------------------------------------------------

    def _wait(self) -> None:
        now = time.monotonic()
        timeouts = [_IDLE_WAKE_S] + [due - now for due, _, _ in self.pending]
        if self.kill_at is not None:
            timeouts.append(self.kill_at - now)
        if self.responder is not None:
            timeouts.append(self.responder.timeout())
        for key, _ in self.selector.select(max(0.0, min(timeouts))):
            callback: Callback = key.data
            callback()
        if self.responder is not None:
            self.responder.expire()

    def _on_signals(self) -> None:
        signalled, self.signalled = self.signalled, []
        for signum in signalled:
            if not self.stopping:
                log.info("Received %s: draining %d worker(s)", signal.Signals(signum).name, len(self._workers()))
            self.stop()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited(pid, os.waitstatus_to_exitcode(status))

    def _restart_due(self) -> None:
        now = time.monotonic()
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, slot, dead in due:
            pid = self.spawn(slot)
            log.info("Started worker %d in place of worker %d", pid, dead)

    def _kill_overdue(self) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            log.error("Children still running %.0f s after SIGTERM: killing them", KILL_AFTER_S)
            _signal(list(self.children), signal.SIGKILL)
            self.kill_at = None

    # ---- children -----------------------------------------------------------------------------

    def spawn(self, slot: int) -> int:
        ready_fd = self.ready_w if slot != SIDECAR else -1
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._become_child(keep=ready_fd, parent=supervisor)
                self._wait_at_gate()
                code = self.sidecar() if slot == SIDECAR and self.sidecar is not None else self.work(ready_fd)
            except BaseException:
                log.exception("Worker %d crashed", os.getpid())
            finally:
                os._exit(code)
        self.children[pid] = slot
        if self.stopping:
            _signal([pid], signal.SIGTERM)
        return pid

    def _become_child(self, keep: int, parent: int) -> None:
        """Drop what belongs to the supervisor: its signal handling and its fds."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # the worker installs its own once it serves
        _stop_with_parent(parent)
        if self.responder is not None:
            self.responder.abandon()
        self.selector.close()
        for fd in (self.wake_r, self.wake_w, self.ready_r, self.ready_w, self.gate_w):
            if fd >= 0 and fd != keep:
                os.close(fd)

    # ---- the first workers start together ------------------------------------------------------

    def _spawn_together(self, workers: int) -> None:
        """The first workers wait until all of them are forked: a worker that served at once
        would answer /ping 200 while its siblings were still being forked (a preloaded model's
        workers are ready in a few milliseconds), and /ping's 200 says the server is up."""
        self.gate_r, self.gate_w = os.pipe()
        try:
            for slot in range(workers):
                self.spawn(slot)
        finally:
            os.close(self.gate_w)  # the last write end: the waiting workers read end-of-file
            os.close(self.gate_r)
            self.gate_r = self.gate_w = -1

    def _wait_at_gate(self) -> None:
        if self.gate_r >= 0:
            os.read(self.gate_r, 1)  # returns b"" once the supervisor has closed its write end
            os.close(self.gate_r)
            self.gate_r = -1

    def exited(self, pid: int, code: int) -> None:
        slot = self.children.pop(pid, None)
        if slot is None:
            return
        if self.stopping:
            if not self._workers():
                _signal(list(self.children), signal.SIGTERM)  # the sidecar, once the workers have drained
            return
        if slot == SIDECAR:
            self.fail(f"The scoring server could not be kept up (its keeper {pid} {_how(code)})")
        elif code == STARTUP_FAILED:
            self.fail(f"Worker {pid} could not start")
        else:
            self._replace(pid, slot, code)

    def _replace(self, pid: int, slot: int, code: int) -> None:
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < DEATH_WINDOW_S] + [now]
        if len(self.deaths) >= GIVE_UP_DEATHS:
            self.fail(
                f"Worker {pid} {_how(code)}. Workers have died {len(self.deaths)} times within "
                f"{DEATH_WINDOW_S:.0f} s, so this instance cannot keep them running (SIGKILL is usually the "
                "OOM killer: the model needs more memory than the instance has; try a larger instance type or "
                "fewer workers with SAGEMAKER_MODEL_SERVER_WORKERS). SageMaker replaces an instance whose "
                "server stops"
            )
            return
        # A crash loop costs a fork (and, without preload, a model load) per turn: a doubling
        # pause keeps it from taking the CPU the surviving workers need.
        delay = min(1.0, 0.05 * 2 ** (len(self.deaths) - 1))
        log.error(
            "Worker %d %s; starting a replacement (%d worker death(s) in the last %.0f s; the server stops at %d).",
            pid,
            _how(code),
            len(self.deaths),
            DEATH_WINDOW_S,
            GIVE_UP_DEATHS,
        )
        self.pending.append((now + delay, slot, pid))

    def fail(self, what: str) -> None:
        log.error("%s; stopping the server.", what)
        self.failed = True
        self.stop()

    def stop(self) -> None:
        if not self.stopping:
            self.kill_at = time.monotonic() + KILL_AFTER_S
        self.stopping = True
        self.pending.clear()
        self._loaded()  # nobody answers 503 any more: let the connections go
        _signal(self._workers() or list(self.children), signal.SIGTERM)

    def _workers(self) -> list[int]:
        return [pid for pid, slot in self.children.items() if slot != SIDECAR]

    # ---- waiting for the first worker to load -------------------------------------------------

    def _await_ready(self) -> None:
        """Workers get the write end of a pipe; this process answers 503 until a byte arrives."""
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_w, False)  # several workers may write; nobody reads after the first
        self.selector.register(self.ready_r, selectors.EVENT_READ, self._loaded)
        self.responder = LoadingResponder(self.sock, self.selector)

    def _loaded(self) -> None:
        """A worker is ready (or the server stops): replacements from now on get no ready fd."""
        if self.responder is not None:
            self.responder.close()
            self.responder = None
        if self.ready_r >= 0:
            self.selector.unregister(self.ready_r)
            os.close(self.ready_r)
            os.close(self.ready_w)
            self.ready_r = self.ready_w = -1

    # ---- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> _Handler:
        """Handlers only record; the loop, woken through the pipe, does the work."""
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._drain_wake)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        previous = signal.signal(signal.SIGCHLD, _wake_only)  # a Python handler, so the wake-up fd is written
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        return previous

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.signalled.append(signum)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass

    def _close(self, previous_sigchld: _Handler) -> None:
        # Nothing is left to drain: a second SIGTERM now (SageMaker's, or an impatient caller's)
        # must not turn the exit 0 into death by signal. Ignored, not a Python handler, since the
        # interpreter resets those to the default while it finalizes (which takes ~0.5 s here).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, previous_sigchld)
        self._loaded()
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.sock.close()


def _how(code: int) -> str:
    """How a child ended, in words: `was killed by SIGKILL (...)` or `exited with code 1`."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"was killed by {name} (the OOM killer does this)"
    return f"was killed by {name}"


def _wake_only(signum: int, frame: FrameType | None) -> None:
    return None


def _stop_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this child when the supervisor dies (killed itself, say), so no
    orphaned worker keeps the port and serves on unsupervised. In a container they would die
    with it; on a host they would not. Elsewhere a no-op.
    https://man7.org/linux/man-pages/man2/prctl.2.html (PR_SET_PDEATHSIG)"""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # The supervisor died before the request took effect. (Not `getppid() == 1`: in a container
    # the supervisor is PID 1.)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
