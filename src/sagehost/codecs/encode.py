"""Predictions -> response bytes, in the media type negotiated from Accept.

JSON answers mirror the request: a bare list for plain rows (as the AWS containers answer),
`{"predictions": ...}` for MLflow's and TF-Serving's shapes, and objects of label -> probability
when named records asked for probabilities (the H2O scorer's `{"fraud.0": 0.98, ...}`).
Every format gives exactly one prediction per input row, in order.

Line-based answers (CSV, JSON Lines) end in a newline, except with `batch=True` (Batch Transform,
`SAGEMAKER_BATCH`): with `AssembleWith=Line` the batch side writes each answer and then one
newline, per request rather than per record (the SageMaker SDK's local mode does exactly that), so
a final newline of ours would leave a blank line after every mini-batch. Without it the .out is
one line per record under either reading of SageMaker's "a newline after every record".
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TransformOutput.html
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from sagehost.codecs import media
from sagehost.predictor import Outputs, Shape

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_CHUNK_VALUES = 4096


def encode(
    outputs: Outputs,
    accept: str,
    shape: Shape = Shape.ROWS,
    labels: Sequence[str] | None = None,
    *,
    batch: bool = False,
) -> bytes:
    """`batch`: Batch Transform's answer, whose line-based formats end without a newline."""
    if accept == media.JSON:
        return encode_json(outputs, shape, labels)
    if accept == media.CSV:
        return encode_csv(outputs, batch=batch)
    if accept == media.JSONLINES:
        return encode_jsonlines(outputs, shape, labels, batch=batch)
    if accept == media.NPY:
        return encode_npy(outputs)
    raise ValueError(f"no encoder for {accept}")  # negotiate() only offers the four above


def encode_json(outputs: Outputs, shape: Shape, labels: Sequence[str] | None) -> bytes:
    named = labels is not None and _is_2d(outputs)
    if shape is Shape.WRAPPED:
        return _dumps({"predictions": outputs})
    if named and shape is Shape.RECORD and labels is not None:
        return _dumps(_labelled(outputs, labels)[0])
    if named and shape is Shape.RECORDS and labels is not None:
        return _dumps(_labelled(outputs, labels))
    return _dumps(outputs)


def encode_jsonlines(outputs: Outputs, shape: Shape, labels: Sequence[str] | None, *, batch: bool = False) -> bytes:
    if labels is not None and _is_2d(outputs) and shape in (Shape.RECORD, Shape.RECORDS):
        items: Sequence[Any] = _labelled(outputs, labels)
    else:
        items = _plain(outputs)
    if batch:
        return b"\n".join(_dumps(item) for item in items)
    return b"".join(_dumps(item) + b"\n" for item in items)


def encode_csv(outputs: Outputs, *, batch: bool = False) -> bytes:
    end = "" if batch else "\n"
    if isinstance(outputs, np.ndarray) and outputs.dtype.kind in "biuf" and outputs.ndim in (1, 2) and outputs.size:
        return _numeric_csv(outputs, end)
    rows = _plain(outputs)
    if rows and all(_is_simple(v) for v in rows):
        return ("\n".join(_cell(v) for v in rows) + end).encode()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(row if isinstance(row, (list, tuple)) else [row])
    text = buffer.getvalue()
    return (text[:-1] if batch and text else text).encode()


def _numeric_csv(array: np.ndarray[Any, Any], end: str) -> bytes:
    # The same text as the general path, made in chunks of rows: numbers and strings are not
    # tracked by the garbage collector (a list per row is, and 60,000 of them set off collections
    # that hold the GIL), and no single C call (tolist, map, join) holds the GIL for long when
    # a big answer is encoded on a thread beside the event loop.
    width = array.shape[1] if array.ndim == 2 else 1
    step = max(1, _CHUNK_VALUES // max(width, 1))
    parts = []
    for start in range(0, len(array), step):
        cells = list(map(str, array[start : start + step].ravel().tolist()))
        lines = cells if width == 1 else [",".join(cells[i : i + width]) for i in range(0, len(cells), width)]
        parts.append("\n".join(lines))
    return ("\n".join(parts) + end).encode()


def encode_npy(outputs: Outputs) -> bytes:
    buffer = io.BytesIO()
    array = np.asarray(outputs)
    if array.dtype == object:
        array = array.astype(str)
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _labelled(outputs: Outputs, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [dict(zip(labels, row, strict=True)) for row in _plain(outputs)]


def _plain(outputs: Outputs) -> list[Any]:
    if isinstance(outputs, np.ndarray):
        return list(outputs.tolist())
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in outputs]


def _is_2d(outputs: Outputs) -> bool:
    if isinstance(outputs, np.ndarray):
        return outputs.ndim == 2
    return bool(outputs) and isinstance(outputs[0], (list, tuple, np.ndarray))


def _is_simple(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, (int, float)) for v in value)
    return isinstance(value, (int, float)) or (isinstance(value, str) and not set(value) & set(',"\n'))


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_NUMPY)
    except TypeError:
        # orjson serialises numeric arrays natively; string/object labels go through lists.
        return orjson.dumps(_to_builtin(value))


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    return value
