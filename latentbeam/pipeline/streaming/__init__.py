"""`latentbeam stream`: score Parquet files (or Pub/Sub JSON messages) as they land.

Modules, one per concern:

    events    event time, windows, late rows (no I/O)
    manifest  OUT/_manifest/: what the watched-files source has scored
    scoring   the scoring step both sources share (current bundle, scores, Chunk)
    files     ScoreLandingFiles: the watched-files source (--watch GLOB)
    pubsub    ScorePubSub: the Pub/Sub source (--pubsub-subscription SUB)
    assembly  build_stream / run_stream: one source, options, checks and the run

Both sources score with `records.score_record_batch` through `scoring.StreamScoring`
and add the adaptive columns with `adaptive.adaptive_update` (where each keeps its
adaptive state, and why: `latentbeam.pipeline.adaptive`). Parquet goes through
`latentbeam.pipeline.parquet_out`.

Windows: a row's window is FixedWindows(--window-seconds) of its event time
(--timestamp-column) or of its arrival (the poll that found its file, or the message
time).

Late rows (event time, both sources): a row is late when its window's end plus
--allowed-lateness-seconds lies before the time it arrived. Late rows go to the dead
letters with reason `late_row`, never dropped silently. Rows within the allowed
lateness of a closed window are still written to that window (an extra file; in the
Pub/Sub path a late pane).

Restarts (watched files): a restarted stream skips sources in OUT/_manifest/ and
rewrites a source scored again after a crash under the same names (see `manifest`):
each source file's rows appear exactly once in OUT after the restarted stream has
processed it. Caveat: with processing time, a reader looking between the crash and
the restart sees the crashed run's files.
"""
from latentbeam.pipeline.jobs import StreamJob, StreamSummary
from latentbeam.pipeline.streaming.assembly import (StreamOutputs, build_stream,
                                                    pipeline_options, run_stream, stream_reads,
                                                    validate)
from latentbeam.pipeline.streaming.events import event_micros, event_times, split_by_window
from latentbeam.pipeline.streaming.files import ScoreLandingFiles
# The DoFn itself, for tests that drive it file by file.
from latentbeam.pipeline.streaming.files import _ScoreFileDoFn  # noqa: F401
from latentbeam.pipeline.streaming.manifest import clean_staging, read_manifest
from latentbeam.pipeline.streaming.pubsub import ScorePubSub, WriteWindowedParquet
from latentbeam.pipeline.streaming.scoring import Chunk

__all__ = ["Chunk", "ScoreLandingFiles", "ScorePubSub", "StreamJob", "StreamOutputs",
           "StreamSummary", "WriteWindowedParquet", "build_stream", "clean_staging",
           "event_micros", "event_times", "pipeline_options", "read_manifest", "run_stream",
           "split_by_window", "stream_reads", "validate"]
