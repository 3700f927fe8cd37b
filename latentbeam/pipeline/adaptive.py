"""Adaptive threshold for streams whose normal error level drifts (opt-in).

The bundle's threshold was calibrated once, on the training data. On a stream whose
normal reconstruction error slowly rises (sensor ageing, seasonal load), that fixed
threshold flags more and more normal rows. The adaptive threshold follows the drift:

    adaptive_threshold = rolling q-quantile of recent NON-anomalous errors
                         * (bundle threshold / calibration q-quantile)

The scale factor carries the calibrated shape (how far the threshold sits above the
typical error) over to the current level, so with q = 0.5 (the default) the threshold
tracks the rolling median. Rows flagged by the adaptive threshold never enter the
window, so a burst of anomalies cannot drag the threshold up; the median is barely
moved by leaving out the few rows above the threshold, so the window does not ratchet
down either (a high q, e.g. 0.99, would: each exclusion trims the very tail it
estimates). Until `warmup_rows` normal rows have been seen for a key, the bundle's
threshold is used.

State is per (model_version, key): errors of different models are not comparable, so
a model hot-swap starts a fresh window (warm-up with the new bundle's threshold).

`AdaptiveState` is plain Python/numpy (no Beam); `adaptive_update` is the one step
both stream sources run per state key. Where the states live differs, and why:

* Pub/Sub source: `AdaptiveThresholds`, a stateful DoFn over (state key, rows): the
  states are Beam state, so they survive worker failures and restarts from a
  snapshot, and each key is held by one worker on a multi-worker runner.
* Watched-files source: `with_adaptive` inside the scoring DoFn, states in a dict of
  the DoFn instance. Keyed Beam state needs a keyed input, i.e. a shuffle between the
  poll and the writing, and on the local runners nothing after a shuffle downstream
  of PeriodicImpulse runs until polling stops (streaming package docstring): scores
  would appear only when the stream ends. So there a state lives as long as its
  worker process: a restart, or another worker, starts the key again with warm-up.
"""
from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass
from typing import Deque, List, MutableMapping, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from latentbeam.errors import BundleError, ConfigError
from latentbeam.pipeline.records import COL_MODEL_VERSION, COL_SCORE
from latentbeam.pipeline.rows import as_record_batch

COL_ADAPTIVE_THRESHOLD = "adaptive_threshold"
COL_ADAPTIVE_FLAG = "is_anomaly_adaptive"
ADAPTIVE_FIELDS = (pa.field(COL_ADAPTIVE_THRESHOLD, pa.float32()),
                   pa.field(COL_ADAPTIVE_FLAG, pa.bool_()))
# Key used when no --adaptive-key column is given: one window for the whole stream.
ALL_ROWS = "*"


@dataclass(frozen=True)
class AdaptiveConfig:
    quantile: float = 0.5  # level of the rolling quantile; one of the calibration levels
    window_rows: int = 1000  # recent non-anomalous errors kept per key
    warmup_rows: int = 50  # normal rows needed before the rolling estimate is used
    key_column: Optional[str] = None  # keep one window per value of this input column

    def __post_init__(self):
        # Messages name the `latentbeam stream` flags, and only the ones at fault.
        if not 0.0 < self.quantile < 1.0:
            raise ConfigError(f"--adaptive-quantile must be a level in (0, 1). "
                             f"Received: {self.quantile}")
        faults = []
        if self.window_rows < 1:
            faults.append(f"--adaptive-window-rows must be >= 1. Received: {self.window_rows}")
        if self.warmup_rows < 1:
            faults.append(f"--adaptive-warmup-rows must be >= 1. Received: {self.warmup_rows}")
        elif self.window_rows >= 1 and self.warmup_rows > self.window_rows:
            faults.append(f"--adaptive-warmup-rows ({self.warmup_rows}) must be at most "
                          f"--adaptive-window-rows ({self.window_rows})")
        if faults:
            raise ConfigError("; ".join(faults))


def scores(batch: pa.RecordBatch, threshold: float) -> np.ndarray:
    """The rows' scores (what the bundle threshold applies to): anomaly_score x threshold."""
    return batch.column(COL_SCORE).to_numpy().astype(np.float64) * float(threshold)


def adaptive_scale(info, quantile: float) -> float:
    """bundle threshold / calibration score quantile at `quantile` (from bundle.json)."""
    quantiles = (info.calibration or {}).get("quantiles") or {}
    level = next((k for k in quantiles if abs(float(k) - quantile) < 1e-9), None)
    if level is None:
        raise BundleError(
            f"Bundle {info.path} has no calibration score quantile at level {quantile} "
            f"(available: {', '.join(sorted(quantiles)) or 'none'}). Pass "
            f"--adaptive-quantile with one of the available levels.")
    q = float(quantiles[level])
    if not q > 0:
        raise BundleError(f"Bundle {info.path}: calibration quantile {level} is {q}; expected a "
                         f"positive error. Re-train the bundle on non-constant data.")
    return float(info.threshold.threshold) / q


class AdaptiveState:
    """Rolling window of recent non-anomalous errors for one key.

    Args:
      config: quantile level, window length and warm-up.
      scale: `adaptive_scale(bundle_info, config.quantile)`.
      base_threshold: the bundle's threshold, used during warm-up.
    """

    def __init__(self, config: AdaptiveConfig, scale: float, base_threshold: float):
        self.config = config
        self.scale = float(scale)
        self.base_threshold = float(base_threshold)
        self._fifo: Deque[float] = collections.deque()
        self._sorted: List[float] = []

    def __len__(self) -> int:
        return len(self._fifo)

    def threshold(self) -> float:
        if len(self._sorted) < self.config.warmup_rows:
            return self.base_threshold
        # numpy's default (linear) quantile on the sorted window.
        pos = self.config.quantile * (len(self._sorted) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(self._sorted) - 1)
        q = self._sorted[lo] + (self._sorted[hi] - self._sorted[lo]) * (pos - lo)
        return q * self.scale

    def update(self, errors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Scores `errors` in order; returns (threshold per row, flag per row).

        Each row is compared with the threshold before it; only unflagged rows join
        the window.
        """
        n = len(errors)
        thresholds = np.empty(n, dtype=np.float32)
        flags = np.empty(n, dtype=bool)
        cap = self.config.window_rows
        for i, e in enumerate(np.asarray(errors, dtype=np.float64).tolist()):
            t = self.threshold()
            thresholds[i] = t
            flags[i] = flag = e > t
            if not flag:
                self._fifo.append(e)
                bisect.insort(self._sorted, e)
                if len(self._fifo) > cap:
                    old = self._fifo.popleft()
                    del self._sorted[bisect.bisect_left(self._sorted, old)]
        return thresholds, flags


def with_adaptive_columns(batch: pa.RecordBatch, thresholds: np.ndarray,
                          flags: np.ndarray) -> pa.RecordBatch:
    arrays = list(batch.columns) + [pa.array(thresholds, pa.float32()), pa.array(flags, pa.bool_())]
    schema = pa.schema(list(batch.schema) + list(ADAPTIVE_FIELDS), metadata=batch.schema.metadata)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def split_by_key(batch: pa.RecordBatch, key_column: Optional[str]
                 ) -> List[Tuple[str, pa.RecordBatch]]:
    """[(state key, rows)]: one part per (model_version, key value), rows in input order."""
    versions = batch.column(COL_MODEL_VERSION)
    if key_column is None:
        group = versions
    else:
        if key_column not in batch.schema.names:
            raise ConfigError(
                f"Adaptive key column {key_column!r} is not in the scored output (columns: "
                f"{', '.join(batch.schema.names)}). Add it to --key-columns.")
        group = pc.binary_join_element_wise(
            versions, pc.cast(pc.fill_null(pc.cast(batch.column(key_column), pa.string()),
                                           "<null>"), pa.string()), "|")
    uniques = pc.unique(group).to_pylist()
    if len(uniques) == 1:
        return [(uniques[0] if key_column is not None else f"{uniques[0]}|{ALL_ROWS}", batch)]
    parts = []
    for u in uniques:
        part = batch.filter(pc.equal(group, u))
        parts.append((u if key_column is not None else f"{u}|{ALL_ROWS}", part))
    return parts


def adaptive_update(state: Optional[AdaptiveState], batch: pa.RecordBatch,
                    config: AdaptiveConfig, scale: float, base_threshold: float
                    ) -> Tuple[AdaptiveState, pa.RecordBatch]:
    """Scores the rows of ONE state key against its rolling window, in order.

    A missing state, or one of another scale (another bundle), starts afresh.

    Returns:
      (the key's updated state, `batch` plus the adaptive columns).
    """
    if state is None or state.scale != scale:
        state = AdaptiveState(config, scale, base_threshold)
    thresholds, flags = state.update(scores(batch, base_threshold))
    return state, with_adaptive_columns(batch, thresholds, flags)


def with_adaptive(batch: pa.RecordBatch, states: MutableMapping[str, AdaptiveState],
                  config: AdaptiveConfig, scale: float, base_threshold: float
                  ) -> pa.RecordBatch:
    """`batch` plus the adaptive columns, each state key's rows run through `states[key]`."""
    out = []
    for key, part in split_by_key(batch, config.key_column):
        states[key], part = adaptive_update(states.get(key), part, config, scale,
                                            base_threshold)
        out.append(part)
    return out[0] if len(out) == 1 else as_record_batch(pa.Table.from_batches(out))


class _AdaptiveDoFn(beam.DoFn):
    """Per state key: rows in, same rows plus adaptive columns out (state updated in order)."""
    STATE = ReadModifyWriteStateSpec("adaptive", PickleCoder())

    def __init__(self, config: AdaptiveConfig):
        self._config = config

    def process(self, element, state=beam.DoFn.StateParam(STATE)):
        _, chunk = element
        current, batch = adaptive_update(state.read(), chunk.batch, self._config,
                                         chunk.adaptive_scale, chunk.base_threshold)
        state.write(current)
        yield chunk._replace(batch=batch)


class AdaptiveThresholds(beam.PTransform):
    """Adds `adaptive_threshold` and `is_anomaly_adaptive` to scored chunks.

    Input and output: `streaming.scoring.Chunk`s in the global window (state must outlive
    output windows). Element timestamps are kept.

    Example:
      scored | "Adaptive threshold" >> AdaptiveThresholds(AdaptiveConfig(key_column="id"))
    """

    def __init__(self, config: AdaptiveConfig):
        super().__init__()
        self._config = config

    def expand(self, chunks):
        key_column = self._config.key_column
        return (chunks
                | "Key by model and key" >> beam.FlatMap(
                    lambda c: [(k, c._replace(batch=b)) for k, b in split_by_key(c.batch, key_column)])
                | "Rolling quantile" >> beam.ParDo(_AdaptiveDoFn(self._config)))
