"""The proxy's own Python per request, with no sockets and no other program on the CPU.

    .venv/bin/python bench/proxy_path.py [--requests 50000]

A `sagehost proxy` worker's objects, as it builds them (its relay connection on sagehost.http.server,
the App and ProxyService, the pooled client), are fed bytes directly: a request into the relay
connection, the scoring server's answer into the pooled upstream connection, in a loop. The
transports only count what is written. The same for bench/floor_proxy.py, the featureless reference relay. What this
measures is everything the proxy does per request except the socket calls and the waits.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import uvloop

import floor_proxy
from sagehost.app import App
from sagehost.config import Settings
from sagehost.http.client import Client, _Connection
from sagehost.http.limits import Limits
from sagehost.http.server import HttpServer, _Lifespan
from sagehost.proxy.health import UpstreamHealth
from sagehost.proxy.relay import RelayConnection
from sagehost.proxy.service import ProxyService
from sagehost.service import Service

UPSTREAM = "http://127.0.0.1:9/invocations"
REQUEST = (
    b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b'Content-Length: 20\r\n\r\n{"instances": [1,2]}'
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 22 Nov 2026 01:00:00 GMT\r\nserver: uvicorn\r\n"
    b'content-type: application/json\r\ncontent-length: 20\r\n\r\n{"predictions": [1]}'
)


class CountingTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def timed(downstream: Any, upstream: Any, requests: int) -> float:
    """µs per request; both transports must have seen one write per request."""
    down, up = CountingTransport(), CountingTransport()
    downstream.connection_made(down)
    upstream.connection_made(up)
    start = time.perf_counter()
    for _ in range(requests):
        downstream.data_received(REQUEST)
        upstream.data_received(ANSWER)
    elapsed = time.perf_counter() - start
    if down.writes != requests or up.writes != requests:
        raise RuntimeError(f"{down.writes} answers and {up.writes} upstream requests for {requests}")
    return elapsed / requests * 1e6


async def sagehost(requests: int) -> float:
    settings = Settings(upstream=UPSTREAM)
    client = Client()

    async def load() -> Service:
        return ProxyService(settings, client, UpstreamHealth(client, UPSTREAM, None))

    app = App(settings, load)
    lifespan = _Lifespan(app)
    await lifespan.start()
    pool, _ = client.route(UPSTREAM)
    upstream = _Pooled(pool, _Connection(pool))
    try:
        return timed(RelayConnection(HttpServer(app, Limits.of(settings), RelayConnection)), upstream, requests)
    finally:
        await lifespan.stop()


class _Pooled:
    """The upstream connection, put back in the pool once it is connected."""

    def __init__(self, pool: Any, connection: _Connection) -> None:
        self._pool, self._connection = pool, connection

    def connection_made(self, transport: Any) -> None:
        self._connection.connection_made(transport)
        self._pool.give_back(self._connection)

    def data_received(self, data: bytes) -> None:
        self._connection.data_received(data)


async def floor(requests: int) -> float:
    floor_proxy.idle.clear()
    upstream = floor_proxy.Upstream()
    floor_proxy.idle.append(upstream)
    return timed(floor_proxy.Downstream(), upstream, requests)


async def main(requests: int) -> None:
    await sagehost(requests // 10)  # warm up
    for _ in range(3):
        ours, reference = await sagehost(requests), await floor(requests)
        ratio = ours / reference
        print(f"sagehost proxy {ours:6.2f} µs/request   floor proxy {reference:5.2f} µs/request   ({ratio:.1f}×)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    uvloop.run(main(parser.parse_args().requests))
