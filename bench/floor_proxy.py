"""A reference, not a product: the least a Python HTTP proxy can do per request, to show in the
same run how much of `sagehost proxy`'s cost any proxy on uvloop + httptools would pay.

It relays POST bodies to one upstream over pooled keep-alive connections and writes back the
status, Content-Type and body. Nothing else: no /ping, no header pass-through, no limits, no
timeouts, no errors, no retries, no redirects.

    python bench/floor_proxy.py UPSTREAM_PORT PORT
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import Any

import httptools
import uvloop

UPSTREAM = ("127.0.0.1", 0)  # set by main()
idle: collections.deque[Upstream] = collections.deque()


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.client: Downstream | None = None
        self.body: list[bytes] = []
        self.content_type = b"application/octet-stream"

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        client, self.client = self.client, None
        idle.append(self)
        if client is not None and not client.transport.is_closing():
            head = b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
            client.transport.write(head % (self.parser.get_status_code(), self.content_type, len(body)) + body)


class Downstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in (b"host", b"content-length", b"connection"):
            self.headers.append(name + b": " + value)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        headers, self.headers = self.headers, []
        lines = [b"POST /invocations HTTP/1.1", b"host: upstream", *headers, b"content-length: %d" % len(body)]
        raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
        if idle:
            upstream = idle.popleft()
            upstream.client = self
            upstream.transport.write(raw)
        else:
            asyncio.get_running_loop().create_task(self.connect(raw))

    async def connect(self, raw: bytes) -> None:
        _, upstream = await asyncio.get_running_loop().create_connection(Upstream, *UPSTREAM)
        upstream.client = self
        upstream.transport.write(raw)


async def serve(port: int) -> None:
    await asyncio.get_running_loop().create_server(Downstream, "127.0.0.1", port, backlog=2048)
    await asyncio.Event().wait()


def main() -> None:
    global UPSTREAM
    UPSTREAM = ("127.0.0.1", int(sys.argv[1]))
    uvloop.run(serve(int(sys.argv[2])))


if __name__ == "__main__":
    main()
