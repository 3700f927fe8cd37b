"""What the command line shows on the terminal: log levels, native log lines, progress.

* `configure_logging`: Python logging to stderr at the chosen level (WARNING by
  default), without the few third-party warnings that never call for action.
* `NativeLogFilter`: TensorFlow and absl write C++ log lines (`I0000 ... port.cc] ...`,
  "All log messages before absl::InitializeLog() ...") straight to file descriptor 2,
  whatever TF_CPP_MIN_LOG_LEVEL says in TensorFlow 2.21; the filter passes stderr
  through a pipe and drops those lines (errors other than the CUDA probe still show).
* The progress display (`ProgressLine`, `FileJobProgress`, `StreamProgress`,
  `epoch_progress`) is latentbeam.progress; its names are re-exported here.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Optional, TextIO

from latentbeam import progress
from latentbeam.errors import ConfigError
# Re-exported: jobs and the demo import the progress display from here.
from latentbeam.progress import (FileJobProgress, ProgressLine, StreamProgress,  # noqa: F401
                                 epoch_progress, format_duration, format_rate, input_sizes,
                                 progress_line, terminal)

log = logging.getLogger(__name__)

# Third-party warnings that say nothing a latentbeam user can act on.
NOISY_WARNINGS = (
    "apitools not found",  # Beam's GCP module probing optional client libraries
    "Could not load ML transform module",  # Beam YAML probing optional ML packages
)
# TensorFlow's hint when a process has traced many tf.functions: each Keras model trained
# or called (the Python API training several models, a test run) traces its own, which
# is expected and nothing the user of latentbeam can act on.
NOISY_PHRASES = ("triggered tf.function retracing",)
# C++ log lines of TensorFlow / absl / XLA: severity letter, MMDD time, thread, file:line].
_NATIVE_LINE = re.compile(rb"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]+\] ")
_NATIVE_KEEP_ERRORS = re.compile(rb"^E\d{4} ")  # errors pass unless they are known noise
_NATIVE_NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"To enable the following instructions:",  # TensorFlow's CPU-feature banner
)
_NATIVE_NOISE_ERRORS = (b"failed call to cuInit",)  # the CUDA probe on a CPU-only machine


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = str(record.msg)
        return not (message.startswith(NOISY_WARNINGS)
                    or any(phrase in message for phrase in NOISY_PHRASES))


class _StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr (which tests and embedding code may replace)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level_name: str) -> int:
    """Logs to stderr at `level_name`; below INFO nothing of Beam/absl/TF INFO shows.

    Returns:
      the numeric level.

    Raises:
      ConfigError: `level_name` is not a logging level.
    """
    level = logging.getLevelName(str(level_name).upper())
    if not isinstance(level, int):
        raise ConfigError(f"--log-level expects DEBUG, INFO, WARNING or ERROR. "
                          f"Received: {level_name!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        # An earlier call's (in-process runs), or the one logging.basicConfig adds when a
        # library logs through the root logger before any handler exists (Beam's GCP
        # clients do on import without apitools): either would print every record twice.
        if isinstance(handler, _StderrHandler) or (
                type(handler) is logging.StreamHandler
                and handler.stream in (sys.stderr, sys.__stderr__)):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level > logging.INFO:
        handler.addFilter(_DropNoise())
    root.addHandler(handler)
    root.setLevel(level)
    # absl (used by TensorFlow and Keras) logs through its own logger at INFO.
    logging.getLogger("absl").setLevel(max(level, logging.WARNING))
    return level


class NativeLogFilter:
    """Drops TensorFlow's and absl's C++ log lines from file descriptor 2 while active.

    Everything else written to stderr (Python logging, tracebacks, child processes)
    passes unchanged, line by line. `original` is a stream on the real stderr for
    output that must not wait for a newline (the live progress line).
    """

    def __init__(self):
        self._saved: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self.original: TextIO = sys.stderr

    def __enter__(self) -> "NativeLogFilter":
        sys.stderr.flush()
        try:
            self._saved = os.dup(2)
        except OSError:  # no usable fd 2 (an embedding process): filter nothing
            return self
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.original = os.fdopen(os.dup(self._saved), "w", buffering=1,
                                  encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                  errors="replace")
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True,
                                        name="latentbeam-stderr-filter")
        self._thread.start()
        progress.set_terminal(self.original)
        return self

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._forward(line + b"\n")
            if pending:
                self._forward(pending)

    def _forward(self, line: bytes) -> None:
        if _is_native_noise(line):
            return
        try:
            os.write(self._saved, line)
        except OSError:
            pass

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        progress.set_terminal(None)
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the pump sees EOF
        self._thread.join(timeout=5)
        self.original.close()
        os.close(self._saved)
        self._saved = None
        self.original = sys.stderr


def _is_native_noise(line: bytes) -> bool:
    if line.startswith(_NATIVE_NOISE):
        return True
    if _NATIVE_LINE.match(line):
        return not _NATIVE_KEEP_ERRORS.match(line) or any(n in line for n in _NATIVE_NOISE_ERRORS)
    return False
