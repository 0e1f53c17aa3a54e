"""A lean HTTP/1.1 server for sagehost's ASGI app, used by the proxy's workers.

A proxy's own cost is all per-request overhead: parse, hand the body on, write the answer
back. Under uvicorn about half of the proxy's Python time per request went to its general ASGI
machinery (per-request cycle objects, flow control for streamed bodies, default headers), and on
a machine shared with a CPU-bound scoring server every microsecond of it is taken from that
server (bench/proxy.py, issue 4). This server drives the same App with the same httptools
parser, but does only what the App needs: whole bodies (capped at the payload limit), one
write per answer, keep-alive with an idle timeout, requests on a connection answered in order,
and a drain on SIGTERM. The App, its routes, errors and limits are unchanged. Each request is
first offered to `Connection._offer`, which a subclass answers through callbacks with no task
per request (a transparent proxy's, sagehost.proxy.relay); anything else runs the App as ASGI in
a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import signal
import socket
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools

from sagehost import contract, supervisor
from sagehost.app import App, Message, ServiceFactory
from sagehost.config import Settings

log = logging.getLogger("sagehost.wire")

IDLE_TIMEOUT_S = 75.0  # longer than the platform's request cadence, as with uvicorn before
_MAX_QUEUED = 16  # pipelined requests held per connection before reading pauses
_CLOSE = (b"connection", b"close")
_REASONS = {s.value: f"{s.value} {s.phrase}".encode() for s in http.HTTPStatus}
_BAD_BODY = b'{"error":{"code":"bad_request","message":"The request is not valid HTTP/1.1."}}'
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(_BAD_BODY)
    + _BAD_BODY
)


class Request:
    """One parsed request, whole; header names lower-cased."""

    __slots__ = ("body", "headers", "keep_alive", "method", "url", "version")

    def __init__(self, method: str, url: bytes, headers: list[tuple[bytes, bytes]], version: str) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.version = version
        self.keep_alive = True
        self.body = b""


class Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._current: Request | None = None
        self._queue: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._answering: Request | None = None  # requests are answered one at a time, in order
        self._loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self._idle: asyncio.TimerHandle | None = None
        self._quiet_since: float | None = None  # when the last answer went out; None while active
        self.busy = False

    # ---- transport ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._idle is not None:
            self._idle.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None and not self.busy:
                self._transport.write(_BAD_REQUEST)
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # ---- parser callbacks (httptools calls these by name) --------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._chunks = []
        self._size = 0
        self._quiet_since = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = Request(parser.get_method().decode("ascii"), self._url, self._headers, parser.get_http_version())
        request.keep_alive = parser.should_keep_alive()
        self._current = request
        if (b"expect", b"100-continue") in self._headers and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        # Past the limit the rest is dropped as it arrives: the App answers 413 from the size.
        if self._size <= self._server.body_limit:
            self._chunks.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        chunks = self._chunks
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._queue.append(request)
        if len(self._queue) >= _MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()
        if not self.busy:
            self._next()

    # ---- answering, one request at a time, in order ---------------------------------------------

    def _next(self) -> None:
        """Answer the oldest request: through callbacks when `_offer` takes it, else by running
        the App in a task."""
        if not self._queue or self._transport is None:
            self.busy = False
            if self._server.stopping:
                self.close()
            elif self._transport is not None:
                self._arm_idle()
            return
        request = self._queue.popleft()
        if len(self._queue) < _MAX_QUEUED // 2:
            self._transport.resume_reading()
        self.busy = True
        self._answering = request
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

    def _arm_idle(self) -> None:
        """Close after IDLE_TIMEOUT_S without a request. One timer per connection, re-armed only
        when it fires: a timer per request is a measurable share of a proxy's time."""
        self._quiet_since = self._loop.time()
        if self._idle is None:
            self._idle = self._loop.call_at(self._quiet_since + IDLE_TIMEOUT_S, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        if self._quiet_since is None:
            return  # a request is in hand; answering it arms the timer again
        expires = self._quiet_since + IDLE_TIMEOUT_S
        if self._loop.time() >= expires:
            self.close()
        else:
            self._idle = self._loop.call_at(expires, self._check_idle)


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
    def __init__(self, app: App, settings: Settings, connection: ConnectionType | None = None) -> None:
        self.app = app
        self._connection: ConnectionType = connection or Connection
        self.body_limit = settings.max_payload_bytes
        self.connections: set[Connection] = set()
        self.stopping = False

    async def serve(self, sock: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        lifespan = _Lifespan(self.app)
        if not await lifespan.start():
            return supervisor.STARTUP_FAILED
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(functools.partial(self._connection, self), sock=sock, backlog=2048)
        await stop.wait()
        await self._drain(server)
        await lifespan.stop()
        return 0

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
    """The App's ASGI lifespan: it loads the service at startup."""

    def __init__(self, app: App) -> None:
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


def serve_app(
    sock: socket.socket, settings: Settings, load_service: ServiceFactory, connection: ConnectionType | None = None
) -> int:
    """Serve the App on the shared socket until SIGTERM; the worker's exit code."""
    import uvloop

    app = App(settings, load_service)
    return uvloop.run(HttpServer(app, settings, connection).serve(sock))


ConnectionType = Callable[[HttpServer], Connection]
