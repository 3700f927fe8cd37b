"""The watched-files source: `ScoreLandingFiles` scores Parquet files as they land.

    MatchContinuously(every poll, has_deduplication=False, stop at stop-after) -> path
    -> [fused, no shuffle] first sighting of the path (per-process set + OUT/_manifest/)
    -> score the whole file with the current bundle -> rows split by window -> one
    Parquet file per (window, source file) -> dead letters -> manifest entry.

Writing happens in the stage fused with the poll. On the local runners a GroupByKey
(and so any Beam window firing or fileio.WriteToFiles) downstream of PeriodicImpulse
only fires once polling stops: FnApiRunner runs stage by stage, and the
BundleBasedDirectRunner holds a splittable DoFn's output watermark at -inf while it
has residual work (and cannot run PeriodicImpulse at all: it rejects
defer_remainder). Writing in the fused stage makes a file's scores readable within
about one poll interval on every runner.

Output file names are `scored-WINDOWSTART-WINDOWEND-SOURCEHASH.parquet`: a window's
rows are the union of its files; each source file adds its own file.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from latentbeam import fs, outputs
from latentbeam.errors import ConfigError
from latentbeam.model.features import (REASON_NULL, SchemaMismatch, check_unique_columns,
                                       clip, row_payload)
from latentbeam.pipeline.adaptive import AdaptiveState, with_adaptive
from latentbeam.pipeline.dead_letters import (DATA_ERRORS, as_file_fault, dead_letter,
                                              dead_letters_to_batch, file_fault_letter)
from latentbeam.pipeline.io import UnreadableFile, keyed_file_batches
from latentbeam.pipeline.jobs import StreamJob
from latentbeam.pipeline.layout import (DEAD_LETTER_DIR, source_tag, window_dead_letter_name,
                                        window_file_name)
from latentbeam.pipeline.parquet_out import StagedFiles, parquet_bytes
from latentbeam.pipeline.streaming.events import (REASON_BAD_TIMESTAMP, REASON_LATE, cell_text,
                                                  event_times, late_detail, micros,
                                                  split_by_window, window_span)
from latentbeam.pipeline.streaming.manifest import first_sighting, write_entry
from latentbeam.pipeline.streaming.scoring import StreamScoring

log = logging.getLogger(__name__)


class ScoreLandingFiles(beam.PTransform):
    """Polls `job.watch` and scores each new Parquet file into `job.output` (see module doc).

    Input: the pipeline (PBegin). Output: (source path, manifest entry) per newly
    scored file, once all its output and dead-letter files are written.

    Example:
      entries = p | "Score landing files" >> ScoreLandingFiles(job)
    """

    def __init__(self, job: StreamJob, start: Optional[Timestamp] = None):
        super().__init__()
        if job.watch is None:
            raise ConfigError("ScoreLandingFiles needs a job with --watch GLOB.")
        self._job = job
        self._start = start

    def expand(self, pbegin: beam.pvalue.PBegin
               ) -> beam.PCollection[Tuple[str, Dict[str, Any]]]:
        job = self._job
        start = self._start or Timestamp.now()
        stop = (start + Duration.of(job.stop_after_seconds) if job.stop_after_seconds
                else MAX_TIMESTAMP)
        output_prefix = job.output.rstrip("/") + "/"
        return (pbegin
                | "Poll" >> fileio.MatchContinuously(
                    job.watch, interval=job.poll_seconds, has_deduplication=False,
                    start_timestamp=start, stop_timestamp=stop)
                | "Path" >> beam.Map(lambda m: m.path).with_output_types(str)
                | "Not our output" >> beam.Filter(lambda path: not path.startswith(output_prefix))
                # A writer's staging (`_temporary/`, `.part-0.parquet.inprogress`) is not data.
                | "Not hidden" >> beam.Filter(fs.Visible(job.watch))
                | "Score and write" >> beam.ParDo(_ScoreFileDoFn(job)).with_output_types(
                    Tuple[str, Dict[str, Any]]))


class _ScoreFileDoFn(beam.DoFn):
    """New file path -> its scored rows and dead letters written as Parquet, then the manifest.

    Scored rows stream into staging files (bounded memory) that are moved to their
    final names only once the whole file was read: an unreadable tail turns the whole
    file into one dead letter instead of a partial output. Output names are
    deterministic (window + hash of the source path), so scoring a file again after a
    crash rewrites the same files instead of adding duplicates.
    """

    def __init__(self, job: StreamJob):
        self._job = job
        self._input_head = fs.pattern_head(job.watch)  # Hive partitions start below it
        self._scoring = StreamScoring(job)
        # Adaptive states by state key, in this worker's memory (adaptive.py says why).
        self._adaptive: Dict[str, AdaptiveState] = {}

    def setup(self):
        self._scoring.setup()

    def process(self, path, arrival=beam.DoFn.TimestampParam):
        job = self._job
        if not first_sighting(job.output, path):
            return
        bundle = self._scoring.bundle()
        tag = source_tag(path)
        files = StagedFiles(job.output, tag, path)
        try:
            rows_read, letters = self._score_file(bundle, path, arrival, files)
        except BaseException:
            files.discard()
            raise
        scored_rows = files.rows
        w = micros(job.window_seconds)
        written = files.publish(lambda start: fs.join(
            job.output, window_file_name(window_span(start, w), tag)))
        written = self._write_dead_letters(path, tag, written, letters, arrival)
        entry = {"source": path, "rows": rows_read, "scored": scored_rows,
                 "dead_letters": len(letters), "model_version": bundle.info.model_version,
                 "outputs": written, "arrival": arrival.to_utc_datetime().isoformat() + "Z",
                 "completed_at": time.time()}
        # Written last: a file is in the manifest only once all its rows are on disk.
        write_entry(job.output, entry)
        yield path, entry

    def _score_file(self, bundle, path: str, arrival: Timestamp, files: StagedFiles
                    ) -> Tuple[int, List[dict]]:
        """Scores every batch of `path` into `files`; returns (rows read, dead letters)."""
        letters: List[dict] = []
        rows_read = 0
        try:
            for offset, batch in keyed_file_batches(
                    path, batch_rows=self._job.batch_rows,
                    input_head=self._input_head,
                    key_columns=self._job.scoring.key_columns):
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
            letter = file_fault_letter(path, e)
            files.discard()
            return 0, [letter]  # as in the batch job: a whole-file fault reads no rows
        return rows_read, letters

    def _score_batch(self, bundle, path, batch, offset, arrival, files, letters) -> None:
        job = self._job
        scored, bad = self._scoring.score(bundle, batch, path, offset)
        letters += bad
        if scored is None:
            return
        if job.timestamp_column is None:
            parts = [(arrival.micros, scored)]
        else:
            parts = self._by_event_time(path, batch, scored, bad, offset, arrival, letters)
        w = micros(job.window_seconds)
        for ts, part in parts:
            if job.adaptive is not None:
                part = with_adaptive(part, self._adaptive, job.adaptive,
                                     *self._scoring.adaptive_params(bundle))
            files.write(ts - ts % w, part)

    def _write_dead_letters(self, path, tag, written, letters, arrival) -> List[str]:
        """Writes the dead letters next to the published outputs; removes stale files."""
        job = self._job
        w = micros(job.window_seconds)
        written = list(written)
        if letters:
            a = arrival.micros
            written.append(fs.join(job.output, DEAD_LETTER_DIR,
                                   window_dead_letter_name(window_span(a - a % w, w), tag)))
            outputs.write_atomically(written[-1],
                                     parquet_bytes([dead_letters_to_batch(letters)], path))
        # A run that crashed after writing this source's files but before its manifest
        # entry may have put them in other windows (processing time): remove those.
        stale = [f for pattern in (fs.join(job.output, window_file_name("*", tag)),
                                   fs.join(job.output, DEAD_LETTER_DIR,
                                           window_dead_letter_name("*", tag)))
                 for f in fs.match(pattern) if f not in written]
        if stale:
            log.warning("Removing %d output file(s) of an earlier, unfinished scoring of %s",
                        len(stale), path)
            FileSystems.delete(stale)
        return written

    def _by_event_time(self, path, batch, scored, bad, offset, arrival, letters):
        job = self._job
        name = job.timestamp_column
        if name not in batch.schema.names:
            raise SchemaMismatch(f"timestamp column {name!r} missing (columns present: "
                                 f"{clip(', '.join(batch.schema.names), 400)})")
        mask = np.ones(batch.num_rows, dtype=bool)
        mask[[d["row"] - offset for d in bad]] = False
        valid = np.nonzero(mask)[0]
        check_unique_columns(batch.schema.names, [name], "timestamp")
        all_times, unusable = event_times(batch.column(name), name)
        parts, nulls, late = split_by_window(
            scored, all_times[valid], valid, window_us=micros(job.window_seconds),
            lateness_us=micros(job.allowed_lateness_seconds), arrival_us=arrival.micros)
        for i in map(int, nulls):
            if unusable[i]:
                letters.append(dead_letter(
                    path, offset + i, REASON_BAD_TIMESTAMP,
                    f"timestamp column {name!r} value {cell_text(batch.column(name), i)} "
                    f"is not a usable event time (NaN/inf, or outside years 1000..9000 UTC)",
                    row_payload(batch, i)))
                continue
            letters.append(dead_letter(path, offset + i, REASON_NULL,
                                       f"timestamp column {name!r} is null",
                                       row_payload(batch, i)))
        detail = late_detail(job.window_seconds, job.allowed_lateness_seconds, arrival)
        for i in map(int, late):
            letters.append(dead_letter(path, offset + i, REASON_LATE, detail,
                                       row_payload(batch, i)))
        return parts


__all__ = ["ScoreLandingFiles"]
