from __future__ import annotations

import math

import numpy as np
import pytest

from sagehost.errors import SchemaMismatch
from sagehost.models.schema import conform
from sagehost.predictor import ColumnKind, ModelSpec, Table

NAMED = ModelSpec(methods=frozenset({"predict"}), feature_names=("a", "b"), n_features=2)
MIXED = ModelSpec(
    methods=frozenset({"predict"}),
    feature_names=("age", "gender"),
    n_features=2,
    kinds=(ColumnKind.NUMBER, ColumnKind.TEXT),
)


def test_named_fields_are_put_in_model_order() -> None:
    rows = conform(Table([[2, 1]], ("b", "a")), NAMED)
    assert np.array_equal(rows.values, [[1.0, 2.0]])


def test_missing_field_is_named() -> None:
    with pytest.raises(SchemaMismatch, match="Missing field\\(s\\) 'b'"):
        conform(Table([[1]], ("a",)), NAMED)


def test_wrong_width_says_expected_and_got() -> None:
    with pytest.raises(SchemaMismatch, match="Expected 2 values per row, got 3"):
        conform(Table([[1, 2, 3]]), NAMED)


def test_csv_header_is_recognised_and_maps_by_name() -> None:
    rows = conform(Table([["b", "a"], ["2", "1"]]), NAMED)
    assert np.array_equal(rows.values, [[1.0, 2.0]])


def test_header_without_known_names_needs_numeric_data_below() -> None:
    spec = ModelSpec(methods=frozenset({"predict"}), n_features=2)
    assert len(conform(Table([["x", "y"], ["1", "2"]]), spec)) == 1


def test_empty_csv_cells_are_missing_values() -> None:
    rows = conform(Table([["1", ""]]), NAMED)
    assert isinstance(rows.values, np.ndarray)
    assert math.isnan(rows.values[0, 1])


def test_bad_number_names_the_column_not_the_value() -> None:
    with pytest.raises(SchemaMismatch, match="Field 'b' must be a number") as info:
        conform(Table([["1", "secret"]]), NAMED)
    assert "secret" not in info.value.message


def test_mixed_columns_keep_text_and_convert_numbers() -> None:
    rows = conform(Table([["41", "M"]]), MIXED)
    assert rows.values == [[41.0, "M"]]
    assert conform(Table([[41, 1.0]], ("age", "gender")), MIXED).values == [[41.0, "1"]]
