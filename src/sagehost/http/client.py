"""A pooled keep-alive HTTP/1.1 client for one upstream, on asyncio with httptools' parser.

The proxy forwards thousands of requests a second to one host over loopback, beside a scoring
server that wants every core; a general client's per-request machinery (URL objects, header
classes, a task and a future per call) would cost more than the forwarding. So the core is
callbacks: `Client.send` writes the request on a pooled connection and calls `done` once with
the response or the error, with no task, future or timer made per request. `Client.request` is
the same thing awaited. Connections are kept and reused; one that the upstream closed while idle is
replaced and the request retried once, since it never reached the server.

Connections are replaced once they are `max_age` seconds old. A scoring server with several
worker processes on one listening socket (uvicorn, gunicorn, MLflow's) serves each connection in
the worker that accepted it, and a pool filled while one worker was busy can hold all its
connections in another: that worker then sits idle for as long as the pool lives, which under
steady traffic is forever. A new connection goes to the first worker to accept it, most often
one with nothing to do, so replacing old ones spreads the load again within `max_age` (gRPC's
MAX_CONNECTION_AGE exists for the same reason). Beside MLflow, a pool filled while one of its
two workers was stopped kept that worker idle once resumed, and the proxy at about half its
requests/s; replacing connections after 1 s had it busy from the first second
(bench/proxy_rebalance.py, issue 4).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from sagehost.errors import SagehostError, UpstreamTimeout, UpstreamUnavailable

Headers = list[tuple[bytes, bytes]]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_HEADS_KEPT = 64  # request lines kept made; more only if query strings vary
_ROUTES_KEPT = 256


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers
    """Names lower-cased."""
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


Outcome = Response | SagehostError
Done = Callable[[Outcome], None]
"""Called exactly once per request: with the upstream's response, or with the error to answer."""


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
    """One keep-alive connection; one request on it at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._done: Callable[[Response | Exception], None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self.open = False
        self.keep_alive = True
        self.retire_at = math.inf
        """When the pool replaces it rather than reuse it (loop time)."""

    def send(self, raw: bytes, timeout: float, done: Callable[[Response | Exception], None]) -> None:
        self._done = done
        self._deadline = self._loop.time() + timeout
        # One timer per connection, moved only when it would fire too late: arming and
        # cancelling one per request is a measurable share of a proxy's time.
        if self._timer is None or self._timer.when() > self._deadline:
            self._arm(self._deadline)
        self._transport.write(raw)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.open = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            self._finish(ConnectionError("the upstream sent a malformed HTTP response"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._finish(ConnectionResetError("the upstream closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        response = Response(self._parser.get_status_code(), self._headers, body)
        self._headers, self._body = [], []
        self._finish(response)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._done is None:
            return  # idle: the next send arms it again
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)  # this timer was set for an earlier request
            return
        self.close()  # a late answer must not be read as the next request's
        self._finish(TimeoutError())

    def _finish(self, outcome: Response | Exception) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(outcome)

    def close(self) -> None:
        self.open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()


class Pool:
    """Keep-alive connections to one origin, at most `size` kept idle, each reused until it is
    `max_age` seconds old."""

    def __init__(
        self, origin: Origin, loop: asyncio.AbstractEventLoop, size: int = 64, max_age: float = math.inf
    ) -> None:
        self.origin = origin
        self.loop = loop
        self._idle: collections.deque[_Connection] = collections.deque()
        self._size = size
        self._max_age = max_age
        self._host_header = f"{origin.host}:{origin.port}".encode()
        self._heads: dict[tuple[str, str], bytes] = {}

    def take(self) -> _Connection | None:
        # Oldest first: load spreads over every connection, so over every upstream worker.
        while self._idle:
            conn = self._idle.popleft()
            if conn.open:
                return conn
        return None

    async def connect(self, timeout: float) -> _Connection:
        protocol = functools.partial(_Connection, self.loop)
        connecting = self.loop.create_connection(protocol, self.origin.host, self.origin.port)
        _, conn = await asyncio.wait_for(connecting, timeout)
        conn.retire_at = self.loop.time() + self._max_age
        return conn

    def give_back(self, conn: _Connection) -> None:
        if conn.open and conn.keep_alive and len(self._idle) < self._size and self.loop.time() < conn.retire_at:
            self._idle.append(conn)
        else:
            conn.close()

    def failure(self, exc: Exception, timeout: float) -> SagehostError:
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"The scoring server did not answer within {timeout:g} s.")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f"{self.origin.host}:{self.origin.port}"
        return UpstreamUnavailable(f"The scoring server at {where} is not reachable ({reason}).")

    def serialize(self, method: str, target: str, headers: Headers, body: bytes) -> bytes:
        head = self._heads.get((method, target))
        if head is None:  # the proxy sends nearly every request to one target: made once
            head = f"{method} {target} HTTP/1.1\r\nhost: ".encode() + self._host_header
            if len(self._heads) < _HEADS_KEPT:
                self._heads[method, target] = head
        lines = [head]
        lines += [name + b": " + value for name, value in headers]
        lines += (b"content-length: %d\r\n" % len(body), body)  # one join: the body is not copied twice
        return b"\r\n".join(lines)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _split(url: str) -> tuple[Origin, str]:
    """(origin, request target) of a URL."""
    parts = urllib.parse.urlsplit(url)
    return Origin.of(url), (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class _Call:
    """One request from `Client.send` to its `done`: on a pooled connection (retried once on a
    fresh one when a reused connection turns out to have been closed while idle: the request
    never reached the server), with redirects followed (SageMaker's runtime does not follow them)."""

    __slots__ = ("_body", "_client", "_conn", "_done", "_headers", "_hops", "_method", "_pool", "_raw", "_reused",
                 "_timeout", "_url")  # fmt: skip

    def __init__(
        self, client: Client, method: str, url: str, headers: Headers, body: bytes, *, timeout: float, done: Done
    ) -> None:
        self._client = client
        self._method, self._url, self._headers, self._body = method, url, headers, body
        self._timeout = timeout
        self._done = done
        self._hops = 0
        self._reused = False
        self._raw = b""
        self._pool: Pool | None = None
        self._conn: _Connection | None = None

    def start(self) -> None:
        try:
            pool, target = self._client.route(self._url)
        except ValueError as exc:
            self._done(UpstreamUnavailable(f"The scoring server redirected to an unusable URL ({exc})."))
            return
        self._pool = pool
        self._raw = pool.serialize(self._method, target, self._headers, self._body)
        conn = pool.take()
        if conn is None:
            pool.loop.create_task(self._connect(pool))
        else:
            self._reused = True
            self._conn = conn
            conn.send(self._raw, self._timeout, self)

    async def _connect(self, pool: Pool) -> None:
        self._reused = False
        try:
            self._conn = await pool.connect(self._timeout)
        except (OSError, TimeoutError) as exc:
            self._done(pool.failure(exc, self._timeout))
            return
        self._conn.send(self._raw, self._timeout, self)

    def __call__(self, outcome: Response | Exception) -> None:
        """The connection's answer."""
        conn, pool = self._conn, self._pool
        assert conn is not None and pool is not None
        if isinstance(outcome, Response):
            pool.give_back(conn)
            if outcome.status in _REDIRECTS:
                self._redirect(outcome)
            else:
                self._done(outcome)
            return
        conn.close()
        if self._reused and isinstance(outcome, ConnectionError):
            pool.loop.create_task(self._connect(pool))
        else:
            self._done(pool.failure(outcome, self._timeout))

    def _redirect(self, response: Response) -> None:
        location = response.header(b"location")
        if location is None:
            self._done(response)
        elif self._hops == _MAX_REDIRECTS:
            self._done(UpstreamUnavailable(f"The scoring server redirected more than {_MAX_REDIRECTS} times."))
        else:
            self._hops += 1
            self._url = urllib.parse.urljoin(self._url, location.decode("latin-1"))
            if response.status == 303:
                self._method, self._body = "GET", b""
            self.start()


class Client:
    """Pools per origin. Use from the event loop's thread only."""

    def __init__(self, max_connection_age: float = 0.0) -> None:
        """`max_connection_age`: seconds a connection is reused before it is replaced; 0: for as
        long as the upstream keeps it open."""
        self._max_age = max_connection_age if max_connection_age > 0 else math.inf
        self._pools: dict[Origin, Pool] = {}
        self._routes: dict[str, tuple[Pool, str]] = {}

    def route(self, url: str) -> tuple[Pool, str]:
        """The pool and request target for a URL; kept, since the proxy sends nearly every
        request to one URL. ValueError for a URL the client cannot use."""
        route = self._routes.get(url)
        if route is None:
            origin, target = _split(url)
            pool = self._pools.get(origin)
            if pool is None:
                pool = self._pools[origin] = Pool(origin, asyncio.get_running_loop(), max_age=self._max_age)
            route = (pool, target)
            if len(self._routes) < _ROUTES_KEPT:
                self._routes[url] = route
        return route

    def send(self, method: str, url: str, headers: Headers, body: bytes, *, timeout: float, done: Done) -> None:
        """Send without waiting: `done` gets the final response (redirects followed) or the error."""
        _Call(self, method, url, headers, body, timeout=timeout, done=done).start()

    async def request(self, method: str, url: str, headers: Headers, body: bytes, timeout: float) -> Response:
        waiter: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.send(method, url, headers, body, timeout=timeout, done=functools.partial(_settle, waiter))
        outcome = await waiter
        if isinstance(outcome, SagehostError):
            raise outcome
        return outcome

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


def _settle(waiter: asyncio.Future[Outcome], outcome: Outcome) -> None:
    """A callback's outcome into an awaited future; errors travel as values, not exceptions."""
    if not waiter.done():  # its awaiter may have been cancelled; the connection is still sound
        waiter.set_result(outcome)
