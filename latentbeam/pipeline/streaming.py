"""`latentbeam stream`: score Parquet files (or Pub/Sub JSON messages) as they land.

File source (--watch GLOB):

    MatchContinuously(every --poll-seconds, has_deduplication=False, stop at
    --stop-after-seconds) -> path -> [fused, no shuffle] first sighting of the path
    (per-process set + OUT/_manifest/) -> score the whole file with the current bundle
    (records.score_record_batch) -> rows split by window -> one Parquet file per
    (window, source file) -> dead letters -> manifest entry.

    Writing happens in the stage fused with the poll. On the local runners a
    GroupByKey (and so any Beam window firing or fileio.WriteToFiles) downstream of
    PeriodicImpulse only fires once polling stops: FnApiRunner runs stage by stage,
    and the BundleBasedDirectRunner holds a splittable DoFn's output watermark at
    -inf while it has residual work (and cannot run PeriodicImpulse at all: it
    rejects defer_remainder). Writing in the fused stage makes a file's scores
    readable within about one poll interval on every runner.

    Windows: a row's window is FixedWindows(--window-seconds) of its event time
    (--timestamp-column) or of the poll time that found its file. Output file names are
    `scored-WINDOWSTART-WINDOWEND-SOURCEHASH.parquet`: a window's rows are the union of
    its files; each source file adds its own file (the trigger is "every arriving file").

Pub/Sub source (--pubsub-subscription): JSON messages -> FixedWindows ->
BatchElements -> score -> [adaptive threshold, stateful] -> FixedWindows with
trigger AfterWatermark(early=AfterProcessingTime(--early-firing-seconds) if given,
late=AfterCount(1)), DISCARDING, allowed lateness -> fileio.WriteToFiles with
ParquetChunkSink (one new file per firing, so no row is written twice).

Late rows (event time, both sources): a row is late when its window's end plus
--allowed-lateness-seconds lies before the time it arrived (the poll that found its
file, or the Pub/Sub message time). Late rows go to the dead letters with reason
`late_row`, never dropped silently. Rows within the allowed lateness of a closed window
are still written to that window (an extra file; in the Pub/Sub path a late pane). In
the Pub/Sub path Beam drops a row only if its window expired before the row reached
the window step, which cannot happen to rows passing the check above: the watermark
downstream of the parsing step is held below the message time until the row has been
handed on.

Manifest (file source): OUT/_manifest/<hash of path>.json is written for a source file
after all its output and dead-letter files are written. A restarted stream skips
sources with a manifest entry. A source scored again after a crash (between its
outputs and its manifest entry) rewrites its files under the same deterministic names
(window + hash of the source path) and removes any other files of that source left by
the crashed run before its manifest entry is written: each source file's rows appear
exactly once in OUT after the restarted stream has processed it. Caveat: with
processing time, a reader looking between the crash and the restart sees the crashed
run's files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from latentbeam import fs
from latentbeam import outputs as layout
from latentbeam import paths
from latentbeam.model.features import (REASON_CONVERSION_ERROR, REASON_NULL,
                                       REASON_UNREADABLE, REASON_WRONG_TYPE,
                                       SchemaMismatch, clip, echo, row_payload)
from latentbeam.pipeline.adaptive import (AdaptiveConfig, AdaptiveState, AdaptiveThresholds,
                                          adaptive_scale, scores, split_by_key,
                                          with_adaptive_columns)
from latentbeam.pipeline.bundles import BundleResolver
from latentbeam.pipeline.io import UnreadableFile, iter_file_batches
from latentbeam.pipeline.records import (DATA_ERRORS, ScoringOptions, as_file_fault,
                                         dead_letter, dead_letters_to_batch,
                                         rows_to_record_batch, score_record_batch,
                                         whole_file_dead_letter)

log = logging.getLogger(__name__)

REASON_LATE = "late_row"  # event time's window (+ allowed lateness) closed before arrival
REASON_BAD_TIMESTAMP = "bad_timestamp"  # event time present but unusable (NaN, out of range)
REASON_BAD_MESSAGE = "bad_message"  # Pub/Sub message that is not a JSON object (or list)

DEAD_LETTER_DIR = layout.DEAD_LETTER_DIR
MANIFEST_DIR = layout.MANIFEST_DIR
TEMP_DIR = layout.TEMP_DIR
META_SOURCES = b"latentbeam.sources"  # footer: JSON {source: rows in this file}
META_MODEL_VERSIONS = b"latentbeam.model_versions"  # footer: JSON list of model versions

DEAD = "dead_letters"
ACCOUNT = "accounting"


@dataclass(frozen=True)
class StreamConfig:
    bundle: str  # bundle directory, or a watched location of bundle versions
    output: str  # OUT: windowed Parquet, OUT/_dead_letter/, OUT/_manifest/
    watch: Optional[str] = None  # Parquet glob polled for new files
    pubsub_subscription: Optional[str] = None  # projects/P/subscriptions/S
    window_seconds: float = 60.0  # FixedWindows size
    poll_seconds: float = 5.0  # watch interval
    stop_after_seconds: Optional[float] = None  # end cleanly after this long
    timestamp_column: Optional[str] = None  # event time; default: arrival (processing) time
    allowed_lateness_seconds: float = 0.0  # rows this late still reach their window
    early_firing_seconds: Optional[float] = None  # speculative panes this often (processing time)
    bundle_poll_seconds: Optional[float] = None  # watched bundle re-check; default poll_seconds
    batch_rows: int = 8192  # rows per record batch read from a file
    scoring: ScoringOptions = ScoringOptions()
    adaptive: Optional[AdaptiveConfig] = None  # None: no adaptive columns

    def __post_init__(self):
        if (self.watch is None) == (self.pubsub_subscription is None):
            raise ValueError("Expected exactly one source: --watch GLOB or --pubsub-subscription "
                             f"SUB. Received: watch={self.watch!r}, "
                             f"pubsub_subscription={self.pubsub_subscription!r}")
        for name in ("window_seconds", "poll_seconds", "allowed_lateness_seconds",
                     "stop_after_seconds", "early_firing_seconds", "bundle_poll_seconds"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number of "
                                 f"seconds. Received: {value}")
        for name in ("window_seconds", "poll_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0. Received: "
                                 f"{getattr(self, name)}")
        if self.allowed_lateness_seconds < 0:
            raise ValueError(f"--allowed-lateness-seconds must be >= 0. Received: "
                             f"{self.allowed_lateness_seconds}")
        if self.window_seconds > MAX_WINDOW_SECONDS:
            raise ValueError(f"--window-seconds must be at most {MAX_WINDOW_SECONDS:g} (10 "
                             f"years). Received: {self.window_seconds}")
        if self.stop_after_seconds is not None and not self.stop_after_seconds > 0:
            raise ValueError(f"--stop-after-seconds must be > 0. Received: "
                             f"{self.stop_after_seconds}")

    @property
    def source_name(self) -> str:
        return self.watch or f"pubsub:{self.pubsub_subscription}"


class Chunk(NamedTuple):
    """Rows on their way to a Parquet file: where they came from, and Arrow data."""
    source: str  # input file (or pubsub:SUBSCRIPTION)
    batch: pa.RecordBatch  # scored rows (or dead-letter records)
    adaptive_scale: float = 1.0  # adaptive.adaptive_scale of the scoring bundle
    base_threshold: float = 0.0  # the scoring bundle's threshold


# ---------------------------------------------------------------------------- event time

def _micros(seconds: float) -> int:
    return Duration.of(seconds).micros


NULL_TIME = np.iinfo(np.int64).min
# Event times whose windows can be named (window stamps are calendar dates): years
# 1000..9000 UTC, with room for windows up to MAX_WINDOW_SECONDS on either side.
MIN_EVENT_US = -30610224000 * 1_000_000  # 1000-01-01T00:00:00Z
MAX_EVENT_US = 221845392000 * 1_000_000  # 9000-01-01T00:00:00Z
MAX_WINDOW_SECONDS = 10 * 365.25 * 86400
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}


def event_times(column: pa.Array | pa.ChunkedArray, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(event times as int64 epoch micros, mask of unusable values) of a timestamp column.

    Accepts Arrow timestamps (any unit; naive means UTC; nanoseconds are floored to
    microseconds) and numbers (epoch seconds). Nulls are NULL_TIME; NaN/inf and times
    outside MIN_EVENT_US..MAX_EVENT_US are NULL_TIME and flagged unusable (each such row
    becomes a `bad_timestamp` dead letter; nothing here raises on a value).

    Raises:
      SchemaMismatch: (wrong_type) a column of another type; the whole file is dead-lettered.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    t = column.type
    null = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(t):
        raw = pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy(zero_copy_only=False)
        per = _UNIT_US[t.unit]
        if per is None:
            us = np.floor_divide(raw, 1000)
            ok = np.ones(len(raw), dtype=bool)
        else:
            ok = (raw >= MIN_EVENT_US // per) & (raw <= MAX_EVENT_US // per)
            us = np.where(ok, raw, 0) * per
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        seconds = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.isfinite(seconds) & (seconds * 1e6 >= MIN_EVENT_US) & \
                (seconds * 1e6 <= MAX_EVENT_US)
            us = np.where(ok, np.round(np.where(ok, seconds, 0.0) * 1e6), 0).astype(np.int64)
    else:
        raise SchemaMismatch(f"timestamp column {name!r} has type {clip(t)}; expected a "
                             f"timestamp or epoch seconds (number)", REASON_WRONG_TYPE)
    unusable = ~null & (~ok | (us < MIN_EVENT_US) | (us > MAX_EVENT_US))
    us = np.where(null | unusable, NULL_TIME, us).astype(np.int64)
    return us, unusable


def event_micros(column: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """Event times as int64 epoch microseconds, with nulls (and unusable values) as INT64 min."""
    return event_times(column, name)[0]


def split_by_window(scored: pa.RecordBatch, times_us: np.ndarray, rows: np.ndarray, *,
                    window_us: int, lateness_us: int, arrival_us: int
                    ) -> Tuple[List[Tuple[int, pa.RecordBatch]], np.ndarray, np.ndarray]:
    """Groups scored rows by their event-time window; finds null and late rows.

    Args:
      scored: scored rows (n).
      times_us: (n,) event time per row, epoch micros, NULL_TIME for null.
      rows: (n,) index of each row in its source.
      window_us, lateness_us: FixedWindows size and allowed lateness.
      arrival_us: when the rows arrived (poll / message time).

    Returns:
      ([(element timestamp micros, rows of one window)] in window order,
       source indices of null-time rows, source indices of late rows).
    """
    null = times_us == NULL_TIME
    start = times_us - np.mod(times_us, window_us)
    late = ~null & (start + window_us + lateness_us < arrival_us)
    keep = ~null & ~late
    parts = []
    for s in np.unique(start[keep]):
        mask = keep & (start == s)
        parts.append((int(times_us[mask].min()), scored.filter(pa.array(mask))))
    return parts, rows[null], rows[late]


# ---------------------------------------------------------------------------- file source

def manifest_name(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:32] + ".json"


def manifest_path(output: str, source: str) -> str:
    return fs.join(output, MANIFEST_DIR, manifest_name(source))


def read_manifest(output: str) -> Dict[str, dict]:
    """{source path: manifest entry} of every source already scored into `output`."""
    entries = {}
    for path in fs.match(fs.join(output, MANIFEST_DIR, "*.json")):
        try:
            entry = json.loads(fs.read_bytes(path))
            entries[entry["source"]] = entry
        except (ValueError, KeyError) as e:
            log.warning("Ignoring unreadable manifest entry %s: %s", path, e)
    return entries


def _write_atomically(path: str, data: bytes) -> None:
    layout.write_atomically(path, data)


def clean_staging(output: str) -> int:
    """Deletes the staging a crashed run left in `output` (its `_temp/` and `*.partial` files).

    One stream per output directory: a second stream writing to the same OUT would lose
    its staging here. Returns the number of files removed.
    """
    stale = [rel for rel in layout.list_tree(output)
             if layout.is_staging(rel) and not rel.endswith("/")]
    if stale:
        log.warning("Removing %d staging file(s) of an earlier, interrupted run in %s",
                    len(stale), output)
        layout.delete_files(output, stale)
    return len(stale)


_SEEN: Dict[str, set] = {}
_SEEN_LOCK = threading.Lock()


def first_sighting(output: str, path: str) -> bool:
    """True the first time this process sees `path` for `output` and it is not in the manifest.

    Deduplication by path: later polls of the same file, and files a previous run
    already recorded in OUT/_manifest/, are skipped.
    """
    with _SEEN_LOCK:
        seen = _SEEN.setdefault(output, set())
        if path in seen:
            return False
        seen.add(path)
    if fs.exists(manifest_path(output, path)):
        log.info("Skipping %s: already in the manifest of %s", path, output)
        return False
    return True


class _TrackedWriter:
    """A Parquet writer whose footer records rows per source and every model_version.

    The file's schema is the first batch's; later batches are conformed to it.
    """

    def __init__(self, sink):
        self._sink = sink
        self._writer = None
        self.sources: Counter = Counter()
        self._versions: set = set()

    @property
    def rows(self) -> int:
        return sum(self.sources.values())

    def write(self, batch: pa.RecordBatch, source: str, schema: Optional[pa.Schema] = None):
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._sink, schema or batch.schema)
        if batch.schema != self._writer.schema:
            batch = _conform(batch, self._writer.schema, source)
        self._writer.write_batch(batch)
        self.sources[source] += batch.num_rows
        if "model_version" in batch.schema.names:
            self._versions.update(pc.unique(batch.column("model_version")).to_pylist())

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.add_key_value_metadata({
            META_SOURCES: json.dumps(dict(self.sources)).encode(),
            META_MODEL_VERSIONS: json.dumps(sorted(self._versions)).encode()})
        self._writer.close()
        self._writer = None


def _parquet_bytes(batches: List[pa.RecordBatch], source: str) -> bytes:
    sink = pa.BufferOutputStream()
    writer = _TrackedWriter(sink)
    for b in batches:
        writer.write(b, source)
    writer.close()
    return sink.getvalue().to_pybytes()


class _WindowFiles:
    """The Parquet files of one source file, one per window, written incrementally.

    Each window's rows stream into a staging file under OUT/_temp/ (memory stays at
    about one record batch however large the source file is); `publish` closes them
    and renames them to their final names, `discard` deletes them.
    """

    def __init__(self, output: str, tag: str, source: str, window_us: int):
        self._output, self._tag, self._source, self._window_us = output, tag, source, window_us
        self._open: Dict[int, Tuple[str, Any, _TrackedWriter]] = {}  # start -> staging, file, writer

    @property
    def rows(self) -> int:
        return sum(writer.rows for _, _, writer in self._open.values())

    def write(self, event_us: int, batch: pa.RecordBatch) -> None:
        start = event_us - event_us % self._window_us
        if start not in self._open:
            staging = fs.join(self._output, TEMP_DIR,
                              f"{self._tag}-{uuid.uuid4().hex}.parquet{layout.PARTIAL_SUFFIX}")
            if fs.is_local(staging):
                os.makedirs(os.path.dirname(staging), exist_ok=True)
            f = FileSystems.create(staging)
            self._open[start] = (staging, f, _TrackedWriter(f))
        self._open[start][2].write(batch, self._source)

    def _close(self) -> None:
        for _, f, writer in self._open.values():
            writer.close()
            f.close()

    def publish(self) -> List[str]:
        """Closes the staging files and moves them to their final names, in window order."""
        self._close()
        src, dst = [], []
        for start in sorted(self._open):
            src.append(self._open[start][0])
            dst.append(fs.join(self._output, f"scored-{_window_name(start, self._window_us)}-"
                                             f"{self._tag}.parquet"))
        if src:
            FileSystems.rename(src, dst)
        self._open = {}
        return dst

    def discard(self) -> None:
        try:
            self._close()
        except (OSError, pa.ArrowException):
            pass
        staged = [entry[0] for entry in self._open.values()]
        if staged:
            FileSystems.delete([p for p in staged if FileSystems.exists(p)])
        self._open = {}


class _ScoreFileDoFn(beam.DoFn):
    """New file path -> its scored rows and dead letters written as Parquet, then the manifest.

    Runs fused with the poll (no shuffle in between), so a file's scores are readable
    as soon as it is scored, on every runner. Scored rows stream into staging files
    (bounded memory) that are moved to their final names only once the whole file was
    read: an unreadable tail turns the whole file into one dead letter instead of a
    partial output. Output names are deterministic (window + hash of the source path),
    so scoring a file again after a crash rewrites the same files instead of adding
    duplicates.

    Yields:
      (source path, manifest entry) per newly scored file.
    """

    def __init__(self, cfg: StreamConfig):
        self._cfg = cfg
        self._resolver = None
        self._adaptive: Dict[str, AdaptiveState] = {}

    def setup(self):
        self._resolver = BundleResolver(self._cfg.bundle,
                                        self._cfg.bundle_poll_seconds or self._cfg.poll_seconds)

    def process(self, path, arrival=beam.DoFn.TimestampParam):
        cfg = self._cfg
        if not first_sighting(cfg.output, path):
            return
        bundle = self._resolver.current()
        tag = hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]
        files = _WindowFiles(cfg.output, tag, path, _micros(cfg.window_seconds))
        letters: List[dict] = []
        rows_read = 0
        try:
            for offset, batch in iter_file_batches(path, batch_rows=cfg.batch_rows):
                rows_read += batch.num_rows
                try:
                    self._score_batch(bundle, path, batch, offset, arrival, files, letters)
                except DATA_ERRORS as e:
                    # A value no check above foresaw: this file becomes one dead letter
                    # instead of crashing the stream (and again after every restart).
                    raise as_file_fault(e, f"scoring rows {offset}.."
                                           f"{offset + batch.num_rows - 1}") from e
        except (UnreadableFile, SchemaMismatch) as e:
            # All or nothing per file: drop the staged output, keep one dead letter.
            log.warning("Dead-lettering whole file %s: %s", path, clip(e, 400),
                        exc_info=getattr(e, "reason", None) == REASON_CONVERSION_ERROR)
            files.discard()
            reason = e.reason if isinstance(e, SchemaMismatch) else REASON_UNREADABLE
            letters = [whole_file_dead_letter(path, e, reason)]
            rows_read = 0  # as in the batch job: a whole-file fault reads no rows
        except BaseException:
            files.discard()
            raise
        scored_rows = files.rows
        outputs = self._write(path, tag, files.publish(), letters, arrival)
        entry = {"source": path, "rows": rows_read, "scored": scored_rows,
                 "dead_letters": len(letters), "model_version": bundle.info.model_version,
                 "outputs": outputs, "arrival": arrival.to_utc_datetime().isoformat() + "Z",
                 "completed_at": time.time()}
        # Written last: a file is in the manifest only once all its rows are on disk.
        _write_atomically(manifest_path(cfg.output, path), json.dumps(entry).encode())
        yield path, entry

    def _score_batch(self, bundle, path, batch, offset, arrival, files, letters) -> None:
        cfg = self._cfg
        scored, bad = score_record_batch(bundle, batch, source=path, row_offset=offset,
                                         opts=cfg.scoring)
        letters += bad
        if scored is None:
            return
        if cfg.timestamp_column is None:
            parts = [(arrival.micros, scored)]
        else:
            parts = self._by_event_time(path, batch, scored, bad, offset, arrival, letters)
        for ts, part in parts:
            if cfg.adaptive is not None:
                part = self._with_adaptive(bundle, part)
            files.write(ts, part)

    def _write(self, path, tag, outputs, letters, arrival) -> List[str]:
        """Writes the dead letters next to the published outputs; removes stale files."""
        cfg = self._cfg
        w = _micros(cfg.window_seconds)
        outputs = list(outputs)
        if letters:
            a = arrival.micros
            name = layout.dead_letter_name(f"dead_letter-{_window_name(a - a % w, w)}-{tag}")
            outputs.append(fs.join(cfg.output, DEAD_LETTER_DIR, name))
            _write_atomically(outputs[-1], _parquet_bytes([dead_letters_to_batch(letters)], path))
        # A run that crashed after writing this source's files but before its manifest
        # entry may have put them in other windows (processing time): remove those.
        stale = [f for pattern in (fs.join(cfg.output, f"scored-*-{tag}.parquet"),
                                   fs.join(cfg.output, DEAD_LETTER_DIR,
                                           layout.dead_letter_name(f"dead_letter-*-{tag}")))
                 for f in fs.match(pattern) if f not in outputs]
        if stale:
            log.warning("Removing %d output file(s) of an earlier, unfinished scoring of %s",
                        len(stale), path)
            FileSystems.delete(stale)
        return outputs

    def _with_adaptive(self, bundle, batch: pa.RecordBatch) -> pa.RecordBatch:
        cfg = self._cfg.adaptive
        out = []
        for key, part in split_by_key(batch, cfg.key_column):
            state = self._adaptive.get(key)
            if state is None:
                state = self._adaptive[key] = AdaptiveState(
                    cfg, adaptive_scale(bundle.info, cfg.quantile),
                    float(bundle.info.threshold.threshold))
            out.append(with_adaptive_columns(
                part, *state.update(scores(part, bundle.info.threshold.threshold))))
        return out[0] if len(out) == 1 else pa.Table.from_batches(out).combine_chunks().to_batches()[0]

    def _by_event_time(self, path, batch, scored, bad, offset, arrival, letters):
        cfg = self._cfg
        name = cfg.timestamp_column
        if name not in batch.schema.names:
            raise SchemaMismatch(f"timestamp column {name!r} missing (columns present: "
                                 f"{clip(', '.join(batch.schema.names), 400)})")
        mask = np.ones(batch.num_rows, dtype=bool)
        mask[[d["row"] - offset for d in bad]] = False
        valid = np.nonzero(mask)[0]
        all_times, unusable = event_times(batch.column(name), name)
        times = all_times[valid]
        parts, nulls, late = split_by_window(
            scored, times, valid, window_us=_micros(cfg.window_seconds),
            lateness_us=_micros(cfg.allowed_lateness_seconds), arrival_us=arrival.micros)
        for i in nulls:
            if unusable[i]:
                letters.append(dead_letter(
                    path, offset + int(i), REASON_BAD_TIMESTAMP,
                    f"timestamp column {name!r} value {_cell_text(batch.column(name), int(i))} "
                    f"is not a usable event time (NaN/inf, or outside years 1000..9000 UTC)",
                    row_payload(batch, int(i))))
                continue
            letters.append(dead_letter(path, offset + int(i), REASON_NULL,
                                       f"timestamp column {name!r} is null",
                                       row_payload(batch, int(i))))
        for i in late:
            letters.append(dead_letter(path, offset + int(i), REASON_LATE,
                                       _late_detail(cfg, arrival), row_payload(batch, int(i))))
        return parts


def _cell_text(column, i: int) -> str:
    cell = column.slice(i, 1)
    try:
        return echo(cell.to_pylist()[0])
    except Exception:  # noqa: BLE001  beyond Python's datetime range: Arrow's text form
        return clip(cell.cast(pa.string()).to_pylist()[0])


def _window_name(start_us: int, window_us: int) -> str:
    return f"{_window_stamp(Timestamp(micros=start_us))}-{_window_stamp(Timestamp(micros=start_us + window_us))}"


def _late_detail(cfg: StreamConfig, arrival: Timestamp) -> str:
    return (f"event-time window of {cfg.window_seconds:g}s plus allowed lateness "
            f"{cfg.allowed_lateness_seconds:g}s had closed when the row arrived at "
            f"{arrival.to_utc_datetime().isoformat()}Z")


def _adaptive_params(cfg: StreamConfig, bundle) -> Tuple[float, float]:
    if cfg.adaptive is None:
        return 1.0, float(bundle.info.threshold.threshold)
    return adaptive_scale(bundle.info, cfg.adaptive.quantile), float(bundle.info.threshold.threshold)


# ---------------------------------------------------------------------------- Pub/Sub source

def _parse_time(value: Any) -> Optional[int]:
    """JSON timestamp value (epoch seconds, or ISO 8601 text) -> epoch micros."""
    import datetime as dt

    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
            us = int(round(seconds * 1e6)) if np.isfinite(seconds) else None
        elif isinstance(value, str):
            d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.timezone.utc)
            us = Timestamp.from_utc_datetime(d.astimezone(dt.timezone.utc)).micros
        else:
            return None
    except (ValueError, OverflowError, TypeError):  # huge ints, dates past year 9999, ...
        return None
    return us if us is not None and MIN_EVENT_US <= us <= MAX_EVENT_US else None


class _ParseMessageDoFn(beam.DoFn):
    """Pub/Sub payload (bytes) -> row dicts, at event time or the message time; bad -> DEAD.

    A message holds one JSON object (one row) or a JSON list of objects.
    """

    def __init__(self, cfg: StreamConfig):
        self._cfg = cfg

    def process(self, message, arrival=beam.DoFn.TimestampParam):
        cfg = self._cfg
        source = cfg.source_name
        data = getattr(message, "data", message)
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            yield _dead(source, REASON_BAD_MESSAGE, f"not JSON ({clip(e, 200)})",
                        json.dumps({"text": clip(text, 4096)}))
            return
        rows = doc if isinstance(doc, list) else [doc]
        for row in rows:
            if not isinstance(row, dict):
                yield _dead(source, REASON_BAD_MESSAGE, "expected a JSON object per row",
                            _json_row(row))
                continue
            if cfg.timestamp_column is None:
                yield row
                continue
            value = row.get(cfg.timestamp_column)
            us = _parse_time(value)
            if us is None:
                if value is None:
                    yield _dead(source, REASON_NULL, f"timestamp field "
                                f"{cfg.timestamp_column!r} is missing or null", _json_row(row))
                else:
                    yield _dead(source, REASON_BAD_TIMESTAMP, f"timestamp field "
                                f"{cfg.timestamp_column!r} value {echo(value)} is not epoch "
                                f"seconds / ISO 8601 within years 1000..9000 UTC",
                                _json_row(row))
                continue
            w = _micros(cfg.window_seconds)
            if us - us % w + w + _micros(cfg.allowed_lateness_seconds) < arrival.micros:
                yield _dead(source, REASON_LATE, _late_detail(cfg, arrival), _json_row(row))
                continue
            yield window.TimestampedValue(row, Timestamp(micros=us))


def _json_row(row) -> str:
    """A message row as JSON text for a dead letter (json.loads output always serializes)."""
    from latentbeam.model.features import MAX_PAYLOAD_CHARS

    text = json.dumps(row, default=str)
    if len(text) > MAX_PAYLOAD_CHARS:
        text = json.dumps({"truncated": True, "chars": len(text), "head": text[:MAX_PAYLOAD_CHARS]})
    return text


def _dead(source: str, reason: str, detail: str, payload: Optional[str]):
    return beam.pvalue.TaggedOutput(
        DEAD, Chunk(source, dead_letters_to_batch([dead_letter(source, None, reason, detail,
                                                               payload)])))


class _ScoreRowsDoFn(beam.DoFn):
    """A batch of row dicts (one window) -> one scored Chunk; bad rows -> DEAD."""

    def __init__(self, cfg: StreamConfig):
        self._cfg = cfg
        self._resolver = None

    def setup(self):
        self._resolver = BundleResolver(self._cfg.bundle,
                                        self._cfg.bundle_poll_seconds or self._cfg.poll_seconds)

    def process(self, rows):
        cfg = self._cfg
        source = cfg.source_name
        bundle = self._resolver.current()
        scale, base = _adaptive_params(cfg, bundle)
        letters: List[dict] = []
        try:
            results = [score_record_batch(bundle, rows_to_record_batch(rows), source=source,
                                          opts=cfg.scoring)]
        except DATA_ERRORS:
            # Some message lacks a feature or has an unusable value: isolate it.
            results = []
            for row in rows:
                try:
                    results.append(score_record_batch(bundle, rows_to_record_batch([row]),
                                                      source=source, opts=cfg.scoring))
                except DATA_ERRORS as e:
                    e = as_file_fault(e, "scoring the message")
                    letters.append(dead_letter(source, None, e.reason, str(e),
                                               _json_row(row)))
        for scored, bad in results:
            # Messages have no stable row index: the payload identifies the row.
            letters += [dict(d, row=None) for d in bad]
            if scored is not None:
                yield Chunk(source, scored, scale, base)
        if letters:
            yield beam.pvalue.TaggedOutput(DEAD, Chunk(source, dead_letters_to_batch(letters)))


# ---------------------------------------------------------------------------- writing

class ParquetChunkSink(fileio.FileSink):
    """fileio sink writing Chunks' record batches to one Parquet file.

    The file's schema is the first chunk's (later chunks are cast to it). The footer
    records how many rows of each source the file holds (for the manifest) and every
    model_version in it.
    """

    def __init__(self, schema: Optional[pa.Schema] = None):
        self._schema = schema
        self._writer: Optional[_TrackedWriter] = None

    def open(self, fh):
        # Beam closes the file handle after flush(), not pyarrow.
        self._writer = _TrackedWriter(_NoClose(fh))

    def write(self, chunk: Chunk):
        self._writer.write(chunk.batch, chunk.source, self._schema)

    def flush(self):
        if self._writer is not None:
            self._writer.close()


class _NoClose:
    """File object wrapper: Beam closes the file handle after flush(), not pyarrow."""

    def __init__(self, fh):
        self._fh = fh
        self.closed = False

    def write(self, data):
        return self._fh.write(data)

    def flush(self):
        return self._fh.flush()

    def close(self):
        self.closed = True

    def tell(self):
        return self._fh.tell()

    def writable(self):
        return True


def _conform(batch: pa.RecordBatch, schema: pa.Schema, source: str) -> pa.RecordBatch:
    if batch.schema.names != schema.names:
        raise ValueError(
            f"Rows from {source} have columns {batch.schema.names}, but the window's file was "
            f"started with {schema.names}. Streams must keep one input schema per output "
            f"directory (same --key-columns types).")
    return batch.cast(schema) if not batch.schema.equals(schema, check_metadata=False) else \
        pa.RecordBatch.from_arrays(batch.columns, schema=schema)


def _window_stamp(t: Timestamp) -> str:
    return t.to_utc_datetime().strftime("%Y%m%dT%H%M%S") + (
        f"{t.micros % 1_000_000:06d}" if t.micros % 1_000_000 else "")


def file_naming(prefix: str, run_id: str, suffix: str = ".parquet"):
    """`PREFIX-START-END-RUN-TOKEN-SHARD.parquet`; TOKEN is unique per firing (late panes)."""
    def _name(win, pane, shard_index, total_shards, compression, destination):
        if isinstance(win, window.IntervalWindow):
            span = f"{_window_stamp(win.start)}-{_window_stamp(win.end)}"
        else:
            span = "global"
        return (f"{prefix}-{span}-{run_id}-{uuid.uuid4().hex[:8]}-"
                f"{int(shard_index or 0):03d}-of-{int(total_shards or 1):03d}{suffix}")
    return _name


class WriteWindowedParquet(beam.PTransform):
    """Windows timestamped Chunks and writes each window's rows as Parquet files.

    Returns the full paths of the files written (one element per file, in its window).

    Example:
      chunks | "Write scored" >> WriteWindowedParquet(out, window_seconds=60, run_id="r1")
    """

    def __init__(self, path: str, *, window_seconds: float, allowed_lateness_seconds: float = 0.0,
                 early_firing_seconds: Optional[float] = None, run_id: str, prefix: str = "scored",
                 suffix: str = ".parquet"):
        super().__init__()
        self._suffix = suffix
        self._path = path
        self._window = window_seconds
        self._lateness = allowed_lateness_seconds
        self._early = early_firing_seconds
        self._run_id = run_id
        self._prefix = prefix

    def expand(self, chunks):
        early = trigger.AfterProcessingTime(self._early) if self._early else None
        path = self._path
        return (chunks
                | "Window" >> beam.WindowInto(
                    window.FixedWindows(self._window),
                    trigger=trigger.AfterWatermark(early=early, late=trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                    allowed_lateness=Duration.of(self._lateness))
                | "Write Parquet" >> fileio.WriteToFiles(
                    path=path, file_naming=file_naming(self._prefix, self._run_id, self._suffix),
                    sink=lambda dest: ParquetChunkSink(), shards=1,
                    temp_directory=StaticValueProvider(str, fs.join(path, TEMP_DIR, self._run_id)))
                | "Full path" >> beam.Map(lambda r: fs.join(path, r.file_name)))


# ---------------------------------------------------------------------------- pipeline

@dataclass(frozen=True)
class StreamOutputs:
    scored: Any  # file source: PCollection[(source, manifest entry)]; Pub/Sub: scored file paths
    dead_letter_files: Optional[Any] = None  # Pub/Sub: dead-letter file paths


def build_stream(p: beam.Pipeline, cfg: StreamConfig, *, messages=None,
                 run_id: Optional[str] = None, start: Optional[Timestamp] = None) -> StreamOutputs:
    """Adds the streaming scoring job to `p`.

    Args:
      p: a streaming pipeline.
      cfg: what to watch, how to window, where to write.
      messages: for the Pub/Sub source, a PCollection of message payloads to use instead
        of reading `cfg.pubsub_subscription` (tests feed a TestStream here).
      run_id: tags the Pub/Sub path's output file names (default: time + random).
      start: first poll time (default: now).
    """
    if cfg.watch is not None:
        start = start or Timestamp.now()
        stop = (start + Duration.of(cfg.stop_after_seconds) if cfg.stop_after_seconds
                else MAX_TIMESTAMP)
        output_prefix = cfg.output.rstrip("/") + "/"
        scored = (
            p
            | "Poll" >> fileio.MatchContinuously(
                cfg.watch, interval=cfg.poll_seconds, has_deduplication=False,
                start_timestamp=start, stop_timestamp=stop)
            | "Path" >> beam.Map(lambda m: m.path)
            | "Not our output" >> beam.Filter(lambda path: not path.startswith(output_prefix))
            | "Score and write" >> beam.ParDo(_ScoreFileDoFn(cfg)))
        return StreamOutputs(scored)

    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if messages is None:
        from apache_beam.io.gcp.pubsub import ReadFromPubSub
        messages = p | "Read Pub/Sub" >> ReadFromPubSub(subscription=cfg.pubsub_subscription)
    parsed = messages | "Parse JSON" >> beam.ParDo(_ParseMessageDoFn(cfg)).with_outputs(
        DEAD, main="rows")
    scored_rows = (
        parsed.rows
        | "Window rows" >> beam.WindowInto(window.FixedWindows(cfg.window_seconds))
        | "Batch rows" >> beam.BatchElements(min_batch_size=1, max_batch_size=cfg.batch_rows)
        | "Score rows" >> beam.ParDo(_ScoreRowsDoFn(cfg)).with_outputs(DEAD, main="scored"))
    scored = scored_rows.scored | "Back to global window" >> beam.WindowInto(window.GlobalWindows())
    if cfg.adaptive is not None:
        scored = scored | "Adaptive threshold" >> AdaptiveThresholds(cfg.adaptive)
    write = dict(window_seconds=cfg.window_seconds,
                 allowed_lateness_seconds=cfg.allowed_lateness_seconds,
                 early_firing_seconds=cfg.early_firing_seconds, run_id=run_id)
    scored_files = scored | "Write scored" >> WriteWindowedParquet(cfg.output, **write)
    dead_files = ((parsed[DEAD], scored_rows[DEAD])
                  | "All dead letters" >> beam.Flatten()
                  | "Write dead letters" >> WriteWindowedParquet(
                      fs.join(cfg.output, DEAD_LETTER_DIR), prefix="dead_letter",
                      suffix=layout.DEAD_LETTER_SUFFIX, **write))
    return StreamOutputs(scored_files, dead_files)


def config_from_args(args) -> StreamConfig:
    keys = tuple(k.strip() for k in (args.key_columns or "").split(",") if k.strip())
    adaptive = None
    if args.adaptive_threshold:
        adaptive = AdaptiveConfig(quantile=args.adaptive_quantile,
                                  window_rows=args.adaptive_window_rows,
                                  warmup_rows=min(args.adaptive_warmup_rows,
                                                  args.adaptive_window_rows),
                                  key_column=args.adaptive_key)
        if adaptive.key_column and adaptive.key_column not in keys:
            keys = keys + (adaptive.key_column,)
    return StreamConfig(
        bundle=args.bundle, output=args.output,
        watch=fs.parquet_pattern(args.watch) if args.watch else None,
        pubsub_subscription=args.pubsub_subscription, window_seconds=args.window_seconds,
        poll_seconds=args.poll_seconds, stop_after_seconds=args.stop_after_seconds,
        timestamp_column=args.timestamp_column,
        allowed_lateness_seconds=args.allowed_lateness_seconds,
        early_firing_seconds=args.early_firing_seconds,
        bundle_poll_seconds=args.bundle_poll_seconds, batch_rows=args.batch_rows,
        scoring=ScoringOptions(key_columns=keys, per_feature_errors=args.per_feature_errors,
                               reconstruction=args.reconstruction,
                               latent_distance=args.latent_distance,
                               top_features=args.top_features, missing=args.missing),
        adaptive=adaptive)


def pipeline_options(beam_args: List[str], cfg: StreamConfig):
    """Streaming options; an in-process runner unless --runner is given.

    Plain DirectRunner would first try to download Prism. The file source runs on
    FnApiRunner: its polling SDF emits in real time and scoring is fused with it, so
    files are written as they land (the BundleBasedDirectRunner cannot run
    PeriodicImpulse: it rejects defer_remainder). The Pub/Sub source needs the
    BundleBasedDirectRunner (the only local engine with a streaming Pub/Sub reader,
    windows firing on the watermark, and TestStream).
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    opts = PipelineOptions(list(beam_args))
    std = opts.view_as(StandardOptions)
    std.streaming = True
    if not std.runner:
        std.runner = "FnApiRunner" if cfg.watch is not None else "BundleBasedDirectRunner"
    return opts


def validate(cfg: StreamConfig) -> None:
    """Cheap checks before the job starts (reads bundle.json only, never the model)."""
    from latentbeam.model import load_bundle_info
    from latentbeam.pipeline.bundles import is_watched, newest_bundle_dir

    paths.check_output(cfg.output, stream_reads(cfg))
    path = newest_bundle_dir(cfg.bundle) if is_watched(cfg.bundle) else cfg.bundle
    if path is None:
        raise ValueError(f"--bundle {cfg.bundle}: no bundle.json found there or in its "
                         f"subdirectories. Expected a directory written by `latentbeam train`.")
    info = load_bundle_info(path)
    if cfg.adaptive is not None:
        adaptive_scale(info, cfg.adaptive.quantile)
    from latentbeam.model.scoring import check_missing_mode
    check_missing_mode(info, cfg.scoring.missing)


def stream_reads(cfg: StreamConfig) -> List[paths.Location]:
    """What the stream reads: the watched glob (its base and current files) and the bundle(s)."""
    from latentbeam.pipeline.bundles import is_watched

    reads: List[paths.Location] = []
    if cfg.watch is not None:
        try:
            current = fs.match(cfg.watch)
        except (IOError, OSError, ValueError):
            current = []  # nothing there yet; the base directory still counts
        reads += paths.input_locations(cfg.watch, current, "watched")
    if is_watched(cfg.bundle):
        reads.append(("watched bundle location", paths.glob_base(cfg.bundle)
                      if paths.has_glob(cfg.bundle) else cfg.bundle))
    else:
        reads.append(("bundle", cfg.bundle))
    return reads


def run_stream_command(args, beam_args: List[str]) -> int:
    from latentbeam.pipeline.options import uses_dask

    if uses_dask(beam_args):
        raise ValueError("latentbeam stream needs a streaming runner; Dask runs batch "
                         "pipelines only. Drop --runner dask (the default runs in-process) "
                         "or use a streaming runner such as DataflowRunner or FlinkRunner.")
    cfg = config_from_args(args)
    validate(cfg)
    fs.makedirs(cfg.output)
    clean_staging(cfg.output)
    done = read_manifest(cfg.output) if cfg.watch else {}
    log.info("Streaming %s -> %s (window %gs, poll %gs, %d sources already in the manifest)",
             cfg.source_name, cfg.output, cfg.window_seconds, cfg.poll_seconds, len(done))
    p = beam.Pipeline(options=pipeline_options(beam_args, cfg))
    build_stream(p, cfg)
    from latentbeam.console import StreamProgress, progress_line

    started = time.time()
    watcher = None
    if cfg.watch:
        watcher = StreamProgress(progress_line(args), cfg.output, already=len(done),
                                 stop_after=cfg.stop_after_seconds).start()
    try:
        result = p.run()
        result.wait_until_finish()
    finally:
        if watcher is not None:
            watcher.stop()
    log.info("Stream ended: %s", result.state)
    print(format_stream_summary(cfg, read_manifest(cfg.output) if cfg.watch else {}, started,
                                str(result.state)))
    return 0


def format_stream_summary(cfg: StreamConfig, manifest: Dict[str, dict], started: float,
                          state: str) -> str:
    """What a finished `latentbeam stream` run did: files, rows and where they went."""
    lines = [f"stream ended:         {state} after {time.time() - started:.1f} s"]
    if cfg.watch:
        new = [e for e in manifest.values() if e.get("completed_at", 0) >= started]
        lines += [
            f"files scored:         {len(new)} (manifest: {len(manifest)} in total)",
            f"rows read:            {sum(int(e.get('rows', 0)) for e in new)}",
            f"rows scored:          {sum(int(e.get('scored', 0)) for e in new)}",
            f"dead letters:         {sum(int(e.get('dead_letters', 0)) for e in new)}",
        ]
    lines.append(f"output:               {cfg.output}")
    return "\n".join(lines)
