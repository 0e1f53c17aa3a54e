"""InThread runs cheap calls on the event loop and everything else on the model thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np

from sagehost.config import Method
from sagehost.predictor import InThread, ModelSpec, ModelThread, Outputs, Rows

SPEC = ModelSpec(methods=frozenset({"predict"}), n_features=1, steady_cost=True)


class Timed:
    """Sleeps `delay` per call and records which thread ran it."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.threads: list[str] = []
        self.spec_override = SPEC

    @property
    def spec(self) -> ModelSpec:
        return self.spec_override

    def predict(self, rows: Rows, method: Method) -> Outputs:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return np.zeros(len(rows))


def rows(n: int) -> Rows:
    return Rows(np.zeros((n, 1)))


async def calls(predictor: InThread, *sizes: int) -> None:
    for size in sizes:
        await predictor.predict(rows(size), "predict")


def test_cheap_calls_move_inline_only_up_to_the_sizes_seen() -> None:
    model = Timed()
    thread = ModelThread()
    predictor = InThread(model, thread, inline_below_s=0.05)
    asyncio.run(calls(predictor, 4, 4, 2, 8))
    thread.shutdown()
    on_thread = [name.startswith("sagehost-model") for name in model.threads]
    # first call of 4 rows: thread; then 4 and 2 rows: inline; 8 rows, never seen: thread
    assert on_thread == [True, False, False, True]


def test_a_call_that_runs_long_sends_that_size_back_to_the_thread() -> None:
    model = Timed()
    thread = ModelThread()
    predictor = InThread(model, thread, inline_below_s=0.02)
    asyncio.run(calls(predictor, 4, 4))
    model.delay = 0.03
    asyncio.run(calls(predictor, 4, 4, 3))
    thread.shutdown()
    on_thread = [name.startswith("sagehost-model") for name in model.threads]
    # the slow inline call of 4 rows lowers the limit to 3, so 4 rows go to the thread; 3 stay
    assert on_thread == [True, False, False, True, False]


def test_no_budget_keeps_every_call_on_the_thread() -> None:
    model = Timed()
    thread = ModelThread()
    asyncio.run(calls(InThread(model, thread), 1, 1, 1))
    thread.shutdown()
    assert all(name.startswith("sagehost-model") for name in model.threads)


def test_a_model_whose_cost_depends_on_its_inputs_never_runs_inline() -> None:
    model = Timed()
    model.spec_override = dataclasses.replace(SPEC, steady_cost=False)
    thread = ModelThread()
    asyncio.run(calls(InThread(model, thread, inline_below_s=1.0), 1, 1, 1))
    thread.shutdown()
    assert all(name.startswith("sagehost-model") for name in model.threads)
