"""What the pipeline jobs are asked to do, and what they report back.

Job configs are frozen dataclasses validated on construction; the CLI builds them
from its flags, and the runners (`batch.run_file_job`, `streaming.run_stream`) take
nothing else. Error messages name the CLI flag of a field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from latentbeam.errors import ConfigError
from latentbeam.pipeline.adaptive import AdaptiveConfig
from latentbeam.pipeline.layout import DEAD_LETTER_DIR, DEFAULT_BATCH_ROWS, basename
from latentbeam.pipeline.records import MODE_DECODE, MODE_SCORE, ScoringOptions

# Longest stream window: window names stay within the event-time range that
# streaming.events can name (years 1000..9000 UTC).
MAX_WINDOW_SECONDS = 10 * 365.25 * 86400


def _check_batch_rows(batch_rows: int) -> None:
    if batch_rows < 1:
        raise ConfigError(f"--batch-rows must be a positive integer. Received: {batch_rows}")


@dataclass(frozen=True)
class FileJob:
    """One run of `latentbeam score` or `latentbeam decode`."""
    bundle: str  # bundle directory
    input: str  # Parquet glob or tfds:NAME/SPLIT
    output: str  # output directory
    mode: str = MODE_SCORE  # score | decode
    opts: ScoringOptions = ScoringOptions()  # key columns, optional output columns
    data_dir: Optional[str] = None  # TFDS data_dir
    overwrite: bool = False  # replace the contents of a non-empty output directory
    batch_rows: int = DEFAULT_BATCH_ROWS  # rows per record batch read
    # Fail (commit nothing) when more than this share of the rows, or of the files, is
    # dead-lettered; None: no limit.
    max_dead_letter_fraction: Optional[float] = None

    def __post_init__(self):
        _check_batch_rows(self.batch_rows)
        f = self.max_dead_letter_fraction
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float))
                              or not 0.0 <= f <= 1.0):
            raise ConfigError("--max-dead-letter-fraction must be a number in [0, 1] (0: fail "
                              f"on any dead letter). Received: {f!r}")


@dataclass(frozen=True)
class ScoreJob(FileJob):
    """`latentbeam score`: a FileJob in mode "score"."""
    mode: str = field(default=MODE_SCORE, init=False)


@dataclass(frozen=True)
class DecodeJob(FileJob):
    """`latentbeam decode`: a FileJob in mode "decode" (opts: key columns only)."""
    mode: str = field(default=MODE_DECODE, init=False)


@dataclass(frozen=True)
class JobSummary:
    """What a finished file job wrote; counts come from the per-file records of the job."""
    output: str  # output directory
    model_version: str
    files_read: int  # input files (a TFDS split counts as one)
    rows_read: int  # rows of readable files
    rows_scored: int  # rows written to the output (decoded rows for `decode`)
    rows_dead_lettered: int  # rows in OUT/dead_letter (row faults)
    files_dead_lettered: int  # whole files in OUT/dead_letter (unreadable, missing column)
    anomalies: int  # scored rows with is_anomaly
    files: List[str]  # output Parquet files, sorted
    dead_letter_files: List[str]  # dead-letter Parquet files, sorted
    mode: str = MODE_SCORE  # score | decode
    metrics: Dict[str, Any] = field(default_factory=dict)  # "latentbeam" Beam metrics; {} if none
    result: Any = field(default=None, repr=False, compare=False)  # the PipelineResult

    def to_json(self) -> dict:
        return {"model_version": self.model_version, "files_read": self.files_read,
                "rows_read": self.rows_read, "rows_scored": self.rows_scored,
                "rows_dead_lettered": self.rows_dead_lettered,
                "files_dead_lettered": self.files_dead_lettered, "anomalies": self.anomalies,
                "files": [basename(p) for p in self.files],
                "dead_letter_files": [f"{DEAD_LETTER_DIR}/{basename(p)}"
                                      for p in self.dead_letter_files]}


@dataclass(frozen=True)
class StreamJob:
    """One run of `latentbeam stream`: what to watch, how to window, where to write."""
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
    batch_rows: int = DEFAULT_BATCH_ROWS  # rows per scoring call (file batch / messages' rows)
    scoring: ScoringOptions = ScoringOptions()
    adaptive: Optional[AdaptiveConfig] = None  # None: no adaptive columns

    def __post_init__(self):
        if (self.watch is None) == (self.pubsub_subscription is None):
            raise ConfigError("Expected exactly one source: --watch GLOB or --pubsub-subscription "
                             f"SUB. Received: watch={self.watch!r}, "
                             f"pubsub_subscription={self.pubsub_subscription!r}")
        for name in ("window_seconds", "poll_seconds", "allowed_lateness_seconds",
                     "stop_after_seconds", "early_firing_seconds", "bundle_poll_seconds"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number of "
                                 f"seconds. Received: {value}")
        for name in ("window_seconds", "poll_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0. Received: "
                                 f"{getattr(self, name)}")
        for name, unset in (("early_firing_seconds", "no early firings"),
                            ("bundle_poll_seconds", "a re-check every --poll-seconds")):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0; leave it out for "
                                 f"{unset}. Received: {value}")
        if self.allowed_lateness_seconds < 0:
            raise ConfigError(f"--allowed-lateness-seconds must be >= 0. Received: "
                             f"{self.allowed_lateness_seconds}")
        if self.window_seconds > MAX_WINDOW_SECONDS:
            raise ConfigError(f"--window-seconds must be at most {MAX_WINDOW_SECONDS:g} (10 "
                             f"years). Received: {self.window_seconds}")
        if self.stop_after_seconds is not None and not self.stop_after_seconds > 0:
            raise ConfigError(f"--stop-after-seconds must be > 0. Received: "
                             f"{self.stop_after_seconds}")
        _check_batch_rows(self.batch_rows)

    @property
    def source_name(self) -> str:
        return self.watch or f"pubsub:{self.pubsub_subscription}"

    @property
    def bundle_poll(self) -> float:
        """Seconds between checks of a watched bundle location."""
        return self.bundle_poll_seconds or self.poll_seconds


@dataclass(frozen=True)
class StreamSummary:
    """What a finished `latentbeam stream` run did (file counts: watched-files source only)."""
    output: str  # OUT
    state: str  # the pipeline's final state
    seconds: float  # how long the run took
    watched: bool  # watched-files source (the counts below are read from its manifest)
    files_scored: int = 0  # sources this run added to the manifest
    manifest_files: int = 0  # sources in the manifest in total
    rows_read: int = 0
    rows_scored: int = 0
    rows_dead_lettered: int = 0  # rows_read = rows_scored + rows_dead_lettered
    files_dead_lettered: int = 0  # files unusable as a whole (their rows are not read)


__all__ = ["DecodeJob", "FileJob", "JobSummary", "MAX_WINDOW_SECONDS", "ScoreJob", "StreamJob",
           "StreamSummary"]
