"""Training: stream the data into tf.data, fit the autoencoder, calibrate, write the bundle."""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from typing import Iterator, List, Optional

import numpy as np

from latentbeam.config import Config
from latentbeam.errors import ConfigError
from latentbeam.model import data as data_mod
from latentbeam.model.architectures import build_autoencoder, default_latent_dim, image_shape
from latentbeam.model.bundle import Bundle, BundleInfo
from latentbeam.model.bundle_write import check_bundle_output, in_memory_info, save_bundle
from latentbeam.model.calibration import calibration_summary, fit_threshold
from latentbeam.model.features import n_inputs

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Same seed -> identical weights on CPU (op determinism is required for that)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def shuffled_batches(chunks: Iterator, batch_size: int, buffer_rows: int,
                     rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Re-batches a stream of chunks into shuffled batches with bounded memory.

    Rows are shuffled within windows of about `buffer_rows` rows; the only partial
    batch is the last one.
    """
    for block in _shuffled_blocks(chunks, batch_size, buffer_rows, rng):
        for s in range(0, len(block), batch_size):
            yield block[s:s + batch_size]


def _shuffled_blocks(chunks: Iterator, batch_size: int, buffer_rows: int,
                     rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The rows of `shuffled_batches`, as blocks of whole batches (the last may be partial)."""
    pending = []
    held = 0
    for matrix, _ in chunks:
        pending.append(matrix)
        held += len(matrix)
        if held < buffer_rows:
            continue
        block = np.concatenate(pending)
        block = block[rng.permutation(len(block))]
        cut = (len(block) // batch_size) * batch_size
        yield block[:cut]
        pending, held = [block[cut:]], len(block) - cut
    if held:
        block = np.concatenate(pending)
        yield block[rng.permutation(len(block))]


def _stacked_batches(blocks: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Blocks as (k, batch_size, width) stacks of whole batches; a partial one as (1, r, width).

    tf.data splits the stacks in C++ (`unbatch`): one Python call per block instead of
    one per batch, which otherwise costs about a third of the training throughput.
    """
    for block in blocks:
        cut = (len(block) // batch_size) * batch_size
        if cut:
            yield block[:cut].reshape(-1, batch_size, block.shape[1])
        if cut < len(block):
            yield block[None, cut:]


def _batches(chunks: Iterator, batch_size: int) -> Iterator[np.ndarray]:
    """Fixed-size batches from a chunk stream, in order."""
    pending, held = [], 0
    for matrix, _ in chunks:
        pending.append(matrix)
        held += len(matrix)
        if held >= batch_size:
            block = np.concatenate(pending)
            cut = (len(block) // batch_size) * batch_size
            for s in range(0, cut, batch_size):
                yield block[s:s + batch_size]
            pending, held = [block[cut:]], len(block) - cut
    if held:
        yield np.concatenate(pending)


def make_dataset(generator_fn, width: int, *, stacked: bool = False, repeat: bool = False,
                 cache: bool = False):
    """A tf.data.Dataset over a Python batch generator (re-invoked at each iteration).

    Args:
      generator_fn: returns an iterator of (rows, width) float32 batches, or of
        (k, rows, width) stacks of batches when `stacked`.
      width: number of inputs.
      stacked: split stacks into batches inside tf.data.
      repeat: repeat the passes; prefetching then runs on across pass boundaries.
      cache: keep the first pass in memory and replay it (for small, fixed data).
    """
    import tensorflow as tf

    shape = (None, None, width) if stacked else (None, width)
    ds = tf.data.Dataset.from_generator(
        generator_fn, output_signature=tf.TensorSpec(shape, tf.float32))
    if stacked:
        ds = ds.unbatch()
    if cache:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


class CachedSource:
    """Decodes a source once; later passes replay the decoded float32 chunks.

    Chunks are kept in memory while one whole pass fits `max_bytes`. Past that, with a
    `spill_dir`, every chunk is appended to raw float32 files there and later passes
    replay them through a memory map: no Parquet decoding or validation after the first
    pass, and memory stays bounded (the OS page cache does the rest). Without a
    spill_dir, data larger than `max_bytes` is read from the source on every pass.
    The replay is the very same chunk stream (same boundaries), so split assignment,
    shuffling and the trained weights are identical to reading the source every pass.
    """

    def __init__(self, source, max_bytes: int, spill_dir: Optional[str] = None):
        self.source = source
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        self.features = source.features
        self._chunks: Optional[list] = None
        self._spill: Optional["_Spill"] = None

    @property
    def skipped(self):
        return self.source.skipped  # counted during the one pass that read the source

    @property
    def cached(self) -> bool:
        return self._chunks is not None or self._spill is not None

    @property
    def spilled(self) -> bool:
        return self._spill is not None

    def describe(self) -> str:
        return self.source.describe()

    def chunks(self) -> Iterator:
        if self._chunks is not None:
            yield from self._chunks
            return
        if self._spill is not None:
            yield from self._spill.replay()
            return
        kept, size, spill = [], 0, None
        for matrix, labels in self.source.chunks():
            if kept is not None:
                size += matrix.nbytes + (labels.nbytes if labels is not None else 0)
                if size <= self.max_bytes:
                    kept.append((matrix, labels))
                else:
                    if self.spill_dir:
                        spill = _Spill(self.spill_dir, matrix.shape[1])
                        for m, lab in kept:
                            spill.append(m, lab)
                    kept = None
            if spill is not None:
                spill.append(matrix, labels)
            yield matrix, labels
        # Only a complete pass is kept (a consumer may stop early).
        if kept is not None:
            self._chunks = kept
        elif spill is not None:
            spill.close()
            self._spill = spill


class _Spill:
    """Append-only raw float32 chunk files with a memory-mapped replay."""

    def __init__(self, directory: str, width: int):
        import tempfile

        fd, self.path = tempfile.mkstemp(prefix="rows-", suffix=".f32", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._labels_file = None
        self.labels_path = self.path[:-4] + "-labels.f32"
        self.width = width
        self.sizes: List[int] = []
        self.has_labels = False

    def append(self, matrix: np.ndarray, labels: Optional[np.ndarray]) -> None:
        self._file.write(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
        if labels is not None:
            if self._labels_file is None:
                self._labels_file = open(self.labels_path, "wb")
                self.has_labels = True
            self._labels_file.write(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
        self.sizes.append(len(matrix))

    def close(self) -> None:
        self._file.close()
        if self._labels_file is not None:
            self._labels_file.close()

    def replay(self) -> Iterator:
        rows = np.memmap(self.path, dtype=np.float32, mode="r").reshape(-1, self.width) \
            if sum(self.sizes) else np.zeros((0, self.width), np.float32)
        labels = np.memmap(self.labels_path, dtype=np.float32, mode="r") \
            if self.has_labels else None
        start = 0
        for n in self.sizes:
            yield (np.asarray(rows[start:start + n]),
                   np.asarray(labels[start:start + n]) if labels is not None else None)
            start += n


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
    if output:
        # Before hours of training: the bundle must not overwrite its data or foreign files.
        check_bundle_output(output, _data_locations(config))
    if tc.tensorboard_dir:
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
    from latentbeam import fs, paths

    d = config.data
    if d.source == "tfds":
        return [("TFDS data_dir", paths.tfds_data_dir(d.data_dir))]
    if not d.path:
        return []
    try:
        files = fs.match(fs.parquet_pattern(d.path))
    except (IOError, OSError, ValueError):
        files = []  # the data source names the problem when it reads
    return paths.input_locations(d.path, files, "training data")


def _train(config: Config, output: Optional[str], source, t0: float) -> Bundle:
    mc, tc, thc = config.model, config.train, config.threshold
    vf, cf = tc.validation_fraction, thc.calibration_fraction
    log.info("Scanning %s", source.describe())
    stats = data_mod.scan(source, vf, cf, seed=tc.seed)
    if source.skipped.total:
        log.warning("Skipped %d unusable rows (%s); e.g. %s", source.skipped.total,
                    source.skipped.by_reason, source.skipped.examples[:2])
    model = _build_model(config, source, stats)
    t_fit = time.time()
    history = _fit(model, config, source, stats)
    fit_seconds = time.time() - t_fit

    width = n_inputs(source.features)
    provisional = Bundle(_provisional_info(source.features,
                                           mc.latent_dim or default_latent_dim(width)), model)
    _set_reference_codes(provisional, source, config, stats.rows_by_split["train"])
    scores, labels = _calibrate_score(provisional, source, config)
    threshold = fit_threshold(scores.score, thc.method, config.threshold_value(), labels)

    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best_epoch = int(np.argmin(hist["val_loss"])) + 1 if "val_loss" in hist else len(hist["loss"])
    latent_dim = provisional.info.latent_dim
    latents = scores.latent.astype(np.float64)
    cov = np.cov(latents, rowvar=False).reshape(latent_dim, latent_dim) if len(latents) > 1 \
        else np.eye(latent_dim)
    meta = {
        "features": [f.to_json() for f in source.features],
        "latent_dim": latent_dim,
        "threshold": threshold.to_json(),
        "variational": mc.variational,
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
            "epochs": len(hist["loss"]),
            "best_epoch": best_epoch,
            "losses": hist,
            "seed": tc.seed,
            "data_fingerprint": stats.fingerprint,
            "seconds": round(time.time() - t0, 3),
            "fit_seconds": round(fit_seconds, 3),
            "config": config.to_dict(),
        },
    }
    info = save_bundle(model, output, meta) if output else in_memory_info(model, meta)
    log.info("Trained %s: threshold %.6g (%s), written to %s", info.model_version,
             threshold.threshold, threshold.method, output)
    return Bundle(info, model)


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
    reference_rows = max(1, min(sc.reference_rows, stats.rows_by_split["train"]))
    model = build_autoencoder(mc, n_inputs=width, mean=stats.mean, variance=stats.variance,
                              image_feature_shape=image_feature_shape, seed=tc.seed,
                              trim_fraction=tc.trim_fraction,
                              latent_neighbors=min(sc.latent_neighbors, reference_rows),
                              reference_rows=reference_rows,
                              reconstruction_weight=sc.reconstruction_weight)
    model.compile(optimizer=keras.optimizers.Adam(tc.learning_rate))
    return model


def _fit(model, config: Config, source, stats):
    """Adam with early stopping on the validation loss (best weights restored)."""
    import keras

    tc = config.train
    vf, cf = tc.validation_fraction, config.threshold.calibration_fraction
    width = n_inputs(source.features)
    epoch = [0]

    def train_gen():
        rng = np.random.default_rng([tc.seed, epoch[0]])
        epoch[0] += 1
        chunks = data_mod.split_chunks(source, data_mod.SPLIT_TRAIN, vf, cf)
        yield from _stacked_batches(
            _shuffled_blocks(chunks, tc.batch_size, tc.shuffle_buffer, rng), tc.batch_size)

    n_val = stats.rows_by_split["validation"]
    val_batch = max(tc.batch_size, 1024)

    def val_gen():
        yield from _batches(data_mod.split_chunks(source, data_mod.SPLIT_VALIDATION, vf, cf),
                            val_batch)

    callbacks = []
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
    # Both generators yield exactly ceil(rows / batch) batches per pass, so repeat() with
    # explicit step counts gives whole passes per epoch and a progress bar with a total.
    return model.fit(
        make_dataset(train_gen, width, stacked=True, repeat=True),
        steps_per_epoch=math.ceil(stats.rows_by_split["train"] / tc.batch_size),
        validation_data=make_dataset(
            val_gen, width, repeat=True,
            cache=n_val * width * 4 <= tc.cache_mb * 2 ** 20) if n_val else None,
        validation_steps=math.ceil(n_val / val_batch) if n_val else None,
        epochs=tc.epochs, callbacks=callbacks, verbose=0, shuffle=False)


def _set_reference_codes(bundle: Bundle, source, config: Config, n_train: int) -> None:
    """Stores the codes of a seeded sample of training rows in the LatentDistance layer."""
    from latentbeam.model.architectures import OUTPUT_LATENT_DISTANCE
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
    layer.reference.assign(codes.astype(np.float32))


def _calibrate_score(bundle: Bundle, source, config: Config):
    """Sets the AnomalyScore scales from the calibration rows; returns their Scores.

    The calibration rows were never trained on, so their errors and distances are what
    new normal rows get. Scales are robust statistics (per-feature means of errors
    clipped at their 99th percentile, medians of the two terms): anomalies among the
    calibration rows barely move them.
    """
    from latentbeam.model.architectures import OUTPUT_SCORE
    from latentbeam.model.scoring import score

    vf, cf = config.train.validation_fraction, config.threshold.calibration_fraction
    chunks = list(data_mod.split_chunks(source, data_mod.SPLIT_CALIBRATION, vf, cf))
    if not chunks:
        raise ValueError("No calibration rows: the data has too few rows for "
                         "`threshold.calibration_fraction`. Give more rows or raise it.")
    x = np.concatenate([m for m, _ in chunks])
    labels = np.concatenate([lab for _, lab in chunks]) if chunks[0][1] is not None else None
    first = score(bundle, x, threshold=1.0)
    ferr = first.feature_errors.astype(np.float64)
    clipped = np.minimum(ferr, np.quantile(ferr, 0.99, axis=0))
    feature_scale = clipped.mean(axis=0)
    # No input may weigh more than 10x an average one: inputs that are almost always
    # reconstructed exactly (an image's empty border) would otherwise turn noise into score.
    feature_scale = np.maximum(feature_scale, max(0.1 * feature_scale.mean(), 1e-12))
    term = (ferr / feature_scale).mean(axis=1)
    term_scale = [_spread(term), _spread(first.latent_distance)]
    layer = bundle.model.get_layer(OUTPUT_SCORE)
    layer.feature_scale.assign(feature_scale.astype(np.float32))
    layer.term_scale.assign(np.asarray(term_scale, np.float32))
    return score(bundle, x, threshold=1.0), labels


def _spread(values: np.ndarray) -> float:
    """Robust spread of a term over the calibration rows (a standard deviation for normal data).

    1.4826 x the median absolute deviation; when more than half the rows share one value
    (duplicated rows have latent distance 0) the 10-90% quantile range / 2.5631, then the
    mean absolute deviation x 1.2533; 1.0 when all values are equal (the term then
    separates nothing and any positive scale will do).
    """
    values = np.asarray(values, dtype=np.float64)
    deviation = np.abs(values - np.median(values))
    q10, q90 = np.quantile(values, [0.1, 0.9])
    for spread in (1.4826 * np.median(deviation), (q90 - q10) / 2.5631,
                   1.2533 * deviation.mean()):
        if spread > 1e-12:
            return float(spread)
    return 1.0


def _score_description(model, config: Config) -> dict:
    """The score's recipe and its calibrated scales (bundle.json `score`)."""
    from latentbeam.model.architectures import OUTPUT_LATENT_DISTANCE, OUTPUT_SCORE

    layer = model.get_layer(OUTPUT_SCORE)
    distance = _layer_or_none(model, OUTPUT_LATENT_DISTANCE)
    scales = np.asarray(layer.term_scale).tolist()
    return {
        "terms": ["reconstruction"] + (["latent_distance"] if distance is not None else []),
        "latent_neighbors": distance.k if distance is not None else 0,
        "reference_rows": distance.num_reference if distance is not None else 0,
        "reconstruction_scale": scales[0],
        "latent_distance_scale": scales[1] if distance is not None else None,
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
