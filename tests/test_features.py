"""Arrow -> float32 matrix: values in feature order, every bad row reported with a reason."""
import numpy as np
import pyarrow as pa
import pytest

from latentbeam.model.features import (REASON_NON_NUMERIC, REASON_NOT_FINITE, REASON_NULL,
                                       REASON_OUT_OF_RANGE,
                                       REASON_WRONG_LENGTH, Feature, SchemaMismatch,
                                       infer_features, n_inputs, row_payload, to_matrix)

NAN, INF = float("nan"), float("inf")


def reasons(conv):
    return [(row, reason) for row, reason, _ in conv.faults]


def test_scalar_numeric_columns_in_feature_order():
    batch = pa.table({"a": pa.array([1, 2, 3], pa.int8()), "b": [0.5, 1.5, 2.5],
                      "c": [True, False, True]})
    features = [Feature("c", "bool"), Feature("a", "int8"), Feature("b", "float64")]
    conv = to_matrix(batch, features)
    assert conv.matrix.dtype == np.float32
    np.testing.assert_array_equal(conv.matrix, [[1, 1, 0.5], [0, 2, 1.5], [1, 3, 2.5]])
    assert conv.valid.tolist() == [0, 1, 2] and conv.faults == []


def test_fixed_size_list_column_is_flattened_after_scalars():
    values = pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], type=pa.list_(pa.float32(), 3))
    batch = pa.table({"x": [10.0, 20.0], "v": values})
    features = infer_features(batch)
    assert features == [Feature("x", "float64", ()), Feature("v", "float32", (3,))]
    assert n_inputs(features) == 4
    np.testing.assert_array_equal(to_matrix(batch, features).matrix, [[10, 1, 2, 3], [20, 4, 5, 6]])


def test_variable_list_column_takes_its_length_from_the_first_row_and_checks_it():
    batch = pa.table({"v": pa.array([None, [1, 2, 3], [1, 2], [], [4, 5, 6], [7, 8, 9, 10]],
                                    pa.list_(pa.int32()))})
    features = infer_features(batch)
    assert features == [Feature("v", "int32", (3,))]
    conv = to_matrix(batch, features)
    assert reasons(conv) == [(0, REASON_NULL), (2, REASON_WRONG_LENGTH), (3, REASON_WRONG_LENGTH),
                             (5, REASON_WRONG_LENGTH)]
    assert conv.faults[1][2] == "column 'v' has 2 values, expected 3"
    assert conv.faults[2][2] == "column 'v' has 0 values, expected 3"
    assert conv.valid.tolist() == [1, 4]
    np.testing.assert_array_equal(conv.matrix, [[1, 2, 3], [4, 5, 6]])


def test_nested_lists_are_images_and_must_have_the_image_shape():
    images = pa.array([
        [[1.0, 2.0], [3.0, 4.0]],
        [[5.0, 6.0], [7.0]],  # 3 values
        None,
        [[1.0, 2.0], [3.0, NAN]],
        [[1.0, 2.0], [3.0, None]],
        [[1.0, 2.0, 3.0], [4.0]],  # 4 values but ragged
        [[5.0, 6.0], [7.0, 8.0]],
    ], pa.list_(pa.list_(pa.float32())))
    batch = pa.table({"image": images})
    features = infer_features(batch)
    assert features == [Feature("image", "float32", (2, 2))]
    conv = to_matrix(batch, features)
    assert reasons(conv) == [(1, REASON_WRONG_LENGTH), (2, REASON_NULL), (3, REASON_NOT_FINITE),
                             (4, REASON_NULL), (5, REASON_WRONG_LENGTH)]
    assert [d for _, _, d in conv.faults] == [
        "column 'image' has 3 values, expected 4",
        "column 'image' is null",
        "column 'image'[3] is nan",
        "column 'image' has a null element",
        "column 'image' does not have shape (2, 2)",
    ]
    assert conv.valid.tolist() == [0, 6]
    np.testing.assert_array_equal(conv.matrix, [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_flat_lists_are_accepted_for_an_image_feature():
    # Scoring data may store an (h, w) image as one flat list of h * w values.
    batch = pa.table({"image": pa.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]])})
    conv = to_matrix(batch, [Feature("image", "float32", (2, 2))])
    assert reasons(conv) == [(1, REASON_WRONG_LENGTH)]
    np.testing.assert_array_equal(conv.matrix, [[1, 2, 3, 4]])


def test_nulls_nan_and_inf_name_the_row_and_column():
    batch = pa.table({"a": [1.0, None, 3.0, 4.0, 5.0], "b": [1.0, 2.0, NAN, -INF, 5.0]})
    conv = to_matrix(batch, infer_features(batch))
    assert conv.faults == [(1, REASON_NULL, "column 'a' is null"),
                           (2, REASON_NOT_FINITE, "column 'b' is nan"),
                           (3, REASON_NOT_FINITE, "column 'b' is -inf")]
    assert conv.valid.tolist() == [0, 4]
    np.testing.assert_array_equal(conv.matrix, [[1, 1], [5, 5]])


def test_values_beyond_float32_range_are_out_of_range():
    # Finite in the input, infinite as float32: `out_of_range`, not `not_finite`.
    batch = pa.table({"a": [1.0, 1e300, -1e39]})
    conv = to_matrix(batch, infer_features(batch))
    assert reasons(conv) == [(1, "out_of_range"), (2, "out_of_range")]
    assert conv.faults[1][2] == ("column 'a' value -1e+39 is beyond float32's range "
                                 "(|x| <= 3.403e+38)")
    assert np.isfinite(conv.matrix).all() and conv.matrix.tolist() == [[1.0]]


def test_first_fault_of_a_row_wins():
    batch = pa.table({"a": [None, 1.0], "b": [NAN, 2.0]})
    conv = to_matrix(batch, infer_features(batch))
    assert reasons(conv) == [(0, REASON_NULL)]


def test_string_column_with_some_non_numeric_values():
    batch = pa.table({"s": ["1.5", "abc", None, "inf", " 2 ", "", "-1e400", " -Infinity",
                            "1e39"]})
    conv = to_matrix(batch, [Feature("s", "float64")])
    beyond = "is beyond float32's range (|x| <= 3.403e+38)"
    assert conv.faults == [(1, REASON_NON_NUMERIC, "column 's' value 'abc' is not a number"),
                           (2, REASON_NULL, "column 's' is null"),
                           (3, REASON_NOT_FINITE, "column 's' is inf"),
                           (5, REASON_NON_NUMERIC, "column 's' value '' is not a number"),
                           # A number written out is out of range, even past float64's.
                           (6, REASON_OUT_OF_RANGE, f"column 's' value '-1e400' {beyond}"),
                           (7, REASON_NOT_FINITE, "column 's' is -inf"),
                           (8, REASON_OUT_OF_RANGE, f"column 's' value 1e+39 {beyond}")]
    np.testing.assert_array_equal(conv.matrix, [[1.5], [2.0]])


def test_wrong_fixed_list_length_and_missing_columns_fail_the_whole_batch():
    batch = pa.table({"v": pa.array([[1.0, 2.0]], pa.list_(pa.float64(), 2))})
    conv = to_matrix(batch, [Feature("v", "float64", (3,))])
    assert conv.faults == [(0, REASON_WRONG_LENGTH, "column 'v' has 2 values, expected 3")]
    assert conv.matrix.shape == (0, 3)
    with pytest.raises(SchemaMismatch, match=r"feature column 'w' is missing \(columns present: v\)"):
        to_matrix(batch, [Feature("w", "float64")])
    with pytest.raises(SchemaMismatch, match=r"column 'v' has type fixed_size_list.*expected a number"):
        to_matrix(batch, [Feature("v", "float64")])


def test_chunked_and_sliced_inputs_convert_like_contiguous_ones():
    table = pa.concat_tables([pa.table({"v": pa.array([[1.0, 2.0], [3.0, 4.0]])}),
                              pa.table({"v": pa.array([[5.0, 6.0], None])})])
    conv = to_matrix(table.slice(1, 3), [Feature("v", "float64", (2,))])
    assert reasons(conv) == [(2, REASON_NULL)]
    np.testing.assert_array_equal(conv.matrix, [[3, 4], [5, 6]])


def test_infer_features_excludes_label_keys_and_non_numeric_columns():
    batch = pa.table({"id": [1, 2], "name": ["a", "b"], "y": [0, 1], "f0": [0.1, 0.2],
                      "f1": pa.array([1, 2], pa.uint8()), "tags": pa.array([["a"], ["b"]])})
    assert infer_features(batch, exclude=["id", "y"]) == [Feature("f0", "float64"),
                                                          Feature("f1", "uint8")]
    assert infer_features(batch, include=["f1", "y"]) == [Feature("f1", "uint8"),
                                                          Feature("y", "int64")]
    with pytest.raises(ValueError, match=r"Feature column 'g' not found in t.parquet. "
                                         r"Available columns: id, name, y, f0, f1, tags."):
        infer_features(batch, include=["g"], source="t.parquet")
    with pytest.raises(ValueError, match=r"Feature column 'name' in the data has type string, "
                                         r"expected a number or a list of numbers"):
        infer_features(batch, include=["name"])
    with pytest.raises(ValueError, match=r"No numeric feature columns"):
        infer_features(batch, include=None, exclude=["id", "y", "f0", "f1"])


def test_row_payload_is_json_with_non_finite_values_as_strings():
    batch = pa.table({"id": [7], "x": [NAN], "v": pa.array([[1.0, INF]]), "b": [b"\x01\xff"]})
    assert row_payload(batch, 0) == '{"id": 7, "x": "nan", "v": [1.0, "inf"], "b": "01ff"}'


def test_feature_json_round_trip():
    f = Feature("image", "uint8", (28, 28, 1))
    assert f.size == 784
    assert f.to_json() == {"name": "image", "dtype": "uint8", "shape": [28, 28, 1]}
    assert Feature.from_json(f.to_json()) == f
