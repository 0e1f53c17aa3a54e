"""Lean paths for whole scikit-learn Pipelines: decoded rows to one float matrix, no DataFrame.

A `Pipeline` of covered steps — ColumnTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler,
MinMaxScaler, RobustScaler, SimpleImputer, the identity FunctionTransformer, nested Pipelines —
ending in an estimator with a lean path of its own (`fast.build_path`) is compiled when the model
loads, then proved against the library on probe rows (known and unknown categories, None, NaN,
extreme numbers; one batch and single rows). Anything not covered, or any disagreement, and the
library serves the model as before. At run time the lean path declines (returns None) whatever
the library must judge — an unknown category under handle_unknown="error", infinities, NaN left
for a final estimator that refuses it — and the library answers, or raises, exactly as it would have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sagehost.models import fast
from sagehost.models.lean.compose import Columns, Hints, Step, compile_chain
from sagehost.models.lean.frame import Block, Column, Kind, Layout, _Uncovered, from_values
from sagehost.models.lean.probe import agrees
from sagehost.predictor import ColumnKind, ModelSpec

log = logging.getLogger("sagehost.models")

__all__ = ["LeanPipeline", "compile_pipeline"]

_ROW_WIDTH = 512  # wider single rows go the vectorised way: a Python loop per cell would cost more
_INFINITIES = (math.inf, -math.inf)
_FEW = 4
# The dense (rows x outputs) matrix is made at most this many values (1 MB) at a time: a one-hot
# column of 20,000 categories made a 2,000-row batch hold ~600 MB where the library's one-hot
# output is sparse. A batch of more than _WIDE_ROWS rows whose output is mostly one-hot columns
# (over _WIDE_ONE_HOT) is the library's: its sparse matrix costs per category set, the dense one
# per column (2,000 rows of 20,000 columns: ~70 ms lean in chunks, ~16 ms in the library; the
# lean path wins up to ~200 rows).
_MATRIX_VALUES = 1 << 17
_WIDE_ONE_HOT = 1024
_WIDE_ROWS = 128
_CHUNK_ROWS = 2048
_FLOAT64_TOLERANCE = (1e-9, 1e-12)  # (rtol, atol) against the library, unless the final path says
# The final estimators refuse infinity, and scikit-learn's trees anything beyond float32 ("Input X
# contains infinity or a value too large for dtype('float32')"); the linear ones refuse NaN too.
# Such a batch is the library's to answer or refuse.
_LARGEST = float(np.finfo(np.float32).max)
_TAKE_MISSING_MODULES = frozenset({"xgboost", "lightgbm"})
_TAKE_MISSING_SKLEARN = frozenset(
    {
        "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor",
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
    }
)


class LeanPipeline:
    """The pipeline's transforms as compiled steps, then the final estimator's lean path."""

    def __init__(
        self,
        layout: Layout,
        transform: Step,
        out: Layout,
        final: fast.FastPath,
        methods: frozenset[str],
        *,
        estimator: Any,
        takes_missing: bool,
        pandas_text: bool,
    ) -> None:
        self._pandas_text = pandas_text
        self.layout = layout
        self._risky = [i for i, c in enumerate(out) if not c.bounded]
        self._takes_missing = takes_missing
        self._acceptable = _with_missing if takes_missing else _finite
        self._columns = transform if isinstance(transform, Columns) else None
        self._width = len(out)
        self._chunk_rows = max(1, min(_CHUNK_ROWS, _MATRIX_VALUES // max(self._width, 1)))
        self._wide = sum(1 for c in out if c.bounded) > _WIDE_ONE_HOT
        self._transform = transform
        self._final = final
        self._estimator = estimator
        self.library_final = False  # set by the proof: the library's final step takes our matrix
        self.methods = methods
        self.tolerance: tuple[float, float] = getattr(final, "tolerance", _FLOAT64_TOLERANCE)
        self._number_at = [i for i, c in enumerate(layout) if c.kind is Kind.NUMBER]
        self._by_row = len(layout) <= _ROW_WIDTH

    def predict(self, values: Any, method: str) -> np.ndarray[Any, Any] | None:
        """The answer for a batch of conformed rows, or None to let the library answer."""
        if method not in self.methods:
            return None
        if len(values) == 1 and self._by_row:
            return self._one_row(values[0], method)
        if self._wide and len(values) > _WIDE_ROWS:
            return None
        block = from_values(values, self.layout, pandas_text=self._pandas_text)
        if block is None:
            return None
        if block.rows <= self._chunk_rows:
            return self._batch(block, method)
        # A big Batch Transform payload: the one-hot matrix is dense here (the library's may be
        # sparse), so it is made a bounded number of rows at a time. The block is made whole
        # first: pandas' rule for None looks at the whole batch.
        parts = []
        size = self._chunk_rows
        for start in range(0, block.rows, size):
            part = self._batch(block.rows_between(start, start + size), method)
            if part is None:
                return None
            parts.append(part)
        return np.concatenate(parts)

    def _batch(self, block: Block, method: str) -> np.ndarray[Any, Any] | None:
        out = self._transform(block)
        if out is None:
            return None
        x = out.numbers
        magnitude = np.abs(x)
        # NaN compares False either way: it passes where the final estimator takes it, else not.
        refused = (magnitude > _LARGEST).any() if self._takes_missing else not (magnitude <= _LARGEST).all()
        return None if refused else self._final_answer(x, method)

    def _final_answer(self, x: np.ndarray[Any, Any], method: str) -> np.ndarray[Any, Any] | None:
        """The final estimator's lean path; where it declines (a batch too big for a tree walk to
        pay, missing values a forest leaves to the library), the library's own final estimator on
        the same matrix: the transforms stay lean, and the matrix is the one the library makes.
        If that raises, the whole pipeline is the library's, so the error is exactly its own."""
        answer = self._final.predict(x, method)
        if answer is not None or not self.library_final:
            return answer
        try:
            return np.asarray(getattr(self._estimator, method)(x))
        except Exception:  # any of the library's errors: it raises it again, itself
            return None

    def _one_row(self, row: Any, method: str) -> np.ndarray[Any, Any] | None:
        """One row in Python floats and a list: a dozen numpy calls cost more than the arithmetic."""
        values = row.tolist() if isinstance(row, np.ndarray) else row
        for i in self._number_at:
            if values[i] in _INFINITIES:
                return None  # every covered step's validation refuses infinity
        x = self._sparse_row(self._columns, values) if self._columns is not None else self._dense_row(values)
        return None if x is None else self._final_answer(x, method)

    def _sparse_row(self, columns: Columns, values: list[Any]) -> np.ndarray[Any, Any] | None:
        parts = columns.sparse_row(values)
        if parts is None:
            return None
        hot, dense = parts
        x = np.zeros(self._width + 1)  # the last column is the spare one of sparse_row
        if hot:
            x.put(hot, 1.0)
        acceptable = self._acceptable
        for start, numbers in dense:
            if len(numbers) > _FEW:
                if not all(map(acceptable, map(abs, numbers))):
                    return None
                x[start : start + len(numbers)] = numbers
                continue
            for column, v in enumerate(numbers, start):  # a few scalar stores cost less than a list's
                if not acceptable(abs(v)):
                    return None
                x[column] = v
        return x[None, :-1]

    def _dense_row(self, values: list[Any]) -> np.ndarray[Any, Any] | None:
        out = self._transform.row(values)
        if out is None:
            return None
        for i in self._risky:
            if not self._acceptable(abs(out[i])):
                return None
        x = np.empty((1, len(out)))
        x[0] = out  # cheaper than np.array(list) for a row of a few dozen floats
        return x


def compile_pipeline(estimator: Any, spec: ModelSpec, features: Callable[[Any], Any]) -> LeanPipeline | None:
    """The proven lean path for a covered Pipeline, else None. `features` builds the library's
    input from conformed rows exactly as serving does, for the proof."""
    try:
        from sklearn import get_config
        from sklearn.pipeline import Pipeline
    except ImportError:
        return None
    if type(estimator) is not Pipeline:
        return None
    hints: Hints = {}
    try:
        if get_config().get("transform_output", "default") != "default":
            raise _Uncovered("sklearn.set_config(transform_output=...)")
        lean = _build(estimator, spec, hints)
    except _Uncovered as why:
        log.info("No lean path for %s: %s is not covered; scikit-learn serves it.", spec.description, why)
        return None
    if not agrees(lean, estimator, spec, features, hints):
        log.warning("The lean path for %s disagreed with scikit-learn; the library serves it.", spec.description)
        return None
    log.info("Lean pipeline path on for %s (%s).", spec.description, ", ".join(sorted(lean.methods)))
    return lean


def _build(pipeline: Any, spec: ModelSpec, hints: Hints) -> LeanPipeline:
    if spec.n_features is None:
        raise _Uncovered("a model that does not say how many columns it reads")
    kinds = spec.kinds or (ColumnKind.NUMBER,) * spec.n_features
    layout: Layout = tuple(Column(Kind.TEXT if k is ColumnKind.TEXT else Kind.NUMBER, i) for i, k in enumerate(kinds))
    *steps, (_, final) = pipeline.steps
    transform, out = compile_chain([s for _, s in steps], layout, hints)
    if any(c.kind is not Kind.NUMBER for c in out):
        raise _Uncovered("text reaching the final estimator")
    path = fast.build_path(final)
    if path is None:
        raise _Uncovered(f"the final estimator {type(final).__name__}")
    if int(getattr(final, "n_features_in_", len(out))) != len(out):
        raise _Uncovered("a final estimator of another width")
    methods = frozenset(path.methods) & spec.methods
    # Without column names sagehost hands the library an object array, where None stays None;
    # with them a DataFrame, where pandas turns None into NaN in a column that holds text.
    pandas_text = spec.feature_names is not None
    return LeanPipeline(
        layout,
        transform,
        out,
        path,
        methods,
        estimator=final,
        takes_missing=_takes_missing(final),
        pandas_text=pandas_text,
    )


def _takes_missing(estimator: Any) -> bool:
    """Estimators whose library predict takes NaN (and whose lean paths follow missing-value
    directions or decline): NaN may reach their lean path. Any other's library refuses it."""
    kind = type(estimator)
    return kind.__module__.split(".")[0] in _TAKE_MISSING_MODULES or kind.__name__ in _TAKE_MISSING_SKLEARN


def _finite(magnitude: float) -> bool:
    return magnitude <= _LARGEST  # False for NaN


def _with_missing(magnitude: float) -> bool:
    return not magnitude > _LARGEST  # True for NaN
