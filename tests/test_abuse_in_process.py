"""Attacks found by reading issue 14's code as an attacker would (HTTP server, proxy client,
decoders, adapters), each driven in process: chunked trailers without end, clients that never
read, .npy rows of no values, tiny chunks, queued pipelined bodies, Transfer-Encoding on HTTP/1.0
or with other codings, oversized integers, 100-continue out of turn. Every test is bounded in time
and memory."""

from __future__ import annotations

import asyncio
import io
import socket
import time
import tracemalloc
from typing import Any

import pytest
import uvloop
from numpy.lib import format as npy_format

from sagehost import codecs
from sagehost.config import Settings
from sagehost.errors import InvalidPayload, SagehostError, SchemaMismatch
from sagehost.http.client import Client
from sagehost.http.limits import Limits
from sagehost.http.server import Connection, HttpServer
from sagehost.proxy.adapters import typed
from sagehost.proxy.health import UpstreamHealth
from sagehost.proxy.service import ProxyService
from sagehost.service import Invocation
from tests.test_http_client import Reader, Upstream, Writer
from tests.test_http_server import LIMITS, FakeTransport, connect, echo, run, settle

KIB, MIB = 1024, 1024 * 1024


def held_app() -> tuple[Any, asyncio.Event]:
    """An app that answers only once released: requests pile up behind the first."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await echo(scope, receive, send)

    return app, release


# ---- 1. chunked trailers: unbounded, quadratic, and merged into the request's headers ----------


def test_an_endless_chunked_trailer_is_refused_near_the_head_cap() -> None:
    """The trailer section after the last chunk is header lines that nothing counts: the parser
    (httptools) gathers a header value with `bytes +=` across reads, so memory and CPU grow
    without bound (100 MiB took 13 s of a blocked event loop) until the 60 s body gap runs out."""

    async def scenario() -> None:
        connection, transport = await connect()
        head = b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        connection.data_received(head + b"3\r\nabc\r\n0\r\nX-T: ")
        fed = 0
        while not transport.answers() and not transport.closed and fed < 4 * MIB:
            connection.data_received(b"a" * (64 * KIB))
            fed += 64 * KIB
        await settle()
        assert transport.answers() or transport.closed, f"{fed:,} bytes of one trailer field read, no refusal"
        assert fed <= LIMITS.header_bytes + 2 * 64 * KIB

    run(scenario)


def test_trailer_fields_do_not_become_request_headers() -> None:
    """httptools calls on_header for trailer fields too; they land in the Request's header list
    (the same list object) after the head was accepted, so a trailer overrides Content-Type for
    the App (its header dict keeps the last) and is forwarded upstream by the relay."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        await echo(scope, receive, send)

    async def scenario() -> None:
        connection = Connection(HttpServer(app, LIMITS))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(
            b"POST /invocations HTTP/1.1\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\n1,2\r\n0\r\nContent-Type: application/x-npy\r\n\r\n"
        )
        await settle()
        assert transport.answers() == [b"HTTP/1.1 200 OK"]
        assert (b"content-type", b"application/x-npy") not in seen[0]

    run(scenario)


def test_an_upstream_answers_endless_trailer_is_cut_at_the_cap() -> None:
    """The proxy client's answer cap counts chunk data only: a trailer after the last chunk is
    read without bound (the same quadratic `bytes +=`), with max_body = 64 KiB."""

    async def endless_trailer(up: Upstream, reader: Reader, writer: Writer) -> None:
        await up.read(reader)
        await up.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ")
        while up.sent < 24 * MIB:
            await up.send(writer, b"a" * (64 * KIB))
        await up.until_hangup(reader)

    async def scenario() -> None:
        async with Upstream(endless_trailer) as up:
            client = Client(max_body=64 * KIB)
            started = time.monotonic()
            with pytest.raises(SagehostError):
                await client.request("POST", up.url + "/invocations", [], b"x", timeout=8)
            client.close()
            # loopback's socket buffers hold a few MiB; the client itself must stop near 64 KiB
            assert up.sent < 16 * MIB, f"the client read {up.sent:,} bytes of one trailer field"
            assert time.monotonic() - started < 6

    asyncio.run(scenario())


# ---- 2. a client that never reads is never dropped once its connection is closed ---------------

BIG = b"x" * 16384


async def big_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(BIG))]})
    await send({"type": "http.response.body", "body": BIG})


@pytest.mark.parametrize("last", [b"", b"Connection: close\r\n"], ids=["keep-alive-expiry", "connection-close"])
def test_a_client_that_never_reads_is_dropped_after_close(last: bytes) -> None:
    """`expire`/`_finished` call transport.close(), which waits for the write buffer to drain: a
    client that never reads keeps the connection (fd, kernel buffers, our buffer) forever, and
    the sweep only calls close() again. Only `pause_writing` (buffer past the high-water mark)
    leads to abort(); a buffer below it has no deadline at all."""

    async def scenario() -> None:
        limits = Limits(1000, header_timeout_s=0.3, body_timeout_s=0.3, keep_alive_timeout_s=0.3, linger_s=0.1)
        server = HttpServer(big_answer, limits)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        serving = asyncio.create_task(server.serve(listener, lifespan=False, handle_signals=False))
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads anyway
        client.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(client, listener.getsockname())
            while not server.connections:
                await asyncio.sleep(0.01)
            connection = next(iter(server.connections))
            transport: Any = connection._transport
            for _ in range(3000):  # until the kernel's buffers are full and ours holds the rest
                client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.sleep(0.005)
                if transport.get_write_buffer_size() > 0:
                    break
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + last + b"\r\n")
            await asyncio.sleep(0.05)
            assert transport.get_write_buffer_size() > 0 and connection._writing_paused_at is None  # the case
            deadline = time.monotonic() + 3  # 10x the timeouts
            while server.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not server.connections, "closed (is_closing) but never dropped: the client never reads"
        finally:
            client.close()
            server.stop()
            await asyncio.wait_for(serving, timeout=10)

    uvloop.run(scenario())


# ---- 3. memory per connection: tiny chunks, queued pipelined bodies ----------------------------


def test_tiny_chunks_cost_a_small_multiple_of_the_body() -> None:
    """Each chunk's data is kept as its own bytes object in a list until the body ends: 2-byte
    chunks cost ~22x the body (a 6 MiB body is ~130 MiB per connection), 1-byte ones 9x."""

    async def scenario() -> None:
        app, _ = held_app()
        connection = Connection(HttpServer(app, Limits(body_bytes=6 * MIB)))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        piece = b"2\r\nab\r\n"
        wire = piece * (64 * KIB // len(piece))
        tracemalloc.start()
        try:
            connection.data_received(b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            body = 0
            while body < 512 * KIB:
                connection.data_received(wire)
                body += len(wire) // len(piece) * 2
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held < 4 * body, f"{body:,} body bytes held as {held:,} bytes"

    run(scenario)


def test_queued_pipelined_bodies_are_bounded_by_the_payload_limit() -> None:
    """The module docstring promises 'at most 16 queued requests or one payload limit of queued
    bodies'; the code pauses at a fixed 64 MiB (_MAX_QUEUED_BYTES), ~11 payload limits at the
    6 MiB default: one connection pipelining to a slow model holds ~70 MiB, fifty hold 3.5 GB."""

    async def scenario() -> None:
        app, release = held_app()
        connection = Connection(HttpServer(app, LIMITS))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        body = b"x" * 900
        request = b"POST /invocations HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        connection.data_received(request * 10)  # one in the App, nine queued: 8,100 bytes > 1,000
        await settle()
        paused, queued = not transport.reading, connection._queued_bytes
        release.set()
        await settle()
        assert paused, f"{queued:,} queued body bytes and still reading"

    run(scenario)


# ---- 4. framing the RFC says to treat as faulty ------------------------------------------------


def test_transfer_encoding_on_http_1_0_does_not_keep_the_connection() -> None:
    """RFC 9112 §6.1: a Transfer-Encoding in an HTTP/1.0 request MUST be treated as faulty
    framing and the connection closed after it (nginx answers 400). Here a 1.0 keep-alive
    request with a chunked body is served and the connection kept, so a 1.0 front end that
    frames it differently sees the chunked body as a second request (smuggling)."""

    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(
            b"POST /invocations HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\nGET /second HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )
        await settle()
        assert b"/second" not in transport.written
        assert transport.closed or transport.eof

    run(scenario)


def test_a_coding_before_chunked_is_refused_as_a_coding_alone_is() -> None:
    """`Transfer-Encoding: gzip` is a 400, but `gzip, chunked` is served with the gzip bytes
    handed to the App as if they were the body (nginx and h11 answer 501 for any coding but
    chunked)."""

    async def scenario() -> None:
        connection, transport = await connect()
        connection.data_received(b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        await settle()
        assert transport.answers() and transport.answers()[0] != b"HTTP/1.1 200 OK"

    run(scenario)


def test_100_continue_is_not_written_before_earlier_answers() -> None:
    """on_headers_complete writes `100 Continue` at once, even while an earlier pipelined request
    is still in the App: the interim answer goes out ahead of the answers before it."""

    async def scenario() -> None:
        app, release = held_app()
        connection = Connection(HttpServer(app, LIMITS))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(
            b"GET /first HTTP/1.1\r\n\r\n"
            b"POST /invocations HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        await settle()
        early = bytes(transport.written)
        release.set()
        connection.data_received(b"abc")
        await settle()
        assert not early.startswith(b"HTTP/1.1 100"), "100 Continue written before the answer to GET /first"

    run(scenario)


# ---- 5. decoders and the proxy's typing ---------------------------------------------------------


def npy(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_an_npy_header_claiming_rows_of_no_values_is_refused() -> None:
    """A 128-byte body declaring shape (10**12, 0) needs 0 data bytes and 0 'values', so every
    check passes and decode returns a table of a trillion rows."""
    with pytest.raises(InvalidPayload):
        table = codecs.decode(npy((10**12, 0)), "application/x-npy")
        assert len(table) <= 1, len(table)


def test_the_proxy_adapter_does_not_allocate_per_claimed_npy_row() -> None:
    """Through `sagehost proxy --adapter … --upstream-columns …`, _named() calls .tolist() on the
    (N, 0) array: 64 bytes per claimed row (64 MB for N = 10**6 here; 10**12 is an OOM kill)."""

    async def scenario() -> None:
        settings = Settings(upstream="http://127.0.0.1:9/invocations", upstream_columns=(("a", "int"),))
        client = Client()
        service = ProxyService(settings, client, UpstreamHealth(client, "http://127.0.0.1:9/invocations", None))
        invocation = Invocation(body=npy((1_000_000, 0)), content_type="application/x-npy", accept=None, method=None)
        tracemalloc.start()
        try:
            with pytest.raises(InvalidPayload):
                service._prepare(invocation)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * MIB, f"a {len(invocation.body)}-byte body took {peak:,} bytes"

    asyncio.run(scenario())


def test_a_declared_int_cell_too_long_for_int_is_a_400() -> None:
    """`--upstream-columns a:int` and a CSV cell of 5,000 digits: int() raises ValueError (Python's
    4,300-digit limit), which the App answers as a 500 internal_error with a logged traceback."""
    with pytest.raises(SchemaMismatch):
        typed(("a",), [["1" * 5000]], {"a": "int"})
