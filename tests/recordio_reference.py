"""An independent writer of SageMaker's RecordIO-protobuf, for testing our hand-written reader.

It builds the published aialgs.data schema with the protobuf runtime itself and frames records
as the SageMaker Python SDK's `write_numpy_to_dense_tensor` / `write_spmatrix_to_sparse_tensor` do.
https://docs.aws.amazon.com/sagemaker/latest/dg/cdf-training.html
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _schema() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="record.proto", package="aialgs.data", syntax="proto2")
    for name, kind in (
        ("Float32Tensor", _F.TYPE_FLOAT),
        ("Float64Tensor", _F.TYPE_DOUBLE),
        ("Int32Tensor", _F.TYPE_INT32),
    ):
        tensor = file.message_type.add(name=name)
        values = tensor.field.add(name="values", number=1, type=kind, label=_F.LABEL_REPEATED)
        values.options.packed = True
        for number, field in ((2, "keys"), (3, "shape")):
            added = tensor.field.add(name=field, number=number, type=_F.TYPE_UINT64, label=_F.LABEL_REPEATED)
            added.options.packed = True
    value = file.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    for name, number, kind in (
        ("float32_tensor", 2, "Float32Tensor"),
        ("float64_tensor", 3, "Float64Tensor"),
        ("int32_tensor", 7, "Int32Tensor"),
    ):
        value.field.add(
            name=name,
            number=number,
            type=_F.TYPE_MESSAGE,
            type_name=f".aialgs.data.{kind}",
            label=_F.LABEL_OPTIONAL,
            oneof_index=0,
        )
    record = file.message_type.add(name="Record")
    for map_name, number in (("FeaturesEntry", 1), ("LabelEntry", 2)):
        entry = record.nested_type.add(name=map_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
        entry.field.add(
            name="value", number=2, type=_F.TYPE_MESSAGE, type_name=".aialgs.data.Value", label=_F.LABEL_OPTIONAL
        )
        record.field.add(
            name="features" if number == 1 else "label",
            number=number,
            type=_F.TYPE_MESSAGE,
            type_name=f".aialgs.data.Record.{map_name}",
            label=_F.LABEL_REPEATED,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("aialgs.data.Record"))


Record = _schema()


def _frame(data: bytes) -> bytes:
    padding = (-len(data)) % 4
    return struct.pack("<II", 0xCED7230A, len(data)) + data + b"\x00" * padding


def dense(rows: np.ndarray[Any, Any], float64: bool = False) -> bytes:
    out = b""
    for row in rows:
        record = Record()
        tensor = record.features["values"].float64_tensor if float64 else record.features["values"].float32_tensor
        tensor.values.extend(row.tolist())
        out += _frame(record.SerializeToString())
    return out


def sparse(rows: list[dict[int, float]], width: int) -> bytes:
    out = b""
    for row in rows:
        record = Record()
        tensor = record.features["values"].float32_tensor
        tensor.keys.extend(sorted(row))
        tensor.values.extend(row[k] for k in sorted(row))
        tensor.shape.append(width)
        out += _frame(record.SerializeToString())
    return out
