"""The `latentbeam score` and `latentbeam decode` batch jobs.

Pipeline: the sorted list of input files -> Reshuffle (spread files over workers) ->
one DoFn call per file that streams its record batches through `records.apply_bundle` into ONE
Parquet file in a job-private temporary directory `OUT/.tmp-<job id>/`. Output names
come from the file's index in the sorted match (`part-00003.parquet`) and the content
is in file order, so scoring the same input twice gives byte-identical files, and
memory stays at about one record batch however large a file is. Staged files end in
`.partial`, so no `*.parquet` glob picks them up.

Faults: bad rows go to `OUT/_dead_letter/part-NNNNN.pq` (same index as the input
file; Parquet, named so that readers of OUT as a dataset skip it). A file that cannot be read, or lacks a needed column, loses its partial output
and becomes ONE dead letter (row null); its rows do not count as read
(`files_dead_lettered` counts it). So rows_read = rows_scored + rows_dead_lettered.

Commit: only after the pipeline succeeds are the temporary files moved to their final
names; `_SUCCESS` (JSON: counts, model_version, threshold, files) is written last. A
failed job removes its temporary directory and leaves no final-looking output; so
does a job whose dead letters exceed `max_dead_letter_fraction` (checked before the
commit, from the per-file records, which tally the dead letters by reason). A
non-empty output directory is refused unless `overwrite`, which replaces the files an
earlier latentbeam run listed there at commit time (anything else is refused up
front), so old shards never mix with new ones. An output overlapping the inputs, the
bundle or the working directory is refused (latentbeam.paths).
"""
from __future__ import annotations

import json
import logging
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from latentbeam import fs, outputs, paths
from latentbeam.errors import InputError
from latentbeam.model import load_bundle_info
from latentbeam.model.features import SchemaMismatch
from latentbeam.model.scoring import check_missing_mode
from latentbeam.model.sources import parse_tfds as _parse_tfds
from latentbeam.model.sources import TFDS_PREFIX, tfds_batches
from latentbeam.pipeline import io
from latentbeam.pipeline.dead_letters import (DeadLetterTally, check_dead_letter_limit,
                                              file_fault_letter)
from latentbeam.pipeline.jobs import FileJob, JobSummary
from latentbeam.pipeline.layout import (DEAD_LETTER_DIR, PARTIAL_SUFFIX, STATS_DIR,
                                        basename,
                                        dead_letter_part_name, part_name)
from latentbeam.pipeline.metrics import (ANOMALIES, FILES_DEAD_LETTERED,
                                         ROWS_DEAD_LETTERED, ROWS_READ, ROWS_SCORED,
                                         ScoringMetrics, query_metrics)
from latentbeam.pipeline.options import dask_partitions, pipeline_options, uses_dask
from latentbeam.pipeline.parquet_out import ParquetOutput
from latentbeam.pipeline.records import (COL_ERROR, COL_FLAG, DATA_ERRORS,
                                         MODE_SCORE, ScoringOptions, apply_bundle,
                                         as_file_fault, check_key_columns,
                                         dead_letters_to_batch, decode_output_schema,
                                         output_schema)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs

def input_glob(pattern: str) -> Optional[str]:
    """The Parquet glob an --input means (a directory: its files at any depth); None for
    a TFDS split."""
    return None if pattern.startswith(TFDS_PREFIX) else fs.parquet_pattern(pattern)


def resolve_inputs(pattern: str, data_dir: Optional[str] = None,
                   glob: Optional[str] = None) -> List[str]:
    """The job's sources: the sorted files matching `pattern`, or one `tfds:NAME/SPLIT`.

    `glob`: `input_glob(pattern)` when the caller has it already (it may stat the path).

    Raises:
      ValueError: nothing matches, or the TFDS dataset is not prepared in data_dir.
    """
    if pattern.startswith(TFDS_PREFIX):
        name, split = _parse_tfds(pattern)
        from latentbeam.model.data import load_tfds_builder

        builder = load_tfds_builder(name, data_dir)
        base = split.split("[")[0]
        if base not in builder.info.splits:
            raise InputError(f"TFDS dataset {name!r} has no split {base!r} in data_dir "
                             f"{data_dir!r}. Available: {', '.join(builder.info.splits)}.")
        return [pattern]
    glob = glob or fs.parquet_pattern(pattern)
    files = [p for p, _ in fs.match_input(glob)]
    fs.warn_if_delta_table(glob)
    if not files:
        raise InputError(f"No files match --input {pattern!r}.{fs.no_parquet_hint(glob)} "
                         f"Expected a Parquet glob such as data/*.parquet or "
                         f"gs://bucket/prefix/*.parquet, or tfds:NAME/SPLIT.")
    return files


# --------------------------------------------------------------------------- the DoFn

class _FileJobFn(beam.DoFn):
    """Scores (or decodes) one input file into one temporary output file."""

    def __init__(self, bundle_path: str, mode: str, opts: ScoringOptions, tmp_dir: str,
                 batch_rows: int, data_dir: Optional[str], input_head: Optional[str] = None):
        self._input_head = input_head  # fs.pattern_head of the input: Hive partitions below it
        self._bundle_path = bundle_path
        self._mode = mode
        self._opts = opts
        self._tmp_dir = tmp_dir
        self._batch_rows = batch_rows
        self._data_dir = data_dir
        self._bundle = None
        self._metrics = None

    def setup(self):
        self._bundle = io.shared_bundle(self._bundle_path)
        self._metrics = ScoringMetrics()

    def _batches(self, source: str):
        """(row offset, rows, output batch or None, dead letters) per input batch."""
        if source.startswith(TFDS_PREFIX):
            reader = tfds_batches(source, self._data_dir, self._batch_rows)
        else:
            # Whole rows are read (not just the features): dead letters carry the row.
            reader = io.keyed_file_batches(source, batch_rows=self._batch_rows,
                                           input_head=self._input_head,
                                           key_columns=self._opts.key_columns)
        for offset, batch in reader:
            try:
                out, letters = apply_bundle(self._bundle, batch, self._mode, source=source,
                                            row_offset=offset, opts=self._opts)
            except DATA_ERRORS as e:
                raise as_file_fault(e, f"converting rows {offset}.."
                                       f"{offset + batch.num_rows - 1}") from e
            yield offset, batch.num_rows, out, letters

    def process(self, element: Tuple[int, str]):
        index, source = element
        name = part_name(index)
        dead_name = dead_letter_part_name(index)
        out = ParquetOutput(fs.join(self._tmp_dir, name + PARTIAL_SUFFIX))
        dead = ParquetOutput(fs.join(self._tmp_dir, DEAD_LETTER_DIR, dead_name + PARTIAL_SUFFIX))
        counts = dict.fromkeys((ROWS_READ, ROWS_SCORED, ROWS_DEAD_LETTERED, ANOMALIES,
                                FILES_DEAD_LETTERED), 0)
        errors: List[np.ndarray] = []
        tally = DeadLetterTally()
        try:
            for _, rows, batch, letters in self._batches(source):
                counts[ROWS_READ] += rows
                if batch is not None:
                    try:
                        out.write(batch)
                    except DATA_ERRORS as e:  # e.g. a key column type Parquet cannot hold
                        raise as_file_fault(e, "writing the output rows") from e
                    counts[ROWS_SCORED] += batch.num_rows
                    if self._mode == MODE_SCORE:
                        counts[ANOMALIES] += int(np.count_nonzero(
                            batch.column(COL_FLAG).to_numpy(zero_copy_only=False)))
                        errors.append(batch.column(COL_ERROR).to_numpy())
                if letters:
                    dead.write(dead_letters_to_batch(letters))
                    counts[ROWS_DEAD_LETTERED] += len(letters)
                    tally.add(letters)
            out.close()
            dead.close()
        except (io.UnreadableFile, SchemaMismatch) as e:
            # All or nothing per file: drop the partial output, keep one dead letter. What
            # cannot be removed stays in the staging directory, which is never published.
            letter = file_fault_letter(source, e)
            out.discard()
            dead.discard()
            dead.write(dead_letters_to_batch([letter]))
            dead.close()
            counts = dict.fromkeys(counts, 0)
            counts[FILES_DEAD_LETTERED] = 1
            errors = []
            tally = DeadLetterTally()
            tally.add([letter])
        # Metrics once per file: a file that fails part way adds nothing but its dead letter.
        for key, value in counts.items():
            self._metrics.inc(key, value)
        if errors:
            self._metrics.record_errors(np.concatenate(errors))
        stats = {"index": index, "source": source, **counts,
                 "output": name if counts[ROWS_SCORED] else None,
                 "dead_letter": dead_name if (counts[ROWS_DEAD_LETTERED] or
                                              counts[FILES_DEAD_LETTERED]) else None,
                 "dead_letter_reasons": tally.to_json()}
        fs.write_bytes(fs.join(self._tmp_dir, STATS_DIR, name + ".json"),
                       json.dumps(stats).encode())
        yield stats


# --------------------------------------------------------------------------- the job

def _reads(job: FileJob, sources: List[str]) -> List[paths.Location]:
    """Every location the job reads: input files, their directories, a TFDS data_dir, the bundle."""
    if job.input.startswith(TFDS_PREFIX):
        reads = [("TFDS data_dir", paths.tfds_data_dir(job.data_dir))]
    else:
        reads = paths.input_locations(job.input, sources)
    return reads + [("bundle", job.bundle)]


def run_file_job(job: FileJob, beam_args: Sequence[str] = (), progress=None) -> JobSummary:
    """Runs the job to completion and commits its output (see the module docstring).

    `progress` (a `latentbeam.console.ProgressLine`, optional) shows files done / total,
    rows, rows/s and the ETA while the job runs, read from the per-file records.

    Raises:
      ValueError: bad bundle, no input, an output overlapping what the job reads, a
        non-empty output without overwrite (or with files no latentbeam run wrote), a
        job option the input cannot satisfy, or (after the run, nothing committed) more
        dead letters than `job.max_dead_letter_fraction` allows.
    """
    info = load_bundle_info(job.bundle, verify_files=True)  # the model loads on the workers
    if job.mode == MODE_SCORE:
        check_missing_mode(info, job.opts.missing)
    written = output_schema(info, job.opts) if job.mode == MODE_SCORE \
        else decode_output_schema(info)
    check_key_columns(job.opts.key_columns, written.names)
    glob = input_glob(job.input)
    sources = resolve_inputs(job.input, job.data_dir, glob)
    paths.check_output(job.output, _reads(job, sources))
    replace = outputs.check_output_dir(job.output, job.overwrite)
    tmp_dir = outputs.staging_dir(job.output)
    fs.makedirs(tmp_dir)
    step = "Score files" if job.mode == MODE_SCORE else "Decode files"
    if uses_dask(beam_args):
        beam_args = dask_partitions(beam_args, len(sources))
    watcher = None
    if progress is not None and progress.enabled:
        from latentbeam.console import FileJobProgress, input_sizes
        watcher = FileJobProgress(progress, job.mode, fs.join(tmp_dir, STATS_DIR), sources,
                                  input_sizes(sources)).start()
    try:
        pipeline = beam.Pipeline(options=pipeline_options(beam_args))
        _ = (pipeline
             | "Input files" >> beam.Create(list(enumerate(sources)))
             | "Spread files" >> beam.Reshuffle()
             | step >> beam.ParDo(_FileJobFn(job.bundle, job.mode, job.opts, tmp_dir,
                                             job.batch_rows, job.data_dir,
                                             fs.pattern_head(glob) if glob else None)))
        result = pipeline.run()
        result.wait_until_finish()
        state = str(result.state)
        if "DONE" not in state:
            raise RuntimeError(f"Beam job ended in state {state}; nothing was committed to "
                               f"{job.output}.")
        if watcher is not None:
            watcher.stop(succeeded=True)  # reads the records before the commit moves them
            watcher = None
        summary = _commit(job, info, sources, tmp_dir, result, replace)
    except BaseException:
        if watcher is not None:
            watcher.stop(succeeded=False)
        outputs.remove_tree(tmp_dir)
        raise
    return summary


def _commit(job: FileJob, info, sources: List[str], tmp_dir: str, result,
            replace: Sequence[str] = ()) -> JobSummary:
    stats = [json.loads(fs.read_bytes(fs.join(tmp_dir, STATS_DIR, part_name(i) + ".json")))
             for i in range(len(sources))]
    files, dead_files, moves = [], [], []
    for s in stats:
        if s["output"]:
            moves.append((fs.join(tmp_dir, s["output"] + PARTIAL_SUFFIX), s["output"]))
            files.append(fs.join(job.output, s["output"]))
        if s["dead_letter"]:
            rel = f"{DEAD_LETTER_DIR}/{s['dead_letter']}"
            moves.append((fs.join(tmp_dir, DEAD_LETTER_DIR,
                                  s["dead_letter"] + PARTIAL_SUFFIX), rel))
            dead_files.append(fs.join(job.output, DEAD_LETTER_DIR, s["dead_letter"]))

    totals = {k: sum(s[k] for s in stats) for k in
              (ROWS_READ, ROWS_SCORED, ROWS_DEAD_LETTERED, FILES_DEAD_LETTERED, ANOMALIES)}
    # Before anything moves: a refused job leaves the output directory as it was.
    check_dead_letter_limit(job.max_dead_letter_fraction, totals, len(sources),
                            [s["dead_letter_reasons"] for s in stats], job.output)
    metrics = query_metrics(result)
    if metrics and any(metrics.get(k) != v for k, v in totals.items()):
        log.warning("Runner metrics %s differ from the job's per-file records %s (runners "
                    "without metrics support report 0); the summary uses the records.",
                    {k: metrics.get(k) for k in totals}, totals)
    summary = JobSummary(output=job.output, model_version=info.model_version, mode=job.mode,
                         files_read=len(sources), files=files, dead_letter_files=dead_files,
                         metrics=metrics, result=result, **totals)
    doc = {"job": job.mode, "input": job.input, **summary.to_json(),
           "threshold": info.threshold.to_json()}
    # Old files of this directory go first (commit marker first of all), then the new
    # files move in and _SUCCESS is written last.
    outputs.commit(job.output, moves, doc, replace, tmp_dir)
    return summary


__all__ = ["TFDS_PREFIX", "resolve_inputs", "run_file_job", "tfds_batches"]
