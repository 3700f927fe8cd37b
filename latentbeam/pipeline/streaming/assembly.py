"""The `latentbeam stream` job: one source, its outputs, options, checks and the run."""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp

from latentbeam import fs, paths
from latentbeam.errors import BundleError, ConfigError
from latentbeam.pipeline.jobs import StreamJob, StreamSummary
from latentbeam.pipeline.layout import DEAD_LETTER_SUFFIX
from latentbeam.pipeline.streaming.files import ScoreLandingFiles
from latentbeam.pipeline.streaming.manifest import clean_staging, read_manifest
from latentbeam.pipeline.streaming.pubsub import ScorePubSub

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamOutputs:
    """The files a stream writes, as PCollections of full paths (either source)."""
    scored_files: beam.PCollection  # str: each scored Parquet file written
    dead_letter_files: beam.PCollection  # str: each dead-letter file written
    manifest: Optional[beam.PCollection] = None  # watched files: (source, manifest entry)


def build_stream(p: beam.Pipeline, job: StreamJob, *, messages=None,
                 run_id: Optional[str] = None, start: Optional[Timestamp] = None) -> StreamOutputs:
    """Adds the streaming scoring job to `p`.

    Args:
      p: a streaming pipeline.
      job: what to watch, how to window, where to write.
      messages: for the Pub/Sub source, a PCollection of message payloads to use instead
        of reading `job.pubsub_subscription` (tests feed a TestStream here).
      run_id: tags the Pub/Sub path's output file names (default: time + random).
      start: first poll time (default: now).
    """
    if job.watch is not None:
        entries = p | "Score landing files" >> ScoreLandingFiles(job, start)
        written = entries | "Files written" >> beam.FlatMap(
            lambda e: e[1]["outputs"]).with_output_types(str)
        return StreamOutputs(
            written | "Scored files" >> beam.Filter(lambda f: not f.endswith(DEAD_LETTER_SUFFIX)),
            written | "Dead-letter files" >> beam.Filter(lambda f: f.endswith(DEAD_LETTER_SUFFIX)),
            entries)
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if messages is None:
        from apache_beam.io.gcp.pubsub import ReadFromPubSub
        messages = p | "Read Pub/Sub" >> ReadFromPubSub(subscription=job.pubsub_subscription)
    scored, dead = messages | "Score messages" >> ScorePubSub(job, run_id)
    return StreamOutputs(scored, dead)


def pipeline_options(beam_args: Sequence[str], job: StreamJob):
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
        std.runner = "FnApiRunner" if job.watch is not None else "BundleBasedDirectRunner"
    return opts


def validate(job: StreamJob) -> None:
    """Cheap checks before the job starts (bundle.json and its files' hashes; the model is
    loaded on the workers)."""
    from latentbeam.model import load_bundle_info
    from latentbeam.model.scoring import check_missing_mode
    from latentbeam.pipeline.adaptive import ADAPTIVE_FIELDS, adaptive_scale
    from latentbeam.pipeline.bundles import is_watched, newest_bundle_dir
    from latentbeam.pipeline.records import check_key_columns, output_schema

    paths.check_output(job.output, stream_reads(job))
    path = newest_bundle_dir(job.bundle) if is_watched(job.bundle) else job.bundle
    if path is None:
        raise BundleError(f"--bundle {job.bundle}: no bundle.json found there or in its "
                         f"subdirectories. Expected a directory written by `latentbeam train`.")
    info = load_bundle_info(path, verify_files=True)
    if job.adaptive is not None:
        adaptive_scale(info, job.adaptive.quantile)
    check_missing_mode(info, job.scoring.missing)
    written = output_schema(info, job.scoring).names \
        + ([f.name for f in ADAPTIVE_FIELDS] if job.adaptive is not None else [])
    check_key_columns(job.scoring.key_columns, written)


def stream_reads(job: StreamJob) -> List[paths.Location]:
    """What the stream reads: the watched glob (its base and current files) and the bundle(s)."""
    from latentbeam.pipeline.bundles import is_watched

    reads: List[paths.Location] = []
    if job.watch is not None:
        try:
            current = [p for p, _ in fs.match_parquet(job.watch)]
            fs.warn_if_delta_table(job.watch)
        except (IOError, OSError, ValueError):
            current = []  # nothing there yet; the base directory still counts
        reads += paths.input_locations(job.watch, current, "watched")
    if is_watched(job.bundle):
        reads.append(("watched bundle location", paths.glob_base(job.bundle)
                      if paths.has_glob(job.bundle) else job.bundle))
    else:
        reads.append(("bundle", job.bundle))
    return reads


def run_stream(job: StreamJob, beam_args: Sequence[str] = (), progress=None) -> StreamSummary:
    """Runs the stream until it ends (--stop-after-seconds, or the runner stops it).

    `progress` (a `latentbeam.console.ProgressLine`, optional) shows the watched-files
    source's files and rows so far, read from its manifest.

    Raises:
      ValueError: a Dask runner, a bad bundle, or an output overlapping what it reads.
    """
    from latentbeam.pipeline.options import uses_dask

    if uses_dask(beam_args):
        raise ConfigError("latentbeam stream needs a streaming runner; Dask runs batch "
                         "pipelines only. Drop --runner dask (the default runs in-process) "
                         "or use a streaming runner such as DataflowRunner or FlinkRunner.")
    validate(job)
    fs.makedirs(job.output)
    clean_staging(job.output)
    done = read_manifest(job.output) if job.watch else {}
    log.info("Streaming %s -> %s (window %gs, poll %gs, %d sources already in the manifest)",
             job.source_name, job.output, job.window_seconds, job.poll_seconds, len(done))
    p = beam.Pipeline(options=pipeline_options(beam_args, job))
    build_stream(p, job)
    started = time.time()
    state = _run(p, _progress(job, progress, len(done)))
    log.info("Stream ended: %s", state)
    return _summary(job, started, state)


def _progress(job: StreamJob, progress, already: int):
    if progress is None or not job.watch:
        return None
    from latentbeam.console import StreamProgress

    return StreamProgress(progress, lambda: read_manifest(job.output), already=already,
                          stop_after=job.stop_after_seconds).start()


def _run(p: beam.Pipeline, watcher) -> str:
    try:
        result = p.run()
        result.wait_until_finish()
    finally:
        if watcher is not None:
            watcher.stop()
    return str(result.state)


def _summary(job: StreamJob, started: float, state: str) -> StreamSummary:
    seconds = time.time() - started
    if not job.watch:
        return StreamSummary(output=job.output, state=state, seconds=seconds, watched=False)
    manifest: Dict[str, dict] = read_manifest(job.output)
    new = [e for e in manifest.values() if e.get("completed_at", 0) >= started]
    # A file unusable as a whole has one dead letter and no rows read (as in the batch job).
    whole = [int(e.get("rows", 0)) == 0 and int(e.get("dead_letters", 0)) > 0 for e in new]
    return StreamSummary(
        output=job.output, state=state, seconds=seconds, watched=True, files_scored=len(new),
        manifest_files=len(manifest), rows_read=sum(int(e.get("rows", 0)) for e in new),
        rows_scored=sum(int(e.get("scored", 0)) for e in new),
        rows_dead_lettered=sum(int(e.get("dead_letters", 0))
                               for e, w in zip(new, whole) if not w),
        files_dead_lettered=sum(whole))


__all__ = ["StreamOutputs", "build_stream", "pipeline_options", "run_stream", "stream_reads",
           "validate"]
