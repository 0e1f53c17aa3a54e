"""sagehost.http.server's connection state machine, driven in process through a fake transport
(as uvicorn tests its protocols): every limit, refusal and deadline without a socket.

The app under the server is a small ASGI echo: these tests are about the server, and the App's
own behaviour is tested through it elsewhere (tests/test_app.py, tests/integration)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
import pytest

from sagehost.http.limits import Limits
from sagehost.http.server import Connection, HttpServer, Message

LIMITS = Limits(body_bytes=1000, header_bytes=4096, header_timeout_s=5, body_timeout_s=5, min_body_rate=100)


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.eof = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "wrote after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closed

    def answers(self) -> list[bytes]:
        """Status lines written so far."""
        return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", bytes(self.written))


async def echo(
    scope: dict[str, Any], receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Any]
) -> None:
    """Answers with the method, path and body length it got."""
    message = await receive()
    body = orjson.dumps({"path": scope["path"], "method": scope["method"], "length": len(message["body"])})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def connect(limits: Limits = LIMITS) -> tuple[Connection, FakeTransport]:
    server = HttpServer(echo, limits)
    connection = Connection(server)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


async def settle() -> None:
    """Let every answer that can be written be written (each App call is a task of its own)."""
    for _ in range(500):
        await asyncio.sleep(0)


def get(path: str = "/ping", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_a_request_is_answered_and_the_connection_kept() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(post(b"abc"))
        await settle()
        assert transport.answers() == [b"HTTP/1.1 200 OK"]
        assert b'"length":3' in transport.written
        assert not transport.closed

    run(scenario)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(get("/a") + post(b"12345") + get("/c"))
        await settle()
        paths = re.findall(rb'"path":"([^"]*)"', bytes(transport.written))
        assert paths == [b"/a", b"/invocations", b"/c"]

    run(scenario)


def test_an_error_is_answered_in_its_turn_and_nothing_after_it() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        bad = b"POST /invocations HTTP/1.1\r\nContent-Length: -1\r\n\r\n"
        connection.data_received(get("/first") + bad + get("/never"))
        await settle()
        assert transport.answers() == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
        assert b"/never" not in transport.written
        assert transport.eof  # our side ended; the rest of what the client sends is dropped
        connection.data_received(get("/after"))
        await settle()
        assert len(transport.answers()) == 2

    run(scenario)


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["cl-and-te", "two-lengths", "negative-length", "bad-chunk", "space-in-name", "tls"],
)
def test_ambiguous_or_malformed_framing_is_a_400_and_close(head: bytes) -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(head)
        await settle()
        assert transport.answers() == [b"HTTP/1.1 400 Bad Request"]
        assert b"connection: close" in transport.written and transport.eof

    run(scenario)


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked"])  # "chunked, gzip": llhttp 400s it
def test_a_transfer_coding_other_than_chunked_is_a_501_and_close(coding: bytes) -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(b"POST / HTTP/1.1\r\nTransfer-Encoding: " + coding + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        await settle()
        assert transport.answers() == [b"HTTP/1.1 501 Not Implemented"]
        assert b"connection: close" in transport.written and transport.eof

    run(scenario)


def test_a_head_over_the_cap_is_a_431() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(get(extra=b"X-Big: " + b"a" * 5000 + b"\r\n"))
        await settle()
        assert transport.answers() == [b"HTTP/1.1 431 Request Header Fields Too Large"]
        assert b"header_too_large" in transport.written

    run(scenario)


def test_a_header_that_never_ends_is_refused_after_the_cap_not_buffered() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(b"GET / HTTP/1.1\r\nX-Endless: ")
        sent = 0
        while not transport.answers() and sent < 1_000_000:
            connection.data_received(b"a" * 512)
            sent += 512
        await settle()
        assert transport.answers() == [b"HTTP/1.1 431 Request Header Fields Too Large"]
        assert sent <= LIMITS.header_bytes + 1024

    run(scenario)


def test_a_pipelined_burst_larger_than_the_head_cap_is_not_one_head() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        burst = get("/p", b"X-Pad: " + b"p" * 200 + b"\r\n") * 40  # ~10 KB of whole requests
        connection.data_received(burst + b"GET /last HTTP/1.1\r\nX-Part: ")  # and a head begun
        connection.data_received(b"x\r\n\r\n")
        await settle()
        assert transport.answers() == [b"HTTP/1.1 200 OK"] * 41

    run(scenario)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(b"POST /invocations HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        await settle()
        assert transport.answers() == [b"HTTP/1.1 413 Request Entity Too Large"]
        assert b"100 Continue" not in transport.written  # the client is told not to send it

    run(scenario)


def test_a_chunked_body_is_refused_once_past_the_limit() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            connection.data_received(b"190\r\n" + b"x" * 400 + b"\r\n")
        await settle()
        assert transport.answers() == [b"HTTP/1.1 413 Request Entity Too Large"]

    run(scenario)


def test_a_chunked_body_within_the_limit_is_served_whole() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await settle()
        assert b'"length":5' in transport.written

    run(scenario)


def test_an_upgrade_on_get_is_answered_then_closed() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(get(extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"\x81\x05hello")
        await settle()
        assert transport.answers() == [b"HTTP/1.1 200 OK"]
        assert b"connection: close" in transport.written and transport.closed

    run(scenario)


@pytest.mark.parametrize(
    "head",
    [
        post(b"abc", b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ],
    ids=["post-h2c", "connect"],
)
def test_an_upgrade_that_would_lose_the_body_is_refused_with_an_answer(head: bytes) -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(head)
        await settle()
        assert transport.answers() == [b"HTTP/1.1 400 Bad Request"]
        assert b"does not switch protocols" in transport.written

    run(scenario)


def test_http_1_0_keep_alive_is_honoured_and_plain_1_0_closes() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        await settle()
        assert not transport.closed
        connection.data_received(b"GET /b HTTP/1.0\r\n\r\n")
        await settle()
        assert transport.closed

    run(scenario)


def test_deadlines_follow_the_state_of_the_request() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        loop = asyncio.get_running_loop()
        assert connection.due() == pytest.approx(loop.time() + LIMITS.keep_alive_timeout_s, abs=0.5)
        connection.data_received(b"POST /invocations HTTP/1.1\r\n")
        assert connection.due() == pytest.approx(loop.time() + LIMITS.header_timeout_s, abs=0.5)
        connection.data_received(b"Content-Length: 900\r\n\r\n" + b"x" * 100)
        # 100 bytes at 100 B/s cover 1 s, inside the 5 s grace: due when the gap runs out
        assert connection.due() == pytest.approx(loop.time() + LIMITS.body_timeout_s, abs=0.5)
        connection.data_received(b"x" * 800)
        await settle()
        assert transport.answers() == [b"HTTP/1.1 200 OK"]
        assert connection.due() == pytest.approx(loop.time() + LIMITS.keep_alive_timeout_s, abs=0.5)

    run(scenario)


def test_a_body_that_keeps_trickling_is_held_to_the_minimum_rate() -> None:
    async def scenario() -> None:
        connection, _ = await connect(Limits(body_bytes=10**6, body_timeout_s=5, min_body_rate=100))
        connection.data_received(b"POST /i HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 700)
        started = asyncio.get_running_loop().time()
        # 700 bytes cover 7 s at 100 B/s: past the 5 s grace, the rate is what runs out first
        connection._body_last = started + 6.5  # a byte came in just now, 6.5 s in
        assert connection.due() == pytest.approx(started + 7, abs=0.1)

    run(scenario)


@pytest.mark.parametrize("partial", [b"POST /inv", b"POST /i HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"])
def test_a_stalled_request_is_answered_408_when_due(partial: bytes) -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(partial)
        assert connection.due() < math.inf
        connection.expire()
        await settle()
        assert transport.answers() == [b"HTTP/1.1 408 Request Timeout"]
        assert connection.due() == pytest.approx(asyncio.get_running_loop().time() + LIMITS.linger_s, abs=0.5)
        connection.expire()
        assert transport.closed

    run(scenario)


def test_an_idle_connection_is_closed_when_due() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(get())
        await settle()
        connection.expire()
        assert transport.closed and transport.answers() == [b"HTTP/1.1 200 OK"]

    run(scenario)


def test_a_client_that_does_not_read_stops_its_work_and_is_dropped() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.pause_writing()
        connection.data_received(get("/a") + get("/b"))
        await settle()
        assert transport.answers() == [] and not transport.reading
        assert connection.due() == pytest.approx(asyncio.get_running_loop().time() + LIMITS.body_timeout_s, abs=0.5)
        connection.resume_writing()
        await settle()
        assert len(transport.answers()) == 2
        connection.pause_writing()
        connection.expire()
        assert transport.aborted

    run(scenario)


def test_pipelining_is_bounded_by_pausing_reads() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(scope: dict[str, Any], receive: Any, send: Callable[[Message], Any]) -> None:
            await release.wait()
            await echo(scope, receive, send)

        connection = Connection(HttpServer(slow, LIMITS))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(get() * 20)  # the first is in flight, the rest wait
        await settle()
        paused = not transport.reading
        release.set()
        await settle()
        assert paused
        assert transport.reading
        assert len(transport.answers()) == 20

    run(scenario)


def test_the_sweep_enforces_deadlines_on_a_real_loop() -> None:
    async def scenario() -> None:
        limits = Limits(body_bytes=1000, header_timeout_s=0.2, keep_alive_timeout_s=0.2, linger_s=0.1)
        server = HttpServer(echo, limits)
        stopped = asyncio.get_running_loop().create_future()

        async def serve() -> None:
            import socket

            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            stopped.set_result(sock.getsockname()[1])
            assert await server.serve(sock, lifespan=False, handle_signals=False) == 0

        task = asyncio.create_task(serve())
        port = await stopped
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /inv")
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        writer.close()
        server.stop()
        await asyncio.wait_for(task, timeout=5)

    run(scenario)


def test_after_a_refusal_what_follows_is_dropped_up_to_a_budget() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(get(extra=b"X-Big: " + b"a" * 5000 + b"\r\n"))
        await settle()
        assert transport.answers() == [b"HTTP/1.1 431 Request Header Fields Too Large"] and not transport.closed
        for _ in range(20):  # a client that never stops sending is cut off after 1 MiB
            connection.data_received(b"x" * 65536)
        assert transport.closed

    run(scenario)


def test_after_a_413_the_refused_body_may_finish_arriving() -> None:
    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(b"POST /invocations HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n")
        await settle()
        for _ in range(76):  # the whole declared body: still read and dropped, so the 413 is read
            connection.data_received(b"x" * 65536)
        assert transport.answers() == [b"HTTP/1.1 413 Request Entity Too Large"] and not transport.closed

    run(scenario)
