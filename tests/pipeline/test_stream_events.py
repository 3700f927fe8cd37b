"""Event time, late data and triggers (TestStream, Pub/Sub source) + the pure helpers."""
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as _TestStream

from latentbeam.demo import digits_table
from latentbeam.errors import ConfigError
from latentbeam.pipeline.adaptive import AdaptiveConfig, AdaptiveState
from latentbeam.pipeline.records import ScoringOptions
from latentbeam.pipeline.streaming import (StreamJob, build_stream, event_micros,
                                           split_by_window)

pytestmark = pytest.mark.filterwarnings("ignore")


def _message(i: int, ts: float) -> bytes:
    row = digits_table().slice(i, 1).to_pylist()[0]
    row.pop("label")
    row["ts"] = ts
    return json.dumps(row).encode()


def _files(directory, suffix=".parquet"):
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.endswith(suffix))


def _ids_by_window(out):
    """{window start-end from the file name: [sorted ids per file]}; every file must read back."""
    windows = {}
    for f in _files(out):
        ids = sorted(pq.read_table(f).column("id").to_pylist())
        span = "-".join(os.path.basename(f).split("-")[1:3])
        windows.setdefault(span, []).append(ids)
    return {k: sorted(v) for k, v in windows.items()}


def test_event_time_windows_late_rows_and_late_panes(tmp_path, tiny_bundle_dir):
    out = str(tmp_path / "out")
    cfg = StreamJob(bundle=tiny_bundle_dir, output=out, pubsub_subscription="projects/p/subscriptions/s",
                       window_seconds=10, timestamp_column="ts", allowed_lateness_seconds=5,
                       scoring=ScoringOptions(key_columns=("id",)))
    stream = (_TestStream()
              .advance_watermark_to(0)
              # Message time 1..8, event times in window [0, 10) and [10, 20).
              .add_elements([beam.window.TimestampedValue(_message(0, 1.0), 1),
                             beam.window.TimestampedValue(_message(1, 9.5), 2),
                             beam.window.TimestampedValue(_message(2, 12.0), 8),
                             beam.window.TimestampedValue(b"not json", 8)])
              .advance_watermark_to(12)  # [0, 10) fires: ids 0, 1
              # Arrives at 13 for window [0, 10): end 10 + lateness 5 >= 13 -> late pane.
              .add_elements([beam.window.TimestampedValue(_message(3, 4.0), 13)])
              # Arrives at 16: 10 + 5 < 16 -> dead letter `late_row`, never silently dropped.
              .add_elements([beam.window.TimestampedValue(_message(4, 3.0), 16)])
              .advance_watermark_to(30)
              .advance_watermark_to_infinity())
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
    with beam.Pipeline(options=options) as p:
        build_stream(p, cfg, messages=p | stream, run_id="t1")

    by_window = _ids_by_window(out)
    assert by_window == {
        "19700101T000000-19700101T000010": [[0, 1], [3]],  # on-time pane, then late pane
        "19700101T000010-19700101T000020": [[2]],
    }
    letters = pa.concat_tables([pq.read_table(f) for f in _files(os.path.join(out, "_dead_letter"), ".pq")])
    got = sorted((d["reason"], json.loads(d["payload"])["id"] if d["reason"] == "late_row" else None)
                 for d in letters.to_pylist())
    assert got == [("bad_message", None), ("late_row", 4)]


def test_early_firing_writes_partial_window_then_the_rest(tmp_path, tiny_bundle_dir):
    out = str(tmp_path / "out")
    cfg = StreamJob(bundle=tiny_bundle_dir, output=out, pubsub_subscription="projects/p/subscriptions/s",
                       window_seconds=60, early_firing_seconds=5,
                       scoring=ScoringOptions(key_columns=("id",)))
    stream = (_TestStream()
              .advance_watermark_to(0)
              .add_elements([beam.window.TimestampedValue(_message(i, 0), 1 + i) for i in range(3)])
              .advance_processing_time(6)  # early pane: ids 0-2
              .add_elements([beam.window.TimestampedValue(_message(i, 0), 10 + i) for i in (3, 4)])
              .advance_watermark_to(61)  # on-time pane: ids 3-4 only (discarding)
              .advance_watermark_to_infinity())
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
    with beam.Pipeline(options=options) as p:
        build_stream(p, cfg, messages=p | stream, run_id="t2")
    assert _ids_by_window(out) == {"19700101T000000-19700101T000100": [[0, 1, 2], [3, 4]]}


def test_split_by_window_groups_rows_and_finds_null_and_late_rows():
    scored = pa.RecordBatch.from_pydict({"id": [10, 11, 12, 13, 14]})
    s = 1_000_000
    times = np.array([1 * s, 12 * s, np.iinfo(np.int64).min, 3 * s, 19 * s], dtype=np.int64)
    parts, nulls, late = split_by_window(scored, times, np.array([0, 1, 2, 3, 4]),
                                         window_us=10 * s, lateness_us=5 * s, arrival_us=16 * s)
    # Window [0, 10) closed at 10 + 5 < 16: rows 0 and 3 are late; [10, 20) is open.
    assert [(ts, p.column("id").to_pylist()) for ts, p in parts] == [(12 * s, [11, 14])]
    assert nulls.tolist() == [2] and late.tolist() == [0, 3]


def test_event_micros_reads_timestamps_and_epoch_seconds():
    ts = pa.array([0, 1_500_000, None], pa.timestamp("us"))
    assert event_micros(ts, "t").tolist() == [0, 1_500_000, np.iinfo(np.int64).min]
    assert event_micros(pa.array([1.5, 2.0]), "t").tolist() == [1_500_000, 2_000_000]


def test_adaptive_threshold_follows_drift_and_ignores_anomalies():
    rng = np.random.default_rng(0)
    n = 6000
    level = np.linspace(1.0, 3.0, n)  # the normal error level triples over the stream
    errors = level * rng.gamma(4.0, 0.25, n)
    spikes = np.arange(500, n, 250)
    errors[spikes] = level[spikes] * 20.0
    # Calibrated at level 1: threshold = 99th percentile of gamma(4, 0.25) = 2.5113,
    # median 0.9180 (what bundle.json's calibration holds).
    threshold, median = 2.5113, 0.9180
    state = AdaptiveState(AdaptiveConfig(quantile=0.5, window_rows=500, warmup_rows=50),
                          scale=threshold / median, base_threshold=threshold)
    thresholds, flags = state.update(errors)
    normal = np.ones(n, bool)
    normal[spikes] = False
    assert (thresholds[:50] == np.float32(threshold)).all()  # warm-up: the bundle's threshold
    assert flags[spikes].all()  # every injected anomaly is flagged ...
    assert flags[normal].mean() == pytest.approx(0.0162, abs=0.001)  # ~1% as calibrated
    static = errors[normal] > threshold
    assert static.mean() == pytest.approx(0.279, abs=0.001)  # the fixed threshold: 28% ...
    assert static[-1000:].mean() == pytest.approx(0.529, abs=0.001)  # ... half at the end
    assert thresholds[-1] / threshold == pytest.approx(3.0, abs=0.05)  # tracked the level


def test_adaptive_config_names_the_stream_flags_at_fault():
    with pytest.raises(ConfigError) as e:
        AdaptiveConfig(window_rows=20, warmup_rows=50)
    assert str(e.value) == ("--adaptive-warmup-rows (50) must be at most --adaptive-window-rows "
                            "(20)")
    with pytest.raises(ConfigError) as e:
        AdaptiveConfig(window_rows=0, warmup_rows=50)  # the window alone is at fault
    assert str(e.value) == "--adaptive-window-rows must be >= 1. Received: 0"


def test_adaptive_threshold_keeps_one_window_per_key():
    from latentbeam.pipeline.adaptive import split_by_key

    rng = np.random.default_rng(1)
    n = 4000
    sensor = np.where(np.arange(n) % 2 == 0, "a", "b")
    # Sensor b runs at three times sensor a's normal error level.
    errors = np.where(sensor == "a", 1.0, 3.0) * rng.gamma(4.0, 0.25, n)
    batch = pa.RecordBatch.from_pydict({
        "sensor": sensor, "reconstruction_error": errors.astype(np.float32),
        "model_version": ["v1"] * n})
    parts = split_by_key(batch, "sensor")
    assert [(k, p.num_rows) for k, p in parts] == [("v1|a", 2000), ("v1|b", 2000)]
    threshold, median = 2.5113, 0.9180  # calibrated at sensor a's level
    flagged = {}
    for key, part in parts:
        state = AdaptiveState(AdaptiveConfig(quantile=0.5, window_rows=500, warmup_rows=50,
                                             key_column="sensor"),
                              scale=threshold / median, base_threshold=threshold)
        thresholds, flags = state.update(part.column("reconstruction_error").to_numpy())
        flagged[key] = flags[50:].mean()
        assert thresholds[-1] == pytest.approx(
            threshold * (1.0 if key.endswith("a") else 3.0), rel=0.1)
    # Each key flags a few percent (1% calibrated, plus the noise of a 500-row median);
    # the fixed threshold would flag most of b.
    assert flagged["v1|a"] < 0.05 and flagged["v1|b"] < 0.05
    assert (errors[sensor == "b"] > threshold).mean() > 0.5
