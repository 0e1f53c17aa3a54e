"""The ASGI app: routes parse, delegate to the service, encode. Nothing else.

A bare ASGI callable rather than a framework: at tens of thousands of requests a second the
framework's per-request routing and Request objects are a measurable share of the time.

Routes: GET /ping, POST /invocations, GET /execution-parameters, GET /predict_parameters;
on a multi-model server also /models and its sub-paths (sagehost.multimodel).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from sagehost import contract
from sagehost.answers import JSON, error_answer, final_headers, reply_headers, too_large
from sagehost.codecs import media
from sagehost.config import METHODS, Method, Settings
from sagehost.errors import (
    InternalError,
    InvalidPayload,
    MethodNotAllowed,
    ModelNotReady,
    NotFound,
    SagehostError,
)
from sagehost.http.asgi import read_body
from sagehost.service import Invocation, Service

if TYPE_CHECKING:  # the multi-model package imports the server, which imports this module
    from sagehost.multimodel.routes import Routes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ServiceFactory = Callable[[], Awaitable[Service]]

log = logging.getLogger("sagehost.app")

_HEALTHY = b'{"status":"healthy"}'


class App:
    def __init__(self, settings: Settings, load_service: ServiceFactory, models: Routes | None = None) -> None:
        self.settings = settings
        self.service: Service | None = None
        self.models = models
        self.failed = False
        self._load_service = load_service
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

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.service = await self._load_service()
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
                await _respond(send, scope, 200, self._execution_parameters, JSON)
            elif path == "/predict_parameters":
                _allow(verb, "GET")
                await self._predict_parameters(scope, send)
            elif self.models is not None and (path == "/models" or path.startswith("/models/")):
                await self._models(scope, receive, send)
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
        await _respond(send, scope, 200, _HEALTHY, JSON)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send, service: Service | None = None) -> None:
        headers = _headers(scope)
        service = self._ready() if service is None else service
        body = await self._read_body(scope, receive)
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
        answer_headers = reply_headers(reply.content_type.encode("latin-1"), reply.headers, echo)
        await _respond(send, scope, reply.status, reply.body, answer_headers)

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

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The multi-model API; POST /models/NAME/invoke is answered as /invocations is."""
        assert self.models is not None
        verb, path = scope["method"], scope["path"]
        name = self.models.invoked(path)
        if name is not None:
            _allow(verb, "POST")
            await self._invocations(scope, receive, send, self.models.service(name))
            return
        body = await self._read_body(scope, receive) if verb == "POST" else b""
        status, answer = await self.models.manage(verb, path, _query(scope), body)
        await _respond(send, scope, status, answer, JSON)

    def _ready(self) -> Service:
        if self.service is None:
            raise ModelNotReady("The model is still loading; /ping answers 200 once it can predict.")
        return self.service

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.max_payload_bytes
        body = await read_body(scope["headers"], receive, limit)
        if body is None:
            raise too_large(limit)
        return body

    async def _error(self, send: Send, scope: Scope, exc: SagehostError) -> None:
        status, headers, body = error_answer(exc)
        await _respond(send, scope, status, body, headers)


def _allow(verb: str, allowed: str) -> None:
    if verb != allowed and not (allowed == "GET" and verb == "HEAD"):
        raise MethodNotAllowed(f"Use {allowed} here, not {verb}.")


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


async def _respond(send: Send, scope: Scope, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    all_headers = final_headers(headers, body, scope.get("http_version", "1.1"), scope["headers"])
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
