"""The ASGI app: routes parse, delegate to the service, encode. Nothing else.

A bare ASGI callable rather than a framework: at tens of thousands of requests a second the
framework's per-request routing and Request objects are a measurable share of the time.

Routes: GET /ping, POST /invocations, GET /execution-parameters, GET /predict_parameters.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from sagehost import contract
from sagehost.codecs import media
from sagehost.config import METHODS, Method, Settings
from sagehost.errors import (
    InternalError,
    InvalidPayload,
    MethodNotAllowed,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    SagehostError,
)
from sagehost.service import Invocation, Relaying, Reply, Service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ServiceFactory = Callable[[], Awaitable[Service]]
Respond = Callable[[int, list[tuple[bytes, bytes]], bytes], None]

log = logging.getLogger("sagehost.app")

_JSON = [(b"content-type", b"application/json")]
_HEALTHY = b'{"status":"healthy"}'
_DRAIN_LIMIT = 64 * 1024 * 1024
_ATTRIBUTES = contract.CUSTOM_ATTRIBUTES_HEADER.lower().encode()


class App:
    def __init__(self, settings: Settings, load_service: ServiceFactory) -> None:
        self.settings = settings
        self.service: Service | None = None
        self._relay: Relaying | None = None
        self.failed = False
        self._load_service = load_service
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-"
        self._execution_parameters = orjson.dumps(
            {
                "MaxConcurrentTransforms": settings.max_concurrent_transforms or settings.workers,
                "BatchStrategy": settings.batch_strategy,
                "MaxPayloadInMB": min(settings.max_payload_mb, 100),
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def relay(
        self,
        verb: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        respond: Respond,
    ) -> bool:
        """Answer POST /invocations through callbacks when the service can (a transparent proxy),
        with the same headers, limits and errors as the ASGI path. False: use the ASGI path.
        For servers that hand over whole requests with lower-cased header names (sagehost.wire)."""
        service = self._relay
        if service is None or verb != "POST" or len(body) > self.settings.max_payload_bytes:
            return False
        path, _, query = target.partition(b"?")
        if path != b"/invocations":
            return False
        found = dict(headers)
        attributes = found.get(_ATTRIBUTES)
        invocation = Invocation(
            body=body,
            content_type=_text(found.get(b"content-type")),
            accept=_text(found.get(b"accept")),
            headers=headers,
            query=query.decode("latin-1"),
        )
        answered = functools.partial(self._relayed, version, headers, attributes, respond)
        return service.relay(invocation, answered)

    def _relayed(
        self,
        version: str,
        request_headers: list[tuple[bytes, bytes]],
        attributes: bytes | None,
        respond: Respond,
        outcome: Reply | SagehostError,
    ) -> None:
        if isinstance(outcome, SagehostError):
            status, headers, body = self._error_answer(outcome)
        else:
            status, headers, body = outcome.status, _reply_headers(outcome, attributes), outcome.body
        respond(status, _final_headers(headers, body, version, request_headers), body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.service = await self._load_service()
                    self._relay = self.service if isinstance(self.service, Relaying) else None
                except Exception as exc:
                    self.failed = True
                    log.error("%s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        verb = scope["method"]
        try:
            if path == "/invocations":
                _allow(verb, "POST")
                await self._invocations(scope, receive, send)
            elif path == "/ping":
                _allow(verb, "GET")
                await self._ping(scope, send)
            elif path == "/execution-parameters":
                _allow(verb, "GET")
                await _respond(send, scope, 200, self._execution_parameters, _JSON)
            elif path == "/predict_parameters":
                _allow(verb, "GET")
                await self._predict_parameters(scope, send)
            else:
                raise NotFound(f"No route {path[:100]!r}. This server answers GET /ping and POST /invocations.")
        except SagehostError as exc:
            await self._error(send, scope, exc)
        except Exception:
            log.exception("Unexpected error on %s %s", verb, path[:100])
            await self._error(
                send, scope, InternalError("sagehost failed unexpectedly; the server log has the details.")
            )

    async def _ping(self, scope: Scope, send: Send) -> None:
        service = self._ready()
        if not await service.healthy():
            raise ModelNotReady("The scoring server is not answering its health check; /ping turns 200 when it does.")
        await _respond(send, scope, 200, _HEALTHY, _JSON)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        service = self._ready()
        body = await self._read_body(headers, receive)
        attributes = headers.get(contract.CUSTOM_ATTRIBUTES_HEADER)
        raw_query = scope.get("query_string", b"").decode("latin-1")
        method = _method(_query(scope).get("method"), attributes) if service.uses_methods else None
        invocation = Invocation(
            body=body,
            content_type=headers.get("content-type"),
            accept=headers.get("accept"),
            method=method,
            headers=scope["headers"],
            query=raw_query,
        )
        reply = await service.invoke(invocation)
        echo = None if attributes is None else attributes.encode("latin-1")
        await _respond(send, scope, reply.status, reply.body, _reply_headers(reply, echo))

    async def _predict_parameters(self, scope: Scope, send: Send) -> None:
        """The H2O scorer's GET endpoint: one named row from the query string."""
        service = self._ready()
        query = _query(scope)
        method = query.pop("method", None)
        if not query:
            raise InvalidPayload("Give the row's fields in the query string: /predict_parameters?age=4&gender=M")
        invocation = Invocation(orjson.dumps(query), media.JSON, media.JSON, _method(method, None))
        reply = await service.invoke(invocation)
        await _respond(send, scope, 200, reply.body, [(b"content-type", reply.content_type.encode("latin-1"))])

    def _ready(self) -> Service:
        if self.service is None:
            raise ModelNotReady("The model is still loading; /ping answers 200 once it can predict.")
        return self.service

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.settings.max_payload_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain(receive)
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:  # chunked bodies (Batch Transform with MaxPayloadInMB=0) have no length
                if more:
                    await _drain(receive)
                raise _too_large(limit)
            chunks.append(chunk)
            if not more:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _error(self, send: Send, scope: Scope, exc: SagehostError) -> None:
        status, headers, body = self._error_answer(exc)
        await _respond(send, scope, status, body, headers)

    def _error_answer(self, exc: SagehostError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        request_id = self._id_prefix + format(next(self._ids), "x")
        status = exc.http_status
        if status >= 500:
            log.error("request %s failed: %s %s", request_id, exc.code, exc.message)
        else:
            log.info("request %s rejected: %s %s", request_id, exc.code, exc.message)
        headers = [*_JSON, (b"x-request-id", request_id.encode())]
        if isinstance(exc, PayloadTooLarge):
            headers.append((b"connection", b"close"))  # the rest of the body was never read
        return status, headers, exc.body(request_id)


def _allow(verb: str, allowed: str) -> None:
    if verb != allowed and not (allowed == "GET" and verb == "HEAD"):
        raise MethodNotAllowed(f"Use {allowed} here, not {verb}.")


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused body, up to a bound, so the 413 reaches the client:
    closing with unread data makes the kernel reset the connection, and the client sees a
    reset instead of the answer."""
    dropped = 0
    while dropped < _DRAIN_LIMIT:
        message = await receive()
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The body is larger than the {limit // contract.MIB} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB). "
        "Send fewer rows per request, or use Batch Transform or asynchronous inference for large payloads."
    )


def _method(from_query: str | None, attributes: str | None) -> Method | None:
    chosen = from_query
    if chosen is None and attributes:
        for part in attributes.replace(";", ",").split(","):
            key, _, value = part.partition("=")
            if key.strip().lower() == "method":
                chosen = value.strip()
    if chosen is None:
        return None
    for method in METHODS:
        if chosen == method:
            return method
    raise InvalidPayload(f"Unknown method {chosen[:40]!r}; use one of: {', '.join(METHODS)}.")


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"")
    if not raw:
        return {}
    return dict(urllib.parse.parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def _reply_headers(reply: Reply, attributes: bytes | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", reply.content_type.encode("latin-1")), *reply.headers]
    # SageMaker returns the container's custom attributes to the caller only if echoed.
    if attributes is not None and not (reply.headers and any(k.lower() == _ATTRIBUTES for k, _ in reply.headers)):
        headers.append((_ATTRIBUTES, attributes))
    return headers


async def _respond(send: Send, scope: Scope, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    all_headers = _final_headers(headers, body, scope.get("http_version", "1.1"), scope["headers"])
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _final_headers(
    headers: list[tuple[bytes, bytes]], body: bytes, version: str, request_headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    final = [*headers, (b"content-length", str(len(body)).encode())]
    if version == "1.0" and _wants_keep_alive(request_headers):
        # HTTP/1.0 clients (ab -k) keep the connection only when the answer says so.
        final.append((b"connection", b"keep-alive"))
    return final


def _wants_keep_alive(request_headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"connection" and b"keep-alive" in value.lower() for name, value in request_headers)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
