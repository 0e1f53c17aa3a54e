"""Forked workers on one listening socket: start them, replace the ones that die, drain on
SIGTERM, and stop everything when a worker cannot start or a sidecar gives up.

A sidecar is one more child with its own job (proxy mode's keeper of the scoring server): it is
stopped after the workers have drained, since their in-flight requests may still need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from sagehost import contract
from sagehost.errors import ModelNotReady

log = logging.getLogger("sagehost.server")

STARTUP_FAILED = 3  # a worker's exit code when it cannot start: do not restart it
SIDECAR = -1  # the sidecar's slot

Work = Callable[[int], int]
"""A worker's body after fork: given the fd to write one byte to once ready; returns its exit code."""


def supervise(
    sock: socket.socket, workers: int, work: Work, wait_ready: bool, sidecar: Callable[[], int] | None = None
) -> int:
    """Run until SIGTERM (exit 0) or until a worker cannot start or the sidecar gives up (exit 1)."""
    return _Supervisor(sock, work, sidecar).run(workers, wait_ready)


class _Supervisor:
    def __init__(self, sock: socket.socket, work: Work, sidecar: Callable[[], int] | None) -> None:
        self.sock = sock
        self.work = work
        self.sidecar = sidecar
        self.children: dict[int, int] = {}
        self.stopping = False
        self.failed = False
        self.restarts: list[float] = []
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_w, False)  # workers restarted later write too, and nobody reads then

    def run(self, workers: int, wait_ready: bool) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGALRM, lambda *_: _signal(list(self.children), signal.SIGKILL))
        if self.sidecar is not None:
            self.spawn(SIDECAR)
        for slot in range(workers):
            self.spawn(slot)
        os.close(self.ready_w)
        early = answer_503_until_ready(self.sock, self.ready_r) if wait_ready else None
        while self.children:
            pid, status = early or os.wait()
            early = None
            self.exited(pid, os.waitstatus_to_exitcode(status))
        self.sock.close()
        os.close(self.ready_r)
        return 1 if self.failed else 0

    def spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            os.close(self.ready_r)
            code = 1
            try:
                code = self.sidecar() if slot == SIDECAR and self.sidecar is not None else self.work(self.ready_w)
            finally:
                os._exit(code)
        self.children[pid] = slot

    def on_term(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("Received %s: draining %d worker(s)", signal.Signals(signum).name, len(_workers(self.children)))
        self.stop()
        signal.alarm(int(contract.SHUTDOWN_GRACE_S) + 3)

    def stop(self) -> None:
        self.stopping = True
        _signal(_workers(self.children) or list(self.children), signal.SIGTERM)

    def exited(self, pid: int, code: int) -> None:
        slot = self.children.pop(pid, 0)
        if self.stopping:
            if not _workers(self.children):
                _signal(list(self.children), signal.SIGTERM)  # the sidecar, once the workers have drained
            return
        if slot == SIDECAR or code == STARTUP_FAILED:
            what = "The scoring server could not be kept up" if slot == SIDECAR else f"Worker {pid} could not start"
            log.error("%s; stopping the server.", what)
            self.failed = True
            self.stop()
            return
        log.error("Worker %d exited unexpectedly (code %d); starting a replacement.", pid, code)
        self.restarts = [t for t in self.restarts if time.monotonic() - t < 60] + [time.monotonic()]
        time.sleep(min(5.0, 0.1 * 2 ** min(len(self.restarts), 6)))  # back off a crash loop
        self.spawn(slot)


def _workers(children: dict[int, int]) -> list[int]:
    return [pid for pid, slot in children.items() if slot != SIDECAR]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def answer_503_until_ready(sock: socket.socket, ready_fd: int) -> tuple[int, int] | None:
    """While workers load after fork, the parent answers 503; it stops once one is ready.

    Returns a worker's (pid, status) if one exited first (it could not load), for the
    supervisor to handle as it would any exit.
    """
    with selectors.DefaultSelector() as selector:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, "conn")
        selector.register(ready_fd, selectors.EVENT_READ, "ready")
        while True:
            for key, _ in selector.select(timeout=0.05):
                if key.data == "ready":
                    return None
                answer_loading(sock)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                return pid, status


_LOADING_BODY = ModelNotReady("The model is still loading; /ping answers 200 once it can predict.").body()
_LOADING = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_LOADING_BODY), _LOADING_BODY)
)


def answer_loading(sock: socket.socket) -> None:
    try:
        conn, _ = sock.accept()
    except (BlockingIOError, InterruptedError):
        return
    with conn:
        conn.settimeout(0.5)
        try:
            conn.recv(65536)
            conn.sendall(_LOADING)
        except OSError:
            pass
