"""Event time and windows of the stream (no I/O here).

A row's window is FixedWindows(window) of its event time (the timestamp column or
field) or of the time it arrived. A row is late when its window's end plus the allowed
lateness lies before the time it arrived; late rows become `late_row` dead letters.
Window names are calendar stamps, so event times are bounded to years 1000..9000 UTC.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.utils.timestamp import Duration, Timestamp

from latentbeam.model.features import REASON_WRONG_TYPE, SchemaMismatch, clip, echo

REASON_LATE = "late_row"  # event time's window (+ allowed lateness) closed before arrival
REASON_BAD_TIMESTAMP = "bad_timestamp"  # event time present but unusable (NaN, out of range)

NULL_TIME = np.iinfo(np.int64).min
# Event times whose windows can be named (window stamps are calendar dates): years
# 1000..9000 UTC, with room for windows up to jobs.MAX_WINDOW_SECONDS on either side.
MIN_EVENT_US = -30610224000 * 1_000_000  # 1000-01-01T00:00:00Z
MAX_EVENT_US = 221845392000 * 1_000_000  # 9000-01-01T00:00:00Z
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}


def micros(seconds: float) -> int:
    return Duration.of(seconds).micros


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


def parse_time(value: Any) -> Optional[int]:
    """JSON timestamp value (epoch seconds, or ISO 8601 text) -> epoch micros."""
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


def is_late(event_us: int, arrival_us: int, *, window_us: int, lateness_us: int) -> bool:
    """True when the window of `event_us` (plus the lateness) closed before `arrival_us`."""
    return event_us - event_us % window_us + window_us + lateness_us < arrival_us


def late_detail(window_seconds: float, lateness_seconds: float, arrival: Timestamp) -> str:
    return (f"event-time window of {window_seconds:g}s plus allowed lateness "
            f"{lateness_seconds:g}s had closed when the row arrived at "
            f"{arrival.to_utc_datetime().isoformat()}Z")


def cell_text(column, i: int) -> str:
    """One cell as text for a dead letter's detail."""
    cell = column.slice(i, 1)
    try:
        return echo(cell.to_pylist()[0])
    except Exception:  # noqa: BLE001  beyond Python's datetime range: Arrow's text form
        return clip(cell.cast(pa.string()).to_pylist()[0])


def window_stamp(t: Timestamp) -> str:
    return t.to_utc_datetime().strftime("%Y%m%dT%H%M%S") + (
        f"{t.micros % 1_000_000:06d}" if t.micros % 1_000_000 else "")


def window_span(start_us: int, window_us: int) -> str:
    """`START-END` of the window starting at `start_us` (output file names)."""
    return (f"{window_stamp(Timestamp(micros=start_us))}-"
            f"{window_stamp(Timestamp(micros=start_us + window_us))}")


__all__ = ["MAX_EVENT_US", "MIN_EVENT_US", "NULL_TIME", "REASON_BAD_TIMESTAMP", "REASON_LATE",
           "cell_text", "event_micros", "event_times", "is_late", "late_detail", "micros",
           "parse_time", "split_by_window", "window_span", "window_stamp"]
