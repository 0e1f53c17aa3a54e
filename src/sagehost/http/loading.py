"""The parent process's answer while no worker can give one: 503 `model_not_ready`.

While the model loads (before the fork, or in each worker after it) the parent holds the
listening socket alone, and SageMaker's pings must get an answer, not silence. The same process
also reaps workers and handles SIGTERM, so, read as a slow or hostile client would use it,
nothing here may block: connections are non-blocking and multiplexed on the caller's selector,
each one is given `HEAD_TIMEOUT_S` to send its request head, at most `HEAD_CAP` bytes of it are
read, and at most `MAX_OPEN` are held at once (past that, a new one is answered at once).

After the answer the connection lingers briefly, discarding what the client still sends, before
it is closed: closing with unread bytes makes the kernel send a reset, which can destroy the
answer before the client reads it (nginx's `lingering_close` does the same, bounded the same way:
https://nginx.org/en/docs/http/ngx_http_core_module.html#lingering_close).
"""

from __future__ import annotations

import contextlib
import functools
import selectors
import socket
import time
from collections.abc import Callable
from types import TracebackType

from sagehost.errors import ModelNotReady

HEAD_TIMEOUT_S = 2.0  # a ping arrives whole in one packet; anything slower is answered anyway
HEAD_CAP = 8 * 1024  # enough for any ping's head; the rest is not ours to parse
LINGER_S = 1.0
LINGER_CAP = 64 * 1024  # bytes discarded while lingering, at most
MAX_OPEN = 128
ACCEPT_BATCH = 64  # connections taken per wake-up, so one flood cannot starve the caller's other work

_BODY = ModelNotReady("The model is still loading; /ping answers 200 once it can predict.").body()
LOADING = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)

Callback = Callable[[], None]
"""What a selector key's data holds here: the function to call when its fd is ready."""


class _Pending:
    __slots__ = ("answered", "deadline", "seen", "tail")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.seen = 0
        self.tail = b""  # the last bytes read, to find a head's end split across reads
        self.answered = False


class LoadingResponder:
    """Answers every connection on `sock` with 503 until closed, never blocking its caller.

    Registers on `selector` (its own when none is given) with a `Callback` as each key's data;
    the caller calls the callbacks of ready keys, and `expire()` at least every `timeout()`
    seconds. `poll()` does both, for a caller with nothing else to wait on.
    """

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector | None = None) -> None:
        self._sock = sock
        self._own_selector = selector is None
        self._selector = selector or selectors.DefaultSelector()
        self._open: dict[socket.socket, _Pending] = {}
        self._closed = False
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, self._accept)

    def __enter__(self) -> LoadingResponder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def poll(self, timeout: float) -> None:
        for key, _ in self._selector.select(min(timeout, self.timeout())):
            callback: Callback = key.data
            callback()
        self.expire()

    def timeout(self) -> float:
        """Seconds until the next connection's deadline (a long time when none is open)."""
        if not self._open:
            return 3600.0
        return max(0.0, min(p.deadline for p in self._open.values()) - time.monotonic())

    def expire(self) -> None:
        now = time.monotonic()
        for conn, pending in list(self._open.items()):
            if pending.deadline <= now:
                self._advance(conn, pending)

    def close(self) -> None:
        """Answer whoever has not been answered, close every connection, leave `sock` open."""
        if self._closed:
            return
        self._closed = True  # a caller may still hold ready keys from before: they do nothing now
        for conn, pending in list(self._open.items()):
            if not pending.answered:
                _answer(conn)
            self._drop(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._sock)
        if self._own_selector:
            self._selector.close()

    def abandon(self) -> None:
        """In a forked child: close this process's copies of the connections, answer nothing."""
        for conn in self._open:
            conn.close()
        self._open.clear()

    def _accept(self) -> None:
        for _ in range(0 if self._closed else ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED, or out of fds: the next wake-up tries again
                return
            conn.setblocking(False)
            if len(self._open) >= MAX_OPEN:
                _answer(conn)
                conn.close()
                continue
            self._open[conn] = _Pending(time.monotonic() + HEAD_TIMEOUT_S)
            self._selector.register(conn, selectors.EVENT_READ, functools.partial(self._read, conn))

    def _read(self, conn: socket.socket) -> None:
        pending = self._open.get(conn)
        if pending is None:
            return
        cap = HEAD_CAP if not pending.answered else LINGER_CAP
        try:
            data = conn.recv(min(65536, cap - pending.seen))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        pending.seen += len(data)
        head_done = b"\r\n\r\n" in pending.tail + data
        pending.tail = (pending.tail + data)[-3:]
        if not data or pending.seen >= cap or (head_done and not pending.answered):
            self._advance(conn, pending, eof=not data)

    def _advance(self, conn: socket.socket, pending: _Pending, eof: bool = False) -> None:
        """Answer a connection whose head is in (or overdue); close one done lingering."""
        if pending.answered or eof:
            if not pending.answered:
                _answer(conn)  # the client closed its side; it may still read ours
            self._drop(conn)
            return
        _answer(conn)
        pending.answered = True
        pending.deadline = time.monotonic() + LINGER_S
        pending.seen = 0

    def _drop(self, conn: socket.socket) -> None:
        self._open.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()


def _answer(conn: socket.socket) -> None:
    """Send the 503 and our FIN; never blocks (the answer fits any socket's send buffer)."""
    with contextlib.suppress(OSError):
        conn.send(LOADING)
        conn.shutdown(socket.SHUT_WR)
