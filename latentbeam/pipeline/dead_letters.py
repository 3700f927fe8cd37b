"""Dead letters: the rows and files a job could not use, as records with one schema.

Every path (the transforms, the batch job, both stream sources) builds its dead
letters here, so the schema, the size limit of `detail` and the reason of a
whole-file fault are decided once.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import pyarrow as pa

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


__all__ = ["DATA_ERRORS", "DEAD_LETTER_SCHEMA", "MAX_DETAIL_CHARS", "as_file_fault",
           "dead_letter", "dead_letters_to_batch", "file_fault_letter", "whole_file_dead_letter"]
