"""The one contract everything composes through.

A **Predictor** takes a batch of rows and returns exactly one output per row, in order:

    async def predict(rows: Rows, method: Method) -> Outputs

Flavors load a synchronous **Model** (the same call, blocking); `InThread` adapts a Model into a
Predictor by running it on the worker's model thread, and `MicroBatcher` wraps a Predictor and
is one. Behaviour is added by wrapping, never by patching.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, TypeVar

import numpy as np

from sagehost.config import Method
from sagehost.errors import ModelError, SagehostError

log = logging.getLogger("sagehost.predict")

Outputs = np.ndarray[Any, Any] | Sequence[Any]
"""One output per input row: a 1-D array (labels, values), a 2-D array (probabilities), or a list."""


class Shape(Enum):
    """How the request laid out its rows; the answer mirrors it."""

    ROWS = "rows"  # [[1, 2], [3, 4]], CSV, JSON lines, NPY, {"data": ...}
    ROW = "row"  # [1, 2]: one bare row
    RECORD = "record"  # {"age": 4, "gender": "M"}: one object of named fields
    RECORDS = "records"  # [{"age": 4}, {"age": 5}]
    WRAPPED = "wrapped"  # MLflow's dataframe_* and TF-Serving's instances/inputs: {"predictions": ...}


@dataclass(frozen=True, slots=True)
class Table:
    """A decoded request: rows as the client sent them, with column names when it gave any."""

    rows: list[list[Any]] | np.ndarray[Any, Any]
    columns: tuple[str, ...] | None = None
    shape: Shape = Shape.ROWS
    sparse: bool = False
    """Rows as wide as their last present feature (libsvm, sparse protobuf): the schema pads them."""

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows conformed to the model: its column order, its value types.

    `values` is a float 2-D array for all-numeric models and a list of row lists otherwise.
    """

    values: list[list[Any]] | np.ndarray[Any, Any]

    def __len__(self) -> int:
        return len(self.values)

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        first = parts[0].values
        if isinstance(first, np.ndarray):
            return Rows(np.concatenate([np.asarray(p.values) for p in parts]))
        merged: list[list[Any]] = []
        for part in parts:
            merged.extend(list(part.values))
        return Rows(merged)


class ColumnKind(Enum):
    NUMBER = "number"
    TEXT = "text"


@dataclass(frozen=True)
class ModelSpec:
    """What serving needs to know about a loaded model."""

    methods: frozenset[str]
    feature_names: tuple[str, ...] | None = None
    n_features: int | None = None
    kinds: tuple[ColumnKind, ...] | None = None
    """Per feature; None means all numeric."""
    classes: tuple[Any, ...] | None = None
    default_method: Method = "predict"
    """What a request that names no method gets, unless the settings say otherwise."""
    target: str | None = None
    """The response's name, prefixing labelled probabilities (`fraud.1`) unless settings name one."""
    sample: list[list[Any]] | None = None
    """One or more valid rows (model order) for the warm-up prediction, when known."""
    fork_safe: bool = True
    steady_cost: bool = False
    """A call's time depends on its size only (our lean paths), never on the values: only such
    models may run cheap calls inline on the event loop."""
    description: str = "model"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def numeric(self) -> bool:
        return self.kinds is None or all(k is ColumnKind.NUMBER for k in self.kinds)


class Model(Protocol):
    """A loaded model: blocking, called from the model thread only."""

    @property
    def spec(self) -> ModelSpec: ...

    def predict(self, rows: Rows, method: Method) -> Outputs: ...


class Predictor(Protocol):
    @property
    def spec(self) -> ModelSpec: ...

    async def predict(self, rows: Rows, method: Method) -> Outputs: ...


T = TypeVar("T")


class ModelThread:
    """The worker's single model thread.

    One thread per worker process keeps model calls off the event loop (so /ping never waits
    behind a prediction) without oversubscribing the cores: workers already use them all.
    Created lazily, so it is born in the worker, after any fork.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0

    async def run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None or self._pid != os.getpid():
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sagehost-model")
            self._pid = os.getpid()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None


MODEL_THREAD = ModelThread()


class InThread:
    """A Model as a Predictor: each call runs on the worker's model thread, unless it is cheap.

    Handing a call to the model thread and back costs tens of microseconds and a context switch
    under load; for a logistic regression that is more than the prediction itself. So calls whose
    size has been seen to finish within `inline_below_s` run on the event loop directly. The
    limit learns from every call, and shrinks as soon as one runs long, so a slow model (or an
    unusually large batch) always goes to the thread and /ping never waits behind it. Only models
    whose cost does not depend on the values (`ModelSpec.steady_cost`) qualify: one that sleeps on
    some inputs must never run on the loop.
    """

    def __init__(self, model: Model, thread: ModelThread = MODEL_THREAD, inline_below_s: float = 0.0) -> None:
        self._model = model
        self._thread = thread
        self._inline_below_s = inline_below_s if model.spec.steady_cost else 0.0
        self._inline_rows = 0  # the largest call size seen to finish within the budget

    @property
    def spec(self) -> ModelSpec:
        return self._model.spec

    async def predict(self, rows: Rows, method: Method) -> Outputs:
        if len(rows) <= self._inline_rows:
            return self._timed(rows, method)
        result: Outputs = await self._thread.run(self._timed, rows, method)
        return result

    def _timed(self, rows: Rows, method: Method) -> Outputs:
        started = time.perf_counter()
        try:
            return self._call(rows, method)
        finally:
            if self._inline_below_s > 0:
                self._learn(len(rows), time.perf_counter() - started)

    def _learn(self, size: int, seconds: float) -> None:
        if seconds < self._inline_below_s:
            self._inline_rows = max(self._inline_rows, size)
        else:
            self._inline_rows = min(self._inline_rows, size - 1)

    def _call(self, rows: Rows, method: Method) -> Outputs:
        # The boundary where a model's own exceptions become ours: the traceback goes to the
        # log, the response says what raised.
        try:
            return self._model.predict(rows, method)
        except SagehostError:
            raise
        except Exception as exc:
            log.exception("The model raised on a batch of %d rows", len(rows))
            raise ModelError(
                f"The model raised {type(exc).__name__} during {method}; the server log has the traceback."
            ) from None
