"""sagehost's HTTP/1.1 server: it runs the ASGI app of `serve`, `proxy` and the local runtime
stand-in, with one set of limits read as an attacker would use them.

Why our own and not uvicorn: a proxy's cost is all per-request overhead, and under uvicorn about
half of the proxy's Python time per request went to general ASGI machinery (per-request cycle
objects, flow control for streamed bodies, default headers); on a machine shared with a
CPU-bound scoring server every microsecond of it is taken from that server (bench/README.md,
issue 4). This server does only what the App needs: whole bodies, one write per answer,
keep-alive, requests on a connection answered in order, a drain on SIGTERM.

Its limits follow nginx's rules (sagehost.http.limits), and the parser (llhttp, through
httptools) refuses what h11 and nginx refuse: Content-Length with Transfer-Encoding, two
Content-Lengths, a negative length, a malformed chunk. Whatever a client sends:
- the head is capped (431) and must arrive within a timeout (408); the body must keep a minimum
  pace (408) and is capped at the payload limit (413, answered from the declared length before
  any of it is read);
- an `Upgrade` is refused with an answer (GET/HEAD are answered and the connection closed, RFC
  9110 §7.8 lets a server ignore Upgrade; other methods get a 400, since the parser hands the body
  over as the new protocol's bytes);
- an error is answered in its turn, after the answers to the requests before it, and nothing after
  it is read or answered; the connection then lingers briefly so the kernel does not reset it
  before the client has read the answer;
- an idle keep-alive connection is closed; a client that does not read its answers stops the
  connection's work and is dropped after the body timeout.
Memory per connection is bounded by the limits: one head, at most 16 queued requests or one
payload limit of queued bodies, and what the transport buffers.

Each request is first offered to `Connection._offer`, which a subclass answers through callbacks
with no task per request (a transparent proxy's, sagehost.proxy.relay); anything else runs the
App as ASGI in a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import math
import signal
import socket
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import httptools

from sagehost import contract, supervisor
from sagehost.answers import too_large
from sagehost.errors import (
    HeaderTooLarge,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    SagehostError,
    UnsupportedTransferCoding,
)
from sagehost.http.limits import Limits

log = logging.getLogger("sagehost.http")

Message = MutableMapping[str, Any]

_MAX_QUEUED = 16  # pipelined requests held per connection before reading pauses
_MAX_QUEUED_BYTES = 64 * 1024 * 1024  # or this much of their bodies, whichever comes first
_CLOSE = (b"connection", b"close")
_REASONS = {s.value: f"{s.value} {s.phrase}".encode() for s in http.HTTPStatus}
_DISCARD = 1024 * 1024  # read and dropped after a refusal, at most
_DISCARD_BODY = 64 * 1024 * 1024  # after a 413, whose body a client may still be sending
_BETWEEN, _HEAD, _BODY = 0, 1, 2  # where the parser is in the current request


class Request:
    """One parsed request, whole; header names lower-cased. A refusal (an error the server
    answers itself, after the requests before it) carries its prepared answer instead."""

    __slots__ = ("body", "headers", "keep_alive", "method", "refusal", "url", "version")

    def __init__(self, method: str, url: bytes, headers: list[tuple[bytes, bytes]], version: str) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.version = version
        self.keep_alive = True
        self.body = b""
        self.refusal: bytes | None = None


def raw_answer(error: SagehostError) -> bytes:
    """A complete HTTP/1.1 answer for an error the server gives itself; it closes the connection."""
    body = error.body()
    reason = _REASONS.get(error.status) or str(error.status).encode()
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (
        reason,
        len(body),
        body,
    )


def _refusal(error: SagehostError) -> Request:
    request = Request("", b"", [], "1.1")
    request.refusal = raw_answer(error)
    request.keep_alive = False
    return request


def _framing_refusal(request: Request) -> SagehostError | None:
    """What llhttp lets through and RFC 9112 §6.1 does not: Transfer-Encoding on HTTP/1.0 (faulty
    framing: the connection must close) and a coding other than chunked alone (501)."""
    codings = [value.strip().lower() for name, value in request.headers if name == b"transfer-encoding"]
    if not codings:
        return None
    if request.version == "1.0":
        return RequestError("Transfer-Encoding is HTTP/1.1's; an HTTP/1.0 request gives its body a Content-Length.")
    if b",".join(codings).replace(b" ", b"") != b"chunked":
        return UnsupportedTransferCoding(
            "The only Transfer-Encoding this server reads is chunked; send the body plain."
        )
    return None


def _expects_continue(request: Request) -> bool:
    """RFC 9110 §10.1.1: `Expect: 100-continue` (any case), never answered to HTTP/1.0."""
    return request.version != "1.0" and any(
        name == b"expect" and value.lower() == b"100-continue" for name, value in request.headers
    )


class Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffer: bytearray | None = None  # a body in several pieces, gathered in one buffer
        self._size = 0
        self._framing = 0  # non-body bytes read in a row inside a body: chunk lines, trailers
        self._continue_due = False
        self._closed_at: float | None = None
        self._queue_cap = min(_MAX_QUEUED_BYTES, server.limits.body_bytes)
        self._current: Request | None = None
        self._queue: deque[Request] = deque()
        self._queued_bytes = 0
        self._worker: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._answering: Request | None = None  # requests are answered one at a time, in order
        # Where the parser is, and since when, for the deadlines the server's sweep checks.
        self._phase = _BETWEEN
        self._began = 0  # requests begun: tells a head that began in this read from an older one
        self._head_started = 0.0
        self._head_size = 0  # bytes of this head the parser has reported (URL and whole headers)
        self._head_raw = 0  # whole reads spent inside this head: covers a header that never ends
        self._body_started = 0.0
        self._body_last = 0.0
        self._quiet_since = 0.0  # when the connection last went idle
        self._refused = False  # an error is queued: nothing after it is read or answered
        self._discard_left = 0  # bytes still read and dropped after a refusal
        self._reading_paused = False
        self._writing_paused_at: float | None = None
        self._linger_until: float | None = None
        self.busy = False

    # ---- transport ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        self._server.connections.add(self)
        self._quiet_since = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._discard(len(data))  # lingering, or an error is queued: what follows is dropped unread
            return
        began, was_head, body_before = self._began, self._phase == _HEAD, self._size
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # the request before the other protocol's bytes is answered or refused already
        except httptools.HttpParserError:
            self._refuse(RequestError("The request is not valid HTTP/1.1."))
            return
        if self._phase == _HEAD and not self._refused:
            # A read wholly inside one head counts whole; a head that began in this read is
            # counted by the parser's callbacks, so a pipelined burst is never mistaken for one head.
            self._head_raw = self._head_raw + len(data) if was_head and began == self._began else 0
            if self._head_raw > self._limits.header_bytes:
                self._refuse(self._head_too_large())
        elif self._phase == _BODY and not self._refused:
            if began == self._began and self._size == body_before:
                self._framing += len(data)
                if self._framing > self._limits.header_bytes:
                    self._refuse(RequestError("The chunked body's chunk lines or trailer fields are too large."))
            else:
                self._framing = 0

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop working for it until it does."""
        self._writing_paused_at = self._loop.time()
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused_at = None
        if not self.busy and self._queue:
            self._next()
        self._resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # waits for the buffer to drain: `due` bounds how long
            if self._closed_at is None:
                self._closed_at = self._loop.time()

    # ---- parser callbacks (httptools calls these by name) --------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._chunks = []
        self._buffer = None
        self._size = 0
        self._framing = 0
        self._phase = _HEAD
        self._began += 1
        self._head_started = self._loop.time()
        self._head_size = 0
        self._head_raw = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase != _HEAD:
            return  # a chunked body's trailer field: not part of the request's head
        self._head_size += len(name) + len(value) + 4
        if self._head_size <= self._limits.header_bytes:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._head_size > self._limits.header_bytes:
            self._refuse(self._head_too_large())
            return
        parser = self._parser
        request = Request(parser.get_method().decode("ascii"), self._url, self._headers, parser.get_http_version())
        request.keep_alive = parser.should_keep_alive()
        refusal = _framing_refusal(request)
        if refusal is not None:
            self._refuse(refusal)
            return
        if parser.should_upgrade() and not self._upgrade(request):
            return
        self._current = request
        self._phase = _BODY
        self._body_started = self._body_last = self._loop.time()
        if self._declared_length() > self._limits.body_bytes:
            self._refuse(self._too_large())  # answered before a byte of it is read
        elif request.version != "1.0" and any(
            n == b"expect" and v.lower() == b"100-continue" for n, v in self._headers
        ):
            if self.busy or self._queue:
                self._continue_due = True  # written in its turn, once the answers before it are
            elif self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._size += len(body)
        self._body_last = self._loop.time()
        if self._size > self._limits.body_bytes:
            self._refuse(self._too_large())  # a chunked body with no length, past the limit
            return
        if self._buffer is not None:
            self._buffer += body
        elif self._chunks:
            self._buffer = bytearray(self._chunks.pop())
            self._buffer += body
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._phase = _BETWEEN
        request = self._current
        if request is None:
            return  # refused
        self._current = None
        chunks = self._chunks
        request.body = bytes(self._buffer) if self._buffer is not None else (chunks[0] if chunks else b"")
        self._chunks, self._buffer = [], None
        self._continue_due = False
        self._enqueue(request)

    # ---- refusals: answered in their turn, then the connection closes ----------------------------

    def _refuse(self, error: SagehostError) -> None:
        """Stop reading; answer `error` after the requests already queued; then close."""
        if self._refused:
            return
        self._refused = True
        # What the client sends after a refusal is read and dropped, up to a budget: enough for a
        # refused body to finish arriving so the client reads our 413 (a close with unread bytes is
        # a reset), not so much that a client that never stops keeps us reading.
        self._discard_left = _DISCARD_BODY if isinstance(error, PayloadTooLarge) else _DISCARD
        self._current = None
        self._chunks, self._buffer = [], None
        self._enqueue(_refusal(error))

    def _upgrade(self, request: Request) -> bool:
        """An `Upgrade` (or CONNECT): the parser hands what follows over as another protocol's
        bytes. GET and HEAD are answered as plain HTTP/1.1 and the connection closed after; anything
        else, whose body the parser will not read, is refused. Whether the request goes on."""
        self._refused = True  # nothing after this head is HTTP/1.1 for the parser
        if request.method in ("GET", "HEAD"):
            request.keep_alive = False
            return True
        self._refused = False
        self._refuse(
            RequestError(
                "This server speaks HTTP/1.1 only and does not switch protocols. "
                "Send the request without the Upgrade header (and without Connection: upgrade)."
            )
        )
        return False

    def _declared_length(self) -> int:
        for name, value in self._headers:
            if name == b"content-length":
                return int(value)  # the parser has checked it is one run of digits
        return 0

    def _head_too_large(self) -> HeaderTooLarge:
        return HeaderTooLarge(
            f"The request line and headers are larger than {self._limits.header_bytes // 1024} KB "
            "(SAGEHOST_MAX_HEADER_KB). Send fewer or shorter headers."
        )

    def _too_large(self) -> SagehostError:
        return self._server.too_large(self._limits.body_bytes)

    # ---- answering, one request at a time, in order ---------------------------------------------

    def _enqueue(self, request: Request) -> None:
        self._queue.append(request)
        self._queued_bytes += len(request.body)
        if len(self._queue) >= _MAX_QUEUED or self._queued_bytes >= self._queue_cap:
            self._pause_reading()
        if not self.busy:
            self._next()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self._reading_paused
            and self._transport is not None
            and self._writing_paused_at is None
            and len(self._queue) < _MAX_QUEUED // 2
            and self._queued_bytes < self._queue_cap // 2
        ):
            self._reading_paused = False
            self._transport.resume_reading()

    def _next(self) -> None:
        """Answer the oldest request: through callbacks when `_offer` takes it, else by running
        the App in a task."""
        if not self._queue or self._transport is None or self._writing_paused_at is not None:
            self.busy = False
            if not self._queue and self._transport is not None:
                if self._server.stopping:
                    self.close()
                self._quiet_since = self._loop.time()
                if self._continue_due and self._transport is not None:
                    self._continue_due = False
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        request = self._queue.popleft()
        self._queued_bytes -= len(request.body)
        self._resume_reading()
        self.busy = True
        self._answering = request
        if request.refusal is not None:
            self._linger(request.refusal)
            return
        try:
            offered = self._offer(request)
        except Exception:  # a bug in us: logged, the connection closed, never a hang
            log.exception("Answering %s failed", request.url[:100])
            self.busy = False
            self.close()
            return
        if not offered:
            self._worker = self._loop.create_task(self._answer(request))

    def _offer(self, request: Request) -> bool:
        """Whether this request is answered through callbacks, ending in `_respond`; here, never."""
        return False

    def _respond(self, request: Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write the answer to `request`, the one in hand, and go on to the next."""
        self._finished(self._write(request, status, headers, body))

    def _finished(self, keep: bool) -> None:
        if keep:
            self._next()
        else:
            self.busy = False
            self.close()

    async def _answer(self, request: Request) -> None:
        """Run the App for one request in this task, write its answer, go on to the next."""
        response = _Response()
        try:
            await self._server.app(_scope(request), _Receive(request.body), response.send)
        except Exception:  # the App answers its own errors; this is a bug in us, never a hang
            log.exception("The app raised on %s", request.url[:100])
            self._finished(False)
            return
        self._finished(self._write(request, response.status, response.headers, b"".join(response.body)))

    def _write(self, request: Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Write one answer; whether the connection stays open for the next request."""
        transport = self._transport
        if transport is None:
            return False
        closes = _CLOSE in headers  # the App's own header, as it writes it
        keep = request.keep_alive and not closes and not self._server.stopping
        reason = _REASONS.get(status) or str(status).encode()
        lines = [b"HTTP/1.1 " + reason]
        lines += [k + b": " + v for k, v in headers]
        if not keep and not closes:
            lines.append(b"connection: close")
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return keep

    def _linger(self, answer: bytes) -> None:
        """Write a refusal, end our side, and drop what the client still sends for a moment, so
        the kernel does not answer its unread bytes with a reset that destroys our answer."""
        transport = self._transport
        if transport is None:
            return
        self._refused = True
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._linger_until = self._loop.time() + self._limits.linger_s
        self._resume_reading_for_linger()

    def _discard(self, size: int) -> None:
        self._discard_left -= size
        if self._discard_left > 0 or self._transport is None:
            return
        if self._linger_until is not None:
            self.close()  # our answer is written; the client is not listening
        else:
            self._pause_reading()  # answers before the refusal are still to be written

    def _resume_reading_for_linger(self) -> None:
        if self._reading_paused and self._transport is not None and self._discard_left > 0:
            self._reading_paused = False
            self._transport.resume_reading()

    # ---- deadlines, checked by the server's sweep --------------------------------------------------

    def due(self) -> float:
        """When this connection has waited too long in its present state (inf: never)."""
        limits = self._limits
        if self._closed_at is not None:
            return self._closed_at + limits.body_timeout_s  # a client that never reads our last answer
        if self._linger_until is not None:
            return self._linger_until
        if self._writing_paused_at is not None:
            return self._writing_paused_at + limits.body_timeout_s
        if self._refused or self._reading_paused:
            return math.inf  # our own work (or an answer in hand) is bounded by its own timeouts
        if self._phase == _HEAD:
            return self._head_started + limits.header_timeout_s
        if self._phase == _BODY:
            # No byte for body_timeout_s, or, past that grace, an average below min_body_rate:
            # the time the bytes so far stop covering the rate, if no more arrive.
            gap = self._body_last + limits.body_timeout_s
            pace = self._body_started + max(limits.body_timeout_s, self._size / limits.min_body_rate)
            return min(gap, pace)
        if self.busy or self._queue:
            return math.inf
        return self._quiet_since + limits.keep_alive_timeout_s

    def expire(self) -> None:
        """Past `due`: close an idle or lingering connection; answer a stalled request with 408."""
        transport = self._transport
        if transport is None:
            return
        if self._closed_at is not None:
            transport.abort()
            return
        if self._linger_until is not None or self._writing_paused_at is not None or self._phase == _BETWEEN:
            transport.abort() if self._writing_paused_at is not None else self.close()
            return
        what = "headers" if self._phase == _HEAD else "body"
        self._refuse(
            RequestTimeout(
                f"The request's {what} did not arrive in time (SAGEHOST_HEADER_TIMEOUT, SAGEHOST_BODY_TIMEOUT, "
                "SAGEHOST_MIN_BODY_RATE_KB). Send the whole request promptly."
            )
        )


class _Receive:
    """The whole body at once, then a disconnect for anyone who asks again."""

    __slots__ = ("_body", "_sent")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._sent = False

    async def __call__(self) -> Message:
        if self._sent:
            return {"type": "http.disconnect"}
        self._sent = True
        return {"type": "http.request", "body": self._body, "more_body": False}


class _Response:
    """What the App sends for one request, gathered whole."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = message.get("headers", [])
        else:
            self.body.append(message.get("body", b""))


def _scope(request: Request) -> dict[str, Any]:
    raw_path, _, query = request.url.partition(b"?")
    path = raw_path.decode("latin-1")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": request.version,
        "method": request.method,
        "scheme": "http",
        "path": unquote(path) if "%" in path else path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": request.headers,
        "client": None,
        "server": None,
    }


class HttpServer:
    """Serves one ASGI app on a listening socket until `stop` (or SIGTERM/SIGINT)."""

    def __init__(
        self,
        app: Any,
        limits: Limits,
        connection: ConnectionType | None = None,
        *,
        too_large: Callable[[int], SagehostError] = too_large,
    ) -> None:
        self.app = app  # Any: a transparent proxy's connections reach into the App for its service
        self.limits = limits
        self.too_large = too_large
        """The 413 the server answers itself, given the limit (the local runtime stand-in answers in
        InvokeEndpoint's words)."""
        self.body_limit = limits.body_bytes
        self._connection: ConnectionType = connection or Connection
        self.connections: set[Connection] = set()
        self.stopping = False
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sock: socket.socket, *, lifespan: bool = True, handle_signals: bool = True) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        starting = _Lifespan(self.app) if lifespan else None
        if starting is not None and not await starting.start():
            return supervisor.STARTUP_FAILED
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        server = await loop.create_server(functools.partial(self._connection, self), sock=sock, backlog=2048)
        sweep = loop.create_task(self._sweep())
        await self._stop.wait()
        await self._drain(server)
        sweep.cancel()
        if starting is not None:
            await starting.stop()
        return 0

    def stop(self) -> None:
        """Stop from any thread: drain, then return from `serve`."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _sweep(self) -> None:
        """One timer for every connection's deadlines: a timer per request is a measurable share
        of a proxy's time, and a second's precision is plenty for limits of seconds."""
        limits = self.limits
        shortest = min(limits.header_timeout_s, limits.body_timeout_s, limits.keep_alive_timeout_s, limits.linger_s)
        period = max(0.05, min(1.0, shortest / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for connection in [c for c in self.connections if c.due() <= now]:
                connection.expire()

    async def _drain(self, server: asyncio.Server) -> None:
        """Stop intake, let answers in flight finish (inside SageMaker's 30 s), close the rest."""
        self.stopping = True
        server.close()
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        deadline = asyncio.get_running_loop().time() + contract.SHUTDOWN_GRACE_S
        while any(c.busy for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close()


class _Lifespan:
    """The App's ASGI lifespan: the App loads its service at startup."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        self._task = asyncio.get_running_loop().create_task(
            self._app({"type": "lifespan", "asgi": {"version": "3.0"}}, self._inbox.get, self._outbox.put)
        )
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._outbox.get()
        return bool(answer["type"] == "lifespan.startup.complete")

    async def stop(self) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._outbox.get(), timeout=5)


def serve_app(sock: socket.socket, app: Any, limits: Limits, connection: ConnectionType | None = None) -> int:
    """Serve `app` on the shared socket until SIGTERM, on uvloop; the worker's exit code."""
    import uvloop

    return uvloop.run(HttpServer(app, limits, connection).serve(sock))


ConnectionType = Callable[[HttpServer], Connection]
