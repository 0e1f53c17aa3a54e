"""The proxy's pooled keep-alive HTTP/1.1 client for its upstream, on asyncio with httptools' parser.

The proxy forwards thousands of requests a second to one host over loopback, beside a scoring
server that wants every core; a general client's per-request machinery (URL objects, header
classes, a task and a future per call) would cost more than the forwarding. So the core is
callbacks: `Client.send` writes the request on a pooled connection and calls `done` once with
the response or the error, with no task, future or timer made per request. `Client.request` is
the same thing awaited.

It never invents, duplicates or changes work, whatever the upstream does (issue 14):
- A request is sent again only when it provably never left. A pooled connection is used only if
  it is open, younger than `max_age` and idle for less than `_IDLE_REUSE_S` (shorter than common
  servers' keep-alive timeouts: gunicorn's 2 s, uvicorn's 5 s, so they do not close it just as a
  request is written); one found closed before any byte is written is dropped and another used.
  Once bytes are written, a broken connection is a 502 for a POST: the scoring server may have
  received it, and a second copy would score it twice (or repeat its side effects). Only GET,
  idempotent (RFC 9110 §9.2.2), is retried, once.
- Redirects as RFC 9110 §15.4 defines them: 307 and 308 are followed with the same method and
  body; 301, 302 and 303 only for GET (health checks). A POST answered 301/302/303 is a 502 that
  names the status and Location: re-sending it as GET would drop its body, and re-sending the
  POST is not what those statuses promise.
- Bounded: the answer's body (`max_body`: a larger Content-Length is refused before any of it is
  read, chunked and close-delimited bodies are counted as they arrive), its header section
  (64 KiB), connections per origin (`max_connections`; more requests wait for one to come
  free), idle connections kept (64), origins with a pool (4, the least recently used dropped),
  redirect hops (5). Each of those ends in a 502 and the connection dropped. Every wait — connect,
  a free connection, writing, the head, the body — ends at the request's deadline (504).
- An answer nobody asked for (bytes on an idle connection, a second answer after the first) closes
  the connection, so it can never be read as the next request's answer.

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
import http
import math
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from sagehost.errors import SagehostError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable

Headers = list[tuple[bytes, bytes]]
MIB = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_KEEPS_METHOD = frozenset({307, 308})  # RFC 9110 §15.4.8, §15.4.9
_RETRIED = frozenset({"GET"})  # idempotent and sent without a body: safe to send twice
_MAX_REDIRECTS = 5
_MAX_HEAD = 64 * 1024  # as the server's own default for requests (nginx's large_client_header_buffers)
_IDLE_REUSE_S = 1.0
_MAX_IDLE = 64
_POOLS_KEPT = 4  # the upstream's origin and a few redirect targets
_HEADS_KEPT = 64  # request lines kept made; more only if query strings vary
_ROUTES_KEPT = 256
_NO_BODY = frozenset({204, 304})


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
_Answer = Callable[[Response | Exception], None]
"""A connection's report: the response, a SagehostError (its final word on a broken answer),
ConnectionResetError (closed before answering) or TimeoutError (the deadline passed)."""


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

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _Stop(Exception):
    """Raised from a parser callback to stop parsing; the reason is on the connection."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request on it at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._max_body = pool.max_body
        self._cap_digits = len(str(pool.max_body))
        self._parser = httptools.HttpResponseParser(self)
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._done: _Answer | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_room = _MAX_HEAD
        self._in_body = False  # the current answer's head is complete
        self._framing = 0  # bytes read in a row past the head with no body in them: chunk lines, trailers
        self._response: Response | None = None  # complete, handed on once the bytes read are parsed
        self._failure: SagehostError | None = None
        self._counted = False
        self.open = False
        self.keep_alive = True
        self.retire_at = math.inf
        """When the pool replaces it rather than reuse it (loop time)."""
        self.reusable_until = 0.0
        """While idle: when it is too old, or has been idle too long, to be used again."""

    def send(self, raw: bytes, deadline: float, done: _Answer) -> bool:
        """Write a request; False, with nothing written, if the connection is already closed."""
        if not self.open or self._transport.is_closing():
            return False
        self._done = done
        self._deadline = deadline
        self._head_room, self._in_body = _MAX_HEAD, False
        # One timer per connection, moved only when it would fire too late: arming and
        # cancelling one per request is a measurable share of a proxy's time.
        if self._timer is None or self._timer.when() > deadline:
            self._arm(deadline)
        self._transport.write(raw)
        return True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.open = True
        self._counted = True
        self._pool.opened()

    def data_received(self, data: bytes) -> None:
        if self._done is None:  # an answer nobody asked for: it must not answer the next request
            self.close()
            return
        try:
            if self._in_body:
                before = self._body_size
                self._parser.feed_data(data)
                if self._response is None and self._in_body:
                    self._framing = 0 if self._body_size != before else self._framing + len(data)
                    if self._framing > _MAX_HEAD:
                        self._failure = UpstreamUnavailable(
                            "The scoring server's answer has chunk lines or trailer fields over 64 KiB; "
                            "the connection was dropped."
                        )
                        raise _Stop
            elif len(data) <= self._head_room:
                self._head_room -= len(data)
                self._parser.feed_data(data)
            else:
                self._feed_to_cap(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, _Stop) as exc:
            if self._response is None:
                self._fail(self._failure or _malformed(exc))
                return
            self.close()  # bytes after a whole answer: the upstream is out of step with us
        response = self._response
        if response is not None:  # handed on only now: the bytes read are all parsed
            self._response = None
            self._finish(response)

    def _feed_to_cap(self, data: bytes) -> None:
        """Bytes that would take the head past its cap: fed up to it, and the rest only if the
        head ended there. httptools gathers a header's value whole before it calls back, so the
        cap is counted here, on the bytes."""
        room = self._head_room
        self._parser.feed_data(data[:room])
        if not self._in_body and self._response is None:
            self._failure = UpstreamUnavailable(
                f"The scoring server's answer has a header section over {_MAX_HEAD // 1024} KiB; "
                "the connection was dropped."
            )
            raise _Stop
        self._head_room = 0
        self._parser.feed_data(data[room:])

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._uncount()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._done is None:
            return
        if self._in_body and not self._framed() and self._parser.get_status_code() not in _NO_BODY:
            # No Content-Length nor chunked: the body ends where the connection does (RFC 9112 §6.3).
            self.keep_alive = False
            self._finish(Response(self._parser.get_status_code(), self._headers, b"".join(self._body)))
            return
        self._finish(ConnectionResetError("the upstream closed the connection"))

    def _framed(self) -> bool:
        """Whether the answer has a Content-Length or Transfer-Encoding, so it does not end at close."""
        return any(name in (b"content-length", b"transfer-encoding") for name, _ in self._headers)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._response is not None:  # a second answer to one request
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # a trailer field
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_body = True
        for name, value in self._headers:
            # llhttp has checked it is digits; only one as long as the cap's can be over it
            if name == b"content-length" and len(value) >= self._cap_digits and int(value) > self._max_body:
                self._failure = _too_large(
                    f"The scoring server's answer is {int(value)} bytes, over the {_mib(self._max_body)} limit"
                )
                raise _Stop

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._failure = _too_large(f"The scoring server's answer is larger than the {_mib(self._max_body)} limit")
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the final one follows
            self._headers, self._in_body = [], False
            return
        self.keep_alive = self._parser.should_keep_alive()
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._response = Response(status, self._headers, body)
        self._headers, self._body, self._body_size = [], [], 0

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
        self._fail(TimeoutError())  # closed: a late answer must not be read as the next request's

    def _fail(self, outcome: Exception) -> None:
        self.close()
        self._finish(outcome)

    def _finish(self, outcome: Response | Exception) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(outcome)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._pool.closed_one()

    def close(self) -> None:
        self.open = False
        self.keep_alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
        self._uncount()


def _too_large(what: str) -> UpstreamTooLarge:
    return UpstreamTooLarge(
        f"{what} (--upstream-max-body-mb, SAGEHOST_UPSTREAM_MAX_BODY_MB); the connection was dropped."
    )


def _mib(size: int) -> str:
    return f"{size / MIB:g} MiB" if size >= MIB else f"{size} bytes"


def _malformed(exc: Exception) -> UpstreamUnavailable:
    if isinstance(exc, httptools.HttpParserUpgrade):
        return UpstreamUnavailable("The scoring server switched protocols (HTTP 101), which sagehost never asks for.")
    return UpstreamUnavailable("The scoring server sent a malformed HTTP answer; the connection was dropped.")


class Pool:
    """Connections to one origin: at most `max_connections` open, at most 64 kept idle, each
    reused until it is `max_age` seconds old or has been idle for `_IDLE_REUSE_S`."""

    def __init__(
        self,
        origin: Origin,
        loop: asyncio.AbstractEventLoop,
        *,
        max_age: float = math.inf,
        max_body: int = 6 * MIB,
        max_connections: int = 100,
    ) -> None:
        self.origin = origin
        self.loop = loop
        self.max_body = max_body
        self.closed = False
        self._max_age = max_age
        self._max_connections = max_connections
        self._idle: collections.deque[_Connection] = collections.deque()
        self._waiting: collections.deque[_Call] = collections.deque()
        self._open = 0  # connections made and not yet closed
        self._connecting: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references
        self._host_header = str(origin).encode()
        self._heads: dict[tuple[str, str], bytes] = {}

    def acquire(self, call: _Call, now: float) -> None:
        """Give `call` a connection: an idle one, a new one, or the next to come free."""
        conn = self._take(now)
        if conn is not None:
            call.use(conn, True)
        elif self._open + len(self._connecting) < self._max_connections:
            self._connect(call)
        else:
            call.wait()
            self._waiting.append(call)

    def _take(self, now: float) -> _Connection | None:
        # Oldest first: load spreads over every connection, so over every upstream worker.
        while self._idle:
            conn = self._idle.popleft()
            if conn.open and now < conn.reusable_until:
                return conn
            conn.close()
        return None

    def _connect(self, call: _Call) -> None:
        task = self.loop.create_task(self._open_for(call))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open_for(self, call: _Call) -> None:
        protocol = functools.partial(_Connection, self)
        try:
            connecting = self.loop.create_connection(protocol, self.origin.host, self.origin.port)
            _, conn = await asyncio.wait_for(connecting, max(0.0, call.deadline - self.loop.time()))
        except (OSError, TimeoutError) as exc:
            call.unreachable(exc)
            return
        conn.retire_at = self.loop.time() + self._max_age
        call.use(conn, False)

    def give_back(self, conn: _Connection) -> None:
        now = self.loop.time()
        if conn.open and conn.keep_alive and now < conn.retire_at:
            while self._waiting:
                call = self._waiting.popleft().woken()
                if now < call.deadline:
                    call.use(conn, True)
                    return
                call.expired()  # its own timer is due: never send what has already timed out
            if not self.closed and len(self._idle) < _MAX_IDLE:
                idle_until = now + _IDLE_REUSE_S
                conn.reusable_until = idle_until if idle_until < conn.retire_at else conn.retire_at
                self._idle.append(conn)
                return
        conn.close()

    def opened(self) -> None:
        self._open += 1

    def closed_one(self) -> None:
        self._open -= 1
        if self._waiting and self._open + len(self._connecting) < self._max_connections:
            self._connect(self._waiting.popleft().woken())

    def forget(self, call: _Call) -> None:
        """A waiting call gave up."""
        if call in self._waiting:
            self._waiting.remove(call)

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
        """Drop the idle connections and keep none from now on; requests under way finish."""
        self.closed = True
        while self._idle:
            self._idle.pop().close()


def _split(url: str) -> tuple[Origin, str]:
    """(origin, request target) of a URL."""
    parts = urllib.parse.urlsplit(url)
    return Origin.of(url), (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class _Call:
    """One request from `Client.send` to its `done`, through connections, retries and redirects,
    all before one deadline."""

    __slots__ = ("_body", "_client", "_conn", "_done", "_headers", "_hops", "_method", "_pool", "_raw", "_retried",
                 "_reused", "_timeout", "_timer", "_url", "deadline")  # fmt: skip

    def __init__(
        self, client: Client, method: str, url: str, headers: Headers, body: bytes, *, timeout: float, done: Done
    ) -> None:
        self._client = client
        self._method, self._url, self._headers, self._body = method, url, headers, body
        self._timeout = timeout
        self._done = done
        self._hops = 0
        self._retried = False
        self._reused = False
        self._raw = b""
        self._pool: Pool | None = None
        self._conn: _Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0

    def start(self) -> None:
        try:
            pool, target = self._client.route(self._url)
        except ValueError as exc:
            self._done(UpstreamUnavailable(f"The scoring server redirected to an unusable URL ({exc})."))
            return
        now = pool.loop.time()
        if not self.deadline:
            self.deadline = now + self._timeout
        self._pool = pool
        self._raw = pool.serialize(self._method, target, self._headers, self._body)
        pool.acquire(self, now)

    def use(self, conn: _Connection, reused: bool) -> None:
        """Send on `conn`; a connection found closed before a byte was written is dropped and
        another taken: the request provably never left."""
        pool = self._pool
        assert pool is not None
        self._conn, self._reused = conn, reused
        if conn.send(self._raw, self.deadline, self):
            return
        conn.close()
        if reused:
            pool.acquire(self, pool.loop.time())
        else:  # a new connection, closed at once: the server is not taking requests
            self._done(self._failure(ConnectionResetError("the upstream closed a new connection at once")))

    def wait(self) -> None:
        """Queued for a connection to come free, until the deadline."""
        assert self._pool is not None
        self._timer = self._pool.loop.call_at(self.deadline, self._gave_up)

    def woken(self) -> _Call:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self

    def _gave_up(self) -> None:
        assert self._pool is not None
        self._timer = None
        self._pool.forget(self)
        self.expired()

    def expired(self) -> None:
        self._done(self._failure(TimeoutError()))

    def unreachable(self, exc: Exception) -> None:
        if isinstance(exc, TimeoutError):
            self._done(self._failure(exc))
            return
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self._done(UpstreamUnavailable(f"The scoring server at {self._where} is not reachable ({reason})."))

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
        if isinstance(outcome, ConnectionError) and self._method in _RETRIED and not self._retried:
            self._retried = True
            pool.acquire(self, pool.loop.time())
        else:
            self._done(self._failure(outcome))

    def _failure(self, exc: Exception) -> SagehostError:
        if isinstance(exc, SagehostError):
            return exc
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"The scoring server did not answer within {self._timeout:g} s.")
        if self._method in _RETRIED:
            return UpstreamUnavailable(f"The scoring server at {self._where} closed the connection before answering.")
        return UpstreamUnavailable(
            f"The scoring server at {self._where} closed the connection mid-request, before answering. "
            f"sagehost did not send the {self._method} again: the scoring server may have received it, "
            "and a second copy would be scored twice."
        )

    @property
    def _where(self) -> str:
        return str(self._pool.origin) if self._pool is not None else self._url

    def _redirect(self, response: Response) -> None:
        location = response.header(b"location")
        if location is None:  # a 3xx without a Location is an answer like any other
            self._done(response)
        elif response.status not in _KEEPS_METHOD and self._method != "GET":
            self._done(_unfollowed(response.status, self._method, location))
        elif self._hops == _MAX_REDIRECTS:
            self._done(UpstreamUnavailable(f"The scoring server redirected more than {_MAX_REDIRECTS} times."))
        else:
            self._hops += 1
            self._retried = False
            self._url = urllib.parse.urljoin(self._url, location.decode("latin-1"))
            self.start()


def _unfollowed(status: int, method: str, location: bytes) -> UpstreamUnavailable:
    phrase = http.HTTPStatus(status).phrase
    where = location[:200].decode("latin-1")
    return UpstreamUnavailable(
        f"The scoring server answered the {method} with {status} {phrase}, to {where}. sagehost follows "
        f"only 307 and 308 for a {method} (RFC 9110 §15.4): re-sending it as GET would drop its body, and "
        f"re-sending the {method} is not what a {status} promises. Point --upstream at the new URL, or have "
        "the scoring server answer 307 or 308."
    )


class Client:
    """Pools per origin. Use from the event loop's thread only."""

    def __init__(self, max_connection_age: float = 0.0, *, max_body: int = 6 * MIB, max_connections: int = 100) -> None:
        """`max_connection_age`: seconds a connection is reused before it is replaced; 0: for as
        long as the upstream keeps it open. `max_body`: the largest answer read, in bytes.
        `max_connections`: open at once to one origin; more requests wait for one to come free."""
        self._pool_settings: dict[str, Any] = {
            "max_age": max_connection_age if max_connection_age > 0 else math.inf,
            "max_body": max_body,
            "max_connections": max_connections,
        }
        self._pools: collections.OrderedDict[Origin, Pool] = collections.OrderedDict()
        self._routes: dict[str, tuple[Pool, str]] = {}

    def route(self, url: str) -> tuple[Pool, str]:
        """The pool and request target for a URL; kept, since the proxy sends nearly every
        request to one URL. ValueError for a URL the client cannot use."""
        route = self._routes.get(url)
        if route is not None and not route[0].closed:
            return route
        origin, target = _split(url)
        pool = self._pools.get(origin)
        if pool is None or pool.closed:
            pool = self._pools[origin] = Pool(origin, asyncio.get_running_loop(), **self._pool_settings)
            if len(self._pools) > _POOLS_KEPT:  # least recently routed to
                self._pools.popitem(last=False)[1].close()
        self._pools.move_to_end(origin)
        route = (pool, target)
        if len(self._routes) < _ROUTES_KEPT or url in self._routes:
            self._routes[url] = route
        return route

    @property
    def pools(self) -> int:
        """Origins with a pool of connections (at most 4)."""
        return len(self._pools)

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
