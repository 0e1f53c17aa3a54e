from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from sagehost.batching import MicroBatcher
from sagehost.config import Method
from sagehost.errors import ModelError, Overloaded, PredictionTimeout
from sagehost.predictor import ModelSpec, Outputs, Rows

SPEC = ModelSpec(methods=frozenset({"predict", "predict_proba"}), n_features=1)


class Recorder:
    """Doubles each value; refuses negative ones; records every call's size and method."""

    def __init__(self, delay: float = 0.01, short_by: int = 0) -> None:
        self.calls: list[tuple[int, str]] = []
        self.delay = delay
        self.short_by = short_by

    @property
    def spec(self) -> ModelSpec:
        return SPEC

    async def predict(self, rows: Rows, method: Method) -> Outputs:
        self.calls.append((len(rows), method))
        await asyncio.sleep(self.delay)
        values = np.asarray(rows.values)[:, 0]
        if (values < 0).any():
            raise ValueError("negative")
        result: np.ndarray[Any, Any] = values * 2
        return result[: len(result) - self.short_by]


def rows(*values: float) -> Rows:
    return Rows(np.array([[v] for v in values]))


async def gather(batcher: MicroBatcher, *requests: Rows, method: Method = "predict") -> list[Any]:
    return await asyncio.gather(*(batcher.predict(r, method) for r in requests), return_exceptions=True)


def test_lone_request_runs_at_once() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=8)
    [result] = asyncio.run(gather(batcher, rows(1, 2)))
    assert list(result) == [2, 4]
    assert recorder.calls == [(2, "predict")]


def test_concurrent_requests_share_calls_and_split_back_by_rows() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=100)
    requests = [rows(i, i + 0.5) for i in range(10)]
    results = asyncio.run(gather(batcher, *requests))
    for i, result in enumerate(results):
        assert list(result) == [2 * i, 2 * i + 1]
    # All ten arrived in the same loop tick: one model call for all of them.
    assert recorder.calls == [(20, "predict")]


def test_requests_arriving_during_a_call_form_the_next_batch() -> None:
    recorder = Recorder(delay=0.05)
    batcher = MicroBatcher(recorder, max_rows=100)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.predict(rows(1), "predict"))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, *(batcher.predict(rows(i), "predict") for i in range(5)))

    asyncio.run(scenario())
    assert recorder.calls == [(1, "predict"), (5, "predict")]


def test_batches_are_capped_by_rows_not_requests() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=4)
    asyncio.run(gather(batcher, rows(0), *[rows(1, 1, 1) for _ in range(3)], rows(*range(9))))
    assert [size for size, _ in recorder.calls] == [4, 3, 3, 9]  # 1+3 fit in 4; 9 runs alone


def test_methods_are_never_mixed_in_one_call() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=100)

    async def scenario() -> None:
        await asyncio.gather(
            batcher.predict(rows(1), "predict"),
            batcher.predict(rows(2), "predict_proba"),
            batcher.predict(rows(3), "predict"),
        )

    asyncio.run(scenario())
    assert recorder.calls == [(2, "predict"), (1, "predict_proba")]


def test_one_poisoned_request_fails_alone() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_rows=100)
    results = asyncio.run(gather(batcher, rows(1), rows(2), rows(-1), rows(3)))
    assert list(results[0]) == [2]
    assert list(results[1]) == [4]
    assert isinstance(results[2], ValueError)
    assert list(results[3]) == [6]


def test_wrong_output_count_is_an_error_not_a_misalignment() -> None:
    batcher = MicroBatcher(Recorder(short_by=1), max_rows=100)
    [result] = asyncio.run(gather(batcher, rows(1, 2)))
    assert isinstance(result, ModelError)
    assert "exactly one per row" in result.message


def test_queue_is_bounded() -> None:
    batcher = MicroBatcher(Recorder(delay=0.05), max_rows=1, max_queue=2)
    results = asyncio.run(gather(batcher, rows(1), rows(2), rows(3), rows(4)))
    assert [isinstance(r, Overloaded) for r in results] == [False, False, True, True]


def test_wait_applies_only_when_requests_queue() -> None:
    recorder = Recorder(delay=0)
    batcher = MicroBatcher(recorder, max_rows=100, max_wait_s=0.5)

    async def lone() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.predict(rows(1), "predict")
        return loop.time() - start

    assert asyncio.run(lone()) < 0.2


@pytest.mark.parametrize("n", [1, 7])
def test_timed_out_requests_are_skipped(n: int) -> None:
    recorder = Recorder(delay=0.05)
    batcher = MicroBatcher(recorder, max_rows=100)

    async def scenario() -> Any:
        first = asyncio.ensure_future(batcher.predict(rows(1), "predict"))
        await asyncio.sleep(0.01)  # the model is now busy with the first request
        late = [asyncio.ensure_future(batcher.predict(rows(2), "predict")) for _ in range(n)]
        await asyncio.sleep(0.01)
        for task in late:
            task.cancel()
        result = await first
        await asyncio.sleep(0.1)
        return result

    assert list(asyncio.run(scenario())) == [2]
    assert recorder.calls == [(1, "predict")]


def test_a_request_past_its_time_limit_fails_running_or_queued_and_the_next_is_answered() -> None:
    """The batcher's own time limit (build_service gives it SAGEMAKER_MODEL_SERVER_TIMEOUT): a
    request in the running batch and one queued behind it both get a 504 once their time is up,
    within a tick (timeout / 20); the queued one never reaches the model; the batcher then serves
    on as before."""
    recorder = Recorder(delay=0.5)
    batcher = MicroBatcher(recorder, max_rows=1, timeout_s=0.2)

    async def scenario() -> tuple[list[Any], float, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await gather(batcher, rows(1), rows(2))
        waited = loop.time() - started
        recorder.delay = 0.01
        await asyncio.sleep(0.35)  # the model finishes the first batch, which nobody awaits now
        return results, waited, await batcher.predict(rows(3), "predict")

    results, waited, after = asyncio.run(scenario())
    assert [type(r) for r in results] == [PredictionTimeout, PredictionTimeout]
    assert "longer than 0.2 s (SAGEMAKER_MODEL_SERVER_TIMEOUT)" in results[0].message
    assert 0.2 <= waited < 0.3  # not the model's 0.5 s
    assert list(after) == [6]
    assert recorder.calls == [(1, "predict"), (1, "predict")]  # rows(1), then rows(3): never rows(2)


def test_requests_within_their_time_limit_are_answered_and_the_sweep_stops_when_idle() -> None:
    recorder = Recorder(delay=0.02)
    batcher = MicroBatcher(recorder, max_rows=2, timeout_s=1.0)

    async def scenario() -> tuple[list[Any], int]:
        results = await gather(batcher, *(rows(i) for i in range(6)))
        await asyncio.sleep(0.1)  # past the last sweep's tick (0.05 s)
        timers = len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        return results, timers

    results, timers = asyncio.run(scenario())
    assert [list(r) for r in results] == [[0], [2], [4], [6], [8], [10]]
    assert timers == 0  # nothing left ticking on an idle worker


class FailsBatches(Recorder):
    """A batch of several rows with a negative one fails at once; a call of one row takes `delay`."""

    async def predict(self, rows: Rows, method: Method) -> Outputs:
        if len(rows) > 1 and (np.asarray(rows.values) < 0).any():
            self.calls.append((len(rows), method))
            raise ValueError("negative")
        return await super().predict(rows, method)


def test_requests_retried_alone_after_a_batch_error_keep_their_time_limit() -> None:
    """After a batch fails, its requests are retried one by one: those waiting their turn are out
    of the queue and not in the model call, and their deadlines must still hold."""
    model = FailsBatches(delay=0.5)
    batcher = MicroBatcher(model, max_rows=8, timeout_s=0.3)

    async def scenario() -> tuple[list[Any], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await gather(batcher, rows(-1), rows(2), rows(3))
        return results, loop.time() - started

    results, waited = asyncio.run(scenario())
    assert [type(r) for r in results] == [PredictionTimeout] * 3, results
    assert waited < 0.4  # not 1.5 s: three calls of 0.5 s one after another
    assert model.calls == [(3, "predict"), (1, "predict")]  # 2 and 3 were never retried


def test_a_request_waiting_for_batch_mates_keeps_its_time_limit() -> None:
    """`max_wait_s`: the wait for more rows happens out of the queue, and a sweep during it must
    not lose the batch's deadlines."""
    batcher = MicroBatcher(Recorder(delay=1.0), max_rows=8, max_wait_s=0.05, timeout_s=0.2)

    async def scenario() -> tuple[list[Any], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await gather(batcher, rows(1), rows(2))
        return results, loop.time() - started

    results, waited = asyncio.run(scenario())
    assert [type(r) for r in results] == [PredictionTimeout] * 2, results
    assert waited < 0.3
