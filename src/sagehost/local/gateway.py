"""A local stand-in for the SageMaker runtime in front of the container.

Callers reach a real endpoint only through InvokeEndpoint, which enforces the payload limit and
the invocation timeout and turns any container error into a `ModelError` (HTTP 424) carrying the
container's status and body. This gateway does the same, so a local run fails the way the
endpoint would. It answers `POST /invocations` and the runtime API's own path,
`POST /endpoints/<name>/invocations`, so boto3 pointed at it (`endpoint_url=`) works unchanged.
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html

It is an ASGI app, served by sagehost's own HTTP server (`serve_gateway`); it forwards over a
bounded httpx pool (sagehost.http.outbound), reading at most the payload limit of any answer.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx

from sagehost.errors import PayloadTooLarge, StartupError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.limits import Limits as HttpLimits
from sagehost.http.outbound import async_client, send_async
from sagehost.http.server import HttpServer
from sagehost.local.modes import Limits

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_INVOKE_PATH = re.compile(r"^/(?:endpoints/[^/]+/)?invocations$")
_PASSED_UP = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes", "x-amzn-sagemaker-inference-id")
_CONTAINER = "primary"  # the name SageMaker gives a single-container endpoint's container
# GET paths SageMaker calls, with its timeouts: /ping's 2 s; Batch Transform's /execution-parameters.
_PLATFORM_GETS = {"/ping": 2.0, "/execution-parameters": 10.0}
_TIMED_OUT = f"Your invocation timed out while waiting for a response from container {_CONTAINER}."
_POOL = 64  # connections to the container at once; more requests wait for one, within their timeout
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Gateway:
    """The runtime stand-in as an ASGI app, in front of the container at `container_url`.

    Its pool to the container opens at the ASGI lifespan's startup (or `async with`) and closes
    at shutdown."""

    def __init__(self, limits: Limits, container_url: str) -> None:
        self.limits = limits
        self.container_url = container_url.rstrip("/")
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Gateway:
        self._client = async_client(_POOL)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            reply = await self._answer(scope, receive)
            headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.__aenter__()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.__aexit__()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _answer(self, scope: Message, receive: Receive) -> _Reply:
        method, path = scope["method"], scope["path"]
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]  # ASGI: names in lower case
            if name.decode("latin-1") in _PASSED_UP
        }
        if method == "GET" and path in _PLATFORM_GETS:  # what SageMaker itself asks, passed through for a look
            return await self._relay("GET", path, None, headers, _PLATFORM_GETS[path])
        if method == "POST" and _INVOKE_PATH.match(path):
            limit = self.limits.payload_bytes
            body = await _body(scope, receive, limit)
            if body is None:
                return _json(413, {"message": too_large(limit).message}, _CLOSE)  # the body stays unread
            query = scope.get("query_string", b"").decode("latin-1")
            target = "/invocations" + (f"?{query}" if query else "")
            return await self._relay("POST", target, body, headers, self.limits.timeout_s)
        if path in _PLATFORM_GETS or _INVOKE_PATH.match(path):
            return _json(405, {"message": f"{method} {path} is not answered: use POST /invocations."})
        return _json(404, {"message": f"No route {path}: use POST /invocations."})

    async def _relay(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> _Reply:
        if self._client is None:
            raise RuntimeError("The gateway's pool is closed: serve it with its lifespan, or `async with` it.")
        invocation = path.startswith("/invocations")
        try:
            answer = await send_async(
                self._client,
                method,
                self.container_url + path,
                body=body,
                headers=headers,
                timeout=timeout,
                max_body=self.limits.payload_bytes,
            )
        except UpstreamTimeout as exc:
            return _model_error(0, _TIMED_OUT if invocation else exc.message)
        except (UpstreamUnavailable, UpstreamTooLarge) as exc:  # unreachable, broken off, over the limit
            return _model_error(0, exc.message)
        if answer.status >= 400 and invocation:
            return _model_error(answer.status, answer.body.decode("utf-8", errors="replace"))
        passed = [
            (name, value)
            for name, value in answer.headers.raw
            if name.lower() == b"content-type" or name.lower().startswith(b"x-amzn-")
        ]
        return _Reply(answer.status, [*passed, (b"x-Amzn-Invoked-Production-Variant", b"AllTraffic")], answer.body)


def too_large(limit: int) -> PayloadTooLarge:
    """InvokeEndpoint's 413, in its words; answered by the gateway as `{"message": ...}`."""
    return _RuntimeTooLarge(f"HTTP content length exceeded {limit} bytes.")


class _RuntimeTooLarge(PayloadTooLarge):
    """PayloadTooLarge in the runtime's shape, for the refusal sagehost's server writes itself
    (before the gateway sees the request): `{"message": ...}`, not sagehost's error body."""

    def body(self, request_id: str | None = None) -> bytes:
        return json.dumps({"message": self.message}).encode()


def listen(port: int) -> socket.socket:
    """The gateway's socket on 127.0.0.1:`port`, bound before anything starts, so a taken port
    fails first."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"Cannot listen on 127.0.0.1:{port} ({exc.strerror}): pick another --port.") from None
    return sock


def gateway_server(gateway: Gateway) -> HttpServer:
    """sagehost's HTTP server for `gateway`, with its payload limit; `serve(sock)` runs it."""
    return HttpServer(gateway, HttpLimits(body_bytes=gateway.limits.payload_bytes), too_large=too_large)


async def _body(scope: Message, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when it is over `limit` (by its declared length, unread)."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # a chunked body has no declared length
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _model_error(status: int, message: str) -> _Reply:
    """InvokeEndpoint's ModelError, as boto3 receives it."""
    kind = "client" if 400 <= status < 500 else "server"
    text = f'Received {kind} error ({status}) from {_CONTAINER} with message "{message}". See the container log.'
    print(f"[local] ModelError: {text}", file=sys.stderr, flush=True)
    error = {
        "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
        "Message": text,
        "OriginalStatusCode": status,
        "OriginalMessage": message,
        "LogStreamArn": "local",
    }
    return _json(424, error, (b"x-amzn-ErrorType", b"ModelError:"))


def _json(status: int, payload: dict[str, object], *headers: tuple[bytes, bytes]) -> _Reply:
    return _Reply(status, [_JSON, *headers], json.dumps(payload).encode())
