"""Training: stream the data into tf.data, fit the autoencoder, calibrate, write the bundle."""
from __future__ import annotations

import functools
import itertools
import logging
import math
import shutil
import tempfile
import time
from typing import Iterator, List, Optional, Tuple

import numpy as np

from latentbeam import paths
from latentbeam.config import Config
from latentbeam.errors import ConfigError, InputError
from latentbeam.model import data as data_mod
from latentbeam.model.architectures import build_autoencoder, default_latent_dim, image_shape
from latentbeam.model.batching import (CachedSource, make_dataset, ordered_batches,
                                       shuffled_blocks, stacked_batches)
from latentbeam.model.bundle import Bundle, BundleInfo
from latentbeam.model.bundle_write import check_bundle_output, in_memory_info, save_bundle
from latentbeam.model.calibration import (calibration_summary, fit_threshold,
                                          small_calibration_warning)
from latentbeam.model.features import n_inputs, shared_scale_features, shared_scale_inputs

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Same seed -> identical weights on CPU (op determinism is required for that)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(config: Config, output: Optional[str] = None, *, source=None) -> Bundle:
    """Trains an autoencoder as configured and writes a bundle to `output`.

    Args:
      config: a validated Config.
      output: bundle directory (local or remote); None keeps the bundle in memory only.
      source: a data source object (defaults to the one `config.data` describes).

    Returns:
      The trained Bundle (model in memory, metadata as written to bundle.json).
    """
    t0 = time.time()
    tc = config.train
    reads = _data_locations(config) if output or tc.tensorboard_dir else []
    if output:
        # Before hours of training: the bundle must not overwrite its data or foreign files.
        check_bundle_output(output, reads)
    if tc.tensorboard_dir:
        # TensorBoard's event files must land neither among the data nor in the bundle.
        paths.check_output(tc.tensorboard_dir,
                           reads + ([("bundle output", output)] if output else []),
                           flag="train.tensorboard_dir", cwd=False)
        try:
            import tensorboard  # noqa: F401  (tf.summary needs it at the first epoch end)
        except ImportError as e:
            raise ConfigError("`train.tensorboard_dir` needs TensorBoard: pip install "
                              "'latentbeam[tensorboard]' (or tensorboard), or unset "
                              "train.tensorboard_dir.") from e
    set_seed(tc.seed)
    source = source or data_mod.make_source(config.data)
    spill_dir = tempfile.mkdtemp(prefix="latentbeam-train-") if tc.disk_cache else None
    try:
        if tc.cache_mb > 0 or spill_dir:
            # The scan below is then the one pass that decodes the data.
            source = CachedSource(source, tc.cache_mb * 2 ** 20, spill_dir)
        return _train(config, output, source, t0)
    finally:
        if spill_dir:
            shutil.rmtree(spill_dir, ignore_errors=True)


def _data_locations(config: Config) -> List[tuple]:
    """(what, path) of everything training reads, for the output check."""
    from latentbeam import fs

    d = config.data
    if d.source == "tfds":
        return [("TFDS data_dir", paths.tfds_data_dir(d.data_dir))]
    if not d.path:
        return []
    try:
        files = [p for p, _ in fs.match_parquet(fs.parquet_pattern(d.path))]
    except (IOError, OSError, ValueError):
        files = []  # the data source names the problem when it reads
    return paths.input_locations(d.path, files, "training data")


def _train(config: Config, output: Optional[str], source, t0: float) -> Bundle:
    """Scan, build, fit, calibrate, then write the bundle (or keep it in memory)."""
    mc, thc = config.model, config.threshold
    stats = _scan(config, source)
    model = _build_model(config, source, stats)
    t_fit = time.time()
    history = _fit(model, config, source, stats)
    fit_seconds = time.time() - t_fit
    finite_weights = all(np.isfinite(np.asarray(w)).all() for w in model.get_weights())
    _check_converged(history.history, finite_weights, config)

    width = n_inputs(source.features)
    provisional = Bundle(_provisional_info(source.features,
                                           mc.latent_dim or default_latent_dim(width)), model)
    _set_reference_points(provisional, source, config, stats.rows_by_split["train"])
    scores, labels = _score_calibration_rows(provisional, source, config)
    _check_converged(history.history, bool(np.isfinite(scores.score).all()), config,
                     warn=False)
    threshold = fit_threshold(scores.score, thc.method, config.threshold_value(), labels)
    warning = small_calibration_warning(len(scores), thc.method, config.threshold_value())
    if warning:
        log.warning(warning)

    meta = _metadata(config, source, stats, model, history, scores, labels, threshold,
                     latent_dim=provisional.info.latent_dim,
                     seconds=time.time() - t0, fit_seconds=fit_seconds)
    info = save_bundle(model, output, meta) if output else in_memory_info(model, meta)
    log.info("Trained %s: threshold %.6g (%s), written to %s", info.model_version,
             threshold.threshold, threshold.method, output)
    return Bundle(info, model)


def _check_converged(hist: dict, finite: bool, config: Config, warn: bool = True) -> None:
    """Refuses a model that `finite` says is not (its weights, or its calibration scores),
    naming the epoch where the loss diverged; warns when early stopping kept an earlier,
    finite epoch instead."""
    losses = np.asarray(hist.get("loss", []), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    tc = config.train
    if finite:
        if len(bad) and warn:
            log.warning("The training loss became %s at epoch %d; training stopped there and "
                        "kept the weights of the best earlier epoch. If the bundle scores "
                        "poorly, lower train.learning_rate (now %g).", losses[bad[0]],
                        bad[0] + 1, tc.learning_rate)
        return
    where = (f"the loss became {losses[bad[0]]} at epoch {bad[0] + 1}" if len(bad) else
             "the loss stayed finite but the trained model's scores are not")
    raise ConfigError(
        f"Training diverged: {where}, so the model scores rows as NaN and no threshold can "
        f"be set; nothing was written. Lower train.learning_rate (now {tc.learning_rate:g}, "
        f"default 0.001), use a bounded model.activation (now {config.model.activation!r}), "
        f"or check the data for values far beyond the others (training warns about "
        f"such inputs).")


def _scan(config: Config, source) -> data_mod.DataStats:
    """The one pass before training: split sizes, normalization, medians, fingerprint."""
    tc = config.train
    log.info("Scanning %s", source.describe())
    stats = data_mod.scan(source, tc.validation_fraction, config.threshold.calibration_fraction,
                          seed=tc.seed, pooled=shared_scale_inputs(source.features,
                                                                   config.model.normalization),
                          pool_one_unit=config.model.normalization == "auto")
    if source.skipped.total:
        log.warning("Skipped %d unusable rows (%s); e.g. %s", source.skipped.total,
                    source.skipped.by_reason, source.skipped.examples[:2])
    if stats.one_unit_range is not None:
        log.info("Every input of %s takes integer values within one range (%g to %g), as "
                 "an image's pixels or answers on one rating scale do: they share one "
                 "scale, so almost-empty columns do not weigh like busy ones. Set "
                 "model.normalization: per_input to scale each input alone.",
                 source.describe(), *stats.one_unit_range)
    for name, extreme, std, spread in stats.stretched:
        log.warning(
            "Input %s of %s has extreme values (e.g. %.4g) that stretch its standard "
            "deviation to %.4g, over %gx the spread of its middle half (%.4g): its scale "
            "squeezes every ordinary value towards 0, so the input carries almost no "
            "signal. If those values are errors, fix or filter those rows and train "
            "again; if they are real, a transform that compresses the range (e.g. a log) "
            "keeps the input useful.", name, source.describe(), extreme, std,
            data_mod.STRETCHED_RATIO, spread)
    return stats


def _metadata(config: Config, source, stats, model, history, scores, labels, threshold, *,
              latent_dim: int, seconds: float, fit_seconds: float) -> dict:
    """bundle.json's content (every key but the computed ones)."""
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best_epoch = int(np.argmin(hist["val_loss"])) + 1 if "val_loss" in hist else len(hist["loss"])
    latents = scores.latent.astype(np.float64)
    cov = np.cov(latents, rowvar=False).reshape(latent_dim, latent_dim) if len(latents) > 1 \
        else np.eye(latent_dim)
    return {
        "features": [f.to_json() for f in source.features],
        "latent_dim": latent_dim,
        "threshold": threshold.to_json(),
        "variational": config.model.variational,
        "score": _score_description(model, config),
        "calibration": calibration_summary(scores.score, labels, threshold.threshold),
        "latent_stats": {"mean": latents.mean(axis=0).tolist(), "cov": cov.tolist()},
        "imputation": {
            "method": "median",
            "medians": stats.medians.tolist(),
            "rows": stats.median_rows,
            "exact": stats.median_rows == stats.rows_by_split["train"],
        },
        "training": {
            "source": source.describe(),
            "rows": stats.rows,
            "rows_by_split": stats.rows_by_split,
            "rows_skipped": source.skipped.total,
            "rows_skipped_by_reason": dict(source.skipped.by_reason),
            "constant_inputs": stats.constant_inputs,
            "robust_scaled_inputs": stats.robust_inputs,
            "stretched_inputs": [name for name, *_ in stats.stretched],
            "shared_scale_features": shared_scale_features(source.features, stats.pooled),
            "one_unit_range": (list(stats.one_unit_range) if stats.one_unit_range is not None
                               else None),
            "epochs": len(hist["loss"]),
            "rows_per_epoch": (epoch_rows(config.train, stats.rows_by_split["train"])
                               * passes_per_epoch(config.train, stats.rows_by_split["train"])),
            "best_epoch": best_epoch,
            "losses": hist,
            "seed": config.train.seed,
            "data_fingerprint": stats.fingerprint,
            "seconds": round(seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "config": config.to_dict(),
        },
    }


def _build_model(config: Config, source, stats):
    import keras

    mc, tc, sc = config.model, config.train, config.score
    width = n_inputs(source.features)
    image_feature_shape = None
    if mc.kind == "conv2d":
        if len(source.features) != 1:
            raise ConfigError(f"`model.kind: conv2d` needs exactly one image feature; got "
                              f"{[f.name for f in source.features]}. Set `data.features`.")
        image_feature_shape = image_shape(source.features[0].shape)
    if mc.latent_dim and mc.latent_dim >= width and not mc.variational:
        log.warning(
            "model.latent_dim %d is not smaller than the %d input(s): the autoencoder can "
            "copy its input, so the reconstruction error stops separating rows and only the "
            "latent distance does. Choose a latent_dim below %d, or leave it unset (default "
            "%d).", mc.latent_dim, width, width, default_latent_dim(width))
    groups, group_size = reference_layout(sc, stats.rows_by_split["train"])
    reference_rows = groups * group_size
    with np.errstate(over="ignore"):
        # A scale past 1.8e19 (an input stretched by values near float32's limit, which
        # training warns about) has no float32 square: inf, so the layer maps it to 0.
        variance = np.square(stats.scale)
    model = build_autoencoder(mc, n_inputs=width, mean=stats.center, variance=variance,
                              image_feature_shape=image_feature_shape, seed=tc.seed,
                              trim_fraction=tc.trim_fraction,
                              latent_neighbors=min(sc.latent_neighbors, group_size),
                              reference_rows=reference_rows, reference_groups=groups,
                              local_scale=sc.local_scale,
                              reconstruction_weight=sc.reconstruction_weight)
    model.compile(optimizer=keras.optimizers.Adam(tc.learning_rate))
    return model


def reference_layout(sc, n_train: int) -> Tuple[int, int]:
    """(groups, codes per group) of the latent distance for `n_train` training rows.

    The configured group size (`reference_rows // reference_groups`) is what sets the
    term's resolution and its robustness to clusters of anomalies, so fewer training rows
    than references mean fewer groups of that size, not smaller groups; with fewer rows
    than one group, one group of every row.
    """
    size = max(1, sc.reference_rows // sc.reference_groups)
    available = max(1, min(sc.reference_rows, n_train))
    if available < size:
        return 1, available
    return min(sc.reference_groups, available // size), size


def _training_passes(source, tc, validation_fraction: float,
                     calibration_fraction: float) -> Iterator[np.ndarray]:
    """The training rows pass after pass, as stacks of shuffled batches.

    Pass e is shuffled with the seed [train.seed, e]. The passes never end: fit() takes
    `steps_per_epoch` batches per epoch from one iterator, so prefetching runs on
    across pass boundaries.
    """
    for epoch in itertools.count():
        rng = np.random.default_rng([tc.seed, epoch])
        chunks = data_mod.split_chunks(source, data_mod.SPLIT_TRAIN, validation_fraction,
                                       calibration_fraction)
        yield from stacked_batches(
            shuffled_blocks(chunks, tc.batch_size, tc.shuffle_buffer, rng), tc.batch_size)


def _validation_pass(source, batch_size: int, validation_fraction: float,
                     calibration_fraction: float, max_rows: int) -> Iterator[np.ndarray]:
    """The first `max_rows` validation rows in order: the same rows every epoch."""
    chunks = data_mod.split_chunks(source, data_mod.SPLIT_VALIDATION, validation_fraction,
                                   calibration_fraction)
    yield from ordered_batches(_head(chunks, max_rows), batch_size)


def _head(chunks, rows: int):
    """The first `rows` rows of a (matrix, labels) chunk stream; reads no further."""
    if rows <= 0:
        return
    for matrix, labels in chunks:
        yield matrix[:rows], (labels[:rows] if labels is not None else None)
        rows -= len(matrix)
        if rows <= 0:
            return


def _callbacks(config: Config, n_val: int) -> list:
    import keras

    tc = config.train
    # A NaN or inf loss ends training at once (the weights it leaves are checked after).
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if n_val:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=tc.patience, restore_best_weights=True))
    if tc.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=tc.tensorboard_dir))
    if tc.verbose:
        # One bar over all epochs on a terminal, else one line per epoch; Keras' own
        # output (a bar per epoch) stays off so the two never mix.
        from latentbeam.console import ProgressLine, epoch_progress
        callbacks.append(epoch_progress(tc.epochs, tc.verbose, ProgressLine()))
    return callbacks


def _fit(model, config: Config, source, stats):
    """Adam with early stopping on the validation loss (best weights restored)."""
    tc = config.train
    vf, cf = tc.validation_fraction, config.threshold.calibration_fraction
    width = n_inputs(source.features)
    # Validation costs at most what an epoch's training does: a fixed set of rows.
    n_val = epoch_rows(tc, stats.rows_by_split["validation"])
    val_batch = max(tc.batch_size, 1024)
    train_data = make_dataset(functools.partial(_training_passes, source, tc, vf, cf), width,
                              stacked=True, repeat=True)
    val_pass = functools.partial(_validation_pass, source, val_batch, vf, cf, n_val)
    if not n_val:
        val_data = None
    elif n_val * width * 4 <= tc.cache_mb * 2 ** 20:
        # Read once and held: Keras stops each validation pass after `validation_steps`
        # batches, before a tf.data cache would see the end it needs to keep its content,
        # so a cached generator was re-run (the source re-split) every epoch.
        import tensorflow as tf
        val_data = tf.data.Dataset.from_tensor_slices(np.concatenate(list(val_pass())))
        val_data = val_data.batch(val_batch)
    else:
        val_data = make_dataset(val_pass, width, repeat=True)
    # Each pass yields exactly ceil(rows / batch) batches, so explicit step counts give
    # whole passes per epoch (up to `epoch_rows`; several when a pass is only a few
    # batches) and a progress bar with a total.
    return model.fit(
        train_data, steps_per_epoch=steps_per_epoch(tc, stats.rows_by_split["train"]),
        validation_data=val_data,
        validation_steps=math.ceil(n_val / val_batch) if n_val else None,
        epochs=tc.epochs, callbacks=_callbacks(config, n_val), verbose=0, shuffle=False)


def epoch_rows(tc, n_rows: int) -> int:
    """Rows of a split of `n_rows` per epoch: a pass of all of them, at most
    `train.epoch_rows`. (Validation always; training when a pass is at least
    `train.min_epoch_batches` batches, see `passes_per_epoch`.)"""
    return n_rows if tc.epoch_rows is None else min(n_rows, tc.epoch_rows)


def passes_per_epoch(tc, n_train: int) -> int:
    """Whole passes over the training rows per epoch: as many as make at least
    `train.min_epoch_batches` batches when every training row fits in an epoch, else 1.

    Adam takes one step per batch and early stopping counts epochs: at one pass per
    epoch, 50 training rows would give one step per epoch, and a patience of 10 epochs
    would stop training after ten noisy steps without improvement.
    """
    if n_train < 1 or epoch_rows(tc, n_train) < n_train:
        return 1
    return max(1, math.ceil(tc.min_epoch_batches / math.ceil(n_train / tc.batch_size)))


def steps_per_epoch(tc, n_train: int) -> int:
    """Batches per epoch. Past `train.epoch_rows` an epoch is that many rows of the
    shuffled stream, which runs on across epochs (every row is seen, pass after pass):
    the number of epochs, patience included, then bounds the cost on any data size.
    Below `train.min_epoch_batches` batches a pass, an epoch is several whole passes.
    """
    return (passes_per_epoch(tc, n_train)
            * math.ceil(epoch_rows(tc, n_train) / tc.batch_size))


def _set_reference_points(bundle: Bundle, source, config: Config, n_train: int) -> None:
    """Stores the decoded codes of a seeded sample of training rows in the LatentDistance layer.

    The layer compares a row's decoded code (X-hat, normalized) with these. The sample is
    shuffled (it is drawn in row order), so each of the layer's contiguous reference
    groups is a random subsample even when the data is sorted.
    """
    from latentbeam.model.architectures import OUTPUT_LATENT_DISTANCE, output_basis
    from latentbeam.model.scoring import score

    layer = _layer_or_none(bundle.model, OUTPUT_LATENT_DISTANCE)
    if layer is None:
        return
    tc = config.train
    rng = np.random.default_rng([tc.seed, 1])
    wanted = np.sort(rng.choice(n_train, size=layer.num_reference, replace=False))
    rows, start = [], 0
    for matrix, _ in data_mod.split_chunks(source, data_mod.SPLIT_TRAIN,
                                           tc.validation_fraction,
                                           config.threshold.calibration_fraction):
        lo, hi = np.searchsorted(wanted, [start, start + len(matrix)])
        rows.append(matrix[wanted[lo:hi] - start])
        start += len(matrix)
    codes = score(bundle, np.concatenate(rows), threshold=1.0).latent
    decoder = bundle.model.get_layer("decoder")
    decoded = np.asarray(decoder(codes[rng.permutation(len(codes))]))
    layer.set_reference(decoded, output_basis(decoder) if layer.basis_dim else None)


def _score_calibration_rows(bundle: Bundle, source, config: Config):
    """The Scores of the calibration rows (never trained on: what new normal rows get)."""
    from latentbeam.model.scoring import score

    vf, cf = config.train.validation_fraction, config.threshold.calibration_fraction
    chunks = list(data_mod.split_chunks(source, data_mod.SPLIT_CALIBRATION, vf, cf))
    if not chunks:
        raise InputError("No calibration rows: the data has too few rows for "
                         "`threshold.calibration_fraction`. Give more rows or raise it.")
    x = np.concatenate([m for m, _ in chunks])
    labels = np.concatenate([lab for _, lab in chunks]) if chunks[0][1] is not None else None
    return score(bundle, x, threshold=1.0), labels


def _score_description(model, config: Config) -> dict:
    """The score's recipe (bundle.json `score`)."""
    from latentbeam.model.architectures import OUTPUT_LATENT_DISTANCE, OUTPUT_SCORE

    layer = model.get_layer(OUTPUT_SCORE)
    distance = _layer_or_none(model, OUTPUT_LATENT_DISTANCE)
    return {
        "terms": ["reconstruction"] + (["latent_distance"] if distance is not None else []),
        "combine": layer.combine,
        "latent_neighbors": distance.k if distance is not None else 0,
        "reference_rows": distance.num_reference if distance is not None else 0,
        "reference_groups": distance.groups if distance is not None else 0,
        "local_scale": bool(getattr(distance, "local", False)),
        "reconstruction_weight": layer.reconstruction_weight if distance is not None else 1.0,
        "trim_fraction": config.train.trim_fraction,
    }


def _layer_or_none(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _provisional_info(features, latent_dim: int) -> BundleInfo:
    """Metadata for scoring calibration rows before the threshold exists."""
    from latentbeam.model.bundle import FORMAT_VERSION, Threshold

    return BundleInfo(path="", format_version=FORMAT_VERSION, model_version="unsaved",
                      features=list(features), latent_dim=latent_dim,
                      threshold=Threshold("quantile", None, 1.0),
                      calibration={}, training={}, versions={}, sha256="0" * 64)
