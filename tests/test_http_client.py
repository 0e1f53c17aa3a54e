"""The proxy's upstream client (sagehost.http.client) driven against scripted HTTP servers in
the test's own event loop, on loopback: each server does one thing a real upstream might (closes
after reading a POST, streams a body without end, redirects, floods headers, trickles its head),
and each test asserts what the client answered and what the server received. Every test runs on
asyncio's loop and on uvloop's, which the proxy's workers use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from sagehost.errors import SagehostError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.client import Client, Response
from tests.loopback import LoopbackServer

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
KIB = 1024


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class Upstream(LoopbackServer):
    """A scripted HTTP server on a free loopback port: `script` runs once per connection."""

    script: Callable[[Upstream, Reader, Writer], Awaitable[None]]
    """Serves one connection; the connection is closed when it returns."""
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    open: int = 0
    most_open: int = 0
    sent: int = 0
    """Bytes the script wrote (through `send`)."""
    closed_by_client: int = 0

    async def handle(self, reader: Reader, writer: Writer) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client += 1
        except asyncio.CancelledError:
            pass  # the test is over
        finally:
            self.open -= 1
            writer.close()

    async def until_hangup(self, reader: Reader) -> None:
        """Wait for the client to close the connection."""
        while await reader.read(65536):
            pass
        self.closed_by_client += 1

    async def read(self, reader: Reader) -> Received | None:
        """The next request on a connection, counted; None when the client hung up."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        received = Received(method, target, headers, body, self.connections)
        self.requests.append(received)
        return received

    async def send(self, writer: Writer, data: bytes) -> None:
        writer.write(data)
        self.sent += len(data)
        await writer.drain()


def answer(status: int = 200, body: bytes = b"ok", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def answers_ok(up: Upstream, reader: Reader, writer: Writer) -> None:
    while (request := await up.read(reader)) is not None:
        await up.send(writer, answer(200, b"seen " + request.body))
    up.closed_by_client += 1


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Runs a test's coroutine on a new loop of each kind, bounded in time."""
    runner: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run if request.param == "asyncio" else uvloop.run

    def bounded(coro: Coroutine[Any, Any, Any]) -> Any:
        async def within() -> Any:
            async with asyncio.timeout(10):
                return await coro

        return runner(within())

    return bounded


async def outcome(
    client: Client, method: str, url: str, body: bytes = b"", timeout: float = 5
) -> Response | SagehostError:
    try:
        return await client.request(method, url, [(b"content-type", b"text/csv")], body, timeout)
    except SagehostError as exc:
        return exc


# ---- sent once, or again only when it provably never left ------------------------------------


def test_answers_are_read_and_one_connection_is_reused(run: Any) -> None:
    async def scenario() -> None:
        async with Upstream(answers_ok) as up:
            client = Client()
            for n in range(3):
                response = await client.request("POST", up.url + "/score", [], b"%d" % n, 5)
                assert (response.status, response.body) == (200, b"seen %d" % n)
            assert up.connections == 1 and [r.target for r in up.requests] == ["/score"] * 3
            client.close()

    run(scenario())


def test_a_post_the_upstream_read_before_closing_is_a_502_and_never_sent_again(run: Any) -> None:
    """The upstream answers a first request, then reads the second on the same kept-alive
    connection and closes it: the second may have been scored, so it is not sent again."""

    async def once_then_close(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, answer())
        await up.read(reader)  # read, then closed without an answer

    async def scenario() -> None:
        async with Upstream(once_then_close) as up:
            client = Client()
            assert (await client.request("POST", up.url, [], b"first", 5)).status == 200
            failed = await outcome(client, "POST", up.url, b"second")
            assert isinstance(failed, UpstreamUnavailable) and failed.status == 502
            assert (
                "closed the connection mid-request" in failed.message
                and "did not send the POST again" in failed.message
            )
            assert [r.body for r in up.requests] == [b"first", b"second"]  # no third request
            client.close()

    run(scenario())


def test_a_pooled_connection_found_closed_is_not_used(run: Any) -> None:
    """Closed by the upstream while idle (a keep-alive timeout): the request goes on a new
    connection, once — it never left."""

    async def one_per_connection(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, answer())  # says keep-alive (HTTP/1.1), then closes

    async def scenario() -> None:
        async with Upstream(one_per_connection) as up:
            client = Client()
            for _ in range(3):
                assert (await client.request("POST", up.url, [], b"x", 5)).status == 200
                await asyncio.sleep(0.05)  # the close is seen by the loop
            assert len(up.requests) == 3 and up.connections == 3
            client.close()

    run(scenario())


def test_a_get_is_retried_once_on_a_fresh_connection(run: Any) -> None:
    async def once_then_close(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, answer())
        if up.connections == 1:
            await up.read(reader)  # the first connection reads the second GET and closes
        else:
            await answers_ok(up, reader, writer)

    async def scenario() -> None:
        async with Upstream(once_then_close) as up:
            client = Client()
            assert (await client.request("GET", up.url + "/health", [], b"", 5)).status == 200
            assert (await client.request("GET", up.url + "/health", [], b"", 5)).status == 200
            assert [r.connection for r in up.requests] == [1, 1, 2]  # sent again, on a new connection
            client.close()

    run(scenario())


def test_an_answer_nobody_asked_for_never_answers_the_next_request(run: Any) -> None:
    async def answers_twice(up: Upstream, reader: Reader, writer: Writer) -> None:
        while (request := await up.read(reader)) is not None:
            await up.send(writer, answer(200, request.body) + answer(200, b"stray"))
        up.closed_by_client += 1

    async def scenario() -> None:
        async with Upstream(answers_twice) as up:
            client = Client()
            for body in (b"one", b"two", b"three"):
                assert (await client.request("POST", up.url, [], body, 5)).body == body
                await asyncio.sleep(0.02)
            assert up.connections == 3 and up.closed_by_client == 3  # each dropped after its stray answer
            client.close()

    run(scenario())


def test_interim_answers_are_skipped(run: Any) -> None:
    async def continues(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer())

    async def scenario() -> None:
        async with Upstream(continues) as up:
            client = Client()
            response = await client.request("POST", up.url, [], b"x", 5)
            assert (response.status, response.body) == (200, b"ok")
            client.close()

    run(scenario())


@pytest.mark.parametrize(
    "raw", [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"]
)
def test_a_malformed_answer_is_a_502(run: Any, raw: bytes) -> None:
    async def malformed(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, raw)
        await up.until_hangup(reader)

    async def scenario() -> None:
        async with Upstream(malformed) as up:
            client = Client()
            failed = await outcome(client, "POST", up.url, b"x")
            assert isinstance(failed, UpstreamUnavailable) and "malformed" in failed.message
            await asyncio.sleep(0.1)  # for the upstream to see the close
            assert up.closed_by_client == 1
            client.close()

    run(scenario())


def test_an_unreachable_upstream_is_a_502_that_says_so(run: Any) -> None:
    async def scenario() -> None:
        async with Upstream(answers_ok) as up:
            url = up.url
        client = Client()
        failed = await outcome(client, "POST", url, b"x")
        assert isinstance(failed, UpstreamUnavailable) and "is not reachable" in failed.message
        client.close()

    run(scenario())


# ---- the answer is bounded -------------------------------------------------------------------


def test_an_endless_chunked_body_is_cut_at_the_cap_and_the_connection_dropped(run: Any) -> None:
    async def endless(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (64 * KIB, b"x" * 64 * KIB)
        while True:
            await up.send(writer, chunk)

    async def scenario() -> None:
        async with Upstream(endless) as up:
            client = Client(max_body=256 * KIB)
            failed = await outcome(client, "POST", up.url, b"x")
            assert isinstance(failed, UpstreamTooLarge) and failed.status == 502
            assert "larger than the 262144 bytes limit" in failed.message
            await asyncio.sleep(0.1)
            assert up.closed_by_client == 1
            assert up.sent < 32 * 1024 * KIB  # what the socket buffers held, not gigabytes
            client.close()

    run(scenario())


def test_a_content_length_over_the_cap_is_refused_before_the_body_is_read(run: Any) -> None:
    async def huge(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        await asyncio.sleep(5)  # the body never comes: only the head decides

    async def scenario() -> None:
        async with Upstream(huge) as up:
            client = Client(max_body=2 * 1024 * KIB)
            started = time.monotonic()
            failed = await outcome(client, "POST", up.url, b"x")
            assert time.monotonic() - started < 1
            assert isinstance(failed, UpstreamTooLarge)
            assert "is 10000000000 bytes, over the 2 MiB limit" in failed.message
            client.close()

    run(scenario())


@pytest.mark.parametrize(("size", "cap", "status"), [(100 * KIB, 128 * KIB, 200), (200 * KIB, 128 * KIB, 502)])
def test_a_body_that_ends_at_close_is_read_whole_and_counted(run: Any, size: int, cap: int, status: int) -> None:
    async def until_close(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * size)
        writer.close()

    async def scenario() -> None:
        async with Upstream(until_close) as up:
            client = Client(max_body=cap)
            result = await outcome(client, "POST", up.url, b"x")
            if status == 200:
                assert isinstance(result, Response) and result.body == b"y" * size
            else:
                assert isinstance(result, UpstreamTooLarge)
            client.close()

    run(scenario())


def test_a_header_section_that_never_ends_is_a_502(run: Any) -> None:
    async def flood(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, b"HTTP/1.1 200 OK\r\n")
        while True:
            await up.send(writer, b"X-Flood: " + b"a" * 1000 + b"\r\n")

    async def scenario() -> None:
        async with Upstream(flood) as up:
            client = Client()
            failed = await outcome(client, "POST", up.url, b"x")
            assert isinstance(failed, UpstreamUnavailable) and "header section over 64 KiB" in failed.message
            await asyncio.sleep(0.1)
            assert up.closed_by_client == 1
            client.close()

    run(scenario())


def test_one_endless_header_line_is_a_502(run: Any) -> None:
    async def one_line(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, b"HTTP/1.1 200 OK\r\nX-Long: ")
        while True:
            await up.send(writer, b"a" * 4096)

    async def scenario() -> None:
        async with Upstream(one_line) as up:
            client = Client()
            failed = await outcome(client, "POST", up.url, b"x")
            assert isinstance(failed, UpstreamUnavailable) and "header section" in failed.message
            client.close()

    run(scenario())


# ---- every wait ends -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trickled",
    [
        b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100,  # a head that never completes
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"b" * 100,  # a body that never completes
    ],
)
def test_a_trickled_answer_ends_at_the_deadline(run: Any, trickled: bytes) -> None:
    async def trickle(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        for byte in trickled:
            await up.send(writer, bytes([byte]))
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        async with Upstream(trickle) as up:
            client = Client()
            started = time.monotonic()
            failed = await outcome(client, "POST", up.url, b"x", timeout=0.3)
            assert isinstance(failed, UpstreamTimeout) and failed.status == 504
            assert 0.25 < time.monotonic() - started < 1
            client.close()

    run(scenario())


def test_a_request_the_upstream_never_reads_ends_at_the_deadline(run: Any) -> None:
    async def never_reads(up: Upstream, reader: Reader, writer: Writer) -> None:
        await asyncio.sleep(5)

    async def scenario() -> None:
        async with Upstream(never_reads) as up:
            client = Client()
            failed = await outcome(client, "POST", up.url, b"z" * (16 * 1024 * KIB), timeout=0.3)
            assert isinstance(failed, UpstreamTimeout)
            client.close()

    run(scenario())


def test_connections_per_origin_are_bounded_and_the_rest_wait(run: Any) -> None:
    hold = [0.05]

    async def slow(up: Upstream, reader: Reader, writer: Writer) -> None:
        while await up.read(reader) is not None:
            await asyncio.sleep(hold[0])
            await up.send(writer, answer())

    async def scenario() -> None:
        async with Upstream(slow) as up:
            client = Client(max_connections=2)
            results = await asyncio.gather(*(outcome(client, "POST", up.url, b"x") for _ in range(6)))
            assert [r.status for r in results] == [200] * 6
            assert up.most_open == 2 and len(up.requests) == 6
            hold[0] = 0.5  # two requests hold both connections; four more wait, at most 0.1 s
            sent = [outcome(client, "POST", up.url, b"x") for _ in range(2)]
            waiting = [outcome(client, "POST", up.url, b"x", timeout=0.1) for _ in range(4)]
            results = await asyncio.gather(*sent, *waiting)
            assert [type(r) for r in results] == [Response] * 2 + [UpstreamTimeout] * 4
            assert len(up.requests) == 8  # a request that timed out waiting was never sent
            client.close()

    run(scenario())


# ---- redirects, RFC 9110 §15.4 ---------------------------------------------------------------


def redirecting(status: int, location: str = "/new") -> Callable[[Upstream, Reader, Writer], Awaitable[None]]:
    async def script(up: Upstream, reader: Reader, writer: Writer) -> None:
        while (request := await up.read(reader)) is not None:
            if request.target.startswith("/old"):
                await up.send(writer, answer(status, b"", f"Location: {location}"))
            else:
                await up.send(writer, answer(200, f"{request.method} {request.body.decode()}".encode()))

    return script


@pytest.mark.parametrize("status", [307, 308])
def test_307_and_308_are_followed_with_the_same_method_and_body(run: Any, status: int) -> None:
    async def scenario() -> None:
        async with Upstream(redirecting(status)) as up:
            client = Client()
            response = await client.request("POST", up.url + "/old", [], b"1,2", 5)
            assert (response.status, response.body) == (200, b"POST 1,2")
            assert [(r.method, r.target, r.body) for r in up.requests] == [
                ("POST", "/old", b"1,2"),
                ("POST", "/new", b"1,2"),
            ]
            client.close()

    run(scenario())


@pytest.mark.parametrize("status", [301, 302, 303])
def test_301_302_303_to_a_post_are_a_502_naming_status_and_location(run: Any, status: int) -> None:
    async def scenario() -> None:
        async with Upstream(redirecting(status)) as up:
            client = Client()
            failed = await outcome(client, "POST", up.url + "/old", b"1,2")
            assert isinstance(failed, UpstreamUnavailable) and failed.status == 502
            assert f"answered the POST with {status}" in failed.message and "to /new" in failed.message
            assert "307 or 308" in failed.message
            assert len(up.requests) == 1  # not re-sent, as POST nor as GET
            client.close()

    run(scenario())


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_every_redirect_is_followed_for_a_get(run: Any, status: int) -> None:
    async def scenario() -> None:
        async with Upstream(redirecting(status)) as up:
            client = Client()
            response = await client.request("GET", up.url + "/old", [], b"", 5)
            assert (response.status, response.body) == (200, b"GET ")
            client.close()

    run(scenario())


def test_redirect_hops_are_bounded(run: Any) -> None:
    async def scenario() -> None:
        async with Upstream(redirecting(307, "/old")) as up:
            client = Client()
            failed = await outcome(client, "POST", up.url + "/old", b"x")
            assert isinstance(failed, UpstreamUnavailable) and "more than 5 times" in failed.message
            assert len(up.requests) == 6
            client.close()

    run(scenario())


def test_pools_are_kept_for_a_few_origins_only_and_dropped_ones_closed(run: Any) -> None:
    async def scenario() -> None:
        upstreams = [Upstream(answers_ok) for _ in range(6)]
        for up in upstreams:
            await up.__aenter__()
        try:
            first, *others = upstreams
            client = Client()
            assert (await client.request("POST", first.url, [], b"x", 5)).status == 200
            for up in others:  # as if redirected to five other origins
                assert (await client.request("POST", up.url, [], b"x", 5)).status == 200
            assert client.pools == 4
            await asyncio.sleep(0.1)
            assert first.closed_by_client == 1  # its pool was dropped, its idle connection closed
            assert (await client.request("POST", first.url, [], b"x", 5)).status == 200  # a new pool
            assert client.pools == 4 and first.connections == 2
            client.close()
        finally:
            for up in upstreams:
                await up.__aexit__()

    run(scenario())
