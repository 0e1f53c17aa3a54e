"""The well-kept alternative to sagehost's own server and upstream client, measured beside them
(issue 14): a minimal ASGI app under uvicorn (httptools, uvloop) that forwards POST /invocations
to the upstream with a pooled async client and passes back the status, Content-Type and body.

    UPSTREAM=http://127.0.0.1:9090/invocations CLIENT=httpx|aiohttp \\
        uvicorn --app-dir bench --loop uvloop --http httptools --workers 1 httpx_proxy:app

The client is httpx.AsyncClient (h11 underneath) or aiohttp.ClientSession (llhttp underneath),
each with a pool sized for 40 kept-alive connections. GET /ping asks the upstream's health
route. Nothing else: no limits, no retries, no header pass-through beyond Content-Type and
Accept; it is a floor for what "uvicorn + a library client" costs, not a product.

httpx needs `sniffio` installed to be measured at its best: httpcore 1.0.9 imports it on every
lock it sets up (several per request), and anyio 4.16 no longer depends on it, so without it
each request pays for failed imports (about 0.4 ms of CPU here).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import aiohttp
import httpx

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9090/invocations")
HEALTH = os.environ.get("UPSTREAM_HEALTH", "/ping")
CONNECTIONS = 40  # bench/proxy.py's wrk -c40: one pooled upstream connection per client connection
FORWARDED = (b"content-type", b"accept")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Answer = tuple[int, bytes, bytes]  # status, content type, body


class Client(Protocol):
    async def post(self, body: bytes, headers: dict[str, str]) -> Answer: ...

    async def get(self, url: str) -> int: ...

    async def close(self) -> None: ...


class HttpxClient:
    def __init__(self) -> None:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        self.client = httpx.AsyncClient(limits=limits, timeout=60.0)

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        answer = await self.client.post(UPSTREAM, content=body, headers=headers)
        return answer.status_code, answer.headers.get("content-type", "").encode(), answer.content

    async def get(self, url: str) -> int:
        return (await self.client.get(url)).status_code

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpClient:
    def __init__(self) -> None:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, keepalive_timeout=75)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        async with self.session.post(UPSTREAM, data=body, headers=headers) as answer:
            return answer.status, answer.headers.get("content-type", "").encode(), await answer.read()

    async def get(self, url: str) -> int:
        async with self.session.get(url) as answer:
            return answer.status

    async def close(self) -> None:
        await self.session.close()


CLIENTS: dict[str, Callable[[], Client]] = {"httpx": HttpxClient, "aiohttp": AiohttpClient}


class Proxy:
    def __init__(self, make_client: Callable[[], Client]) -> None:
        self.make_client = make_client
        self.client: Client | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["method"] == "POST" and scope["path"] == "/invocations":
            await self.invoke(scope, receive, send)
        elif scope["method"] == "GET" and scope["path"] == "/ping":
            await self.ping(send)
        else:
            await answer(send, 404, b"application/json", b'{"error":"not found"}')

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = self.make_client()  # in the worker's own loop
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def invoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.client is not None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"] if name in FORWARDED}
        status, content_type, body = await self.client.post(b"".join(chunks), headers)
        await answer(send, status, content_type, body)

    async def ping(self, send: Send) -> None:
        assert self.client is not None
        base = UPSTREAM.split("/", 3)[:3]
        try:
            status = await self.client.get("/".join(base) + HEALTH)
        except (httpx.HTTPError, aiohttp.ClientError, OSError):
            status = 503
        await answer(send, 200 if status == 200 else 503, b"application/json", b"{}")


async def answer(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = Proxy(CLIENTS[os.environ.get("CLIENT", "httpx")])
if os.environ.get("CLIENT", "httpx") == "httpx" and importlib.util.find_spec("sniffio") is None:
    print("httpx_proxy: sniffio is missing, so httpcore retries importing it per request", file=sys.stderr)
