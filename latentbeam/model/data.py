"""Training data sources: a Parquet glob or a prepared TFDS split, streamed in chunks.

Both sources yield `(matrix, labels)` chunks: a (rows, n_inputs) float32 matrix in
feature order and, when a label is configured, a (rows,) float32 label vector. They
can be iterated any number of times (once per epoch) with bounded memory. Both read
Arrow record batches through latentbeam.model.sources, the reader scoring uses, and
convert them with `to_matrix`, so a row training skips is a row scoring dead-letters.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentbeam import fs
from latentbeam.config import DEFAULT_BATCH_ROWS, DataConfig
from latentbeam.errors import InputError
from latentbeam.model import sources
from latentbeam.model.features import (Feature, SchemaMismatch, clip, infer_features,
                                       input_names, to_matrix)
# Re-exported: the TFDS helpers were defined here before the shared reader existed.
from latentbeam.model.sources import load_tfds_builder, tfds_features  # noqa: F401

log = logging.getLogger(__name__)

Chunk = Tuple[np.ndarray, Optional[np.ndarray]]


@dataclass
class SkipCounter:
    """Rows a source could not use, by reason (reported in the bundle, never silent)."""
    by_reason: Dict[str, int] = field(default_factory=dict)
    examples: List[str] = field(default_factory=list)

    def add(self, source: str, row: int, reason: str, detail: str) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{source} row {row}: {reason}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def _chunks(batches: Iterator[Tuple[int, pa.RecordBatch]], features: Sequence[Feature],
            label: Optional[str], where: str, skipped: SkipCounter) -> Iterator[Chunk]:
    """Float32 chunks of record batches: the conversion scoring uses, bad rows counted."""
    for offset, batch in batches:
        conv = to_matrix(batch, features)
        for row, reason, detail in conv.faults:
            skipped.add(where, offset + row, reason, detail)
        labels = None
        if label:
            index = batch.schema.get_field_index(label)
            if index < 0:
                raise InputError(f"{where}: label column {label!r} is missing (columns "
                                 f"present: {', '.join(batch.schema.names)}).")
            column = batch.column(index)
            t = column.type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                    or pa.types.is_decimal(t) or pa.types.is_null(t)):
                raise InputError(f"{where}: label column {label!r} has type {clip(t, 200)}; "
                                 f"expected numbers or booleans (1 / true: anomaly, 0 / false: "
                                 f"normal). Convert it, or leave `data.label` out.")
            labels = column.cast(pa.float32()).fill_null(0).to_numpy(
                zero_copy_only=False)[conv.valid]
        if len(conv.valid):
            yield conv.matrix, labels


class ParquetSource:
    """Rows of a Parquet glob (local or any Beam filesystem) as float32 chunks.

    Args:
      pattern: glob of Parquet files.
      features: feature names in order; default every numeric or numeric-list column
        except `label` and `key_columns`.
      label: optional label column (kept apart from the features).
      key_columns: identifier columns, never used as features.
      batch_rows: rows per Arrow record batch read.
    """

    def __init__(self, pattern: str, *, features: Optional[Sequence[str]] = None,
                 label: Optional[str] = None, key_columns: Sequence[str] = (),
                 batch_rows: int = DEFAULT_BATCH_ROWS):
        self.pattern = pattern = fs.parquet_pattern(pattern)
        self.label = label
        self.batch_rows = batch_rows
        self.files = [p for p, size in fs.match_input(pattern) if size > 0]
        fs.warn_if_delta_table(pattern)
        if not self.files:
            raise InputError(f"No non-empty Parquet files match {pattern!r}."
                             f"{fs.no_parquet_hint(pattern)} Check `data.path` (a glob such as "
                             f"data/*.parquet or gs://bucket/prefix/*.parquet).")
        first = self.files[0]
        with fs.open_read(first) as f:
            pf = pq.ParquetFile(f)
            sample = next(pf.iter_batches(batch_size=1024), None)
            if sample is None:
                sample = pf.schema_arrow.empty_table()
        exclude = set(key_columns) | ({label} if label else set())
        if label and label not in sample.schema.names:
            raise InputError(f"Label column {label!r} not found in {first}. "
                             f"Available columns: {', '.join(sample.schema.names)}.")
        self.features: List[Feature] = infer_features(sample, include=features, exclude=exclude,
                                                      source=first)
        self.skipped = SkipCounter()

    def describe(self) -> str:
        return f"parquet:{self.pattern} ({len(self.files)} files)"

    def chunks(self) -> Iterator[Chunk]:
        columns = [f.name for f in self.features] + ([self.label] if self.label else [])
        self.skipped = SkipCounter()
        for path in self.files:
            batches = sources.parquet_batches(path, columns=columns, batch_rows=self.batch_rows)
            try:
                yield from _chunks(batches, self.features, self.label, path, self.skipped)
            except sources.UnreadableFile as e:
                raise InputError(f"Cannot read training data: {e}. Remove or repair the file, "
                                 f"or narrow `data.path`.") from e
            except SchemaMismatch as e:
                raise InputError(f"{path}: {e}. All training files must share the feature "
                                 f"columns of {self.files[0]}.{self._depth_hint(path)}") from e

    def _depth_hint(self, path: str) -> str:
        """A hint when `path` lies in a subdirectory that a directory `data.path` took in."""
        directory = fs.directory_of(self.pattern)
        if directory is None or "/" not in path[len(directory):]:
            return ""
        return (f" A directory in `data.path` means its Parquet files at any depth; to read "
                f"only its top level, give the glob {directory}*.parquet.")


class TfdsSource:
    """Examples of a prepared TFDS split (sub-splits allowed) as float32 chunks."""

    def __init__(self, name: str, split: str = "train", *, data_dir: Optional[str] = None,
                 features: Optional[Sequence[str]] = None, label: Optional[str] = None,
                 batch_rows: int = DEFAULT_BATCH_ROWS):
        self.name, self.split, self.label, self.batch_rows = name, split, label, batch_rows
        self.builder = load_tfds_builder(name, data_dir)
        self.features = tfds_features(self.builder, include=features,
                                      exclude=[label] if label else [])
        if label and label not in self.builder.info.features:
            raise InputError(f"Label {label!r} not in TFDS dataset {name!r}. "
                             f"Available: {', '.join(sorted(self.builder.info.features.keys()))}.")
        self.skipped = SkipCounter()

    def describe(self) -> str:
        return f"tfds:{self.name}/{self.split} ({self.builder.data_dir})"

    def chunks(self) -> Iterator[Chunk]:
        self.skipped = SkipCounter()
        batches = sources.tfds_split_batches(self.builder, self.split, self.batch_rows)
        yield from _chunks(batches, self.features, self.label, self.describe(), self.skipped)


def make_source(cfg: DataConfig):
    if cfg.source == "tfds":
        return TfdsSource(cfg.name, cfg.split, data_dir=cfg.data_dir, features=cfg.features,
                          label=cfg.label, batch_rows=cfg.batch_rows)
    return ParquetSource(cfg.path, features=cfg.features, label=cfg.label,
                         key_columns=cfg.key_columns, batch_rows=cfg.batch_rows)


# Row -> split assignment. A low-discrepancy sequence over the row index gives exact
# fractions in every stretch of rows (sorted data still spreads evenly) and is stable:
# the same row always lands in the same split, epoch after epoch and run after run.
_PHI = (np.sqrt(5.0) - 1.0) / 2.0
SPLIT_TRAIN, SPLIT_VALIDATION, SPLIT_CALIBRATION = 0, 1, 2


def assign_splits(start: int, n: int, validation_fraction: float,
                  calibration_fraction: float) -> np.ndarray:
    """(n,) split codes for rows start..start+n-1 of the source."""
    u = np.mod((np.arange(start, start + n, dtype=np.float64) + 1.0) * _PHI, 1.0)
    out = np.full(n, SPLIT_TRAIN, dtype=np.int8)
    out[u < calibration_fraction + validation_fraction] = SPLIT_VALIDATION
    out[u < calibration_fraction] = SPLIT_CALIBRATION
    return out


def split_chunks(source, split: int, validation_fraction: float,
                 calibration_fraction: float) -> Iterator[Chunk]:
    """The chunks of `source` restricted to one split."""
    start = 0
    for matrix, labels in source.chunks():
        codes = assign_splits(start, len(matrix), validation_fraction, calibration_fraction)
        start += len(matrix)
        keep = codes == split
        if keep.any():
            yield matrix[keep], (labels[keep] if labels is not None else None)


# Bounds of the training-row sample the per-input medians are taken from: at most this
# many rows, and at most MEDIAN_SAMPLE_VALUES values (64 MiB of float32) for wide inputs.
MEDIAN_SAMPLE_ROWS = 100_000
MEDIAN_SAMPLE_VALUES = 2 ** 24


@dataclass
class DataStats:
    rows: int  # usable rows read
    rows_by_split: Dict[str, int]
    mean: np.ndarray  # (n_inputs,) over training rows
    variance: np.ndarray  # (n_inputs,) over training rows, zeros replaced by 1
    constant_inputs: int  # inputs with zero variance in training rows
    fingerprint: str  # sha256 of every usable row (features and labels) in order
    medians: Optional[np.ndarray] = None  # (n_inputs,) float64, medians of `median_rows` rows
    median_rows: int = 0  # training rows the medians are taken from (all of them if <= cap)
    center: Optional[np.ndarray] = None  # (n_inputs,) the model's normalization (`robust_scaling`)
    scale: Optional[np.ndarray] = None  # (n_inputs,) positive
    robust_inputs: int = 0  # inputs normalized by median and quartiles (the rest: mean, std)
    # Inputs scaled alone whose std a few extreme values stretch past STRETCHED_RATIO x
    # the spread of their middle half: (input name, an extreme value, std, quartile scale).
    stretched: Tuple[Tuple[str, float, float, float], ...] = ()
    # The groups of inputs that share one centre and scale (`pool_inputs`), in model order.
    pooled: Tuple[slice, ...] = ()
    # (low, high) when `scan` found every input to take integer values in one shared
    # range (`one_unit_range`) and pooled them all; None otherwise.
    one_unit_range: Optional[Tuple[float, float]] = None


class Reservoir:
    """A uniform sample of up to `capacity` rows of a stream (Algorithm R, vectorized).

    Seeded, so the same rows in the same order give the same sample. Holds every row
    while the stream has at most `capacity` of them, so the medians of a small training
    set are exact.
    """

    def __init__(self, capacity: int, width: int, seed):
        self.capacity = int(capacity)
        self.rows = np.empty((self.capacity, width), dtype=np.float32)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def add(self, matrix: np.ndarray) -> None:
        n = len(matrix)
        if not n:
            return
        fill = max(0, min(n, self.capacity - self.seen))
        self.rows[self.seen:self.seen + fill] = matrix[:fill]
        if fill < n:
            # Row number t (0-based) of the stream replaces slot j ~ U{0..t} if j < capacity.
            t = np.arange(self.seen + fill, self.seen + n, dtype=np.int64)
            slots = self._rng.integers(0, t + 1)
            keep = np.flatnonzero(slots < self.capacity)
            # Where two rows of the chunk draw one slot the later one wins, as row by row.
            last = len(keep) - 1 - np.unique(slots[keep][::-1], return_index=True)[1]
            chosen = keep[last]
            self.rows[slots[chosen]] = matrix[fill + chosen]
        self.seen += n

    def sample(self) -> np.ndarray:
        return self.rows[:min(self.seen, self.capacity)]


def median_sample_rows(width: int) -> int:
    """Rows in the median sample for `width` inputs (MEDIAN_SAMPLE_ROWS, fewer when wide)."""
    return max(1, min(MEDIAN_SAMPLE_ROWS, MEDIAN_SAMPLE_VALUES // max(1, width)))


MAX_ROBUST_GAIN = 3.0
# An input whose std is this many times the spread of its middle half is dominated by a
# few extreme values: its scale (at least std / MAX_ROBUST_GAIN) squeezes every ordinary
# value by more than STRETCHED_RATIO / MAX_ROBUST_GAIN. Training warns about it.
STRETCHED_RATIO = 100.0


def robust_scaling(quartiles: np.ndarray, mean: np.ndarray, variance: np.ndarray):
    """(center, scale, robust mask) per input for the model's normalization.

    center is the median; scale is the interquartile range / 1.349 (the standard deviation
    for normal data), kept between std / MAX_ROBUST_GAIN and std. A few extreme rows
    inflate a standard deviation and squeeze every ordinary value of that input towards
    0; the quartiles do not move. The upper bound keeps an input whose quartiles are
    wider than its std (two clusters, e.g. a binary flag) at its std; the lower bound
    stops a sparse input (almost always one value) from weighing more than
    MAX_ROBUST_GAIN^2 times an ordinary one in the loss. Inputs whose quartiles coincide
    keep mean and std (robust mask False).

    Args:
      quartiles: (3, n_inputs) the 25%, 50% and 75% quantiles of training rows.
      mean, variance: (n_inputs,) exact statistics of all training rows (zero variances
        already replaced by 1).
    """
    q25, median, q75 = np.asarray(quartiles, dtype=np.float64)
    std = np.sqrt(np.asarray(variance, dtype=np.float64))
    iqr_scale = (q75 - q25) / 1.349
    robust = iqr_scale > 1e-6 * np.maximum(std, 1e-12)
    scale = np.where(robust, np.clip(iqr_scale, std / MAX_ROBUST_GAIN, std), std)
    return np.where(robust, median, np.asarray(mean, dtype=np.float64)), scale, robust


def stretched_inputs(quartiles: np.ndarray, variance: np.ndarray, low: np.ndarray,
                     high: np.ndarray, names: Sequence[str], skip=()) -> tuple:
    """The inputs a few extreme values dominate (see DataStats.stretched).

    Inputs whose quartiles coincide (almost always one value) are sparse, not
    stretched, and are left out. (`robust_scaling` judges coinciding quartiles against
    the std, which is exactly what the extreme values inflate; here they are judged
    against the quartiles' own magnitude.)

    Args:
      quartiles: (3, n_inputs); variance: (n_inputs,); low, high: (n_inputs,) the
        extremes of the training rows; names: the inputs' names; skip: slices of inputs
        that share one scale.
    """
    q25, median, q75 = np.asarray(quartiles, dtype=np.float64)
    iqr_scale = (q75 - q25) / 1.349
    std = np.sqrt(np.asarray(variance, dtype=np.float64))
    distinct = iqr_scale > 1e-12 * np.maximum(np.abs(q25), np.abs(q75))
    mask = distinct & (std > STRETCHED_RATIO * iqr_scale)
    for inputs in skip:
        mask[inputs] = False
    out = []
    for i in np.flatnonzero(mask):
        extreme = high[i] if high[i] - median[i] >= median[i] - low[i] else low[i]
        out.append((names[i], float(extreme), float(std[i]), float(iqr_scale[i])))
    return tuple(out)


def pool_inputs(sample: np.ndarray, mean: np.ndarray, variance: np.ndarray):
    """(center, scale, robust) shared by a group of inputs measured in one unit.

    The elements of an image are one measurement (a pixel's intensity) at different
    places, and the ones that are almost always empty (an image's border) have tiny
    spreads: scaled one by one, their noise would weigh as much as the strokes that
    carry the picture. `robust_scaling` is applied to the group's values taken
    together; every input of the group gets the result.

    Args:
      sample: (rows, k) sampled values of the group's k inputs.
      mean, variance: (k,) exact per-input statistics of all training rows.

    Returns:
      Three (k,) arrays, each constant.
    """
    k = sample.shape[1]
    pooled_mean = float(np.mean(mean))
    # Law of total variance: the spread of all values = within-input + between-input.
    pooled_variance = float(np.mean(variance + (mean - pooled_mean) ** 2))
    quartiles = np.quantile(sample.reshape(-1), [0.25, 0.5, 0.75])[:, None]
    center, scale, robust = robust_scaling(quartiles, np.array([pooled_mean]),
                                           np.array([max(pooled_variance, 1e-12)]))
    return np.full(k, center[0]), np.full(k, scale[0]), np.full(k, bool(robust[0]))


# `one_unit_range`: at least this many inputs, and the median input's range covering at
# least this share of the range of all of them.
ONE_UNIT_MIN_INPUTS = 4
ONE_UNIT_RANGE_SHARE = 0.5
# From 2**24 on, float32 (the model's input type) holds only integers.
FLOAT32_EXACT_INTEGERS = 2.0 ** 24


def one_unit_range(integral: bool, low: np.ndarray, high: np.ndarray,
                   constant: np.ndarray) -> Optional[Tuple[float, float]]:
    """The shared range when the inputs look like one measurement in one unit, else None.

    Pixel intensities, the readings of one sensor's bands and answers on one rating scale
    arrive as integers that every column draws from one range (0..255, 1..10). Tables
    of different quantities differ in range (a count of 0..3 beside an amount of
    0..99999), and a table rescaled column by column (min-max to [0, 1], z-scores) holds
    fractions. 0/1 indicators (flags, one-hot categories) share a range but are not
    readings on a scale: a rare category keeps the weight its own scale gives it. So: at
    least ONE_UNIT_MIN_INPUTS varying inputs, every training value an integer, and the
    median varying input spanning at least ONE_UNIT_RANGE_SHARE of the range all of them
    span together, and at least 3 values (a range of 2). Scaled one by one, the
    almost-empty columns of such a table (an image's border, a rating almost nobody
    gives) would weigh like the busy ones (see `pool_inputs`).

    Args:
      integral: whether every training value of every input is an integer.
      low, high: (n_inputs,) the training minimum and maximum per input.
      constant: (n_inputs,) the inputs that never vary in training rows.
    """
    varying = ~np.asarray(constant, dtype=bool)
    if not integral or varying.sum() < ONE_UNIT_MIN_INPUTS:
        return None
    low, high = np.asarray(low, np.float64)[varying], np.asarray(high, np.float64)[varying]
    lo, hi = float(low.min()), float(high.max())
    if max(abs(lo), abs(hi)) >= FLOAT32_EXACT_INTEGERS:
        return None  # every float32 this large is an integer: it says nothing of the data
    if np.median(high - low) < max(2.0, ONE_UNIT_RANGE_SHARE * (hi - lo)):
        return None
    return lo, hi


def _moments(shift: np.ndarray, s1: np.ndarray, s2: np.ndarray, n: int):
    """(mean, variance with zeros replaced by 1, constant mask) from sums shifted by `shift`."""
    mean_d = s1 / n
    variance = np.maximum(s2 / n - mean_d ** 2, 0.0)
    mean = shift + mean_d
    constant = variance <= 1e-12 * np.maximum(1.0, mean ** 2)
    return mean, np.where(constant, 1.0, variance), constant


def scan(source, validation_fraction: float, calibration_fraction: float,
         seed: int = 0, pooled: Sequence[slice] = (), pool_one_unit: bool = False) -> DataStats:
    """One pass: row counts per split, normalization statistics, medians, data fingerprint.

    mean and variance are exact over the training rows. The medians (which fill missing
    values at scoring time) and the quartiles of the model's normalization
    (`robust_scaling`) are those of a seeded reservoir sample of `median_sample_rows`
    training rows: exact when there are no more training rows than that, an estimate
    with bounded memory otherwise. The inputs of each slice in `pooled` (the elements of
    one image) share one centre and scale, taken over all their values (`pool_inputs`).
    With `pool_one_unit` all inputs share one when the training rows show them to be one
    measurement in one unit (`one_unit_range`).
    """
    digest = hashlib.sha256()
    total = 0
    counts = np.zeros(3, dtype=np.int64)
    s1 = s2 = None
    shift = None
    reservoir = None
    low = high = None
    integral = pool_one_unit  # only looked at when `one_unit_range` may pool
    for matrix, labels in source.chunks():
        digest.update(np.ascontiguousarray(matrix).tobytes())
        if labels is not None:
            digest.update(labels.tobytes())
        codes = assign_splits(total, len(matrix), validation_fraction, calibration_fraction)
        total += len(matrix)
        counts += np.bincount(codes, minlength=3)
        rows = matrix[codes == SPLIT_TRAIN]
        if not len(rows):
            continue
        if reservoir is None:
            reservoir = Reservoir(median_sample_rows(matrix.shape[1]), matrix.shape[1],
                                  [seed, 2])
        reservoir.add(rows)
        low = rows.min(axis=0) if low is None else np.minimum(low, rows.min(axis=0))
        high = rows.max(axis=0) if high is None else np.maximum(high, rows.max(axis=0))
        integral = integral and bool(np.all(rows == np.rint(rows)))
        train = rows.astype(np.float64)
        if shift is None:
            # Shifted sums keep the variance accurate for large-offset features.
            shift = train[0].copy()
            s1 = np.zeros(matrix.shape[1])
            s2 = np.zeros(matrix.shape[1])
        d = train - shift
        s1 += d.sum(axis=0)
        s2 += (d * d).sum(axis=0)
    n_train = int(counts[SPLIT_TRAIN])
    if n_train < 2 or counts[SPLIT_CALIBRATION] < 1:
        skipped = getattr(source, "skipped", None)
        why = ""
        if skipped is not None and skipped.total:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(skipped.by_reason.items(),
                                                            key=lambda kv: -kv[1]))
            why = (f" {skipped.total} row(s) were skipped ({reasons}; e.g. "
                   f"{skipped.examples[0]}): a feature that is null or NaN in most rows "
                   f"empties the data; leave it out of `data.features`.")
        raise InputError(f"Too few usable rows in {source.describe()}: {total} usable, "
                         f"{n_train} for training, {int(counts[SPLIT_CALIBRATION])} for threshold "
                         f"calibration.{why} Provide more data (at least ~20 rows).")
    mean, variance, constant = _moments(shift, s1, s2, n_train)
    names = input_names(source.features)
    if constant.all():
        shown = ", ".join(f"{n}={v:g}" for n, v in zip(names[:5], mean[:5]))
        raise InputError(
            f"Every input of {source.describe()} is constant in the {n_train} training rows "
            f"({shown}{', ...' if len(names) > 5 else ''}): there is nothing to learn, and "
            f"any other value would score infinitely anomalous. Train on data whose "
            f"features vary, or choose other columns with `data.features`.")
    sample = reservoir.sample().astype(np.float64)
    quartiles = np.quantile(sample, [0.25, 0.5, 0.75], axis=0)
    center, scale, robust = robust_scaling(quartiles, mean, variance)
    shared_range = None
    if pool_one_unit and not pooled:
        shared_range = one_unit_range(integral, low, high, constant)
        if shared_range is not None:
            pooled = [slice(0, len(mean))]
    for inputs in pooled:
        # Constant inputs (variance stored as 1) add no spread to the group's values.
        center[inputs], scale[inputs], robust[inputs] = pool_inputs(
            sample[:, inputs], mean[inputs], np.where(constant, 0.0, variance)[inputs])
    with np.errstate(over="ignore"):  # variances past float32's range become inf
        variance32 = variance.astype(np.float32)
    return DataStats(
        rows=total,
        rows_by_split={"train": n_train, "validation": int(counts[SPLIT_VALIDATION]),
                       "calibration": int(counts[SPLIT_CALIBRATION])},
        mean=mean.astype(np.float32), variance=variance32,
        constant_inputs=int(constant.sum()), fingerprint=digest.hexdigest(),
        medians=quartiles[1], median_rows=len(sample),
        center=center.astype(np.float32), scale=scale.astype(np.float32),
        robust_inputs=int(robust.sum()),
        stretched=stretched_inputs(quartiles, variance, low.astype(np.float64),
                                   high.astype(np.float64), names, skip=pooled),
        pooled=tuple(pooled), one_unit_range=shared_range)
