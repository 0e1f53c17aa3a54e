"""A local stand-in for the SageMaker runtime in front of the container.

Callers reach a real endpoint only through InvokeEndpoint, which enforces the payload limit and
the invocation timeout and turns any container error into a `ModelError` (HTTP 424) carrying the
container's status and body. This gateway does the same, so a local run fails the way the
endpoint would. It answers `POST /invocations` and the runtime API's own path,
`POST /endpoints/<name>/invocations`, so boto3 pointed at it (`endpoint_url=`) works unchanged.
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html

With an `AsyncConfig` it also answers InvokeEndpointAsync, `POST /endpoints/<name>/async-invocations`,
as an async endpoint does: 202 at once with the output and failure locations and the inference id,
then, off the request, the input read from S3, the container invoked, and its answer written to
the output location (or what went wrong to the failure location). S3 is reached through the
callables the config carries (sagehost.aws's, so boto3 stays there).
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpointAsync.html

With a `ModelsConfig` it is a multi-model endpoint's runtime: an invocation names its model with
TargetModel (`X-Amzn-SageMaker-Target-Model`); a model not loaded yet is fetched and unpacked
(by the config's `fetch`), loaded with POST /models, and, while the container answers 507, the
least recently used model is unloaded (DELETE /models/NAME) and the load retried; then the
invocation goes to POST /models/NAME/invoke, as SageMaker does it.
https://docs.aws.amazon.com/sagemaker/latest/dg/multi-model-endpoints.html
https://docs.aws.amazon.com/sagemaker/latest/dg/mms-container-apis.html

It is an ASGI app, served by sagehost's own HTTP server (`serve_gateway`); it forwards over a
bounded httpx pool (sagehost.http.outbound), reading at most the payload limit of any answer
(of an async one, the 1 GB an async invocation may take).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx

from sagehost import contract
from sagehost.errors import PayloadTooLarge, StartupError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.asgi import read_body
from sagehost.http.limits import Limits as HttpLimits
from sagehost.http.outbound import async_client, send_async
from sagehost.http.server import HttpServer
from sagehost.local.modes import Limits

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_INVOKE_PATH = re.compile(r"^/(?:endpoints/[^/]+/)?invocations$")
_ASYNC_PATH = re.compile(r"^/endpoints/(?P<name>[^/]+)/async-invocations$")
_PASSED_UP = (
    "content-type",
    "accept",
    "x-amzn-sagemaker-custom-attributes",
    "x-amzn-sagemaker-inference-id",
    "x-amzn-sagemaker-target-model",
)
# InvokeEndpointAsync's limits: input up to 1 GB, processing up to 1 hour (900 s unless asked).
ASYNC_PAYLOAD_BYTES = 1_000_000_000
ASYNC_TIMEOUT_S = 900
_ASYNC_MAX_TIMEOUT_S = 3600
_ASYNC_INLINE_BYTES = 128_000  # InvokeEndpointAsync's own Body, instead of an InputLocation
_ASYNC_AT_ONCE = 4  # invocations read and run at once; more wait their turn, as on an instance
# Queued async invocations held at most (each may hold an inline body): past it, the runtime's
# throttling answer, so a flood of requests cannot grow the stand-in without bound.
_ASYNC_MAX_QUEUED = 1000
_CONTAINER = "primary"  # the name SageMaker gives a single-container endpoint's container
# GET paths SageMaker calls, with its timeouts: /ping's 2 s; Batch Transform's /execution-parameters.
_PLATFORM_GETS = {"/ping": 2.0, "/execution-parameters": 10.0}
_TIMED_OUT = f"Your invocation timed out while waiting for a response from container {_CONTAINER}."
_POOL = 64  # connections to the container at once; more requests wait for one, within their timeout
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_TARGET_MODEL = "x-amzn-sagemaker-target-model"
# SageMaker lets a model load (and unload) for up to 360 s (sagemaker-contract.md §4).
_MODEL_LOAD_TIMEOUT_S = 360.0


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class AsyncConfig:
    """An async endpoint's S3 side: where answers go (AsyncInferenceConfig's S3OutputPath and
    S3FailurePath; without the latter, failures go beside the answers), and how S3 is reached.
    `read(uri, limit)` returns an object's bytes and `write(uri, body, content_type)` stores one;
    both block (they run in a thread) and raise StartupError when S3 refuses."""

    output: str
    failure: str | None
    read: Callable[[str, int], bytes]
    write: Callable[[str, bytes, str], None]


@dataclass(frozen=True)
class ModelsConfig:
    """A multi-model endpoint's models (sagehost.local.multimodel): `fetch(target)` downloads and
    unpacks the model a TargetModel names and returns the name and directory to load it as
    (POST /models), or raises StartupError saying why it cannot; `discard(target)` deletes what
    `fetch` unpacked. Both block (they run in a thread)."""

    fetch: Callable[[str], tuple[str, str]]
    discard: Callable[[str], None]


@dataclass(frozen=True)
class _Job:
    """One queued async invocation."""

    inference_id: str
    source: str | bytes  # the input's S3 URI, or the request's own body
    headers: dict[str, str]  # for the container
    timeout_s: float
    output: str
    failure: str


class Gateway:
    """The runtime stand-in as an ASGI app, in front of the container at `container_url`.

    Its pool to the container opens at the ASGI lifespan's startup (or `async with`) and closes
    at shutdown."""

    def __init__(
        self,
        limits: Limits,
        container_url: str,
        async_config: AsyncConfig | None = None,
        models: ModelsConfig | None = None,
    ) -> None:
        self.limits = limits
        self.container_url = container_url.rstrip("/")
        self.async_config = async_config
        self.models = models
        self.loaded: collections.OrderedDict[str, str] = collections.OrderedDict()
        """Multi-model: TargetModel -> the name it is loaded as, least recently invoked first."""
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._loading = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(_ASYNC_AT_ONCE)

    async def __aenter__(self) -> Gateway:
        self._client = async_client(_POOL)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._jobs:  # queued async invocations finish first, within the stop grace
            _, unfinished = await asyncio.wait(set(self._jobs), timeout=contract.SHUTDOWN_GRACE_S)
            for task in unfinished:
                task.cancel()
            if unfinished:
                _log(f"{len(unfinished)} async invocations were cut off by the stop; none of their answers is written.")
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
            body = await read_body(scope["headers"], receive, limit)
            if body is None:
                return _json(413, {"message": too_large(limit).message}, _CLOSE)  # the body stays unread
            query = scope.get("query_string", b"").decode("latin-1")
            if self.models is not None:
                return await self._invoke_model(body, headers, query)
            target = "/invocations" + (f"?{query}" if query else "")
            return await self._relay("POST", target, body, headers, self.limits.timeout_s)
        if method == "POST" and (found := _ASYNC_PATH.match(path)):
            inline = await read_body(scope["headers"], receive, _ASYNC_INLINE_BYTES)
            if inline is None:  # the rest of the body stays unread: the connection closes
                too_big = f"An inline Body is at most {_ASYNC_INLINE_BYTES} bytes: upload it to S3 instead."
                return _validation(too_big, _CLOSE)
            return self._enqueue(found["name"], _all_headers(scope), inline)
        if path in _PLATFORM_GETS or _INVOKE_PATH.match(path) or _ASYNC_PATH.match(path):
            return _json(405, {"message": f"{method} {path} is not answered: use POST /invocations."})
        return _json(404, {"message": f"No route {path}: use POST /invocations."})

    async def _relay(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        *,
        max_body: int | None = None,
    ) -> _Reply:
        if self._client is None:
            raise RuntimeError("The gateway's pool is closed: serve it with its lifespan, or `async with` it.")
        invocation = path.startswith("/invocations") or path.partition("?")[0].endswith("/invoke")
        try:
            answer = await send_async(
                self._client,
                method,
                self.container_url + path,
                body=body,
                headers=headers,
                timeout=timeout,
                max_body=self.limits.payload_bytes if max_body is None else max_body,
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

    # ---- a multi-model endpoint's TargetModel ----------------------------------------------

    async def _invoke_model(self, body: bytes, headers: dict[str, str], query: str) -> _Reply:
        target = headers.get(_TARGET_MODEL, "")
        if not target:
            return _validation(
                "This is a multi-model endpoint: name the model with TargetModel "
                "(X-Amzn-SageMaker-Target-Model), its path under the model prefix, e.g. model-a.tar.gz."
            )
        self._in_flight[target] += 1  # an invocation on its way is never unloaded under it
        try:
            name = await self._load(target)
            if isinstance(name, _Reply):
                return name
            self.loaded.move_to_end(target)
            path = f"/models/{name}/invoke" + (f"?{query}" if query else "")
            return await self._relay("POST", path, body, headers, self.limits.timeout_s)
        finally:
            self._in_flight[target] -= 1

    async def _load(self, target: str) -> str | _Reply:
        """The name `target` is loaded as, loading it first if need be; or the failure to answer."""
        if (known := self.loaded.get(target)) is not None:
            return known
        assert self.models is not None
        async with self._loading:  # one load at a time: each sees what the one before it left
            if (known := self.loaded.get(target)) is not None:
                return known
            try:
                name, url = await asyncio.to_thread(self.models.fetch, target)
            except StartupError as exc:
                return _validation(f"Failed to download model data for TargetModel {target!r}: {exc}")
            request = json.dumps({"model_name": name, "url": url}).encode()
            headers = {"content-type": "application/json", _TARGET_MODEL: target}
            while True:
                reply = await self._relay("POST", "/models", request, headers, _MODEL_LOAD_TIMEOUT_S)
                if reply.status in (200, 409):  # 409: the container has it already
                    self.loaded[target] = name
                    _log(f"loaded {target} as {name} ({len(self.loaded)} models loaded)")
                    return name
                victim = self._least_recent(target) if reply.status == 507 else None
                if victim is None:
                    await asyncio.to_thread(self.models.discard, target)
                    return _model_error(reply.status, reply.body.decode("utf-8", errors="replace"))
                await self._unload(victim)

    def _least_recent(self, but: str) -> str | None:
        return next((t for t in self.loaded if t != but and not self._in_flight[t]), None)

    async def _unload(self, target: str) -> None:
        assert self.models is not None
        name = self.loaded.pop(target)
        reply = await self._relay("DELETE", f"/models/{name}", None, {}, _MODEL_LOAD_TIMEOUT_S)
        _log(
            f"the container is short of memory (507): unloaded {target}, the least recently used (HTTP {reply.status})"
        )
        await asyncio.to_thread(self.models.discard, target)

    # ---- InvokeEndpointAsync -------------------------------------------------------------

    def _enqueue(self, name: str, headers: dict[str, str], inline: bytes) -> _Reply:
        """202 with where the answer will be, as the runtime answers; the work goes on after it."""
        config = self.async_config
        if config is None:
            return _validation(
                f"Endpoint {name} is not an asynchronous endpoint: start `sagehost local serve` with "
                "--async-output s3://BUCKET/PREFIX to answer InvokeEndpointAsync."
            )
        if len(self._jobs) >= _ASYNC_MAX_QUEUED:
            return _json(
                429,
                {"message": f"{_ASYNC_MAX_QUEUED} async invocations are already queued here; retry shortly."},
                (b"x-amzn-ErrorType", b"ThrottlingException:"),
            )
        location = headers.get("x-amzn-sagemaker-inputlocation", "")
        if bool(location) == bool(inline):
            return _validation("Give exactly one of InputLocation (s3://BUCKET/KEY) and an inline Body.")
        if location and not location.startswith("s3://"):
            return _validation(f"InputLocation {location!r} is not an s3:// URI (the only kind read here).")
        timeout = _async_timeout(headers.get("x-amzn-sagemaker-invocationtimeoutseconds"))
        if timeout is None:
            return _validation(f"InvocationTimeoutSeconds must be whole seconds, 1 to {_ASYNC_MAX_TIMEOUT_S}.")
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or str(uuid.uuid4())
        extension = headers.get("x-amzn-sagemaker-s3outputpathextension", "")
        filename = headers.get("x-amzn-sagemaker-filename") or f"{inference_id}.out"
        job = _Job(
            inference_id=inference_id,
            source=location or inline,
            headers=_container_headers(headers, inference_id),
            timeout_s=timeout,
            output=_join(config.output, extension, filename),
            failure=_join(config.failure or config.output, extension, f"{inference_id}-error.out"),
        )
        task = asyncio.create_task(self._run(config, job))
        self._jobs.add(task)
        task.add_done_callback(self._finished)
        where = [
            (b"X-Amzn-SageMaker-OutputLocation", job.output.encode()),
            (b"X-Amzn-SageMaker-FailureLocation", job.failure.encode()),
        ]
        return _json(202, {"InferenceId": inference_id}, *where)

    async def _run(self, config: AsyncConfig, job: _Job) -> None:
        async with self._slots:
            body, location = (job.source, None) if isinstance(job.source, bytes) else (b"", job.source)
            if location is not None:
                try:
                    body = await asyncio.to_thread(config.read, location, ASYNC_PAYLOAD_BYTES)
                except StartupError as exc:
                    failed = f"Could not read the input {location}: {exc}"
                    await _store(config, job, job.failure, failed.encode(), "text/plain")
                    return
            invocation = ("POST", "/invocations", body, job.headers, job.timeout_s)
            reply = await self._relay(*invocation, max_body=ASYNC_PAYLOAD_BYTES)
        if 200 <= reply.status < 300:
            kinds = [value for name, value in reply.headers if name.lower() == b"content-type"]
            kind = kinds[0].decode("latin-1") if kinds else "application/octet-stream"
            await _store(config, job, job.output, reply.body, kind)
        else:
            await _store(config, job, job.failure, _failure_text(reply).encode(), "text/plain")

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:  # a bug of ours: said, not lost
            _log(f"an async invocation failed unexpectedly: {type(error).__name__}: {error}")


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


async def _store(config: AsyncConfig, job: _Job, uri: str, body: bytes, content_type: str) -> None:
    what = "answer" if uri == job.output else "failure"
    try:
        await asyncio.to_thread(config.write, uri, body, content_type)
    except StartupError as exc:  # SageMaker counts these as ResponseUploadFailures
        _log(f"async {job.inference_id}: could not write its {what} to {uri}: {exc}")
        return
    _log(f"async {job.inference_id}: {what} written to {uri}")


def _failure_text(reply: _Reply) -> str:
    """What a failed async invocation leaves at its failure location: the ModelError's message
    (the container's status and words), as the runtime words it."""
    try:
        return str(json.loads(reply.body)["Message"])
    except (ValueError, KeyError, TypeError):
        return f"The container answered HTTP {reply.status}."


def _all_headers(scope: Message) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _container_headers(headers: dict[str, str], inference_id: str) -> dict[str, str]:
    """What the container sees of an async request: the runtime's own header names, mapped."""
    passed = {
        "content-type": headers.get("x-amzn-sagemaker-content-type"),
        "accept": headers.get("x-amzn-sagemaker-accept"),
        contract.CUSTOM_ATTRIBUTES_HEADER: headers.get(contract.CUSTOM_ATTRIBUTES_HEADER),
        contract.INFERENCE_ID_HEADER: inference_id,
    }
    return {name: value for name, value in passed.items() if value}


def _async_timeout(text: str | None) -> float | None:
    if text is None:
        return ASYNC_TIMEOUT_S
    if not text.isdigit() or not 1 <= int(text) <= _ASYNC_MAX_TIMEOUT_S:
        return None
    return float(text)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


def _log(line: str) -> None:
    print(f"[local] {line}", file=sys.stderr, flush=True)


def _validation(message: str, *headers: tuple[bytes, bytes]) -> _Reply:
    """The runtime's ValidationError (HTTP 400), as boto3 reads it."""
    return _json(400, {"message": message}, (b"x-amzn-ErrorType", b"ValidationError:"), *headers)


def _model_error(status: int, message: str) -> _Reply:
    """InvokeEndpoint's ModelError, as boto3 receives it."""
    kind = "client" if 400 <= status < 500 else "server"
    text = f'Received {kind} error ({status}) from {_CONTAINER} with message "{message}". See the container log.'
    _log(f"ModelError: {text}")
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
