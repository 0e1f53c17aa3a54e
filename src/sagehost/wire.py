"""A lean HTTP/1.1 server for sagehost's ASGI app, used by the proxy's workers.

A proxy's own cost is all per-request overhead: parse, hand the body on, write the answer
back. Under uvicorn about half of the proxy's Python time per request went to its general ASGI
machinery (per-request cycle objects, flow control for streamed bodies, default headers), and on
a machine shared with a CPU-bound scoring server every microsecond of it is taken from that
server (bench/proxy.py, issue 4). This server drives the same App with the same httptools
parser, but does only what the App needs: whole bodies (capped at the payload limit), one
write per answer, keep-alive with an idle timeout, requests on a connection answered in order,
and a drain on SIGTERM. The App, its routes, errors and limits are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import socket
from collections import deque
from typing import Any
from urllib.parse import unquote

import httptools

from sagehost import contract, supervisor
from sagehost.app import App, Message, ServiceFactory
from sagehost.config import Settings

log = logging.getLogger("sagehost.wire")

IDLE_TIMEOUT_S = 75.0  # longer than the platform's request cadence, as with uvicorn before
_MAX_QUEUED = 16  # pipelined requests held per connection before reading pauses
_REASONS = {s.value: f"{s.value} {s.phrase}".encode() for s in http.HTTPStatus}
_BAD_BODY = b'{"error":{"code":"bad_request","message":"The request is not valid HTTP/1.1."}}'
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(_BAD_BODY)
    + _BAD_BODY
)


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "url", "version")

    def __init__(self, method: str, url: bytes, headers: list[tuple[bytes, bytes]], version: str) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.version = version
        self.keep_alive = True
        self.body = b""


class Connection(asyncio.Protocol):
    def __init__(self, server: WireServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._current: _Request | None = None
        self._queue: deque[_Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
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
        if self._idle is not None:
            self._idle.cancel()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = _Request(parser.get_method().decode("ascii"), self._url, self._headers, parser.get_http_version())
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
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._answer_queued())

    # ---- answering ---------------------------------------------------------------------------

    async def _answer_queued(self) -> None:
        self.busy = True
        try:
            while self._queue and self._transport is not None:
                request = self._queue.popleft()
                if len(self._queue) < _MAX_QUEUED // 2:
                    self._transport.resume_reading()
                if not await self._answer(request):
                    self.close()
                    return
        finally:
            self.busy = False
            if self._server.stopping:
                self.close()
            else:
                self._arm_idle()

    async def _answer(self, request: _Request) -> bool:
        """Run the App for one request and write its answer; whether the connection stays open."""
        response = _Response()
        try:
            await self._server.app(_scope(request), _Receive(request.body), response.send)
        except Exception:  # the App answers its own errors; this is a bug in us, never a hang
            log.exception("The app raised on %s", request.url[:100])
            return False
        transport = self._transport
        if transport is None:
            return False
        keep = request.keep_alive and not response.closes and not self._server.stopping
        transport.write(response.encode(keep))
        return keep

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self.close)


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
    __slots__ = ("_body", "_headers", "_status", "closes")

    def __init__(self) -> None:
        self._status = 500
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.closes = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            self._headers = message.get("headers", [])
            self.closes = any(k.lower() == b"connection" and v.lower() == b"close" for k, v in self._headers)
        else:
            self._body.append(message.get("body", b""))

    def encode(self, keep_alive: bool) -> bytes:
        reason = _REASONS.get(self._status) or str(self._status).encode()
        lines = [b"HTTP/1.1 " + reason]
        lines.extend(k + b": " + v for k, v in self._headers)
        if not keep_alive and not self.closes:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + b"".join(self._body)


def _scope(request: _Request) -> dict[str, Any]:
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


class WireServer:
    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
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
        server = await loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
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


def run_wire(sock: socket.socket, settings: Settings, load_service: ServiceFactory) -> int:
    """Serve the App on the shared socket until SIGTERM; the worker's exit code."""
    import uvloop

    app = App(settings, load_service)
    return uvloop.run(WireServer(app, settings).serve(sock))
