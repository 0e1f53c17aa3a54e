"""ONNX graphs run with onnxruntime on the CPU.

Inputs are named and typed from the graph: one 2-D input takes the whole row; several inputs
(skl2onnx's per-column graphs) take one named column each. Outputs: the first is `predict`;
a probability output (a tensor, or the ZipMap dictionaries skl2onnx emits) is `predict_proba`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sagehost.config import Method, Settings
from sagehost.errors import ModelLoadError
from sagehost.models.arrays import flat, require_method
from sagehost.models.extras import require, threads_per_worker
from sagehost.models.files import model_files
from sagehost.models.format import Format
from sagehost.predictor import ColumnKind, Model, ModelSpec, Outputs, Rows

log = logging.getLogger("sagehost.models")

_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(string)": object,
}


def find(model_dir: Path) -> list[Path]:
    return model_files(model_dir, ".onnx")


def load(path: Path, settings: Settings) -> Model:
    ort = require("onnxruntime", "onnx", f"{path.name} (an ONNX model)")
    options = ort.SessionOptions()
    # One worker per core already runs in parallel: each session gets its share, no more.
    options.intra_op_num_threads = threads_per_worker(settings.workers)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ModelLoadError(f"onnxruntime could not load {path.name}: {str(exc)[:300]}") from None
    return OnnxModel(session, path.name, _graph_classes(path))


class OnnxModel:
    def __init__(self, session: Any, description: str, classes: tuple[Any, ...] | None = None) -> None:
        self._session = session
        self._inputs = session.get_inputs()
        for tensor in self._inputs:
            if tensor.type not in _DTYPES:
                raise ModelLoadError(f"{description}: input {tensor.name!r} has type {tensor.type}, not supported.")
        outputs = session.get_outputs()
        self._label = outputs[0].name
        self._proba = next((o.name for o in outputs[1:] if _is_probability(o)), None)
        self._classes: tuple[Any, ...] | None = None
        self._spec = self._describe(description)
        if self._proba is not None:
            self._classes = classes or self._probe_classes()
            self._spec = dataclasses.replace(self._spec, classes=self._classes)

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def _describe(self, description: str) -> ModelSpec:
        methods = {"predict", "predict_proba"} if self._proba else {"predict"}
        if len(self._inputs) == 1:
            width = self._inputs[0].shape[-1] if len(self._inputs[0].shape) == 2 else None
            n_features = width if isinstance(width, int) else None
            names, kinds = None, None
        else:
            names = tuple(t.name for t in self._inputs)
            n_features = len(names)
            kinds = tuple(ColumnKind.TEXT if t.type == "tensor(string)" else ColumnKind.NUMBER for t in self._inputs)
        numeric = kinds is None or ColumnKind.TEXT not in kinds
        return ModelSpec(
            methods=frozenset(methods),
            feature_names=names,
            n_features=n_features,
            kinds=None if numeric else kinds,
            sample=[[0.0] * n_features] if numeric and n_features else None,
            fork_safe=False,
            steady_cost=numeric,
            description=f"{description}: ONNX graph",
        )

    def predict(self, rows: Rows, method: Method) -> Outputs:
        require_method(method, self._spec)
        wanted = self._label if method == "predict" else self._proba
        [out] = self._session.run([wanted], self._feed(rows))
        if method == "predict_proba" and isinstance(out, list):
            return _zipmap_to_array(out, self._classes or ())
        return flat(np.asarray(out))

    def _feed(self, rows: Rows) -> dict[str, Any]:
        if len(self._inputs) == 1:
            tensor = self._inputs[0]
            return {tensor.name: np.asarray(rows.values, dtype=_DTYPES[tensor.type])}
        # one named column per input: each gets its own (n, 1) array of its own type
        columns = np.asarray(rows.values, dtype=object)
        return {
            tensor.name: columns[:, i : i + 1].astype(_DTYPES[tensor.type]) for i, tensor in enumerate(self._inputs)
        }

    def _probe_classes(self) -> tuple[Any, ...] | None:
        """ZipMap answers carry the class labels as keys: read them off one prediction of a
        placeholder row (zeros, empty text), whose values do not matter."""
        kinds = self._spec.kinds or (ColumnKind.NUMBER,) * (self._spec.n_features or 0)
        if not kinds:
            return None
        probe: list[Any] = ["" if kind is ColumnKind.TEXT else 0.0 for kind in kinds]
        try:
            [out] = self._session.run([self._proba], self._feed(Rows([probe])))
        except Exception:  # the graph refuses the placeholder: answers go unlabelled
            log.info("Could not read class labels off the ONNX graph's probability output")
            return None
        if isinstance(out, list) and out:
            return tuple(out[0].keys())
        return tuple(range(np.asarray(out).shape[1]))


_CLASSIFIER_OPS = ("ZipMap", "LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier")


def _graph_classes(path: Path) -> tuple[Any, ...] | None:
    """Class labels as the graph's classifier nodes declare them (skl2onnx writes them there)."""
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(str(path), load_external_data=False).graph
    for op in _CLASSIFIER_OPS:
        for node in graph.node:
            if node.op_type != op:
                continue
            for attribute in node.attribute:
                if attribute.name == "classlabels_int64s":
                    return tuple(int(v) for v in attribute.ints)
                if attribute.name == "classlabels_strings":
                    return tuple(v.decode() for v in attribute.strings)
    return None


def _is_probability(output: Any) -> bool:
    return "prob" in output.name.lower() or str(output.type).startswith("seq(map")


def _zipmap_to_array(out: list[dict[Any, float]], classes: tuple[Any, ...]) -> np.ndarray[Any, Any]:
    keys = classes or tuple(out[0].keys())
    return np.array([[row[k] for k in keys] for row in out], dtype=np.float64)


FORMAT = Format("onnx", extra="onnx", files="*.onnx", find=find, load=load)
