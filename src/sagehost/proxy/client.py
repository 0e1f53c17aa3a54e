"""A pooled keep-alive HTTP/1.1 client for one upstream, on asyncio with httptools' parser.

The proxy forwards tens of thousands of requests a second to one host over loopback; a general
client's per-request machinery (URL objects, header classes, cookie jars) would cost more than
the forwarding. Connections are kept and reused; one that the upstream closed while idle is
replaced and the request retried once, since it never reached the server.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httptools

from sagehost.errors import UpstreamTimeout, UpstreamUnavailable

Headers = list[tuple[bytes, bytes]]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Origin:
    host: str
    port: int

    @staticmethod
    def of(url: str) -> Origin:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: the upstream must be an http:// URL with a host")
        return Origin(parts.hostname, parts.port or 80)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self.open = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.open = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(ConnectionError("the upstream sent a malformed HTTP response"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(ConnectionResetError("the upstream closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        response = Response(self._parser.get_status_code(), self._headers, b"".join(self._body))
        self._headers, self._body = [], []
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(response)

    async def exchange(self, raw: bytes, timeout: float) -> Response:
        # A timer on the waiter rather than asyncio.wait_for: wait_for costs a task and several
        # callbacks per request, a measurable share of a proxy's time.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, self._time_out, waiter)
        self._transport.write(raw)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _time_out(self, waiter: asyncio.Future[Response]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())
        self.close()  # a late answer must not be read as the next request's

    def close(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class Pool:
    """Keep-alive connections to one origin, at most `size` kept idle."""

    def __init__(self, origin: Origin, size: int = 64) -> None:
        self.origin = origin
        self._idle: collections.deque[_Connection] = collections.deque()
        self._size = size
        self._host_header = f"{origin.host}:{origin.port}".encode()

    async def request(self, method: str, target: str, headers: Headers, body: bytes, timeout: float) -> Response:
        raw = self._serialize(method, target, headers, body)
        try:
            return await self._send(raw, timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"The scoring server did not answer within {timeout:g} s.") from None
        except OSError as exc:
            raise UpstreamUnavailable(
                f"The scoring server at {self.origin.host}:{self.origin.port} is not reachable ({exc.strerror or exc})."
            ) from None

    async def _send(self, raw: bytes, timeout: float) -> Response:
        conn = self._take()
        reused = conn is not None
        if conn is None:
            conn = await self._connect(timeout)
        try:
            response = await conn.exchange(raw, timeout)
        except asyncio.CancelledError:
            conn.close()  # a half-read answer would poison the next request on this connection
            raise
        except ConnectionError:
            conn.close()
            if not reused:
                raise
            conn = await self._connect(timeout)  # it went stale while idle: the request never arrived
            response = await conn.exchange(raw, timeout)
        self._give_back(conn)
        return response

    def _take(self) -> _Connection | None:
        # Oldest first: load spreads over every connection, so over every upstream worker.
        while self._idle:
            conn = self._idle.popleft()
            if conn.open:
                return conn
        return None

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(_Connection, self.origin.host, self.origin.port)
        _, conn = await asyncio.wait_for(connecting, timeout)
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if conn.open and conn.keep_alive and len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            conn.close()

    def _serialize(self, method: str, target: str, headers: Headers, body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1".encode(), b"host: " + self._host_header]
        lines += [name + b": " + value for name, value in headers]
        lines.append(b"content-length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


@functools.lru_cache(maxsize=256)
def _split(url: str) -> tuple[Origin, str]:
    """(origin, request target) of a URL; cached, since the proxy sends every request to one URL."""
    parts = urllib.parse.urlsplit(url)
    return Origin.of(url), (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Client:
    """Pools per origin, and redirects followed here: SageMaker's runtime does not follow them."""

    def __init__(self) -> None:
        self._pools: dict[Origin, Pool] = {}

    def pool(self, origin: Origin) -> Pool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Pool(origin)
        return pool

    async def request(self, method: str, url: str, headers: Headers, body: bytes, timeout: float) -> Response:
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                origin, target = _split(url)
            except ValueError as exc:
                raise UpstreamUnavailable(f"The scoring server redirected to an unusable URL ({exc}).") from None
            response = await self.pool(origin).request(method, target, headers, body, timeout)
            location = response.header(b"location")
            if response.status not in _REDIRECTS or location is None:
                return response
            url = urllib.parse.urljoin(url, location.decode("latin-1"))
            if response.status == 303:
                method, body = "GET", b""
        raise UpstreamUnavailable(f"The scoring server redirected more than {_MAX_REDIRECTS} times.")

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
