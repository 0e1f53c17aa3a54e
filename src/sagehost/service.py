"""One invocation, end to end: decode -> conform -> predict -> encode. No HTTP here.

`RowService` is the zero-code path: requests become rows, rows are micro-batched.
`ScriptService` runs a user's inference.py hooks per request, as the AWS toolkit does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sagehost import codecs
from sagehost.codecs import media
from sagehost.config import Method, Settings
from sagehost.errors import Overloaded, PredictionTimeout
from sagehost.models.arrays import require_method
from sagehost.models.schema import conform, conform_chunks
from sagehost.models.script import ScriptHandler
from sagehost.predictor import MODEL_THREAD, ModelThread, Outputs, Predictor, Rows, Shape

# Answers of more rows are encoded on a thread: a CSV answer costs a few microseconds a row
# (60,000 rows of probabilities took 0.5 s), which would stall /ping on the loop.
_INLINE_ANSWER_ROWS = 256
T = TypeVar("T")


# Invocation and Reply are made per request; a frozen dataclass's __init__ costs three times a
# plain one's, a measurable share of a proxied request (issue 4). Treat them as values.
@dataclass(slots=True)
class Invocation:
    body: bytes
    content_type: str | None
    accept: str | None
    method: Method | None = None
    headers: Sequence[tuple[bytes, bytes]] = ()
    """Every request header as received, names lower-cased (ASGI), for services that forward them."""
    query: str = ""


@dataclass(slots=True)
class Reply:
    body: bytes
    content_type: str
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    """Extra response headers (a proxied upstream's SageMaker headers)."""


class Service(Protocol):
    uses_methods: bool
    """Whether `?method=` / custom attributes `method=` choose a model method (not in proxy mode,
    where custom attributes belong to the upstream)."""

    @property
    def description(self) -> str: ...

    async def healthy(self) -> bool: ...

    async def invoke(self, invocation: Invocation) -> Reply: ...


class RowService:
    """Rows in, answers out, through `predictor`, which enforces the time limit per request
    (build_service's MicroBatcher, `timeout_s`): it holds each request's future, so one sweep
    timer serves every request where asyncio.wait_for cost a task and a timer each (CPU per
    request 0.84-0.90x without them, bench/README.md "Second pass")."""

    uses_methods = True

    def __init__(self, predictor: Predictor, settings: Settings) -> None:
        self._predictor = predictor
        self._settings = settings
        spec = predictor.spec
        self._labels = _labels(spec.classes, settings.target_name or spec.target) if spec.classes else None

    @property
    def description(self) -> str:
        return self._predictor.spec.description

    async def healthy(self) -> bool:
        return True  # loaded and warmed up before the app had a service at all

    async def invoke(self, invocation: Invocation) -> Reply:
        accept = codecs.negotiate(invocation.accept, self._settings.default_accept)
        spec = self._predictor.spec
        method = invocation.method or self._settings.default_method or spec.default_method
        require_method(method, spec)  # before decoding: a wrong method costs no parsing
        if codecs.inline(invocation.body, invocation.content_type):  # small CSV/JSON: cheaper than a thread hop
            rows, shape = self.prepare(invocation)
        else:
            rows, shape = await asyncio.to_thread(self.prepare, invocation)
        outputs = await self._predictor.predict(rows, method)  # within its time limit: see __init__
        labels = self._labels if method == "predict_proba" else None
        return Reply(await encode_answer(outputs, accept, shape, labels, batch=self._settings.batch_mode), accept)

    def prepare(self, invocation: Invocation) -> tuple[Rows, Shape]:
        spec = self._predictor.spec
        body = invocation.body
        if len(body) > codecs.CHUNK_CHARS and spec.numeric and codecs.media_type(invocation.content_type) == media.CSV:
            # A big CSV body as Python objects costs up to 100 times its size; chunk by chunk,
            # a numeric model's rows cost their float64 (codecs/csvrows.py).
            return conform_chunks(codecs.csv_chunks(body, width=spec.n_features), spec), Shape.ROWS
        table = codecs.decode(body, invocation.content_type, width=spec.n_features)
        return conform(table, spec), table.shape


class ScriptService:
    uses_methods = True

    def __init__(self, handler: ScriptHandler, settings: Settings, thread: ModelThread = MODEL_THREAD) -> None:
        self._handler = handler
        self._settings = settings
        self._thread = thread
        self._in_flight = 0

    @property
    def description(self) -> str:
        return self._handler.description

    async def healthy(self) -> bool:
        return True

    async def invoke(self, invocation: Invocation) -> Reply:
        if self._in_flight >= self._settings.max_queue:
            raise Overloaded(f"The server is at capacity ({self._settings.max_queue} requests waiting); retry shortly.")
        self._in_flight += 1
        try:
            call = self._thread.run(
                self._handler.handle, invocation.body, invocation.content_type or "", invocation.accept
            )
            body, content_type = await _within(call, self._settings.timeout_s)
        finally:
            self._in_flight -= 1
        return Reply(body, content_type)


async def encode_answer(
    outputs: Outputs, accept: str, shape: Shape, labels: Sequence[str] | None, *, batch: bool = False
) -> bytes:
    """The answer's bytes: on the loop when small, on a thread when encoding could stall it.
    `batch` (SAGEMAKER_BATCH): line-based answers end without a newline (codecs/encode.py)."""
    if len(outputs) > _INLINE_ANSWER_ROWS:
        return await asyncio.to_thread(codecs.encode, outputs, accept, shape, labels, batch=batch)
    return codecs.encode(outputs, accept, shape, labels, batch=batch)


async def _within(call: Awaitable[T], timeout_s: float) -> T:
    try:
        return await asyncio.wait_for(call, timeout_s)
    except asyncio.TimeoutError:
        raise PredictionTimeout.after(timeout_s) from None


def _labels(classes: tuple[object, ...], target: str | None) -> list[str]:
    return [f"{target}.{c}" if target else str(c) for c in classes]
