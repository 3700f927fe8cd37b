"""The Pub/Sub source: `ScorePubSub` scores JSON messages in event-time windows.

    JSON messages -> rows at event time (or the message time); bad -> dead letters
    -> FixedWindows -> BatchElements -> score -> [adaptive threshold, stateful]
    -> FixedWindows with trigger AfterWatermark(early=AfterProcessingTime(early
    firing) if given, late=AfterCount(1)), DISCARDING, allowed lateness
    -> fileio.WriteToFiles with ParquetChunkSink (one new file per firing, so no row
    is written twice).

Beam drops a row only if its window expired before the row reached the window step,
which cannot happen to rows passing the lateness check here: the watermark downstream
of the parsing step is held below the message time until the row has been handed on.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration, Timestamp

from latentbeam import fs
from latentbeam.model.features import MAX_PAYLOAD_CHARS, REASON_NULL, clip, echo
from latentbeam.pipeline.adaptive import AdaptiveThresholds
from latentbeam.pipeline.dead_letters import (DATA_ERRORS, as_file_fault, dead_letter,
                                              dead_letters_to_batch)
from latentbeam.pipeline.jobs import StreamJob
from latentbeam.pipeline.layout import DEAD_LETTER_DIR, DEAD_LETTER_SUFFIX, TEMP_DIR
from latentbeam.pipeline.parquet_out import ParquetChunkSink
from latentbeam.pipeline.rows import rows_to_record_batch
from latentbeam.pipeline.streaming.events import (REASON_BAD_TIMESTAMP, REASON_LATE, is_late,
                                                  late_detail, micros, parse_time,
                                                  window_stamp)
from latentbeam.pipeline.streaming.scoring import Chunk, StreamScoring

REASON_BAD_MESSAGE = "bad_message"  # Pub/Sub message that is not a JSON object (or list)
DEAD = "dead_letters"


class ScorePubSub(beam.PTransform):
    """Scores Pub/Sub message payloads and writes windowed Parquet (see module doc).

    Input: message payloads (bytes, or PubsubMessages with `.data`). Output:
    (scored file paths, dead-letter file paths), one element per file written.

    Example:
      scored, dead = (p | ReadFromPubSub(subscription=SUB)
                        | "Score messages" >> ScorePubSub(job, run_id="r1"))
    """

    def __init__(self, job: StreamJob, run_id: str):
        super().__init__()
        self._job = job
        self._run_id = run_id

    def expand(self, messages):
        job = self._job
        parsed = messages | "Parse JSON" >> beam.ParDo(_ParseMessageDoFn(job)).with_outputs(
            DEAD, main="rows")
        scored_rows = (
            parsed.rows
            | "Window rows" >> beam.WindowInto(window.FixedWindows(job.window_seconds))
            | "Batch rows" >> beam.BatchElements(min_batch_size=1, max_batch_size=job.batch_rows)
            | "Score rows" >> beam.ParDo(_ScoreRowsDoFn(job)).with_outputs(DEAD, main="scored"))
        scored = scored_rows.scored | "Back to global window" >> beam.WindowInto(
            window.GlobalWindows())
        if job.adaptive is not None:
            scored = scored | "Adaptive threshold" >> AdaptiveThresholds(job.adaptive)
        write = dict(window_seconds=job.window_seconds,
                     allowed_lateness_seconds=job.allowed_lateness_seconds,
                     early_firing_seconds=job.early_firing_seconds, run_id=self._run_id)
        scored_files = scored | "Write scored" >> WriteWindowedParquet(job.output, **write)
        dead_files = ((parsed[DEAD], scored_rows[DEAD])
                      | "All dead letters" >> beam.Flatten()
                      | "Write dead letters" >> WriteWindowedParquet(
                          fs.join(job.output, DEAD_LETTER_DIR), prefix="dead_letter",
                          suffix=DEAD_LETTER_SUFFIX, **write))
        return scored_files, dead_files


class _ParseMessageDoFn(beam.DoFn):
    """Pub/Sub payload (bytes) -> row dicts, at event time or the message time; bad -> DEAD.

    A message holds one JSON object (one row) or a JSON list of objects.
    """

    def __init__(self, job: StreamJob):
        self._job = job

    def process(self, message, arrival=beam.DoFn.TimestampParam):
        source = self._job.source_name
        data = getattr(message, "data", message)
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            yield _dead(source, REASON_BAD_MESSAGE, f"not JSON ({clip(e, 200)})",
                        json.dumps({"text": clip(text, 4096)}))
            return
        for row in doc if isinstance(doc, list) else [doc]:
            if not isinstance(row, dict):
                yield _dead(source, REASON_BAD_MESSAGE, "expected a JSON object per row",
                            _json_row(row))
            elif self._job.timestamp_column is None:
                yield row
            else:
                yield self._at_event_time(row, arrival)

    def _at_event_time(self, row: Dict[str, Any], arrival: Timestamp):
        """The row at its event time, or its dead letter (null, unusable or late time)."""
        job = self._job
        source, name = job.source_name, job.timestamp_column
        value = row.get(name)
        us = parse_time(value)
        if us is None and value is None:
            return _dead(source, REASON_NULL, f"timestamp field {name!r} is missing or null",
                         _json_row(row))
        if us is None:
            return _dead(source, REASON_BAD_TIMESTAMP, f"timestamp field {name!r} value "
                         f"{echo(value)} is not epoch seconds / ISO 8601 within years "
                         f"1000..9000 UTC", _json_row(row))
        if is_late(us, arrival.micros, window_us=micros(job.window_seconds),
                   lateness_us=micros(job.allowed_lateness_seconds)):
            return _dead(source, REASON_LATE, late_detail(
                job.window_seconds, job.allowed_lateness_seconds, arrival), _json_row(row))
        return window.TimestampedValue(row, Timestamp(micros=us))


def _json_row(row) -> str:
    """A message row as JSON text for a dead letter (json.loads output always serializes)."""
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

    def __init__(self, job: StreamJob):
        self._job = job
        self._scoring = StreamScoring(job)

    def setup(self):
        self._scoring.setup()

    def process(self, rows):
        source = self._job.source_name
        bundle = self._scoring.bundle()
        scale, base = self._scoring.adaptive_params(bundle)
        letters: List[dict] = []
        try:
            results = [self._scoring.score(bundle, rows_to_record_batch(rows), source)]
        except DATA_ERRORS:
            # Some message lacks a feature or has an unusable value: isolate it.
            results = []
            for row in rows:
                try:
                    results.append(self._scoring.score(bundle, rows_to_record_batch([row]),
                                                       source))
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


def file_naming(prefix: str, run_id: str, suffix: str = ".parquet"):
    """`PREFIX-START-END-RUN-TOKEN-SHARD.parquet`; TOKEN is unique per firing (late panes)."""
    def _name(win, pane, shard_index, total_shards, compression, destination):
        if isinstance(win, window.IntervalWindow):
            span = f"{window_stamp(win.start)}-{window_stamp(win.end)}"
        else:
            span = "global"
        return (f"{prefix}-{span}-{run_id}-{uuid.uuid4().hex[:8]}-"
                f"{int(shard_index or 0):03d}-of-{int(total_shards or 1):03d}{suffix}")
    return _name


class WriteWindowedParquet(beam.PTransform):
    """Windows timestamped Chunks and writes each window's rows as Parquet files.

    Input: `streaming.scoring.Chunk`s (not annotated on expand(): Beam checks annotations
    against the inferred type, which for a multi-output ParDo's main output is a union
    with TaggedOutput). Returns the full paths of the files written (one element per file, in its window).

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

    def expand(self, chunks) -> beam.PCollection[str]:
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
                | "Full path" >> beam.Map(lambda r: fs.join(path, r.file_name)).with_output_types(
                    str))


__all__ = ["REASON_BAD_MESSAGE", "ScorePubSub", "WriteWindowedParquet", "file_naming"]
