"""Threshold calibration on reconstruction errors, checked against hand-computed values."""
import numpy as np
import pytest

from latentbeam.errors import ConfigError
from latentbeam.model import data as data_mod
from latentbeam.model import score
from latentbeam.model.calibration import (MAD_SCALE, QUANTILE_LEVELS, calibration_summary,
                                          fit_threshold)

ONE_TO_HUNDRED = np.arange(1, 101, dtype=np.float64)


def test_quantile_is_numpy_linear_interpolation():
    t = fit_threshold(ONE_TO_HUNDRED, "quantile", 0.99)
    assert t.threshold == pytest.approx(99.01)  # 99 + 0.01 * (100 - 99)
    assert (t.method, t.value, t.parameters) == ("quantile", 0.99, {})
    assert fit_threshold(ONE_TO_HUNDRED, "quantile", 0.5).threshold == pytest.approx(50.5)


def test_contamination_flags_the_expected_fraction():
    t = fit_threshold(ONE_TO_HUNDRED, "contamination", 0.05)
    assert t.threshold == pytest.approx(95.05)
    assert int((ONE_TO_HUNDRED > t.threshold).sum()) == 5


def test_mad_is_median_plus_k_scaled_mads():
    t = fit_threshold(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), "mad", 3.5)
    # median 3, |e - 3| = [2, 1, 0, 1, 97] -> MAD 1 -> scaled 1.4826
    assert t.parameters == pytest.approx({"median": 3.0, "mad": MAD_SCALE})
    assert t.threshold == pytest.approx(3.0 + 3.5 * 1.4826)


def test_mean_std_is_mean_plus_k_population_stds():
    t = fit_threshold(np.array([2.0, 4, 4, 4, 5, 5, 7, 9]), "mean_std", 3.0)
    assert t.parameters == pytest.approx({"mean": 5.0, "std": 2.0})
    assert t.threshold == pytest.approx(11.0)


def test_f1_with_separable_labels_puts_the_threshold_between_the_classes():
    errors = np.arange(1, 11) / 10.0
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    t = fit_threshold(errors, "f1", None, labels)
    assert t.threshold == pytest.approx(0.85)
    assert t.parameters == pytest.approx({"f1": 1.0, "precision": 1.0, "recall": 1.0})
    assert ((errors > t.threshold) == labels.astype(bool)).all()


def test_f1_picks_the_best_cut_when_classes_overlap():
    errors = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    labels = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    # Flagging >= 3 gives precision 3/4, recall 1, F1 6/7 (>= 5: 0.8, >= 2: 0.75).
    t = fit_threshold(errors, "f1", None, labels)
    assert t.threshold == pytest.approx(2.5)
    assert t.parameters == pytest.approx({"f1": 6 / 7, "precision": 0.75, "recall": 1.0})


@pytest.mark.parametrize("labels, message", [
    (None, "threshold method f1 needs labels (set `data.label`)."),
    (np.array([0, 1, 2, 1]),
     "threshold method f1 needs a 0/1 label column (1 = anomaly); the label has values [0, 1, 2]."),
    (np.zeros(4), "needs both normal and anomalous rows in the calibration split; it has only "
                  "label 0."),
    (np.ones(4), "it has only label 1."),
])
def test_f1_needs_binary_labels_of_both_classes(labels, message):
    with pytest.raises(ValueError) as e:
        fit_threshold(np.array([0.1, 0.2, 0.3, 0.4]), "f1", None, labels)
    assert message in str(e.value)


def test_other_errors_and_the_positive_floor():
    with pytest.raises(ValueError, match="Cannot calibrate a threshold on 0 calibration rows."):
        fit_threshold(np.array([]), "quantile", 0.99)
    with pytest.raises(ValueError, match=r"Unknown threshold method 'iqr'; expected quantile"):
        fit_threshold(ONE_TO_HUNDRED, "iqr", 1.5)
    # All-zero errors (a perfect fit) still give a positive threshold: score = error / threshold.
    t = fit_threshold(np.zeros(10), "quantile", 0.99)
    assert t.threshold == np.finfo(np.float32).tiny


@pytest.mark.parametrize("method", ["mad", "mean_std"])
def test_a_threshold_beyond_float32_is_refused_before_it_is_sealed(method):
    # Scores are float32: this threshold would be inf there and every anomaly_score 0.
    errors = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    with pytest.raises(ConfigError) as e:
        fit_threshold(errors, method, 1e308)
    computed = fit_threshold(errors, method, 1.0)
    center, spread = computed.parameters.values()
    assert str(e.value) == (
        f"`threshold.method: {method}` with `threshold.value: 1e+308` gives a threshold of "
        f"{center + 1e308 * spread:.6g}, beyond float32's range, the scores' type (at most "
        f"3.4e38): every anomaly_score would be 0 and no row flagged. Lower `threshold.value`.")


def test_calibration_summary_quantiles_and_label_metrics():
    s = calibration_summary(ONE_TO_HUNDRED, None, 90.0)
    assert list(s["quantiles"]) == [str(q) for q in QUANTILE_LEVELS]
    assert list(s["quantiles"]) == ["0.5", "0.75", "0.9", "0.95", "0.99", "0.995", "0.999"]
    assert s["quantiles"] == pytest.approx({"0.5": 50.5, "0.75": 75.25, "0.9": 90.1, "0.95": 95.05,
                                            "0.99": 99.01, "0.995": 99.505, "0.999": 99.901})
    assert (s["rows"], s["mean"], s["max"]) == (100, 50.5, 100.0)
    assert s["flagged_fraction"] == pytest.approx(0.10)
    assert "roc_auc" not in s

    labels = (ONE_TO_HUNDRED > 95).astype(np.float32)
    s = calibration_summary(ONE_TO_HUNDRED, labels, 90.0)
    assert s["label_positive_fraction"] == pytest.approx(0.05)
    assert s["roc_auc"] == 1.0 and s["average_precision"] == 1.0
    # Errors ranked against the labels: half the positives outrank every negative.
    labels = np.zeros(100)
    labels[[0, 99]] = 1
    s = calibration_summary(ONE_TO_HUNDRED, labels, 90.0)
    assert s["roc_auc"] == pytest.approx(0.5)
    # Class labels (not 0/1) give no label metrics.
    s = calibration_summary(ONE_TO_HUNDRED, np.arange(100) % 10, 90.0)
    assert "label_positive_fraction" not in s and "roc_auc" not in s


def _calibration_rows(digits_glob):
    source = data_mod.make_source(data_mod.DataConfig(path=digits_glob, label="label",
                                                      key_columns=("id",)))
    return np.concatenate([m for m, _ in data_mod.split_chunks(
        source, data_mod.SPLIT_CALIBRATION, 0.1, 0.1)])


def test_trained_threshold_is_the_quantile_of_calibration_scores(tiny_bundle, digits_glob):
    info = tiny_bundle.info
    rows = _calibration_rows(digits_glob)
    assert len(rows) == info.calibration["rows"] == info.training["rows_by_split"]["calibration"]
    errors = score(tiny_bundle, rows).score
    assert info.threshold.method == "quantile" and info.threshold.value == 0.99
    assert info.threshold.threshold == pytest.approx(float(np.quantile(errors, 0.99)), rel=1e-6)
    expected = calibration_summary(errors, None, info.threshold.threshold)
    assert info.calibration["quantiles"] == pytest.approx(expected["quantiles"], rel=1e-6)
    assert info.calibration["flagged_fraction"] == pytest.approx(expected["flagged_fraction"])
    assert info.calibration["flagged_fraction"] == pytest.approx(2 / len(rows))


def test_score_adds_residual_and_decoded_distance_as_squares(tiny_bundle, digits_glob):
    """score = sqrt(w * mean_j(e_j) + d^2): d is the mean over reference groups of the
    distance from the row's decoded code to the nearest decoded training code, per input
    (divided by sqrt(n_inputs)), all in normalized units. Nothing is calibrated."""
    rows = _calibration_rows(digits_glob)
    s = score(tiny_bundle, rows)
    desc = tiny_bundle.info.raw["score"]
    assert desc == {"terms": ["reconstruction", "latent_distance"],
                    "combine": "root_sum_squares", "latent_neighbors": 1,
                    "reference_rows": 512, "reference_groups": 32, "local_scale": True,
                    "reconstruction_weight": 1.0, "trim_fraction": 0.0}
    layer = tiny_bundle.model.get_layer("score")
    assert not hasattr(layer, "feature_scale") and not hasattr(layer, "term_scale")
    # The reference: 512 decoded codes of training rows (64 normalized pixels each), held
    # projected on the 16 dimensions the decoder's outputs span (its last layer's input
    # is 16 wide), where distances between decoder outputs are the same.
    distance_layer = tiny_bundle.model.get_layer("latent_distance")
    ref = np.asarray(distance_layer.reference, np.float64)
    basis = np.asarray(distance_layer.basis, np.float64)
    assert ref.shape == (512, 16) and basis.shape == (64, 16)
    np.testing.assert_allclose(basis.T @ basis, np.eye(16), atol=1e-5)
    decoder = tiny_bundle.model.get_layer("decoder")
    x_hat = np.asarray(decoder(s.latent), np.float64)
    full = np.sqrt(((x_hat[:20, None] - x_hat[None, :20]) ** 2).sum(-1))
    projected = x_hat @ basis
    np.testing.assert_allclose(
        np.sqrt(((projected[:20, None] - projected[None, :20]) ** 2).sum(-1)), full,
        rtol=1e-4, atol=1e-5)
    # The decoded code is the reconstruction in normalized units.
    norm = tiny_bundle.model.get_layer("normalize")
    mean = np.asarray(norm.mean, np.float64).ravel()
    std = np.sqrt(np.asarray(norm.variance, np.float64).ravel())
    np.testing.assert_allclose(x_hat, (s.reconstruction - mean) / std, atol=1e-3)
    dist = np.sqrt(((projected[:, None, :] - ref[None]) ** 2).sum(-1))  # (rows, references)
    # Each reference's distances count in units of its spacing from its nearest other
    # reference, relative to the mean spacing, where that is below the mean
    # (local_weights, squared); sparser references keep plain distances.
    spacing = np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1) + np.diag(np.full(512, np.inf)))
    spacing = spacing.min(axis=1)
    factor = np.maximum(1.0, spacing.mean() / spacing)
    assert 100 < np.sum(factor > 1) < 412  # both kinds among the 512
    np.testing.assert_allclose(np.asarray(distance_layer.reference_weight, np.float64),
                               factor ** 2, rtol=1e-3)
    dist = dist * factor[None]
    nearest = dist.reshape(len(dist), 32, 16).min(axis=2).mean(axis=1) / 8.0  # sqrt(64)
    # float32's expansion of a squared distance rounds at ~1e-7 of the squared lengths;
    # a weight of a tight reference (up to ~30 here) scales that error up with it.
    np.testing.assert_allclose(s.latent_distance, nearest, rtol=3e-3, atol=1e-5)
    expected = np.sqrt(s.feature_errors.astype(np.float64).mean(axis=1) + nearest ** 2)
    np.testing.assert_allclose(s.score, expected, rtol=1e-3)
    np.testing.assert_allclose(s.anomaly_score, s.score / tiny_bundle.info.threshold.threshold,
                               rtol=1e-6)
    # Calibration rows lie near the training rows (the 3-epoch model's 2-number code
    # decodes to nearby digits: a few hundredths of a unit per input), far below the
    # residual its 2 numbers leave, and far below a made-up row's distance.
    assert 0.01 < np.median(s.latent_distance) < 0.1
    assert np.median(s.latent_distance) < 0.2 * np.median(np.sqrt(s.reconstruction_error))
    # A made-up row of pixels twice as bright as any training pixel decodes far from
    # every training row; one of the brightest training value (16) everywhere is mapped
    # onto the decoder's surface near them (0.08, the 2-number code of a 3-epoch model)
    # and flagged by its residual (score 2.3 against 1.1 for the 99th percentile).
    far = score(tiny_bundle, np.full((2, 64), [[32.0], [16.0]], np.float32))
    assert far.latent_distance[0] > 3 * np.quantile(s.latent_distance, 0.99)
    assert far.score[1] > 1.5 * np.quantile(s.score, 0.99)


def test_local_scale_false_trains_plain_distances(tiny_bundle, digits_glob, tmp_path):
    """`score.local_scale: false` reaches the layer: the same data and seed give the same
    model and references, with plain distances, which the local ones never undercut
    (every weight is at least 1) and exceed where a reference is among dense rows."""
    from latentbeam.model import train
    from tiny import tiny_config

    plain = train(tiny_config(digits_glob, "score.local_scale=false"), str(tmp_path / "plain"))
    assert plain.info.raw["score"]["local_scale"] is False
    layer = plain.model.get_layer("latent_distance")
    assert layer.local is False and not hasattr(layer, "reference_weight")
    np.testing.assert_array_equal(np.asarray(layer.reference),
                                  np.asarray(tiny_bundle.model.get_layer("latent_distance").reference))
    rows = _calibration_rows(digits_glob)
    a, b = score(plain, rows), score(tiny_bundle, rows)
    np.testing.assert_allclose(a.reconstruction_error, b.reconstruction_error, rtol=1e-6)
    ref = np.asarray(layer.reference, np.float64)
    projected = np.asarray(plain.model.get_layer("decoder")(a.latent), np.float64) @ np.asarray(
        layer.basis, np.float64)
    dist = np.sqrt(((projected[:, None, :] - ref[None]) ** 2).sum(-1))
    np.testing.assert_allclose(a.latent_distance,
                               dist.reshape(len(dist), 32, 16).min(axis=2).mean(axis=1) / 8.0,
                               rtol=1e-3, atol=1e-5)
    assert np.all(b.latent_distance >= a.latent_distance * (1 - 1e-3))
    # Calibration rows lie among dense training rows: every one scores further out.
    assert np.all(b.latent_distance > 1.05 * a.latent_distance)


@pytest.mark.parametrize("n_train, layout", [
    (100_000, (32, 16)),  # the default: 512 reference codes in 32 groups of 16
    (1_000, (32, 16)),
    (100, (6, 16)),  # fewer rows: fewer groups of the same size, not smaller groups
    (16, (1, 16)),
    (10, (1, 10)),  # fewer rows than one group: one group of every row
])
def test_reference_groups_keep_their_size_when_training_rows_are_few(n_train, layout):
    from latentbeam.config import ScoreConfig
    from latentbeam.model.training import reference_layout

    assert reference_layout(ScoreConfig(), n_train) == layout
    assert reference_layout(ScoreConfig(reference_rows=64, reference_groups=1), n_train) == \
        (1, min(64, n_train))


def test_an_image_shares_one_input_scale_and_one_error_scale(tiny_image_bundle_dir, tiny_bundle):
    """Trained on an 8x8 `image` column, every pixel has the same normalization; trained
    on 64 integer pixel columns, `auto` finds one range (0 to 16) and does the same."""
    from latentbeam.model import load_bundle

    tiny_image_bundle = load_bundle(tiny_image_bundle_dir)
    info = tiny_image_bundle.info.raw["training"]
    assert info["shared_scale_features"] == ["image"] and info["one_unit_range"] is None
    columns = tiny_bundle.info.raw["training"]
    assert columns["shared_scale_features"] == [f"pixel_{i:02d}" for i in range(64)]
    assert columns["one_unit_range"] == [0.0, 16.0]
    for name in ("mean", "variance"):
        got = np.asarray(getattr(tiny_bundle.model.get_layer("normalize"), name)).ravel()
        want = np.asarray(getattr(tiny_image_bundle.model.get_layer("normalize"),
                                  name)).ravel()
        assert got.shape == (64,) and np.ptp(got) == 0
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # The std of every pixel value of the training rows (the digits' quartiles, 0 and
    # 10, are wider than it) and their median.
    norm = tiny_image_bundle.model.get_layer("normalize")
    assert np.sqrt(np.asarray(norm.variance).ravel()[0]) == pytest.approx(6.0, abs=0.1)
    assert np.asarray(norm.mean).ravel()[0] in (0.0, 1.0)


def test_per_input_normalization_scales_each_pixel_column_alone(tmp_path, digits_glob,
                                                                tiny_bundle):
    """`model.normalization: per_input` overrides what `auto` finds: each of the 64 pixel
    columns gets its own centre and scale, and the bundle records no shared range."""
    from latentbeam.model import train
    from tiny import tiny_config

    alone = train(tiny_config(digits_glob, "model.normalization=per_input", "train.epochs=1"),
                  str(tmp_path / "alone"))
    info = alone.info.raw["training"]
    assert info["shared_scale_features"] == [] and info["one_unit_range"] is None
    norm = alone.model.get_layer("normalize")
    variance = np.asarray(norm.variance).ravel()
    assert variance.shape == (64,) and np.ptp(variance) > 1.0
    shared = np.asarray(tiny_bundle.model.get_layer("normalize").variance).ravel()
    # The busiest pixel's own scale is wider than the shared one, a border pixel's far
    # narrower.
    assert variance.max() > shared[0] > 100 * variance[variance != 1.0].min()


@pytest.mark.parametrize("rows, method, value, needed", [
    (21, "quantile", 0.99, 100), (99, "quantile", 0.99, 100), (100, "quantile", 0.99, None),
    (9, "quantile", 0.9, 10), (19, "contamination", 0.05, 20), (20, "contamination", 0.05, None),
    (3, "mad", 3.5, None), (3, "mean_std", 3.0, None), (3, "f1", None, None),
    (None, "quantile", 0.99, None),  # an old bundle without the row count
])
def test_a_tail_threshold_from_too_few_calibration_rows_is_named(rows, method, value, needed):
    from latentbeam.model.calibration import small_calibration_warning

    warning = small_calibration_warning(rows, method, value)
    if needed is None:
        assert warning is None
    else:
        assert warning.startswith(f"The threshold is the {method} {value:g} of only {rows} "
                                  f"calibration row(s)")
        assert f"needs at least {needed} rows" in warning
        assert "`threshold.calibration_fraction`" in warning


def test_training_and_rethreshold_warn_when_calibration_rows_are_too_few(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentbeam.config import from_dict
    from latentbeam.model import train
    from latentbeam.model.rethreshold import rethreshold

    x = np.random.default_rng(0).normal(size=(200, 3))
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}),
                   str(tmp_path / "data" / "d.parquet"))
    config = from_dict({"data": {"path": str(tmp_path / "data" / "*.parquet")}},
                       ["train.epochs=1", "train.verbose=0"])
    out = str(tmp_path / "bundle")
    with caplog.at_level("WARNING"):
        bundle = train(config, out)
    rows = bundle.info.calibration["rows"]
    assert rows == 19
    expected = (f"The threshold is the quantile 0.99 of only 19 calibration row(s): their "
                f"largest scores, not an estimate of a 0.01 false-alarm rate, which needs at "
                f"least 100 rows.")
    assert [r.getMessage()[:len(expected)] for r in caplog.records
            if "calibration row(s)" in r.getMessage()] == [expected]
    caplog.clear()
    with caplog.at_level("WARNING"):
        rethreshold(out, method="contamination", value=0.1, output=str(tmp_path / "b2"))
        rethreshold(out, method="contamination", value=0.05, output=str(tmp_path / "b3"))
    assert [r.getMessage()[:60] for r in caplog.records] == [
        "The threshold is the contamination 0.05 of only 19 calibrati"]
