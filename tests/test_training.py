"""Training: reproducible, early stopping keeps the best epoch, every source and model kind."""
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentbeam.config import from_dict
from latentbeam.demo import DIGITS_TFDS_NAME, write_digits_tfds
from latentbeam.model import data as data_mod
from latentbeam.model import training as training_mod
from latentbeam.model import load_bundle, load_bundle_info, score, train
from latentbeam.model.batching import CachedSource
from latentbeam.report.info import bundle_summary, format_info
from latentbeam.summaries import summarize_bundle
from tiny import tiny_config

TINY = ["model.hidden_units=[16]", "train.verbose=0"]


class CountingSource:
    """A real ParquetSource that counts how often the data is read."""

    def __init__(self, pattern):
        self.inner = data_mod.ParquetSource(pattern, label="label", key_columns=["id"])
        self.features = self.inner.features
        self.passes = 0

    @property
    def skipped(self):
        return self.inner.skipped

    def describe(self):
        return self.inner.describe()

    def chunks(self):
        self.passes += 1
        yield from self.inner.chunks()


def weights_equal(a, b) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


def split_rows(source, split, vf=0.1, cf=0.1):
    return np.concatenate([m for m, _ in data_mod.split_chunks(source, split, vf, cf)])


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_bundle, digits_glob):
    again = train(tiny_config(digits_glob))
    assert weights_equal(again.model, tiny_bundle.model)
    other = train(tiny_config(digits_glob, "train.seed=1"))
    assert not weights_equal(other.model, tiny_bundle.model)
    assert [w.shape for w in other.model.get_weights()] == \
        [w.shape for w in tiny_bundle.model.get_weights()]


def test_data_that_fits_in_memory_is_read_once_with_identical_results(digits_glob):
    cached = CountingSource(digits_glob)
    a = train(tiny_config(digits_glob, "train.epochs=2"), source=cached)
    assert cached.passes == 1
    streamed = CountingSource(digits_glob)
    b = train(tiny_config(digits_glob, "train.epochs=2", "train.cache_mb=0",
                          "train.disk_cache=false"), source=streamed)
    # scan + 2 x (train + validation) + calibration, at least
    assert streamed.passes >= 6
    assert weights_equal(a.model, b.model)
    assert a.info.threshold == b.info.threshold
    # Larger than the memory budget: decoded once into a temp file, replayed from disk.
    spilled = CountingSource(digits_glob)
    c = train(tiny_config(digits_glob, "train.epochs=2", "train.cache_mb=0"), source=spilled)
    assert spilled.passes == 1
    assert weights_equal(a.model, c.model)
    assert a.info.threshold == c.info.threshold


def test_cached_source_streams_when_the_data_is_larger_than_the_budget(digits_glob,
                                                                       digits_matrix):
    small = CachedSource(CountingSource(digits_glob), max_bytes=100_000)
    for _ in range(2):
        np.testing.assert_array_equal(np.concatenate([m for m, _ in small.chunks()]),
                                      digits_matrix)
    assert not small.cached and small.source.passes == 2
    large = CachedSource(CountingSource(digits_glob), max_bytes=10_000_000)
    for _ in range(2):
        chunks = list(large.chunks())
        np.testing.assert_array_equal(np.concatenate([m for m, _ in chunks]), digits_matrix)
        np.testing.assert_array_equal(np.concatenate([lab for _, lab in chunks])[:5],
                                      [0, 1, 2, 3, 4])
    assert large.cached and large.source.passes == 1


def test_cached_source_spills_to_disk_past_the_budget(tmp_path, digits_glob, digits_matrix):
    spill = CachedSource(CountingSource(digits_glob), max_bytes=100_000, spill_dir=str(tmp_path))
    first = list(spill.chunks())
    assert spill.spilled and spill.source.passes == 1
    assert len(list(tmp_path.iterdir())) == 2  # rows and labels
    for _ in range(2):
        again = list(spill.chunks())
        assert [len(m) for m, _ in again] == [len(m) for m, _ in first]
        np.testing.assert_array_equal(np.concatenate([m for m, _ in again]), digits_matrix)
        np.testing.assert_array_equal(np.concatenate([lab for _, lab in again]),
                                      np.concatenate([lab for _, lab in first]))
    assert spill.source.passes == 1


def test_tiny_bundle_records_what_it_was_trained_on(tiny_bundle, digits_glob):
    info = tiny_bundle.info
    t = info.training
    codes = data_mod.assign_splits(0, 1797, 0.1, 0.1)
    expected = np.bincount(codes, minlength=3)
    assert t["rows"] == 1797
    assert t["rows_by_split"] == {"train": int(expected[0]), "validation": int(expected[1]),
                                  "calibration": int(expected[2])}
    assert abs(t["rows_by_split"]["calibration"] - 179.7) <= 2
    assert abs(t["rows_by_split"]["validation"] - 179.7) <= 2
    assert info.calibration["rows"] == t["rows_by_split"]["calibration"]
    assert t["rows_skipped"] == 0 and t["rows_skipped_by_reason"] == {}
    assert t["epochs"] == 3 and len(t["losses"]["loss"]) == len(t["losses"]["val_loss"]) == 3
    assert t["seed"] == 0
    assert 0 < t["fit_seconds"] <= t["seconds"]
    assert t["constant_inputs"] == 3  # digits pixels that are always 0 in the training rows
    assert from_dict(t["config"]) == tiny_config(digits_glob)
    stats = data_mod.scan(data_mod.make_source(tiny_config(digits_glob).data), 0.1, 0.1,
                          pool_one_unit=True)
    assert t["data_fingerprint"] == stats.fingerprint
    # The model normalizes by the scan's median / quartile scaling, not by mean and std;
    # the 64 integer pixel columns of 0..16 share one (model.normalization: auto).
    assert stats.one_unit_range == (0.0, 16.0) and t["one_unit_range"] == [0.0, 16.0]
    norm = tiny_bundle.model.get_layer("normalize")
    np.testing.assert_allclose(np.asarray(norm.mean).ravel(), stats.center, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.asarray(norm.variance).ravel()), stats.scale,
                               rtol=1e-5)
    assert t["robust_scaled_inputs"] == stats.robust_inputs > 0
    assert not np.allclose(stats.center, stats.mean)
    assert info.feature_names == [f"pixel_{i:02d}" for i in range(64)]
    assert info.latent_dim == 2
    assert set(info.versions) == {"latentbeam", "tensorflow", "keras", "apache-beam", "pyarrow"}


def test_early_stopping_restores_the_best_epoch(tmp_path, digits_glob):
    # A large learning rate makes the validation loss bounce, so the best epoch is not the last.
    out = str(tmp_path / "bundle")
    bundle = train(tiny_config(digits_glob, "train.learning_rate=0.05", "train.epochs=30",
                               "train.patience=3"), out)
    t = load_bundle_info(out).training
    val_loss = t["losses"]["val_loss"]
    assert t["epochs"] == len(val_loss) == len(t["losses"]["loss"]) < 30
    assert t["best_epoch"] == int(np.argmin(val_loss)) + 1
    assert t["best_epoch"] == t["epochs"] - 3  # stopped after `patience` epochs without progress
    # The returned weights are those of the best epoch: their validation loss is the minimum.
    source = data_mod.make_source(tiny_config(digits_glob).data)
    val = split_rows(source, data_mod.SPLIT_VALIDATION)
    assert len(val) == t["rows_by_split"]["validation"]
    for model in (bundle, load_bundle(out)):
        mean_error = float(score(model, val).reconstruction_error.mean())
        assert mean_error == pytest.approx(min(val_loss), rel=1e-4)
        assert mean_error != pytest.approx(val_loss[-1], rel=1e-3)


def test_epoch_rows_cuts_epochs_from_one_running_shuffled_stream(tmp_path, digits_glob):
    # One full pass as one epoch, then the same pass as epochs of one batch each: the
    # batches (and so every loss) are the same only if the stream runs on across epochs.
    full = train(tiny_config(digits_glob, "train.epochs=1", "train.patience=100"))
    n_train = full.info.training["rows_by_split"]["train"]
    steps = -(-n_train // 64)
    cut = train(tiny_config(digits_glob, f"train.epochs={steps}", "train.epoch_rows=64",
                            "train.patience=100"), str(tmp_path / "cut"))
    assert full.info.training["rows_per_epoch"] == n_train == 1437
    assert cut.info.training["rows_per_epoch"] == 64
    assert int(full.model.optimizer.iterations) == int(cut.model.optimizer.iterations) == steps
    losses = cut.info.training["losses"]["loss"]
    assert len(losses) == steps == 23
    sizes = [64] * (steps - 1) + [n_train - 64 * (steps - 1)]
    assert np.average(losses, weights=sizes) == pytest.approx(
        full.info.training["losses"]["loss"][0], rel=1e-5)
    assert len(set(losses)) == steps  # 23 different batches, not the first one 23 times
    best = cut.info.training["best_epoch"]
    assert f"epochs 23 (best {best}) of 64 rows, loss" in format_info(
        bundle_summary(str(tmp_path / "cut")))
    # Validation takes the same first 64 validation rows every epoch: the restored best
    # weights' mean error on exactly those rows is the best val_loss.
    source = data_mod.make_source(tiny_config(digits_glob).data)
    val = split_rows(source, data_mod.SPLIT_VALIDATION)
    val_loss = cut.info.training["losses"]["val_loss"]
    assert float(score(cut, val[:64]).reconstruction_error.mean()) == pytest.approx(
        min(val_loss), rel=1e-4)
    assert float(score(cut, val).reconstruction_error.mean()) != pytest.approx(
        min(val_loss), rel=1e-3)


def test_a_small_table_trains_whole_passes_up_to_min_epoch_batches(tmp_path):
    # 100 rows: 80 train rows are 2 batches of 64 a pass, so an epoch is 8 passes (16
    # Adam steps) by default; the same 8 passes as 8 one-pass epochs give the same batches.
    from latentbeam.demo import digits_table

    (tmp_path / "data").mkdir()
    glob = str(tmp_path / "data" / "small.parquet")
    pq.write_table(digits_table().slice(0, 100), glob)
    passes = train(tiny_config(glob, "train.epochs=1"), str(tmp_path / "passes"))
    single = train(tiny_config(glob, "train.epochs=8", "train.patience=100",
                               "train.min_epoch_batches=1"), str(tmp_path / "single"))
    assert passes.info.training["rows_by_split"]["train"] == 80
    assert passes.info.training["rows_per_epoch"] == 640
    assert single.info.training["rows_per_epoch"] == 80
    assert int(passes.model.optimizer.iterations) == int(single.model.optimizer.iterations) == 16
    losses = single.info.training["losses"]["loss"]
    assert len(losses) == 8 and len(set(losses)) == 8  # 8 differently shuffled passes
    assert np.mean(losses) == pytest.approx(passes.info.training["losses"]["loss"][0], rel=1e-5)
    assert "epochs 1 (best 1) of 8 passes, loss" in format_info(
        bundle_summary(str(tmp_path / "passes")))
    # train's summary says it too; a one-pass epoch says nothing more.
    assert "epochs:          1 (best 1) of 8 passes\n" in summarize_bundle(passes.info)
    assert "epochs:          8 (best " in summarize_bundle(single.info)
    assert " passes" not in summarize_bundle(single.info)
    # A pass of 16 batches or more is one epoch, as before (the digits: 23 batches).
    tc = tiny_config(glob).train
    assert training_mod.passes_per_epoch(tc, 1437) == 1
    assert training_mod.passes_per_epoch(tc, 80) == 8
    assert training_mod.passes_per_epoch(tc, 48) == 16


def test_validation_rows_are_read_once_when_they_fit_in_cache_mb(digits_glob, monkeypatch):
    starts = []
    original = training_mod._validation_pass

    def counted(*args):
        starts.append(args[-1])
        yield from original(*args)

    monkeypatch.setattr(training_mod, "_validation_pass", counted)
    held = train(tiny_config(digits_glob, "train.epochs=4", "train.patience=100"))
    assert starts == [181]  # one read of the 181 validation rows for all 4 epochs
    starts.clear()
    streamed = train(tiny_config(digits_glob, "train.epochs=4", "train.patience=100",
                                 "train.cache_mb=0"))
    assert len(starts) >= 4  # over cache_mb: streamed again every epoch
    assert streamed.info.training["losses"] == held.info.training["losses"]


def test_parquet_with_a_list_column_and_a_bad_row(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    z = rng.normal(size=(n, 2))
    v = np.stack([z[:, 0], z[:, 1], z[:, 0] + z[:, 1], z[:, 0] - z[:, 1]], axis=1)
    amount = 100.0 + 10.0 * z[:, 0]
    amount[37] = np.nan
    table = pa.table({"txn": np.arange(n), "amount": amount,
                      "v": pa.array(v.astype(np.float32).tolist(), pa.list_(pa.float32()))})
    # The bundle must not lie inside the data's directory: the data goes in its own.
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 150), str(tmp_path / "data" / "a.parquet"))
    pq.write_table(table.slice(150), str(tmp_path / "data" / "b.parquet"))
    config = from_dict({"data": {"path": str(tmp_path / "data" / "*.parquet"), "key_columns": ["txn"],
                                 "batch_rows": 64}},
                       TINY + ["train.epochs=2", "train.validation_fraction=0.2",
                               "threshold.calibration_fraction=0.15",
                               "threshold.method=contamination", "threshold.value=0.05"])
    out = str(tmp_path / "bundle")
    train(config, out)
    info = load_bundle_info(out)
    t = info.training
    assert [f.to_json() for f in info.features] == [
        {"name": "amount", "dtype": "float64", "shape": []},
        {"name": "v", "dtype": "float32", "shape": [4]}]
    assert info.latent_dim == 2  # default: min(8, max(2, 5 // 4))
    assert t["rows"] == 399
    assert t["rows_skipped"] == 1 and t["rows_skipped_by_reason"] == {"not_finite": 1}
    expected = np.bincount(data_mod.assign_splits(0, 399, 0.2, 0.15), minlength=3)
    assert t["rows_by_split"] == {"train": int(expected[0]), "validation": int(expected[1]),
                                  "calibration": int(expected[2])}
    assert abs(t["rows_by_split"]["validation"] - 0.2 * 399) <= 2
    assert abs(t["rows_by_split"]["calibration"] - 0.15 * 399) <= 2
    assert info.threshold.method == "contamination" and info.threshold.value == 0.05
    x = np.concatenate([np.delete(amount, 37)[:, None], np.delete(v, 37, axis=0)], axis=1)
    scores = score(load_bundle(out), x)
    assert np.isfinite(scores.reconstruction_error).all()


def test_conv2d_trains_on_a_non_square_image_list_column(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((240, 7, 5)).astype(np.float32)
    pq.write_table(pa.table({"image": pa.array(images.tolist(), pa.list_(pa.list_(pa.float32())))}),
                   str(tmp_path / "images.parquet"))
    config = from_dict({"data": {"path": str(tmp_path / "*.parquet")},
                        "model": {"kind": "conv2d", "conv_filters": [4, 8], "latent_dim": 3}},
                       ["train.epochs=1", "train.verbose=0"])
    bundle = train(config)
    assert [(f.name, f.shape) for f in bundle.info.features] == [("image", (7, 5))]
    s = score(bundle, images.reshape(240, 35))
    assert s.latent.shape == (240, 3) and s.reconstruction.shape == (240, 35)
    assert np.isfinite(s.reconstruction_error).all()
    # A convolution's outputs span every pixel: the distance is taken in all 35 of them,
    # against the 192 training rows (12 groups of 16).
    layer = bundle.model.get_layer("latent_distance")
    assert bundle.info.training["rows_by_split"]["train"] == 192
    assert (layer.dim, layer.basis_dim, np.asarray(layer.reference).shape) == (35, 0, (192, 35))
    assert (s.latent_distance > 0).all()
    np.testing.assert_allclose(
        s.score, np.sqrt(s.feature_errors.astype(np.float64).mean(1)
                         + s.latent_distance.astype(np.float64) ** 2), rtol=1e-4)


def test_conv2d_trains_from_a_tfds_sub_split(tmp_path):
    data_dir = write_digits_tfds(str(tmp_path / "tfds"))
    config = from_dict({"data": {"source": "tfds", "name": DIGITS_TFDS_NAME,
                                 "split": "train[:50%]", "data_dir": data_dir,
                                 "features": ["image"], "label": "label"},
                        "model": {"kind": "conv2d", "conv_filters": [4, 8], "latent_dim": 4}},
                       ["train.epochs=2", "train.verbose=0", "train.batch_size=128"])
    out = str(tmp_path / "bundle")
    train(config, out)
    info = load_bundle_info(out)
    assert [f.to_json() for f in info.features] == [
        {"name": "image", "dtype": "float32", "shape": [8, 8]}]
    assert info.training["rows"] == 750
    assert info.training["source"].startswith(f"tfds:{DIGITS_TFDS_NAME}/train[:50%]")
    assert info.training["epochs"] == 2
    # The digit label is a class label, not 0/1, so no label metrics are derived from it.
    assert "roc_auc" not in info.calibration
    bundle = load_bundle(out)
    assert bundle.model.get_layer("encoder").get_layer("enc_conv_1").filters == 8
    from sklearn.datasets import load_digits
    s = score(bundle, load_digits().images[:20].reshape(20, 64))
    assert np.isfinite(s.reconstruction_error).all() and s.latent.shape == (20, 4)


@pytest.mark.parametrize("overrides", [["model.variational=true", "model.kl_weight=0.1"],
                                       ["model.noise_stddev=0.2", "model.dropout=0.1"]],
                         ids=["vae", "denoising"])
def test_vae_and_denoising_autoencoders_train_and_score_finite_errors(tmp_path, digits_glob,
                                                                      digits_matrix, overrides):
    out = str(tmp_path / "bundle")
    train(tiny_config(digits_glob, "train.epochs=2", *overrides), out)
    bundle = load_bundle(out)
    assert bundle.info.variational is ("model.variational=true" in overrides)
    # The options reached the saved model (its behaviour is pinned in test_architectures).
    encoder = bundle.model.get_layer("encoder")
    names = [layer.name for layer in encoder.layers]
    if bundle.info.variational:
        assert encoder.get_layer("sampling").kl_weight == 0.1
        assert "input_noise" not in names
    else:
        assert encoder.get_layer("input_noise").stddev == 0.2
        assert encoder.get_layer("enc_0_dropout").rate == 0.1 and "sampling" not in names
    assert np.isfinite(bundle.info.training["losses"]["loss"]).all()
    a = score(bundle, digits_matrix[:200])
    b = score(bundle, digits_matrix[:200])
    assert np.isfinite(a.reconstruction_error).all() and a.latent.shape == (200, 2)
    # Sampling, noise and dropout are training-only: scoring is deterministic.
    np.testing.assert_array_equal(a.reconstruction_error, b.reconstruction_error)
    assert bundle.info.threshold.threshold > 0


def test_too_little_data_is_an_error(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0]}),
                   str(tmp_path / "t.parquet"))
    config = from_dict({"data": {"path": str(tmp_path / "*.parquet")}}, TINY)
    with pytest.raises(ValueError, match=r"Too few usable rows in parquet:.*3 usable"):
        train(config)


def test_in_memory_training_has_the_same_metadata_as_a_saved_bundle(tiny_bundle, digits_glob):
    bundle = train(tiny_config(digits_glob), None)
    info = bundle.info
    assert info.model_version == tiny_bundle.info.model_version
    assert info.threshold == tiny_bundle.info.threshold
    assert info.latent_stats == tiny_bundle.info.latent_stats
    assert info.calibration["quantiles"] == tiny_bundle.info.calibration["quantiles"]
    assert info.training["rows_by_split"] == tiny_bundle.info.training["rows_by_split"]


def test_tensorboard_log_dir_gets_train_and_validation_events(tmp_path, digits_glob):
    logs = tmp_path / "tb"
    train(tiny_config(digits_glob, "train.epochs=2", f"train.tensorboard_dir={logs}"))
    for split in ("train", "validation"):
        events = list((logs / split).glob("events.out.tfevents.*"))
        assert len(events) == 1 and events[0].stat().st_size > 0, split


def test_tensorboard_log_dir_inside_the_data_or_the_bundle_is_refused_before_training(
        tmp_path, digits_dir, digits_glob):
    from latentbeam.errors import OutputError

    before = sorted(os.listdir(digits_dir))
    with pytest.raises(OutputError, match=r"train.tensorboard_dir .*/tb \(resolved: .*\) lies "
                                          r"inside the training data glob's base directory"):
        train(tiny_config(digits_glob, f"train.tensorboard_dir={digits_dir}/tb"))
    assert sorted(os.listdir(digits_dir)) == before
    bundle = tmp_path / "bundle"
    with pytest.raises(OutputError, match=r"train.tensorboard_dir .* is the bundle output"):
        train(tiny_config(digits_glob, f"train.tensorboard_dir={bundle}"), str(bundle))
    assert not bundle.exists()


@pytest.mark.parametrize("label", ["label", None])
def test_a_diverged_training_is_refused_naming_the_epoch_and_writes_nothing(
        tmp_path, digits_glob, label):
    from latentbeam.errors import ConfigError

    bundle = tmp_path / "bundle"
    config = from_dict({"data": {"path": digits_glob, "label": label}},
                       ["model.latent_dim=2", "model.hidden_units=[16]", "train.epochs=5",
                        "train.verbose=0", "train.learning_rate=1e10"])
    with pytest.raises(ConfigError) as e:
        train(config, str(bundle))
    message = str(e.value)
    assert message.startswith("Training diverged: the loss became inf at epoch 1,")
    assert "Lower train.learning_rate (now 1e+10, default 0.001)" in message
    assert not bundle.exists()


def test_f1_threshold_from_a_binary_label_column_end_to_end(tmp_path):
    from latentbeam.demo import digits_table

    t = digits_table()
    # Digit 0 plays the known anomalies (10% of rows); the label is never trained on.
    t = t.append_column("is_anomaly", pa.array(np.asarray(t.column("label")) == 0))
    pq.write_table(t, tmp_path / "d.parquet")
    bundle = train(from_dict({"data": {"path": str(tmp_path / "d.parquet"), "label": "is_anomaly",
                                       "key_columns": ["id"]}},
                             ["model.latent_dim=2", "model.hidden_units=[16]", "train.epochs=5",
                              "train.verbose=0", "threshold.method=f1"]))
    info = bundle.info
    # Every numeric column but the label and the keys is a feature (the digit too, here).
    assert [f.name for f in info.features] == ["label"] + [f"pixel_{i:02d}" for i in range(64)]
    th = info.threshold
    assert th.method == "f1" and set(th.parameters) == {"f1", "precision", "recall"}
    assert 0 < th.parameters["f1"] <= 1
    cal = info.calibration
    assert cal["label_positive_fraction"] == pytest.approx(0.1, abs=0.05)
    assert 0 <= cal["roc_auc"] <= 1 and 0 < cal["average_precision"] <= 1
    # f1 is measured on the calibration rows: the flagged fraction there follows from it.
    p, r = th.parameters["precision"], th.parameters["recall"]
    assert cal["flagged_fraction"] == pytest.approx(
        r * cal["label_positive_fraction"] / p, abs=1e-9)


def test_training_on_inputs_that_are_all_constant_is_refused(tmp_path):
    from latentbeam.errors import InputError

    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"a": np.ones(300), "b": np.zeros(300)}),
                   str(tmp_path / "data" / "d.parquet"))
    config = from_dict({"data": {"path": str(tmp_path / "data" / "*.parquet")}},
                       ["train.epochs=1", "train.verbose=0"])
    with pytest.raises(InputError) as e:
        train(config, str(tmp_path / "bundle"))
    assert str(e.value).startswith(
        f"Every input of parquet:{tmp_path / 'data' / '*.parquet'} (1 files) is constant in "
        f"the 240 training rows (a=1, b=0): there is nothing to learn")
    assert not (tmp_path / "bundle").exists()
    # One varying input is enough to train.
    pq.write_table(pa.table({"a": np.ones(300), "b": np.arange(300.0)}),
                   str(tmp_path / "data" / "d.parquet"))
    assert train(config).info.training["constant_inputs"] == 1


def test_a_latent_dim_not_below_the_inputs_is_warned_about(tmp_path, caplog):
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({c: rng.normal(size=300) for c in "abc"}),
                   str(tmp_path / "data" / "d.parquet"))
    data = {"data": {"path": str(tmp_path / "data" / "*.parquet")}}
    fast = ["train.epochs=1", "train.verbose=0"]
    with caplog.at_level(logging.WARNING, logger="latentbeam"):
        train(from_dict(data, fast + ["model.latent_dim=3"]))
        warned = [r.getMessage() for r in caplog.records if "latent_dim" in r.getMessage()]
        assert warned == ["model.latent_dim 3 is not smaller than the 3 input(s): the "
                          "autoencoder can copy its input, so the reconstruction error stops "
                          "separating rows and only the latent distance does. Choose a "
                          "latent_dim below 3, or leave it unset (default 2)."]
        caplog.clear()
        train(from_dict(data, fast + ["model.latent_dim=2"]))
        train(from_dict(data, fast + ["model.latent_dim=3", "model.variational=true"]))
        assert not [r for r in caplog.records if "latent_dim" in r.getMessage()]
