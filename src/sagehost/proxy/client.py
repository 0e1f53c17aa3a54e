"""A pooled keep-alive HTTP/1.1 client for one upstream, on asyncio with httptools' parser.

The proxy forwards tens of thousands of requests a second to one host over loopback; a general
client's per-request machinery (URL objects, header classes, cookie jars) would cost more than
the forwarding. Connections are kept and reused; one that the upstream closed while idle is
replaced and the request retried once, since it never reached the server.
"""

from __future__ import annotations

import asyncio
import collections
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
        self.used = False
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

    async def exchange(self, raw: bytes) -> Response:
        assert self._transport is not None
        self.used = True
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

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
            return await asyncio.wait_for(self._send(raw), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"The scoring server did not answer within {timeout:g} s.") from None
        except OSError as exc:
            raise UpstreamUnavailable(
                f"The scoring server at {self.origin.host}:{self.origin.port} is not reachable ({exc.strerror or exc})."
            ) from None

    async def _send(self, raw: bytes) -> Response:
        conn = self._take()
        try:
            response = await conn.exchange(raw)
        except asyncio.CancelledError:
            conn.close()  # a half-read answer would poison the next request on this connection
            raise
        except ConnectionError:
            conn.close()
            if not conn.reused:
                raise
            conn = await self._connect()  # it went stale while idle: the request never arrived
            response = await conn.exchange(raw)
        self._give_back(conn)
        return response

    def _take(self) -> _ReusableConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.open:
                return _ReusableConnection(conn, reused=True)
        return _ReusableConnection(None, reused=False, pool=self)

    async def _connect(self) -> _ReusableConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.origin.host, self.origin.port)
        return _ReusableConnection(conn, reused=False)

    def _give_back(self, handle: _ReusableConnection) -> None:
        conn = handle.conn
        if conn is not None and conn.open and conn.keep_alive and len(self._idle) < self._size:
            self._idle.append(conn)
        elif conn is not None:
            conn.close()

    def _serialize(self, method: str, target: str, headers: Headers, body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1".encode(), b"host: " + self._host_header]
        lines += [name + b": " + value for name, value in headers]
        lines.append(b"content-length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _ReusableConnection:
    """A pooled connection, or the promise of a new one made on first use."""

    def __init__(self, conn: _Connection | None, reused: bool, pool: Pool | None = None) -> None:
        self.conn = conn
        self.reused = reused
        self._pool = pool

    async def exchange(self, raw: bytes) -> Response:
        if self.conn is None:
            assert self._pool is not None
            fresh = await self._pool._connect()
            self.conn = fresh.conn
        assert self.conn is not None
        return await self.conn.exchange(raw)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


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
            parts = urllib.parse.urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            response = await self.pool(Origin.of(url)).request(method, target, headers, body, timeout)
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
