"""Training sources: a Parquet glob and a prepared TFDS split, streamed in chunks."""
import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from latentbeam.config import from_dict
from latentbeam.demo import DIGITS_TFDS_NAME, write_digits_tfds
from latentbeam.model import data as data_mod
from latentbeam.model.data import ParquetSource, TfdsSource, make_source
from latentbeam.model.features import Feature


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    return write_digits_tfds(str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="module")
def table_glob(tmp_path_factory):
    """1000 rows in 3 files of different sizes: id, y, two scalars and a 3-list."""
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.normal(size=(n, 5)).astype(np.float32)
    table = pa.table({
        "id": np.arange(n), "y": (rng.random(n) < 0.1).astype(np.int64),
        "a": x[:, 0], "b": x[:, 1].astype(np.float64),
        "v": pa.FixedSizeListArray.from_arrays(pa.array(x[:, 2:].ravel()), 3),
    })
    d = tmp_path_factory.mktemp("table")
    for i, (s, e) in enumerate([(0, 100), (100, 650), (650, 1000)]):
        pq.write_table(table.slice(s, e - s), str(d / f"part-{i}.parquet"), row_group_size=200)
    (d / "empty.parquet").write_bytes(b"")  # 0-byte files are skipped, not fatal
    return str(d / "*.parquet"), x, table.column("y").to_numpy()


def collect(source):
    chunks = list(source.chunks())
    matrix = np.concatenate([m for m, _ in chunks])
    labels = None if chunks[0][1] is None else np.concatenate([lab for _, lab in chunks])
    return chunks, matrix, labels


def test_parquet_glob_streams_chunks_that_concatenate_to_the_data(table_glob):
    pattern, x, y = table_glob
    source = ParquetSource(pattern, label="y", key_columns=["id"], batch_rows=128)
    assert len(source.files) == 3
    assert source.features == [Feature("a", "float32"), Feature("b", "float64"),
                               Feature("v", "float32", (3,))]
    chunks, matrix, labels = collect(source)
    assert max(len(m) for m, _ in chunks) == 128
    assert len(chunks) > 3
    assert all(m.dtype == np.float32 and m.flags.c_contiguous for m, _ in chunks)
    np.testing.assert_array_equal(matrix, x)
    np.testing.assert_array_equal(labels, y.astype(np.float32))
    assert source.skipped.total == 0
    # A second pass (the next epoch) gives the same rows.
    np.testing.assert_array_equal(collect(source)[1], x)


def test_explicit_features_select_and_order_columns(table_glob):
    pattern, x, _ = table_glob
    source = ParquetSource(pattern, features=["v", "a"])
    _, matrix, labels = collect(source)
    assert labels is None
    np.testing.assert_array_equal(matrix, np.concatenate([x[:, 2:], x[:, :1]], axis=1))


def test_bad_rows_are_counted_and_skipped(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0]}), str(tmp_path / "0.parquet"))
    pq.write_table(pa.table({"a": [4.0, float("nan"), None, 7.0]}), str(tmp_path / "1.parquet"))
    source = ParquetSource(str(tmp_path / "*.parquet"))
    _, matrix, _ = collect(source)
    assert matrix.ravel().tolist() == [1, 2, 3, 4, 7]
    assert source.skipped.by_reason == {"not_finite": 1, "null_value": 1}
    assert source.skipped.examples == [
        f"{tmp_path / '1.parquet'} row 1: not_finite: column 'a' is nan",
        f"{tmp_path / '1.parquet'} row 2: null_value: column 'a' is null"]


def test_empty_glob_missing_label_and_mismatched_files_are_errors(tmp_path, table_glob):
    with pytest.raises(ValueError, match=r"No non-empty Parquet files match '.*nothing-\*.parquet'. "
                                         r"Check `data.path`"):
        ParquetSource(str(tmp_path / "nothing-*.parquet"))
    pattern, _, _ = table_glob
    with pytest.raises(ValueError, match=r"Label column 'is_fraud' not found in .*part-0.parquet. "
                                         r"Available columns: id, y, a, b, v."):
        ParquetSource(pattern, label="is_fraud")
    pq.write_table(pa.table({"a": [1.0, 2.0]}), str(tmp_path / "0.parquet"))
    pq.write_table(pa.table({"b": [1.0, 2.0], "id": [1, 2]}), str(tmp_path / "1.parquet"))
    source = ParquetSource(str(tmp_path / "*.parquet"))
    # The message lists the file's own columns (a rename shows), not the projection's.
    with pytest.raises(ValueError, match=r"1.parquet: feature column 'a' is missing \(columns "
                                         r"present: b, id\)\. All training files must share "
                                         r"the feature columns of .*0.parquet"):
        collect(source)


def test_tfds_split_and_sub_split_equal_the_digits(tfds_dir):
    images = load_digits().images.astype(np.float32).reshape(-1, 64)
    source = TfdsSource(DIGITS_TFDS_NAME, "train", data_dir=tfds_dir, label="label",
                        batch_rows=512)
    assert source.features == [Feature("image", "float32", (8, 8))]
    chunks, matrix, labels = collect(source)
    assert [len(m) for m, _ in chunks] == [512, 512, 476]
    np.testing.assert_array_equal(matrix, images[:1500])
    np.testing.assert_array_equal(labels, load_digits().target[:1500])

    half = TfdsSource(DIGITS_TFDS_NAME, "train[:50%]", data_dir=tfds_dir)
    _, matrix, labels = collect(half)
    assert labels is None
    np.testing.assert_array_equal(matrix, images[:750])
    _, matrix, _ = collect(TfdsSource(DIGITS_TFDS_NAME, "test", data_dir=tfds_dir))
    np.testing.assert_array_equal(matrix, images[1500:])


def test_make_source_follows_the_config(tfds_dir, digits_glob):
    config = from_dict({"data": {"source": "tfds", "name": DIGITS_TFDS_NAME,
                                 "split": "train[:10%]", "data_dir": tfds_dir}})
    source = make_source(config.data)
    assert isinstance(source, TfdsSource)
    assert sum(len(m) for m, _ in source.chunks()) == 150
    source = make_source(from_dict({"data": {"path": digits_glob, "label": "label",
                                             "key_columns": ["id"]}}).data)
    assert isinstance(source, ParquetSource)
    assert [f.name for f in source.features] == [f"pixel_{i:02d}" for i in range(64)]


def test_tfds_not_prepared_names_the_data_dir_and_the_fix(tmp_path):
    empty = str(tmp_path / "no_data_here")
    with pytest.raises(ValueError) as e:
        TfdsSource(DIGITS_TFDS_NAME, data_dir=empty)
    message = str(e.value)
    assert f"data_dir {empty!r}" in message
    assert f"`tfds build {DIGITS_TFDS_NAME} --data_dir DIR`" in message
    assert "never downloads" in message
    assert not os.path.exists(os.path.join(empty, "downloads"))


def test_tfds_unknown_feature_is_an_error(tfds_dir):
    with pytest.raises(ValueError, match=r"Feature 'pixels' not in TFDS dataset 'latentbeam_digits'. "
                                         r"Available: image, label."):
        TfdsSource(DIGITS_TFDS_NAME, data_dir=tfds_dir, features=["pixels"])


def test_splits_have_the_configured_fractions_and_are_stable(digits_glob, digits_matrix):
    codes = data_mod.assign_splits(0, 1797, 0.2, 0.05)
    counts = np.bincount(codes, minlength=3)
    assert abs(counts[data_mod.SPLIT_VALIDATION] - 0.2 * 1797) <= 2
    assert abs(counts[data_mod.SPLIT_CALIBRATION] - 0.05 * 1797) <= 2
    # Any stretch of rows gets the same fractions (sorted data still spreads evenly).
    for start in (0, 500, 1000):
        window = np.bincount(codes[start:start + 400], minlength=3)
        assert abs(window[data_mod.SPLIT_VALIDATION] - 80) <= 2
        assert abs(window[data_mod.SPLIT_CALIBRATION] - 20) <= 2
    # Chunked assignment equals whole assignment.
    np.testing.assert_array_equal(
        np.concatenate([data_mod.assign_splits(0, 700, 0.2, 0.05),
                        data_mod.assign_splits(700, 1097, 0.2, 0.05)]), codes)

    source = ParquetSource(digits_glob, label="label", key_columns=["id"], batch_rows=300)
    stats = data_mod.scan(source, 0.2, 0.05)
    assert stats.rows == 1797
    assert stats.rows_by_split == {"train": int(counts[0]), "validation": int(counts[1]),
                                   "calibration": int(counts[2])}
    train = digits_matrix[codes == data_mod.SPLIT_TRAIN].astype(np.float64)
    np.testing.assert_allclose(stats.mean, train.mean(axis=0), rtol=1e-5, atol=1e-6)
    var = train.var(axis=0)
    assert stats.constant_inputs == int((var == 0).sum()) > 0
    np.testing.assert_allclose(stats.variance, np.where(var == 0, 1.0, var), rtol=1e-4)
    # The model's normalization: quartiles of the (here complete) sample of training rows.
    assert stats.median_rows == len(train)
    np.testing.assert_allclose(stats.medians, np.median(train, axis=0), rtol=1e-12)
    center, scale, robust = data_mod.robust_scaling(
        np.quantile(train, [0.25, 0.5, 0.75], axis=0), train.mean(axis=0),
        np.where(var == 0, 1.0, var))
    np.testing.assert_allclose(stats.center, center, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.scale, scale, rtol=1e-4)
    assert stats.robust_inputs == int(robust.sum()) > 0
    assert stats.fingerprint == data_mod.scan(source, 0.2, 0.05).fingerprint


def test_normalization_uses_quartiles_that_outliers_cannot_stretch():
    from statistics import NormalDist

    from latentbeam.model.data import MAX_ROBUST_GAIN, robust_scaling

    # N(10, 2) quantiles: normal data without sampling noise.
    normal = np.array([NormalDist(10.0, 2.0).inv_cdf((i + 0.5) / 1000) for i in range(1000)])
    mild = normal.copy()
    mild[::50] = 40.0  # 2% of rows 15 sigma out: the std more than doubles
    extreme = normal.copy()
    extreme[::50] = 1e4  # the std goes to ~1400
    flag = np.repeat([0.0, 1.0], 500)  # two clusters: quartiles 0 and 1, std 0.5
    sparse = np.random.default_rng(0).normal(0.0, 0.01, size=1000)
    sparse[::40] = 5.0  # almost always ~0
    constant = np.full(1000, 3.0)
    x = np.stack([normal, mild, extreme, flag, sparse, constant], axis=1)
    var = x.var(axis=0)
    var[var == 0] = 1.0
    center, scale, robust = robust_scaling(np.quantile(x, [0.25, 0.5, 0.75], axis=0),
                                           x.mean(axis=0), var)
    std = np.sqrt(var)
    assert robust.tolist() == [True, True, True, True, True, False]
    # Normal data: the quartile scale is the standard deviation, the centre the median.
    assert scale[0] == pytest.approx(2.0, rel=0.01) and center[0] == pytest.approx(10.0)
    # 2% outliers: the std is 4.6, the scale stays the bulk's ~2 and the centre its median.
    assert std[1] > 4.5 and scale[1] == pytest.approx(2.0, rel=0.05)
    assert center[1] == pytest.approx(10.0, abs=0.1)
    # Extreme outliers: the quartile scale would weigh the input ~700x; capped at std / 3.
    assert std[2] > 1000 and scale[2] == pytest.approx(std[2] / MAX_ROBUST_GAIN)
    # Two clusters: quartile range / 1.349 = 0.74 is wider than the std, so the std.
    assert scale[3] == pytest.approx(0.5) and center[3] == pytest.approx(0.5)
    # Sparse input: the quartile scale ~0.01 is capped at std / 3 (at most 9x in the loss).
    assert scale[4] == pytest.approx(std[4] / MAX_ROBUST_GAIN)
    # Constant input: quartiles coincide, so the mean and the replaced variance 1.
    assert center[5] == pytest.approx(3.0) and scale[5] == 1.0


def test_inputs_a_few_extreme_values_dominate_are_named_with_their_extreme():
    from statistics import NormalDist

    normal = np.array([NormalDist(10.0, 2.0).inv_cdf((i + 0.5) / 1000) for i in range(1000)])
    glitch = normal.copy()
    glitch[500] = 3e38  # one value near float32's limit: std 9.5e36
    low = normal.copy()
    low[3] = -1e7  # std 3.2e5, 1.6e5x the quartile scale of 2
    mild = normal.copy()
    mild[::50] = 40.0  # std 4.6: 2.3x, an ordinary heavy tail
    heavy = normal.copy()
    heavy[:2] = 5e3  # std 224: 112x, just past the ratio of 100
    sparse = np.zeros(1000)
    sparse[::100] = 1e6  # quartiles coincide: sparse, not stretched
    x = np.stack([normal, glitch, low, mild, heavy, sparse], axis=1)
    quartiles = np.quantile(x, [0.25, 0.5, 0.75], axis=0)
    names = ["normal", "glitch", "low", "mild", "heavy", "sparse"]
    found = data_mod.stretched_inputs(quartiles, x.var(axis=0), x.min(axis=0), x.max(axis=0),
                                      names)
    assert [(name, extreme) for name, extreme, _, _ in found] == [
        ("glitch", 3e38), ("low", -1e7), ("heavy", 5e3)]
    for name, _, std, spread in found:
        assert std == pytest.approx(x[:, names.index(name)].std(), rel=1e-9)
        assert spread == pytest.approx(2.0, rel=0.01)  # the bulk's N(10, 2)
    assert found[2][2] / found[2][3] == pytest.approx(112, rel=0.01)
    # Inputs that share one scale (an image) are left to their group.
    skipped = data_mod.stretched_inputs(quartiles, x.var(axis=0), x.min(axis=0),
                                        x.max(axis=0), names, skip=[slice(1, 3)])
    assert [name for name, *_ in skipped] == ["heavy"]


def test_the_pixels_of_an_image_share_one_scale_taken_over_all_their_values(digits_matrix):
    """Scaled one by one, a pixel that is almost always blank gets a tiny scale and its
    noise weighs like a stroke; pooled, every pixel of the image keeps its share."""
    from latentbeam.model.data import pool_inputs, robust_scaling

    x = digits_matrix.astype(np.float64)  # (1797, 64), values 0..16
    var = x.var(axis=0)
    center, scale, robust = pool_inputs(x, x.mean(axis=0), var)
    assert center.shape == scale.shape == robust.shape == (64,)
    assert np.all(center == center[0]) and np.all(scale == scale[0])
    # The group's mean and variance from per-input moments are those of all its values.
    values = x.ravel()
    expected = robust_scaling(np.quantile(values, [0.25, 0.5, 0.75])[:, None],
                              np.array([values.mean()]), np.array([values.var()]))
    assert center[0] == pytest.approx(expected[0][0]) and scale[0] == pytest.approx(expected[1][0])
    # Digits: quartiles 0 and 10 of all pixel values are wider than their std 6.0, so
    # the shared scale is the std of all values; centre the median of all values.
    assert scale[0] == pytest.approx(values.std(), rel=1e-9) and center[0] == np.median(values)
    # Per input, an almost always blank pixel would get a scale of 0.024 (its noise
    # magnified 250x against the pooled 6.0) and the busiest one 6.5.
    per_input = robust_scaling(np.quantile(x, [0.25, 0.5, 0.75], axis=0), x.mean(axis=0),
                               np.where(var == 0, 1.0, var))[1]
    assert per_input[1:].min() < 0.005 * scale[0] and per_input.max() > scale[0]


def test_which_inputs_share_a_scale_follows_model_normalization():
    from latentbeam.model.features import shared_scale_inputs

    features = [Feature("a", "float64"), Feature("v", "float32", (3,)),
                Feature("image", "uint8", (2, 2)), Feature("rgb", "uint8", (2, 2, 3))]
    assert shared_scale_inputs(features, "auto") == [slice(4, 8), slice(8, 20)]
    assert shared_scale_inputs(features, "per_feature") == [slice(1, 4), slice(4, 8),
                                                            slice(8, 20)]
    assert shared_scale_inputs(features, "per_input") == []


def test_scan_pools_the_given_inputs_and_scales_the_others_alone(digits_glob, digits_matrix):
    source = ParquetSource(digits_glob, label="label", key_columns=["id"])
    alone = data_mod.scan(source, 0.1, 0.1)
    pooled = data_mod.scan(source, 0.1, 0.1, pooled=[slice(8, 16), slice(40, 48)])
    for inputs in (slice(8, 16), slice(40, 48)):
        train = digits_matrix[data_mod.assign_splits(0, 1797, 0.1, 0.1) == 0][:, inputs]
        values = train.astype(np.float64).ravel()
        assert np.all(pooled.scale[inputs] == pooled.scale[inputs][0])
        assert pooled.scale[inputs][0] == pytest.approx(
            min(values.std(), max((np.quantile(values, 0.75) - np.quantile(values, 0.25))
                                  / 1.349, values.std() / data_mod.MAX_ROBUST_GAIN)), rel=1e-5)
    rest = np.r_[0:8, 16:40, 48:64]
    np.testing.assert_array_equal(pooled.scale[rest], alone.scale[rest])
    np.testing.assert_array_equal(pooled.center[rest], alone.center[rest])
    # The medians that fill missing values stay per input.
    np.testing.assert_array_equal(pooled.medians, alone.medians)


def test_one_unit_range_tells_a_table_of_one_measurement_from_a_table_of_quantities():
    """Integers that every column draws from one range (pixels, bands, ratings) are one
    measurement in one unit; fractions (a table rescaled column by column) or columns of
    very different ranges are not."""
    rule = data_mod.one_unit_range
    varying = np.zeros(6, dtype=bool)
    pixels_low, pixels_high = np.zeros(6), np.array([16, 16, 16, 16, 8, 1.0])
    assert rule(True, pixels_low, pixels_high, varying) == (0.0, 16.0)
    # The same columns min-max scaled to [0, 1] hold fractions: scaled one by one.
    assert rule(False, pixels_low, pixels_high / 16, varying) is None
    # Four spectral bands' readings: ranges 27..131 to 39..157 (median 104 of 130).
    assert rule(True, np.array([27, 29, 33, 39.0]), np.array([131, 137, 140, 157.0]),
                np.zeros(4, dtype=bool)) == (27.0, 157.0)
    # Counts of 0..3 and 0..40 beside amounts of 0..99999: the median range is 40.
    assert rule(True, np.zeros(5), np.array([3, 40, 20, 99999, 50000.0]),
                np.zeros(5, dtype=bool)) is None
    # The median range just at / just under half of the whole range.
    assert rule(True, np.zeros(4), np.array([100, 50, 50, 10.0]), np.zeros(4, bool)) \
        == (0.0, 100.0)
    assert rule(True, np.zeros(4), np.array([100, 49, 49, 10.0]), np.zeros(4, bool)) is None
    # 0/1 flags (or one-hot categories) share a range but are not a scale; a table of
    # them with a few columns of 0..2 is still mostly flags.
    flags = np.zeros(6, dtype=bool)
    assert rule(True, np.zeros(6), np.ones(6), flags) is None
    assert rule(True, np.zeros(6), np.array([1, 1, 1, 1, 2, 2.0]), flags) is None
    assert rule(True, np.zeros(6), np.array([1, 1, 2, 2, 2, 2.0]), flags) == (0.0, 2.0)
    # Amounts of 1e8 and more are integers in float32 whatever they were: no evidence.
    assert rule(True, np.full(4, 1e8), np.full(4, 3e8), np.zeros(4, bool)) is None
    assert rule(True, np.zeros(4), np.full(4, 2.0 ** 24 - 1), np.zeros(4, bool)) == \
        (0.0, 2.0 ** 24 - 1)
    # Three varying inputs are too few to tell; a constant input neither counts nor
    # widens the range (it never varies, whatever its value).
    constant = np.array([False, False, False, True])
    assert rule(True, np.array([0, 0, 0, 1000.0]), np.array([9, 9, 9, 1000.0]), constant) \
        is None
    constant = np.array([False] * 4 + [True])
    assert rule(True, np.array([1, 1, 1, 1, 1000.0]), np.array([10, 10, 9, 10, 1000.0]),
                constant) == (1.0, 10.0)


def test_scan_pools_a_table_of_pixel_columns_when_asked_to_look(digits_glob, tmp_path):
    """`pool_one_unit` (model.normalization: auto) scales the 64 integer pixel columns of
    the digits as one image; the same columns as fractions are scaled one by one."""
    source = ParquetSource(digits_glob, label="label", key_columns=["id"])
    found = data_mod.scan(source, 0.1, 0.1, pool_one_unit=True)
    given = data_mod.scan(source, 0.1, 0.1, pooled=[slice(0, 64)])
    alone = data_mod.scan(source, 0.1, 0.1)
    assert found.one_unit_range == (0.0, 16.0) and found.pooled == (slice(0, 64),)
    assert given.one_unit_range is None and alone.pooled == ()
    np.testing.assert_array_equal(found.scale, given.scale)
    np.testing.assert_array_equal(found.center, given.center)
    assert np.all(found.scale == found.scale[0]) and np.ptp(alone.scale) > 1.0
    # Groups given by the features (an image column) are kept as they are.
    assert data_mod.scan(source, 0.1, 0.1, pooled=[slice(8, 16)],
                         pool_one_unit=True).pooled == (slice(8, 16),)

    table = pq.read_table(sorted(glob.glob(digits_glob))[0])
    scaled = table.set_column(table.schema.get_field_index("pixel_10"), "pixel_10",
                              pa.array(table.column("pixel_10").to_numpy() / 16.0))
    pq.write_table(scaled, str(tmp_path / "part.parquet"))
    fractions = data_mod.scan(ParquetSource(str(tmp_path / "*.parquet"), label="label",
                                            key_columns=["id"]), 0.1, 0.1, pool_one_unit=True)
    assert fractions.one_unit_range is None and fractions.pooled == ()


def test_tfds_default_features_are_in_a_stable_sorted_order(tmp_path):
    # A restored FeaturesDict lists keys in a per-process order; the model input order
    # must not depend on it.
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    zeta = rng.normal(size=(40, 2)).astype(np.float32)
    alpha = rng.normal(size=40).astype(np.float32)
    tfds.dataset_builders.store_as_tfds_dataset(
        name="two_features", version="1.0.0", data_dir=str(tmp_path), disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "zeta": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "alpha": tfds.features.Tensor(shape=(), dtype=np.float32)}),
        split_datasets={"train": tf.data.Dataset.from_tensor_slices({"zeta": zeta,
                                                                     "alpha": alpha})})
    source = TfdsSource("two_features", data_dir=str(tmp_path))
    assert source.features == [Feature("alpha", "float32", ()), Feature("zeta", "float32", (2,))]
    _, matrix, _ = collect(source)
    np.testing.assert_array_equal(matrix, np.concatenate([alpha[:, None], zeta], axis=1))


def test_parquet_source_accepts_a_directory(digits_dir, digits_glob):
    from latentbeam import fs

    by_dir = data_mod.ParquetSource(digits_dir, label="label", key_columns=["id"])
    by_glob = data_mod.ParquetSource(digits_glob, label="label", key_columns=["id"])
    assert by_dir.files == by_glob.files and len(by_dir.files) == 2
    assert fs.parquet_pattern(digits_dir) == os.path.join(digits_dir, "**.parquet")
    assert fs.parquet_pattern(digits_glob) == digits_glob
    assert fs.parquet_pattern(by_glob.files[0]) == by_glob.files[0]


def test_parquet_source_reads_a_partitioned_directory_without_hidden_files(tmp_path):
    from latentbeam.demo import digits_table
    from latentbeam.errors import InputError

    digits = digits_table()
    for name, start in (("day=1/a.parquet", 0), ("day=2/b.parquet", 50),
                        ("_temporary/c.parquet", 100), ("day=2/.d.parquet", 150)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        pq.write_table(digits.slice(start, 50), tmp_path / name)
    source = data_mod.ParquetSource(str(tmp_path), label="label", key_columns=["id"])
    assert source.files == [str(tmp_path / "day=1/a.parquet"), str(tmp_path / "day=2/b.parquet")]

    # An earlier output kept below the training data is read too; the error says how not to.
    (tmp_path / "day=2/scored").mkdir()
    pq.write_table(pa.table({"id": [1], "pixel_00": ["x"]}), tmp_path / "day=2/scored/p.parquet")
    source = data_mod.ParquetSource(str(tmp_path), label="label", key_columns=["id"])
    with pytest.raises(InputError, match=r"scored/p\.parquet: .* to read only its top level, "
                                         r"give the glob .*/\*\.parquet\."):
        list(source.chunks())


def test_tfds_rows_are_validated_as_scoring_validates_them(tmp_path):
    """Training reads TFDS through the record batches scoring reads (model.sources): a NaN
    is skipped with the reason and detail a scoring dead letter would carry."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from latentbeam.model.features import to_matrix
    from latentbeam.model.sources import tfds_batches

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    x[4, 1] = np.nan
    tfds.dataset_builders.store_as_tfds_dataset(
        name="with_nan", version="1.0.0", data_dir=str(tmp_path), disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "v": tfds.features.Tensor(shape=(2,), dtype=np.float32)}),
        split_datasets={"train": tf.data.Dataset.from_tensor_slices({"v": x})})
    source = TfdsSource("with_nan", data_dir=str(tmp_path), batch_rows=4)
    chunks, matrix, _ = collect(source)
    assert [len(m) for m, _ in chunks] == [4, 1]
    np.testing.assert_array_equal(matrix, x[[0, 1, 2, 3, 5]])
    assert source.skipped.by_reason == {"not_finite": 1}
    assert source.skipped.examples == [f"{source.describe()} row 4: not_finite: "
                                       f"column 'v'[1] is nan"]
    offsets, faults = [], []
    for offset, batch in tfds_batches("tfds:with_nan/train", str(tmp_path), 4):
        offsets.append(offset)
        faults += [(offset + row, reason, detail)
                   for row, reason, detail in to_matrix(batch, source.features).faults]
    assert offsets == [0, 4]
    assert faults == [(4, "not_finite", "column 'v'[1] is nan")]


def test_training_data_emptied_by_one_column_or_a_text_label_is_refused_with_the_reason(tmp_path):
    from latentbeam.config import from_dict
    from latentbeam.errors import InputError
    from latentbeam.model import train

    n = 300
    rng = np.random.default_rng(0)
    base = {"a": rng.normal(size=n), "b": rng.normal(size=n), "id": np.arange(n)}
    (tmp_path / "null").mkdir()
    pq.write_table(pa.table({**base, "c": pa.nulls(n, pa.float64())}), tmp_path / "null/x.parquet")
    with pytest.raises(InputError) as e:
        train(from_dict({"data": {"path": str(tmp_path / "null"), "key_columns": ["id"]}},
                        ["train.verbose=0"]))
    message = str(e.value)
    assert "0 usable, 0 for training, 0 for threshold calibration. 300 row(s) were skipped " \
           "(null_value 300; e.g. " in message
    assert "x.parquet row 0: null_value: column 'c' is null" in message
    assert "leave it out of `data.features`" in message

    (tmp_path / "text").mkdir()
    labels = ["fraud" if i % 30 == 0 else "ok" for i in range(n)]
    pq.write_table(pa.table({**base, "y": labels}), tmp_path / "text/x.parquet")
    with pytest.raises(InputError, match=r"x\.parquet: label column 'y' has type string; "
                                         r"expected numbers or booleans"):
        train(from_dict({"data": {"path": str(tmp_path / "text"), "key_columns": ["id"],
                                  "label": "y"}}, ["train.verbose=0"]))
