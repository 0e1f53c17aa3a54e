"""Pipeline and ColumnTransformer: the covered steps composed, each decided when the model loads.

A step compiles to an object that maps a block to a block and one row (a list) to a list, or to
None ("let the library answer this batch"), plus the layout of its output. Types are matched
exactly: a subclass may change transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, Protocol

import numpy as np

from sagehost.models.lean.encoders import REFUSED, OneHot, Ordinal
from sagehost.models.lean.frame import Block, Kind, Layout, Selector, _Uncovered, numbers_only
from sagehost.models.lean.numeric import Identity, Imputer, MinMax, robust, standard


class Step(Protocol):
    """A compiled step: a batch as a block, or one row as a list; None lets the library answer."""

    def __call__(self, block: Block) -> Block | None: ...

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None: ...


Hints = dict[int, list[Any]]


def compile_transformer(step: Any, layout: Layout, hints: Hints) -> tuple[Step, Layout]:
    """A fitted transformer (or 'passthrough'/None in a Pipeline) as a lean step."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return PASSTHROUGH, layout
    _check_plain_output(step)
    _check_width(step, layout)
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if type(step) is Pipeline:
        return compile_chain([s for _, s in step.steps], layout, hints)
    if type(step) is ColumnTransformer:
        columns = Columns(step, layout, hints)
        return columns, columns.layout
    maker = _makers().get(type(step))
    if maker is None:
        raise _Uncovered(type(step).__name__)
    compiled = maker(step, layout, hints)
    return compiled, compiled.layout


def _makers() -> dict[type, Any]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import (
        FunctionTransformer,
        MinMaxScaler,
        OneHotEncoder,
        OrdinalEncoder,
        RobustScaler,
        StandardScaler,
    )

    return {
        OneHotEncoder: OneHot,
        OrdinalEncoder: Ordinal,
        StandardScaler: standard,
        MinMaxScaler: MinMax,
        RobustScaler: robust,
        SimpleImputer: Imputer,
        FunctionTransformer: Identity,
    }


def compile_chain(steps: list[Any], layout: Layout, hints: Hints) -> tuple[Step, Layout]:
    """Steps applied in turn, as a Pipeline's transforming steps are."""
    compiled: list[Step] = []
    for step in steps:
        run, layout = compile_transformer(step, layout, hints)
        if run is not PASSTHROUGH:
            compiled.append(run)
    if len(compiled) == 1:
        return compiled[0], layout
    return Chain(compiled), layout


class Chain:
    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps

    def __call__(self, block: Block) -> Block | None:
        for step in self.steps:
            result = step(block)
            if result is None:
                return None
            block = result
        return block

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        for step in self.steps:
            result = step.row(values)
            if result is None:
                return None
            values = result
        return values


class Passthrough:
    def __call__(self, block: Block) -> Block | None:
        return block

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        return values


PASSTHROUGH = Passthrough()


class Columns:
    """ColumnTransformer: each part reads its columns (by the fitted index lists, whatever named
    them: names, indices, masks, slices, selectors) and the outputs sit side by side in the
    order of `transformers_`, the remainder last, as its `_hstack` puts them."""

    def __init__(self, transformer: Any, layout: Layout, hints: Hints) -> None:
        weights = transformer.transformer_weights or {}
        self.parts: list[tuple[Selector, Step, float | None]] = []
        self.row_plan: list[RowPart] = []
        out: list[Any] = []
        for name, step, columns in transformer.transformers_:
            if isinstance(step, str) and step == "drop":
                continue
            indices = list(transformer._transformer_to_input_indices[name])
            if not indices:
                continue
            if np.isscalar(columns):
                raise _Uncovered("a ColumnTransformer part that selects one column as a 1-D vector")
            select = Selector(layout, indices)
            run, part_layout = compile_transformer(step, select.layout, hints)
            if any(c.kind is not Kind.NUMBER for c in part_layout):
                raise _Uncovered("a ColumnTransformer part that outputs text")
            weight = weights.get(name)
            self.parts.append((select, run, None if weight is None else float(weight)))
            self.row_plan.append(RowPart(_getter(indices), run, None if weight is None else float(weight), len(out)))
            out.extend(part_layout)
        self.layout: Layout = tuple(out)
        self.emitters = [part.emitter(spare=len(out)) for part in self.row_plan]

    def __call__(self, block: Block) -> Block | None:
        outputs = []
        for select, run, weight in self.parts:
            result = run(select(block))
            if result is None:
                return None
            outputs.append(result.numbers if weight is None else result.numbers * weight)
        if not outputs:
            return numbers_only(np.zeros((block.rows, 0)))
        return numbers_only(outputs[0] if len(outputs) == 1 else np.hstack(outputs))

    def row(self, values: Sequence[Any]) -> Sequence[Any] | None:
        parts = self.sparse_row(values)
        if parts is None:
            return None
        hot, dense = parts
        out = [0.0] * (len(self.layout) + 1)
        for column in hot:
            out[column] = 1.0
        for start, numbers in dense:
            out[start : start + len(numbers)] = numbers
        return out[:-1]

    def sparse_row(self, values: Sequence[Any]) -> tuple[list[int], list[tuple[int, Sequence[Any]]]] | None:
        """One row's output as the columns one-hot parts set to 1.0, and each other part's numbers
        with the column they start at: for a wide one-hot output, far fewer values to move. The
        columns may name a spare one, just past the output, which the caller drops."""
        hot: list[int] = []
        dense: list[tuple[int, Sequence[Any]]] = []
        for emit in self.emitters:
            if not emit(values, hot, dense):
                return None
        return hot, dense


Emit = Callable[[Sequence[Any], list[int], list[tuple[int, Sequence[Any]]]], bool]


class RowPart:
    """One ColumnTransformer part on the one-row path; a one-hot encoder last (and unweighted)
    gives its hot columns rather than a row of zeros."""

    def __init__(self, cells: Any, run: Step, weight: float | None, start: int) -> None:
        self.cells, self.run, self.weight, self.start = cells, run, weight, start
        last = run.steps[-1] if isinstance(run, Chain) and run.steps else run
        self.hot = last if isinstance(last, OneHot) and weight is None else None
        self.before = Chain(run.steps[:-1]) if self.hot is not None and isinstance(run, Chain) else None

    def emitter(self, spare: int) -> Emit:
        """The part's work on one row, as a closure over what it needs (no attribute lookups per
        call): it adds to `hot` or `dense` and says whether the row may go on (False: decline)."""
        cells, start = self.cells, self.start
        text = self.hot.text_tables(start, spare) if self.hot is not None and self.before is None else None
        if text is not None:
            tables, unknowns, get = text[0], text[1], dict.get

            def emit_table(values: Sequence[Any], hot: list[int], dense: list[tuple[int, Sequence[Any]]]) -> bool:
                # One C-level pass over the text cells: dict.get(table, value, unknown) per column.
                # A one-row batch keeps None as None (pandas), so no NaN reaches these dicts.
                codes = list(map(get, tables, cells(values), unknowns))
                hot += codes  # "no column" is the spare column past the output
                return REFUSED not in codes

            return emit_table
        if self.hot is not None:
            encoder, before = self.hot, self.before

            def emit_hot(values: Sequence[Any], hot: list[int], dense: list[tuple[int, Sequence[Any]]]) -> bool:
                row = cells(values) if before is None else before.row(cells(values))
                ones = None if row is None else encoder.ones(row, start)
                if ones is None:
                    return False
                hot += ones
                return True

            return emit_hot
        run, weight = self.run.row, self.weight

        def emit_dense(values: Sequence[Any], hot: list[int], dense: list[tuple[int, Sequence[Any]]]) -> bool:
            result = run(cells(values))
            if result is None:
                return False
            dense.append((start, result if weight is None else [v * weight for v in result]))
            return True

        return emit_dense


def _getter(indices: list[int]) -> Any:
    """The row's cells at `indices`, always as a tuple (itemgetter gives a bare value for one)."""
    if len(indices) == 1:
        index = indices[0]
        return lambda values: (values[index],)
    return itemgetter(*indices)


def _check_plain_output(step: Any) -> None:
    """set_output(transform="pandas"/"polars") changes what the next step receives."""
    config = getattr(step, "_sklearn_output_config", None) or {}
    if config.get("transform", "default") != "default":
        raise _Uncovered(f"{type(step).__name__}.set_output(transform={config['transform']!r})")


def _check_width(step: Any, layout: Layout) -> None:
    width = getattr(step, "n_features_in_", None)
    if width is not None and int(width) != len(layout):
        raise _Uncovered(f"{type(step).__name__} reads {width} columns where {len(layout)} arrive")
