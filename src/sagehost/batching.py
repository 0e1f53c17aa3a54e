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
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from sagehost.config import Method
from sagehost.errors import ModelError, Overloaded
from sagehost.predictor import ModelSpec, Outputs, Predictor, Rows


@dataclass(slots=True)
class _Item:
    rows: Rows
    method: Method
    future: asyncio.Future[Outputs]


class MicroBatcher:
    def __init__(self, inner: Predictor, max_rows: int = 64, max_wait_s: float = 0.0, max_queue: int = 1024) -> None:
        self._inner = inner
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._queue: collections.deque[_Item] = collections.deque()
        self._task: asyncio.Task[None] | None = None

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
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(rows, method, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                concurrent = len(self._queue) > 1
                batch = self._take()
                if concurrent and self._max_wait_s > 0 and _rows(batch) < self._max_rows:
                    await asyncio.sleep(self._max_wait_s)
                    batch.extend(self._take(self._max_rows - _rows(batch), batch[0].method))
                await self._run(batch)
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
            outputs = await self._inner.predict(Rows.concat([i.rows for i in batch]), batch[0].method)
            _check_count(outputs, _rows(batch))
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            for item in batch:  # find the culprit: every request alone
                await self._run([item])
            return
        start = 0
        for item in batch:
            end = start + len(item.rows)
            if not item.future.done():
                item.future.set_result(outputs[start:end])
            start = end


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
