"""The local runtime stand-in (sagehost.local.gateway) driven in process, through httpx's ASGI
transport or sagehost's own server on a loopback socket, in front of a real `sagehost serve`;
and, for what a container can do wrong, upstreams that misbehave on purpose (a test double for
the user's container, never for our code). The outbound client it shares with verify and invoke
(sagehost.http.outbound) is tested here too."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagehost.errors import UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.outbound import send
from sagehost.local.gateway import Gateway, gateway_server, listen
from sagehost.local.modes import Limits
from tests.conftest import Server, free_port, running

ROWS = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
CSV = {"Content-Type": "text/csv"}
REALTIME = Limits(payload_bytes=6 * 1024 * 1024, timeout_s=30.0)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def container(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `sagehost serve` of the demo model: the container behind the gateway."""
    with running(iris_dir, tmp_path_factory.mktemp("logs")) as server:
        yield server


def through(gateway: Gateway, method: str, path: str, **options: Any) -> httpx.Response:
    """One request to the gateway app in process, its pool open for the call."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway)
        async with gateway, httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, **options)

    return asyncio.run(call())


# ---- in front of a real `sagehost serve` ------------------------------------------------------


def test_invocations_pass_through_on_both_paths_with_the_variant(container: Server) -> None:
    gateway = Gateway(REALTIME, container.url)
    answer = through(gateway, "POST", "/invocations", content=ROWS, headers=CSV)
    assert answer.status_code == 200
    assert answer.json() == ["setosa", "virginica"]
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["x-amzn-invoked-production-variant"] == "AllTraffic"
    # The runtime API's own path, as boto3 sends it with endpoint_url pointing at the gateway.
    runtime = through(gateway, "POST", "/endpoints/demo/invocations", content=ROWS, headers=CSV)
    assert runtime.json() == ["setosa", "virginica"]


def test_accept_custom_attributes_and_the_query_reach_the_container(container: Server) -> None:
    gateway = Gateway(REALTIME, container.url)
    as_csv = through(gateway, "POST", "/invocations", content=ROWS, headers={**CSV, "Accept": "text/csv"})
    assert as_csv.text == "setosa\nvirginica\n"
    attributes = {**CSV, "X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"}
    probabilities = through(gateway, "POST", "/invocations", content=ROWS, headers=attributes).json()
    assert len(probabilities) == 2 and len(probabilities[0]) == 3
    queried = through(gateway, "POST", "/invocations?method=predict_proba", content=ROWS, headers=CSV).json()
    assert queried == probabilities


def test_a_container_error_comes_back_as_a_model_error(container: Server) -> None:
    answer = through(Gateway(REALTIME, container.url), "POST", "/invocations", content=b"1,2\n", headers=CSV)
    assert answer.status_code == 424
    assert answer.headers["x-amzn-errortype"] == "ModelError:"
    error = answer.json()
    assert error["ErrorCode"] == "CLIENT_ERROR_FROM_MODEL"
    assert error["OriginalStatusCode"] == 400
    assert "schema_mismatch" in error["OriginalMessage"]
    assert error["Message"].startswith('Received client error (400) from primary with message "')


def test_over_the_limit_is_the_runtimes_413_whether_declared_or_streamed(container: Server) -> None:
    gateway = Gateway(Limits(payload_bytes=1000, timeout_s=30.0), container.url)
    declared = through(gateway, "POST", "/invocations", content=b"1," * 501, headers=CSV)
    assert declared.status_code == 413
    assert declared.json() == {"message": "HTTP content length exceeded 1000 bytes."}
    assert declared.headers["connection"] == "close"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the app counts what arrives
        for _ in range(20):
            yield b"1," * 50

    streamed = through(gateway, "POST", "/invocations", content=chunks(), headers=CSV)
    assert streamed.status_code == 413
    assert streamed.json()["message"] == "HTTP content length exceeded 1000 bytes."
    # At the limit exactly, the body goes through (and the container judges it).
    at_limit = through(gateway, "POST", "/invocations", content=ROWS.ljust(1000, b"\n"), headers=CSV)
    assert at_limit.status_code == 200


def test_platform_gets_are_relayed_and_anything_else_is_refused(container: Server) -> None:
    gateway = Gateway(REALTIME, container.url)
    ping = through(gateway, "GET", "/ping")
    assert ping.status_code == 200
    assert ping.headers["x-amzn-invoked-production-variant"] == "AllTraffic"
    assert "MaxPayloadInMB" in through(gateway, "GET", "/execution-parameters").json()
    missing = through(gateway, "GET", "/models")
    assert missing.status_code == 404 and missing.json()["message"].startswith("No route /models")
    wrong = through(gateway, "PUT", "/invocations", content=ROWS)
    assert wrong.status_code == 405 and "use POST /invocations" in wrong.json()["message"]


def test_sagehosts_server_runs_it_with_its_lifespan_and_refuses_in_the_runtimes_shape(container: Server) -> None:
    """The way `sagehost local serve` runs it: the pool opens at startup and closes at the end,
    and the server's own 413 (before the app sees the request) has the runtime's shape."""
    gateway = Gateway(Limits(payload_bytes=1000, timeout_s=30.0), container.url)

    async def scenario() -> tuple[httpx.Response, httpx.Response, bool]:
        server = gateway_server(gateway)
        with listen(0) as sock:
            serving = asyncio.ensure_future(server.serve(sock, handle_signals=False))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                ok = await client.post("/invocations", content=ROWS, headers=CSV)
                refused = await client.post("/invocations", content=b"1," * 501, headers=CSV)
            pool_was_open = gateway._client is not None
            server.stop()
            await asyncio.wait_for(serving, 30)
        return ok, refused, pool_was_open

    ok, refused, pool_was_open = asyncio.run(scenario())
    assert ok.json() == ["setosa", "virginica"]
    assert refused.status_code == 413
    assert refused.json() == {"message": "HTTP content length exceeded 1000 bytes."}
    assert pool_was_open and gateway._client is None  # closed at the lifespan's shutdown


def test_a_taken_port_is_a_startup_error() -> None:
    from sagehost.errors import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"Cannot listen on 127.0.0.1:{port}"):
            listen(port)


# ---- containers that misbehave ---------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _closing(handler: Handler) -> Handler:
    """The handler, its connection closed however it ends (the peer gone, or cancelled)."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return run


def _endless(sent: list[int]) -> Handler:
    """200, then a chunked body that never ends, for as long as anyone reads it; counts what it sent."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"1" * 64 * 1024)
        while True:
            writer.write(chunk)
            sent[0] += len(chunk)
            await writer.drain()

    return _closing(handler)


@_closing
async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request and never answers."""
    await reader.read(1024)
    await asyncio.sleep(60)


@_closing
async def _dripping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A head, then a byte of body every 0.2 s: each read is quick, the answer never ends."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
    for _ in range(300):
        writer.write(b"1")
        await writer.drain()
        await asyncio.sleep(0.2)


def against(handler: Handler, limits: Limits) -> tuple[httpx.Response, float]:
    """POST /invocations through the gateway to an upstream run by `handler` on a loopback port;
    the answer and the seconds it took."""

    async def scenario() -> tuple[httpx.Response, float]:
        upstream = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = upstream.sockets[0].getsockname()[1]
        started = time.monotonic()
        try:
            answer = through_async(Gateway(limits, f"http://127.0.0.1:{port}"))
            return await asyncio.wait_for(answer, 30), time.monotonic() - started
        finally:
            upstream.close()

    return asyncio.run(scenario())


async def through_async(gateway: Gateway) -> httpx.Response:
    async with gateway, httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://g") as client:
        return await client.post("/invocations", content=ROWS, headers=CSV)


def test_an_answer_without_end_is_cut_at_the_payload_limit() -> None:
    sent = [0]
    answer, seconds = against(_endless(sent), Limits(payload_bytes=MIB, timeout_s=20.0))
    assert answer.status_code == 424
    error = answer.json()
    assert error["OriginalStatusCode"] == 0
    assert f"over {MIB} bytes" in error["OriginalMessage"]
    assert seconds < 10
    # The gateway stopped reading and dropped the connection: what the upstream got out is the cap
    # plus what the kernel's socket buffers held, not the 20 s of streaming it would have done.
    assert MIB < sent[0] < 32 * MIB


def test_a_silent_container_times_out_as_the_runtime_says() -> None:
    answer, seconds = against(_silent, Limits(payload_bytes=MIB, timeout_s=0.5))
    assert answer.status_code == 424
    error = answer.json()
    assert error["OriginalStatusCode"] == 0
    assert "Your invocation timed out while waiting for a response from container primary." in error["Message"]
    assert seconds < 5


def test_an_answer_that_drips_is_cut_at_the_invocation_timeout() -> None:
    answer, seconds = against(_dripping, Limits(payload_bytes=MIB, timeout_s=1.0))
    assert answer.status_code == 424
    assert "timed out while waiting for a response" in answer.json()["Message"]
    assert seconds < 5


def test_nothing_listening_is_a_model_error_that_says_so() -> None:
    port = free_port()
    answer = through(Gateway(REALTIME, f"http://127.0.0.1:{port}"), "POST", "/invocations", content=ROWS)
    assert answer.status_code == 424
    error = answer.json()
    assert error["OriginalStatusCode"] == 0
    assert error["OriginalMessage"] == f"No answer from http://127.0.0.1:{port}/invocations: Connection refused."


# ---- the outbound client verify and invoke use --------------------------------------------------


class _Upstream:
    """One of the misbehaving upstreams above, on a loopback port, on a loop in its own thread."""

    def __init__(self, handler: Handler) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._handler = handler
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._handler, "127.0.0.1", 0)

        upstream = self.loop.run_until_complete(start())
        self.port = upstream.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        upstream.close()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def test_send_refuses_an_answer_past_its_cap_or_keeps_its_start_when_asked() -> None:
    with _Upstream(_endless([0])) as url:
        with pytest.raises(UpstreamTooLarge, match=f"is over {MIB} bytes"):
            send("GET", url + "/ping", timeout=10, max_body=MIB)
        kept = send("GET", url + "/ping", timeout=10, max_body=MIB, partial=True)
    assert kept.status == 200 and not kept.complete
    assert kept.body == b"1" * MIB


def test_send_holds_its_deadline_against_an_answer_that_drips() -> None:
    with _Upstream(_dripping) as url:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="within 1 s"):
            send("GET", url + "/ping", timeout=1, max_body=MIB)
    assert time.monotonic() - started < 4  # the deadline, plus at most one read's timeout


def test_send_translates_what_httpx_raises() -> None:
    with pytest.raises(UpstreamUnavailable, match=r"No answer from http://127.0.0.1:\d+/ping: Connection refused\."):
        send("GET", f"http://127.0.0.1:{free_port()}/ping", timeout=2, max_body=MIB)
    with pytest.raises(UpstreamUnavailable, match="No answer from localhost:8080"):
        send("GET", "localhost:8080", timeout=2, max_body=MIB)  # no scheme: httpx refuses it
