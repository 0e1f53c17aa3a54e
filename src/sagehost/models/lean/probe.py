"""The proof a lean pipeline gives before it serves: the library's answers on probe rows.

Probe rows are built from what the fitted steps know (categories, centres and spreads) plus the
edges a request can bring: an unknown category, None, an empty string, NaN, huge and tiny
numbers. They go through in one typical batch (which the lean path must answer), one row at a
time (a single row makes a column of None alone, which pandas types differently), and all edges
in one batch. Where the library raises, the lean path must decline; where it answers, the lean
path must decline or agree to rtol 1e-9.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from sagehost.models.lean.frame import Kind, Layout
from sagehost.predictor import ModelSpec

if TYPE_CHECKING:
    from sagehost.models.lean import LeanPipeline

log = logging.getLogger("sagehost.models")

_TYPICAL_ROWS = 64
_SINGLE_EDGES = 120
# Each single row is a library call over the model's whole width (~150 ms for 300 columns): past
# 50 columns fewer are sampled (a 300-column pipeline took ~15 s to load with 120), and one row per
# edge value, set in every column of its kind at once, still tries every column with every edge.
_SINGLE_CELLS = 6_000
_FEWEST_SINGLE = 24
_TEXT_EDGES: tuple[Any, ...] = (None, "\u2400 never seen", "", "7")
# CSV can carry "inf": schema makes it a float infinity, which JSON cannot carry.
_NUMBER_EDGES = (float("nan"), 0.0, -0.0, 1e300, -1e300, 1e-300, 1e15, -7.0, float("inf"), float("-inf"))


def agrees(
    lean: LeanPipeline, estimator: Any, spec: ModelSpec, features: Callable[[Any], Any], hints: dict[int, list[Any]]
) -> bool:
    rng = np.random.default_rng(0)
    pools = [_pool(column.kind, hints.get(i, [])) for i, column in enumerate(lean.layout)]
    typical = [[pool[rng.integers(len(pool))] for pool in pools] for _ in range(_TYPICAL_ROWS)]
    edges = _edge_rows(lean.layout, typical[0])
    lean.library_final = _dense_before_final(estimator, features(_conformed(typical[:2], spec)))
    every = sorted(lean.methods)
    # Batches take the vectorised steps, single rows the Python-float ones: both are proven. The
    # methods differ only in the final estimator's last step, so single rows try one of them.
    one = ["predict_proba" if "predict_proba" in lean.methods else every[0]]
    probes = [
        (typical, True, every),
        ([*edges, *typical[:8]], False, every),
        *(([row], True, one) for row in typical[:3]),
        *(([row], False, one) for row in _every_column_edges(lean.layout, typical[0])),
        *(([row], False, one) for row in _some(edges, rng, len(lean.layout))),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "unknown categories ... encoded as all zeros"
        for rows, must_answer, methods in probes:
            values = _conformed(rows, spec)
            for method in methods:
                if not _same(lean, estimator, features, values, method, must_answer=must_answer):
                    log.info("Lean pipeline probe disagreed on %d row(s), %s.", len(rows), method)
                    return False
    return True


def _dense_before_final(pipeline: Any, frame: Any) -> bool:
    """Whether the library's own transforms hand its final estimator a dense array, as the lean
    path does: only then may the library's final estimator answer on the lean path's matrix
    (a sparse matrix is refused or taken differently, e.g. NaN by a forest)."""
    from scipy import sparse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matrix = pipeline[:-1].transform(frame) if len(pipeline.steps) > 1 else frame
    except Exception:  # the library cannot transform these rows: no shortcut through it
        return False
    return not sparse.issparse(matrix)


def _some(rows: list[list[Any]], rng: np.random.Generator, width: int) -> list[list[Any]]:
    """Edge rows to try one at a time: all of them for a model of a few dozen columns, a sample
    for a wide one (each costs a library call at load; the batch of all edges costs one)."""
    count = max(_FEWEST_SINGLE, min(_SINGLE_EDGES, _SINGLE_CELLS // max(width, 1)))
    if len(rows) <= count:
        return rows
    return [rows[i] for i in sorted(rng.choice(len(rows), count, replace=False))]


def _every_column_edges(layout: Layout, base: list[Any]) -> list[list[Any]]:
    """One row per edge value, that value in every column of its kind (the others as in `base`)."""
    rows = []
    for kind, values in ((Kind.TEXT, _TEXT_EDGES), (Kind.NUMBER, _NUMBER_EDGES)):
        at = [i for i, column in enumerate(layout) if column.kind is kind]
        for edge in values if at else ():
            row = list(base)
            for i in at:
                row[i] = edge
            rows.append(row)
    return rows


def _pool(kind: Kind, hinted: list[Any]) -> list[Any]:
    if kind is Kind.TEXT:
        known = [h for h in hinted if isinstance(h, str)]
        return known or ["a"]
    numbers = [float(h) for h in hinted if isinstance(h, (int, float)) and np.isfinite(h)]
    return numbers or [-3.0, -0.5, 0.0, 0.25, 1.0, 2.0, 5.0]


def _edge_rows(layout: Layout, base: list[Any]) -> list[list[Any]]:
    rows = []
    for i, column in enumerate(layout):
        for edge in _TEXT_EDGES if column.kind is Kind.TEXT else _NUMBER_EDGES:
            row = list(base)
            row[i] = edge
            rows.append(row)
    return rows


def _conformed(rows: list[list[Any]], spec: ModelSpec) -> Any:
    """The rows as schema.conform hands them over: a float array for all-numeric models."""
    if spec.numeric:
        return np.array(rows, dtype=np.float64)
    return [list(row) for row in rows]


def _same(
    lean: LeanPipeline, estimator: Any, features: Callable[[Any], Any], values: Any, method: str, *, must_answer: bool
) -> bool:
    ours = lean.predict(values, method)
    try:
        theirs = np.asarray(getattr(estimator, method)(features(values)))
    except Exception:
        return ours is None  # the library refuses this input: so must we
    if ours is None:
        return not must_answer
    if ours.shape != theirs.shape:
        return False
    if theirs.dtype.kind in "fc":
        # The final path's own tolerance: float64 arithmetic against a float32 library (XGBoost,
        # LightGBM) agrees to float32's last bits, not float64's.
        rtol, atol = lean.tolerance
        return bool(np.allclose(ours, theirs, rtol=rtol, atol=atol))
    return bool(np.array_equal(ours, theirs))
