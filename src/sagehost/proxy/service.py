"""The proxy's Service: forward transparently, or translate through an adapter.

Transparent: the body and every end-to-end header go to the upstream (Content-Type, Accept,
SageMaker's custom attributes and inference id among them); its status, body, Content-Type and
SageMaker headers come back. With an adapter, requests are decoded by sagehost's codecs into
named rows, sent in the upstream's shape (micro-batched when it takes several rows per call),
and answered in the requested Accept.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sagehost import codecs
from sagehost.batching import MicroBatcher
from sagehost.config import Method, Settings
from sagehost.errors import (
    InternalError,
    InvalidPayload,
    ModelError,
    SagehostError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from sagehost.models.schema import strip_header
from sagehost.predictor import ModelSpec, Outputs, Rows, Table
from sagehost.proxy.adapters import JSON, Adapter, Fields, RequestHook, ResponseHook, Scored
from sagehost.proxy.client import Client, Headers, Response, settle
from sagehost.proxy.health import UpstreamHealth
from sagehost.service import Answer, Invocation, Reply

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the client recomputes: never forwarded.
_HOP_BY_HOP = frozenset(
    {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer",
     b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"expect"}
)  # fmt: skip
_ANSWER_HEADERS = b"x-amzn-"  # SageMaker's own headers: custom attributes, inference id, ...

log = logging.getLogger("sagehost.proxy")


class ProxyService:
    uses_methods = False

    def __init__(
        self,
        settings: Settings,
        client: Client,
        health: UpstreamHealth,
        adapter: Adapter | None = None,
        hooks: tuple[RequestHook | None, ResponseHook | None] = (None, None),
    ) -> None:
        assert settings.upstream is not None
        self._settings = settings
        self._upstream = settings.upstream
        self._client = client
        self._health = health
        self._adapter = adapter
        self._request_hook, self._response_hook = hooks
        self._batchers: dict[Fields, tuple[MicroBatcher, UpstreamPredictor]] = {}
        self._one_row_calls = asyncio.Semaphore(32)

    @property
    def description(self) -> str:
        return f"proxy to {self._upstream}" + (f" ({self._adapter.name} adapter)" if self._adapter else "")

    async def healthy(self) -> bool:
        return await self._health.healthy()

    async def invoke(self, invocation: Invocation) -> Reply:
        if self._adapter is None:
            return await self._forward(invocation)
        return await self._translate(invocation, self._adapter)

    # ---- transparent ----------------------------------------------------------------------

    def relay(self, invocation: Invocation, answer: Answer) -> bool:
        """Forward without a coroutine: `answer` gets the Reply or the error, once. Each task
        and future per request is CPU taken from the scoring server beside us (issue 4), so
        the transparent path is callbacks end to end. False with an adapter: it translates."""
        if self._adapter is not None:
            return False
        accept = invocation.accept or ""
        try:
            url, headers, body = self._outgoing(invocation, accept)
        except SagehostError as exc:
            answer(exc)
            return True
        done = functools.partial(self._answered, accept, answer)
        self._client.send("POST", url, headers, body, timeout=self._settings.timeout_s, done=done)
        return True

    async def _forward(self, invocation: Invocation) -> Reply:
        waiter: asyncio.Future[Reply | SagehostError] = asyncio.get_running_loop().create_future()
        self.relay(invocation, functools.partial(settle, waiter))
        outcome = await waiter
        if isinstance(outcome, SagehostError):
            raise outcome
        return outcome

    def _outgoing(self, invocation: Invocation, accept: str) -> tuple[str, Headers, bytes]:
        body = invocation.body
        headers: Headers = [(k, v) for k, v in invocation.headers if k not in _HOP_BY_HOP]
        if self._request_hook is not None:
            content_type = invocation.content_type or ""
            body, content_type = _run_hook(self._request_hook, "--adapter-request", body, content_type, accept)
            headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", content_type.encode())]
        url = self._upstream
        if invocation.query:
            url += ("&" if "?" in url else "?") + invocation.query
        return url, headers, body

    def _answered(self, accept: str, answer: Answer, outcome: Response | SagehostError) -> None:
        if isinstance(outcome, SagehostError):
            answer(outcome)
            return
        try:
            reply = self._reply(outcome, accept)
        except SagehostError as exc:
            answer(exc)
        except Exception:  # a bug in us: answered, logged, and the worker lives on
            log.exception("Relaying the scoring server's answer failed")
            answer(InternalError("sagehost failed unexpectedly; the server log has the details."))
        else:
            answer(reply)

    def _reply(self, response: Response, accept: str) -> Reply:
        answer_type = (response.header(b"content-type") or b"application/octet-stream").decode("latin-1")
        answer = response.body
        if self._response_hook is not None:
            hooked = _run_hook(self._response_hook, "--adapter-response", response.status, answer, answer_type, accept)
            answer, answer_type = hooked
        passed = tuple([(k, v) for k, v in response.headers if k.startswith(_ANSWER_HEADERS)])
        return Reply(answer, answer_type, status=response.status, headers=passed)

    # ---- adapters -------------------------------------------------------------------------

    async def _translate(self, invocation: Invocation, adapter: Adapter) -> Reply:
        accept = codecs.negotiate(invocation.accept, self._settings.default_accept)
        table = codecs.decode(invocation.body, invocation.content_type)
        fields, rows = self._named(table)
        if adapter.batchable:
            batcher, upstream = self._batcher(fields, adapter)
            outputs = await batcher.predict(Rows(rows), "predict")
            labels = upstream.output_fields
        else:
            scored = await asyncio.gather(*(self._call_one(adapter, fields, row) for row in rows))
            outputs = [row for s in scored for row in s.rows]
            labels = scored[0].fields
        return Reply(codecs.encode(outputs, accept, table.shape, labels), accept)

    def _named(self, table: Table) -> tuple[Fields, list[list[Any]]]:
        columns = self._settings.upstream_columns
        if table.columns is None:
            table = strip_header(table, ModelSpec(methods=frozenset(), feature_names=columns))
        fields = table.columns or columns
        if fields is None:
            raise InvalidPayload(
                "This scoring server takes named fields: send JSON records, a CSV header row, or set "
                "SAGEHOST_UPSTREAM_COLUMNS to the column names of headerless rows."
            )
        rows = table.rows.tolist() if isinstance(table.rows, np.ndarray) else [list(r) for r in table.rows]
        if any(len(row) != len(fields) for row in rows):
            raise InvalidPayload(f"Each row needs {len(fields)} values, one per field: {', '.join(fields)}.")
        return tuple(fields), rows

    def _batcher(self, fields: Fields, adapter: Adapter) -> tuple[MicroBatcher, UpstreamPredictor]:
        """One batcher per field list: only requests naming the same fields share an upstream call."""
        pair = self._batchers.get(fields)
        if pair is None:
            upstream = UpstreamPredictor(self, adapter, fields)
            batcher = MicroBatcher(upstream, max_rows=self._settings.max_batch_rows, max_queue=self._settings.max_queue)
            pair = self._batchers[fields] = (batcher, upstream)
        return pair

    async def _call_one(self, adapter: Adapter, fields: Fields, row: Sequence[Any]) -> Scored:
        """One row per call: a big request's rows go concurrently, but never more than 32 at once."""
        async with self._one_row_calls:
            return await self._call(adapter, fields, [row])

    async def _call(self, adapter: Adapter, fields: Fields, rows: Sequence[Sequence[Any]]) -> Scored:
        body = adapter.request(fields, rows)
        headers: Headers = [(b"content-type", JSON), (b"accept", JSON)]
        response = await self._client.request("POST", self._upstream, headers, body, self._settings.timeout_s)
        _check(response)
        scored = adapter.response(response.body)
        if len(scored.rows) != len(rows):
            raise UpstreamUnavailable(f"The scoring server answered {len(scored.rows)} rows for {len(rows)}.")
        return scored


class UpstreamPredictor:
    """One upstream call per micro-batch; remembers the answer's field names for the labels."""

    def __init__(self, service: ProxyService, adapter: Adapter, fields: Fields) -> None:
        self._service = service
        self._adapter = adapter
        self._fields = fields
        self.output_fields: Fields = ()
        self.spec = ModelSpec(methods=frozenset({"predict"}), feature_names=fields, description="upstream")

    async def predict(self, rows: Rows, method: Method) -> Outputs:
        scored = await self._service._call(self._adapter, self._fields, list(rows.values))
        self.output_fields = scored.fields
        return scored.rows


def _run_hook(hook: Callable[..., tuple[bytes, str]], name: str, *args: Any) -> tuple[bytes, str]:
    """A user's hook: its failure is theirs to read about in the log, and a 500 that names it."""
    try:
        body, content_type = hook(*args)
    except Exception as exc:
        log.exception("The %s hook raised", name)
        raise ModelError(f"The {name} hook raised {type(exc).__name__}; the server log has the traceback.") from None
    return bytes(body), str(content_type)


def _check(response: Response) -> None:
    if response.status < 400:
        return
    detail = response.body[:200].decode("utf-8", errors="replace")
    if response.status < 500:
        raise UpstreamRejected(f"The scoring server refused the request (HTTP {response.status}): {detail}")
    raise UpstreamUnavailable(f"The scoring server failed (HTTP {response.status}).")
