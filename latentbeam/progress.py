"""Progress on the terminal: `ProgressLine`, the job feeds of it and the training callback.

`ProgressLine` is one status line, rewritten in place on a TTY, printed every N seconds
otherwise; `FileJobProgress` and `StreamProgress` feed it from the per-file records that
jobs write (so it works on every runner, remote ones included); `epoch_progress` is the
Keras callback for training.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, TextIO

from latentbeam.errors import ConfigError

log = logging.getLogger(__name__)

_TERMINAL: Optional[TextIO] = None  # the real stderr while a NativeLogFilter is active


def terminal() -> TextIO:
    """The stream for progress output: the real stderr, even while stderr is filtered."""
    return _TERMINAL or sys.stderr


def set_terminal(stream: Optional[TextIO]) -> None:
    """Where progress goes while console.NativeLogFilter filters stderr (None: sys.stderr)."""
    global _TERMINAL
    _TERMINAL = stream


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(per_second: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if per_second >= scale:
            return f"{per_second / scale:.1f}{unit}"
    return f"{per_second:.0f}"


class ProgressLine:
    """A status line on stderr: live on a TTY, one line every `interval` s otherwise.

    Args:
      stream: where to write (default sys.stderr).
      interval: seconds between lines when `stream` is not a TTY.
      enabled: False writes nothing (`--quiet`).
      tty: override TTY detection (tests).
    """

    def __init__(self, stream: Optional[TextIO] = None, interval: float = 10.0,
                 enabled: bool = True, tty: Optional[bool] = None):
        self.stream = stream or terminal()
        self.interval = float(interval)
        self.enabled = enabled
        self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty()) if tty is None else tty
        self._last = float("-inf")
        self._width = 0
        self._lock = threading.Lock()

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if self.tty:
                if force or now - self._last >= 0.2:
                    self._last = now
                    self.stream.write("\r" + text.ljust(self._width))
                    self._width = len(text)
                    self.stream.flush()
            elif force or now - self._last >= self.interval:
                self._last = now
                self.stream.write(text + "\n")
                self.stream.flush()

    def finish(self, text: Optional[str] = None) -> None:
        """Ends the line: the final text (if any) stays, on a line of its own."""
        if not self.enabled:
            return
        with self._lock:
            if self.tty:
                self.stream.write("\r" + (text or "").ljust(self._width)
                                  + ("\n" if text else "\r"))
                self._width = 0
            elif text:
                self.stream.write(text + "\n")
            self.stream.flush()


class _Poller:
    """Calls `tick` every `period` seconds on a thread until stopped."""

    def __init__(self, tick: Callable[[], None], period: float):
        self._tick = tick
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="latentbeam-progress")

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._tick()
            except Exception as e:  # progress must never break the job
                log.debug("progress update failed: %s", e)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class FileJobProgress:
    """Progress of `latentbeam score` / `decode` from the job's per-file records.

    The job writes one JSON record per finished input file (`stats_dir/*.json`, with
    `rows_read`); this polls them: files done / total, rows, rows/s, elapsed and an ETA
    by input bytes (by files when sizes are unknown, e.g. a TFDS split).
    """

    def __init__(self, line: ProgressLine, label: str, stats_dir: str,
                 sources: Sequence[str], sizes: Optional[Dict[str, int]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.line = line
        self.clock = clock
        self.label = label
        self.stats_dir = stats_dir
        self.total = len(sources)
        self.sizes = sizes or {}
        self.total_bytes = sum(self.sizes.get(s, 0) for s in sources)
        self.records: Dict[str, dict] = {}
        self.started = clock()
        self._poller = _Poller(self.poll, 0.5 if line.tty else min(1.0, line.interval))

    def start(self) -> "FileJobProgress":
        if self.line.enabled:
            self.line.update(f"{self.label}: 0/{self.total} files, starting the pipeline",
                             force=True)
            self._poller.start()
        return self

    def poll(self) -> None:
        from latentbeam import fs

        for path in fs.match(fs.join(self.stats_dir, "*.json")):
            if path not in self.records:
                try:
                    self.records[path] = json.loads(fs.read_bytes(path))
                except (OSError, ValueError):
                    continue  # being written; read it at the next poll
        self.line.update(self.text())

    def text(self, final: bool = False) -> str:
        done = len(self.records)
        rows = sum(int(r.get("rows_read", 0)) for r in self.records.values())
        elapsed = self.clock() - self.started
        rate = rows / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label}: {done}/{self.total} files", f"{rows:,} rows",
                 f"{format_rate(rate)} rows/s"]
        if final:
            parts.append(f"{format_duration(elapsed)} elapsed")
            return ", ".join(parts)
        if self.total_bytes:
            done_bytes = sum(self.sizes.get(r.get("source"), 0) for r in self.records.values())
            fraction = done_bytes / self.total_bytes
        else:
            fraction = done / self.total if self.total else 1.0
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        parts.append(f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta)}")
        return ", ".join(parts)

    def stop(self, succeeded: bool) -> None:
        if not self.line.enabled:
            return
        self._poller.stop()
        if succeeded:
            try:
                self.poll()
            except OSError:
                pass
            self.line.finish(self.text(final=True))
        else:
            self.line.finish(None)


class StreamProgress:
    """Progress of `latentbeam stream` from its manifest (one JSON entry per scored file).

    `read_entries` returns the manifest as {file: entry}; the stream passes its manifest
    reader, so this module needs nothing from the pipeline.
    """

    def __init__(self, line: ProgressLine, read_entries: Callable[[], Dict[str, dict]],
                 already: int = 0, stop_after: Optional[float] = None):
        self.line = line
        self.read_entries = read_entries
        self.already = already
        self.stop_after = stop_after
        self.entries: Dict[str, dict] = {}
        self.started = time.monotonic()
        self._poller = _Poller(self.poll, 0.5 if line.tty else min(1.0, line.interval))

    def start(self) -> "StreamProgress":
        if self.line.enabled:
            self._poller.start()
        return self

    def poll(self) -> None:
        self.entries = self.read_entries()
        self.line.update(self.text())

    def text(self) -> str:
        new = len(self.entries) - self.already
        rows = sum(int(e.get("rows", 0)) for e in self.entries.values())
        elapsed = time.monotonic() - self.started
        text = (f"stream: {max(new, 0)} new files, {rows:,} rows in the manifest, "
                f"{format_duration(elapsed)} elapsed")
        if self.stop_after:
            text += f", stops in {format_duration(max(0.0, self.stop_after - elapsed))}"
        return text

    def stop(self) -> None:
        if self.line.enabled:
            self._poller.stop()
            self.line.finish(None)


def epoch_progress(epochs: int, verbose: int, line: ProgressLine):
    """A Keras callback: one progress bar over the epochs on a TTY (verbose 1), otherwise
    one line per epoch; used instead of Keras' own per-epoch bars, never with them."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            done = epoch + 1
            elapsed = time.monotonic() - self._t0
            losses = "  ".join(f"{k} {v:.5f}" for k, v in logs.items()
                               if k in ("loss", "val_loss"))
            if verbose == 1 and line.tty:
                width = 20
                filled = int(width * done / epochs)
                eta = elapsed / done * (epochs - done)
                line.update(f"train: [{'#' * filled}{'.' * (width - filled)}] epoch "
                            f"{done}/{epochs}  {losses}  ETA {format_duration(eta)}",
                            force=True)
            else:
                line.stream.write(f"epoch {done}/{epochs}  {losses}  "
                                  f"({format_duration(elapsed)})\n")
                line.stream.flush()

        def on_train_end(self, logs=None):
            if verbose == 1 and line.tty:
                line.finish(None)

    return EpochProgress()


def progress_line(args) -> ProgressLine:
    """The ProgressLine of a command's `--quiet` / `--progress-seconds` flags."""
    interval = getattr(args, "progress_seconds", 10.0)
    # 0, a negative or NaN interval would print a line on every poll, many per second.
    if not (math.isfinite(interval) and interval > 0):
        raise ConfigError(f"--progress-seconds must be a finite number of seconds > 0 (default "
                          f"10). Received: {interval}")
    return ProgressLine(interval=interval, enabled=not getattr(args, "quiet", False))


def input_sizes(sources: List[str]) -> Dict[str, int]:
    """Byte size of each input file (empty for sources that are not files)."""
    from apache_beam.io.filesystems import FileSystems

    files = [s for s in sources if "://" in s or os.path.isabs(s) or os.path.exists(s)]
    if not files:
        return {}
    try:
        results = FileSystems.match(files)
    except Exception:  # sizes only refine the ETA
        return {}
    return {m.path: m.size_in_bytes for r in results for m in r.metadata_list}
