"""MicroBatcher: concurrent requests become one model call. It wraps a Predictor and is one.

- Row-aware: a batch is capped by rows (`max_rows`), not by requests; a request larger than the
  cap runs alone, never split.
- Adaptive: while the model works on one batch, new requests queue; the next batch takes them
  all at once. Nothing waits when nothing else is queued; `max_wait_s` adds a short wait for
  more rows only when requests are already queueing.
- Exact: outputs are split back by row counts, and a model answering the wrong number of rows
  fails the batch rather than misaligning it.
- Isolated: if a batch fails, each of its requests is retried alone, so one bad request fails
  alone and the others get their answers.
- Bounded: more than `max_queue` waiting requests is a 503, not unbounded memory.
- Timed: a request still unanswered `timeout_s` after it arrived fails with a 504, queued or in
  a running batch (whose model call goes on, as it would under asyncio.wait_for). One timer per
  batcher sweeps for them every `timeout_s / 20` (at most 1 s) while there is work, instead of a
  timer and a task per request: the limit holds to within that tick.
"""

from __future__ import annotations

import asyncio
import collections
import math
from dataclasses import dataclass

from sagehost.config import Method
from sagehost.errors import ModelError, Overloaded, PredictionTimeout
from sagehost.predictor import ModelSpec, Outputs, Predictor, Rows


@dataclass(slots=True)
class _Item:
    rows: Rows
    method: Method
    future: asyncio.Future[Outputs]
    deadline: float


class MicroBatcher:
    def __init__(
        self,
        inner: Predictor,
        max_rows: int = 64,
        max_wait_s: float = 0.0,
        max_queue: int = 1024,
        timeout_s: float | None = None,
    ) -> None:
        self._inner = inner
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._queue: collections.deque[_Item] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._timeout_s = timeout_s
        self._tick_s = min(timeout_s / 20, 1.0) if timeout_s else 0.0
        self._running: list[_Item] = []  # the batch the model is working on
        self._sweep_handle: asyncio.TimerHandle | None = None

    @property
    def spec(self) -> ModelSpec:
        return self._inner.spec

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def predict(self, rows: Rows, method: Method) -> Outputs:
        if len(self._queue) >= self._max_queue:
            raise Overloaded(
                f"The server is at capacity ({self._max_queue} requests waiting per worker); retry shortly, "
                "or scale out (more instances or workers)."
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        deadline = loop.time() + self._timeout_s if self._timeout_s else math.inf
        self._queue.append(_Item(rows, method, future, deadline))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        if self._timeout_s and self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._tick_s, self._sweep)
        return await future

    def _sweep(self) -> None:
        """Fail every request past its deadline; again in a tick while any request is waiting."""
        self._sweep_handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Requests queue in arrival order, so deadlines rise along the queue.
        while self._queue and self._queue[0].deadline <= now:
            _fail(self._queue.popleft(), PredictionTimeout.after(self._timeout_s or 0))
        for item in self._running:
            if item.deadline <= now:
                _fail(item, PredictionTimeout.after(self._timeout_s or 0))
        if self._queue or any(not item.future.done() for item in self._running):
            self._sweep_handle = loop.call_later(self._tick_s, self._sweep)

    async def _drain(self) -> None:
        try:
            while self._queue:
                concurrent = len(self._queue) > 1
                batch = self._take()
                # Out of the queue until answered (the wait for more rows, the model call, the
                # retries one by one after a batch error): the sweep keeps their deadlines here.
                self._running = batch
                try:
                    if concurrent and self._max_wait_s > 0 and _rows(batch) < self._max_rows:
                        await asyncio.sleep(self._max_wait_s)
                        batch.extend(self._take(self._max_rows - _rows(batch), batch[0].method))
                    await self._run(batch)
                finally:
                    self._running = []
        finally:
            self._task = None

    def _take(self, room: int | None = None, method: Method | None = None) -> list[_Item]:
        """The oldest request's method decides the batch; other methods keep their place."""
        room = self._max_rows if room is None else room
        batch: list[_Item] = []
        kept: collections.deque[_Item] = collections.deque()
        total = 0
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # its request timed out or went away
                continue
            method = method or item.method
            fits = not batch or total + len(item.rows) <= room
            if item.method == method and fits and room > 0:
                batch.append(item)
                total += len(item.rows)
            else:
                kept.append(item)
                if not fits:
                    break
        kept.extend(self._queue)
        self._queue = kept
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        if not batch:
            return
        try:
            outputs = await self._answer(batch)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            for item in batch:  # find the culprit: every request alone (that is still waiting)
                if not item.future.done():
                    await self._run([item])
            return
        start = 0
        for item in batch:
            end = start + len(item.rows)
            if not item.future.done():
                item.future.set_result(outputs[start:end])
            start = end

    async def _answer(self, batch: list[_Item]) -> Outputs:
        outputs = await self._inner.predict(Rows.concat([i.rows for i in batch]), batch[0].method)
        _check_count(outputs, _rows(batch))
        return outputs


def _rows(batch: list[_Item]) -> int:
    return sum(len(item.rows) for item in batch)


def _check_count(outputs: Outputs, expected: int) -> None:
    if len(outputs) != expected:
        raise ModelError(
            f"The model returned {len(outputs)} outputs for {expected} rows; it must return exactly one per row."
        )


def _fail(item: _Item, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
