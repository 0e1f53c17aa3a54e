"""text/libsvm and application/x-recordio-protobuf, as SageMaker's XGBoost clients send them."""

from __future__ import annotations

import numpy as np
import pytest

from sagehost.codecs import decode
from sagehost.errors import InvalidPayload
from sagehost.models.schema import conform
from sagehost.predictor import ModelSpec
from tests.recordio_reference import dense, sparse

SPEC = ModelSpec(methods=frozenset({"predict"}), n_features=5)


def test_libsvm_rows_are_dense_with_missing_as_nan_and_labels_ignored() -> None:
    table = decode(b"1 0:1.5 3:2\n2:0.25 # a comment\n\n0 4:-1e3\n", "text/libsvm")
    rows = conform(table, SPEC).values
    nan = np.nan
    expected = [[1.5, nan, nan, 2, nan], [nan, nan, 0.25, nan, nan], [nan, nan, nan, nan, -1000]]
    np.testing.assert_array_equal(rows, np.array(expected))


def test_libsvm_index_past_the_model_is_a_400() -> None:
    table = decode(b"0 7:1\n", "text/libsvm")
    with pytest.raises(Exception, match="Expected 5 values per row, got 8"):
        conform(table, SPEC)


def test_libsvm_index_past_a_known_width_is_refused_while_decoding() -> None:
    with pytest.raises(InvalidPayload, match="libsvm row 1 has feature index 7, past this model's 5 features"):
        decode(b"0 7:1\n", "text/libsvm", width=5)
    assert np.shape(conform(decode(b"0 4:1\n", "text/libsvm", width=5), SPEC).values) == (1, 5)


@pytest.mark.parametrize("body", [b"0 a:1\n", b"0 1:x\n", b"0 -1:2\n"])
def test_malformed_libsvm_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidPayload):
        conform(decode(body, "text/libsvm"), SPEC)


@pytest.mark.parametrize("float64", [False, True])
def test_dense_recordio_protobuf(float64: bool) -> None:
    rows = np.array([[0.5, 1, 2, 3, 4], [5, 6, 7, 8, 9.25]])
    table = decode(dense(rows, float64=float64), "application/x-recordio-protobuf")
    np.testing.assert_array_equal(conform(table, SPEC).values, rows)


def test_sparse_recordio_protobuf_pads_absent_features() -> None:
    body = sparse([{0: 1.0, 3: 2.5}, {1: -4.0}], width=5)
    rows = conform(decode(body, "application/x-recordio-protobuf"), SPEC).values
    nan = np.nan
    np.testing.assert_array_equal(rows, np.array([[1, nan, nan, 2.5, nan], [nan, -4, nan, nan, nan]]))


def test_truncated_recordio_is_invalid() -> None:
    body = dense(np.ones((2, 5)))
    with pytest.raises(InvalidPayload, match="RecordIO"):
        decode(body[:-9] + b"\x01\x02\x03\x04\x05", "application/x-recordio-protobuf")
