"""The proxy's Service: forward transparently, or translate through an adapter.

Transparent: the body and every end-to-end header go to the upstream (Content-Type, Accept,
SageMaker's custom attributes and inference id among them); its status, body, Content-Type and
SageMaker headers come back. With an adapter, requests are decoded by sagehost's codecs into
named rows, sent in the upstream's shape (micro-batched when it takes several rows per call),
and answered in the requested Accept. Values keep the type the client gave them; CSV cells, all
text, are typed from `--upstream-columns` (sagehost.proxy.adapters.typed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sagehost import codecs
from sagehost.answers import ATTRIBUTES, Headers
from sagehost.batching import MicroBatcher
from sagehost.codecs import media
from sagehost.config import Method, Settings
from sagehost.errors import (
    InvalidPayload,
    ModelError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from sagehost.http.client import Client, Response
from sagehost.models.schema import strip_header
from sagehost.predictor import ModelSpec, Outputs, Rows, Shape, Table
from sagehost.proxy.adapters import JSON, Adapter, Fields, RequestHook, ResponseHook, Scored, Untyped, typed
from sagehost.proxy.health import UpstreamHealth
from sagehost.service import Invocation, Reply, encode_answer

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the client recomputes: never forwarded.
_HOP_BY_HOP = frozenset(
    {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer",
     b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"expect"}
)  # fmt: skip
_ANSWER_HEADERS = b"x-amzn-"  # SageMaker's own headers: custom attributes, inference id, ...
_NPY_MAGIC = b"\x93NUMPY"

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
        self._hooked = hooks != (None, None)
        columns = settings.upstream_columns or ()
        self._column_names: Fields | None = tuple(name for name, _ in columns) if columns else None
        self._declared = dict(columns)
        self._batchers: dict[tuple[Fields, Untyped], tuple[MicroBatcher, UpstreamPredictor]] = {}
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

    @property
    def relayable(self) -> bool:
        """Whether requests can go to the upstream untouched (sagehost.proxy.relay): no adapter, no hooks."""
        return self._adapter is None and not self._hooked

    @property
    def client(self) -> Client:
        return self._client

    @property
    def timeout_s(self) -> float:
        return self._settings.timeout_s

    async def _forward(self, invocation: Invocation) -> Reply:
        accept = invocation.accept or ""
        body = invocation.body
        headers, _ = forwarded(invocation.headers)
        if self._request_hook is not None:
            content_type = invocation.content_type or ""
            body, content_type = _run_hook(self._request_hook, "--adapter-request", body, content_type, accept)
            headers = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", content_type.encode())]
        url = self.upstream_url(invocation.query.encode("latin-1"))
        response = await self._client.request("POST", url, headers, body, self._settings.timeout_s)
        answered_type, passed = passed_back(response.headers)
        answer, answer_type = response.body, answered_type.decode("latin-1")
        if self._response_hook is not None:
            hooked = _run_hook(self._response_hook, "--adapter-response", response.status, answer, answer_type, accept)
            answer, answer_type = hooked
        return Reply(answer, answer_type, status=response.status, headers=tuple(passed))

    def upstream_url(self, query: bytes) -> str:
        if not query:
            return self._upstream
        return self._upstream + ("&" if "?" in self._upstream else "?") + query.decode("latin-1")

    # ---- adapters -------------------------------------------------------------------------

    async def _translate(self, invocation: Invocation, adapter: Adapter) -> Reply:
        accept = codecs.negotiate(invocation.accept, self._settings.default_accept)
        if codecs.inline(invocation.body, invocation.content_type):
            fields, rows, untyped, shape = self._prepare(invocation)
        else:  # decoding a large body would stall every other request of this worker
            fields, rows, untyped, shape = await asyncio.to_thread(self._prepare, invocation)
        if adapter.batchable:
            batcher, upstream = self._batcher(fields, untyped, adapter)
            outputs = await batcher.predict(Rows(rows), "predict")
            labels = upstream.output_fields
        else:
            scored = await asyncio.gather(*(self._call_one(adapter, fields, untyped, row) for row in rows))
            outputs = [row for s in scored for row in s.rows]
            labels = scored[0].fields
        return Reply(await encode_answer(outputs, accept, shape, labels, batch=self._settings.batch_mode), accept)

    def _prepare(self, invocation: Invocation) -> tuple[Fields, list[list[Any]], Untyped, Shape]:
        """Named rows, CSV cells typed as declared, and the fields left as untyped text."""
        table = codecs.decode(invocation.body, invocation.content_type)
        fields, rows = self._named(table)
        untyped: Untyped = frozenset()
        if _cells_are_text(invocation.body, invocation.content_type):
            rows, untyped = typed(fields, rows, self._declared)
        return fields, rows, untyped, table.shape

    def _named(self, table: Table) -> tuple[Fields, list[list[Any]]]:
        columns = self._column_names
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

    def _batcher(self, fields: Fields, untyped: Untyped, adapter: Adapter) -> tuple[MicroBatcher, UpstreamPredictor]:
        """One batcher per field list (and which of them are untyped text): only requests alike
        share an upstream call."""
        key = (fields, untyped)
        pair = self._batchers.get(key)
        if pair is None:
            upstream = UpstreamPredictor(self, adapter, fields, untyped)
            batcher = MicroBatcher(upstream, max_rows=self._settings.max_batch_rows, max_queue=self._settings.max_queue)
            pair = self._batchers[key] = (batcher, upstream)
        return pair

    async def _call_one(self, adapter: Adapter, fields: Fields, untyped: Untyped, row: Sequence[Any]) -> Scored:
        """One row per call: a big request's rows go concurrently, but never more than 32 at once."""
        async with self._one_row_calls:
            return await self._call(adapter, fields, [row], untyped)

    async def _call(
        self, adapter: Adapter, fields: Fields, rows: Sequence[Sequence[Any]], untyped: Untyped = frozenset()
    ) -> Scored:
        body = adapter.request(fields, rows, untyped)
        headers: Headers = [(b"content-type", JSON), (b"accept", JSON)]
        response = await self._client.request("POST", self._upstream, headers, body, self._settings.timeout_s)
        _check(response)
        scored = adapter.response(response.body)
        if len(scored.rows) != len(rows):
            raise UpstreamUnavailable(f"The scoring server answered {len(scored.rows)} rows for {len(rows)}.")
        return scored


def _cells_are_text(body: bytes, content_type: str | None) -> bool:
    """Whether the body was decoded as CSV, whose cells are all text (as codecs.decode chooses)."""
    kind = media.media_type(content_type)
    if kind == media.OCTET:
        return not body.startswith(_NPY_MAGIC) and body.lstrip()[:1] not in (b"[", b"{")
    return kind == media.CSV


def forwarded(headers: Sequence[tuple[bytes, bytes]]) -> tuple[Headers, bytes | None]:
    """The end-to-end headers to pass on, and the custom attributes to echo back."""
    kept: Headers = []
    attributes = None
    for name, value in headers:
        if name in _HOP_BY_HOP:
            continue
        if name == ATTRIBUTES:
            attributes = value
        kept.append((name, value))
    return kept, attributes


def passed_back(headers: Headers) -> tuple[bytes, Headers]:
    """The scoring server's Content-Type, and its SageMaker headers to pass back."""
    content_type = b"application/octet-stream"
    passed: Headers = []
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name.startswith(_ANSWER_HEADERS):
            passed.append((name, value))
    return content_type, passed


class UpstreamPredictor:
    """One upstream call per micro-batch; remembers the answer's field names for the labels."""

    def __init__(self, service: ProxyService, adapter: Adapter, fields: Fields, untyped: Untyped) -> None:
        self._service = service
        self._adapter = adapter
        self._fields = fields
        self._untyped = untyped
        self.output_fields: Fields = ()
        self.spec = ModelSpec(methods=frozenset({"predict"}), feature_names=fields, description="upstream")

    async def predict(self, rows: Rows, method: Method) -> Outputs:
        scored = await self._service._call(self._adapter, self._fields, list(rows.values), self._untyped)
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
