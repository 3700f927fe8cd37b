"""Dead letters: the rows and files a job could not use, as records with one schema.

Every path (the transforms, the batch job, both stream sources) builds its dead
letters here, so the schema, the size limit of `detail` and the reason of a
whole-file fault are decided once.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import pyarrow as pa

from latentbeam.errors import InputError
from latentbeam.outputs import DEAD_LETTER_DIR
from latentbeam.model.features import (REASON_CONVERSION_ERROR, REASON_UNREADABLE,
                                       SchemaMismatch, clip)

log = logging.getLogger(__name__)

DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),  # input file (or "pubsub", ...)
    pa.field("row", pa.int64()),  # row index in the source; null for a whole-file fault
    pa.field("reason", pa.string(), nullable=False),  # short code, see features.REASON_*
    pa.field("detail", pa.string()),  # human-readable message
    pa.field("payload", pa.string()),  # original row as JSON; null for a whole-file fault
])

# Errors that data can cause while a file's rows are converted, scored or written (not
# I/O on the output: OSError fails the job). Callers turn them into a whole-file dead
# letter with reason `conversion_error` instead of failing every other file's job.
DATA_ERRORS = (ValueError, TypeError, OverflowError, ArithmeticError, UnicodeError,
               pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError,
               pa.ArrowIndexError)
MAX_DETAIL_CHARS = 2000  # a dead letter's `detail` never grows with the input


def dead_letter(source: str, row: Optional[int], reason: str, detail: str,
                payload: Optional[str] = None) -> Dict[str, Any]:
    return {"source": source, "row": row, "reason": reason,
            "detail": clip(detail, MAX_DETAIL_CHARS), "payload": payload}


def as_file_fault(error: BaseException, what: str) -> SchemaMismatch:
    """A DATA_ERRORS exception as a whole-file fault (`conversion_error`), naming the step."""
    if isinstance(error, SchemaMismatch):
        return error
    return SchemaMismatch(f"{what} failed: {type(error).__name__}: {clip(error, 1000)}",
                          REASON_CONVERSION_ERROR)


def dead_letters_to_batch(records: Sequence[Dict[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(list(records), schema=DEAD_LETTER_SCHEMA)


def whole_file_dead_letter(source: str, error: BaseException, reason: str) -> Dict[str, Any]:
    return dead_letter(source, None, reason, f"{type(error).__name__}: {clip(error, 1000)}", None)


def file_fault_letter(source: str, error: BaseException) -> Dict[str, Any]:
    """The one dead letter of a file that could not be used as a whole (row null).

    `error` is an `io.UnreadableFile` (reason `unreadable_file`) or a `SchemaMismatch`
    (its own reason: a missing column, a conversion error, ...). Logs a warning, with
    the traceback for a conversion error (a value no check foresaw).
    """
    log.warning("Dead-lettering whole file %s: %s", source, clip(error, 400),
                exc_info=getattr(error, "reason", None) == REASON_CONVERSION_ERROR)
    reason = error.reason if isinstance(error, SchemaMismatch) else REASON_UNREADABLE
    return whole_file_dead_letter(source, error, reason)


class DeadLetterTally:
    """Dead letters of one file job per reason, with the first letter of each reason.

    Kept beside a file's counts (JSON-able) so the job can explain a refused commit
    without reading the dead-letter files back.
    """

    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.first: Dict[str, Dict[str, Any]] = {}

    def add(self, letters: Sequence[Dict[str, Any]]) -> None:
        for letter in letters:
            reason = letter["reason"]
            self.counts[reason] = self.counts.get(reason, 0) + 1
            if reason not in self.first:
                self.first[reason] = {"source": letter["source"], "row": letter["row"],
                                      "detail": clip(letter["detail"], 300)}

    def to_json(self) -> Dict[str, Any]:
        return {"counts": dict(self.counts), "first": dict(self.first)}


def check_dead_letter_limit(max_fraction: Optional[float], totals: Dict[str, int],
                            files_read: int, tallies: Sequence[Dict[str, Any]],
                            output: str) -> None:
    """Refuses a job whose dead letters exceed `--max-dead-letter-fraction`.

    The limit holds for rows (rows dead-lettered / rows read) and for whole files
    (files dead-lettered / files read) separately; a file that cannot be used at all has
    no row count, so it counts as a file.

    Args:
      max_fraction: the limit in [0, 1], or None (no limit).
      totals: the job's counts (`rows_read`, `rows_dead_lettered`, `files_dead_lettered`).
      files_read: input files of the job.
      tallies: `DeadLetterTally.to_json()` of every file.
      output: the output directory, for the message.

    Raises:
      InputError: the limit is exceeded; the message gives the counts, each reason with
        its count and first dead letter, and the fix.
    """
    if max_fraction is None:
        return
    rows, bad_rows = totals["rows_read"], totals["rows_dead_lettered"]
    bad_files = totals["files_dead_lettered"]
    if bad_rows <= max_fraction * rows and bad_files <= max_fraction * files_read:
        return
    counts: Dict[str, int] = {}
    first: Dict[str, Dict[str, Any]] = {}
    for tally in tallies:
        for reason, n in tally["counts"].items():
            counts[reason] = counts.get(reason, 0) + n
            first.setdefault(reason, tally["first"][reason])
    reasons = "; ".join(
        f"{reason} x{n} (first: {_where(first[reason])}: {first[reason]['detail']})"
        for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    raise InputError(
        f"{bad_rows} of {rows} rows and {bad_files} of {files_read} input files were "
        f"dead-lettered, more than --max-dead-letter-fraction {max_fraction:g} allows; "
        f"nothing was written to {output} (what it held before is unchanged). "
        f"Reasons: {clip(reasons, 1500)}. Fix the input, or raise the limit (or leave it "
        f"out) to score the usable rows and write the dead letters to "
        f"{output.rstrip('/')}/{DEAD_LETTER_DIR}/.")


def _where(first: Dict[str, Any]) -> str:
    return first["source"] if first["row"] is None else f"{first['source']} row {first['row']}"


__all__ = ["DATA_ERRORS", "DEAD_LETTER_SCHEMA", "MAX_DETAIL_CHARS", "DeadLetterTally",
           "as_file_fault", "check_dead_letter_limit", "dead_letter", "dead_letters_to_batch",
           "file_fault_letter", "whole_file_dead_letter"]
