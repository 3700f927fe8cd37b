"""Python rows and Arrow tables as the record batches the scoring core takes."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import pyarrow as pa

from latentbeam.errors import InputTypeError


def as_record_batch(data: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """A record batch or table as ONE record batch (a table's chunks combined)."""
    if isinstance(data, pa.RecordBatch):
        return data
    return data.combine_chunks().to_batches()[0] if data.num_rows else \
        pa.RecordBatch.from_pylist([], schema=data.schema)


def as_row_dict(row: Any, expected: str) -> Dict[str, Any]:
    """A dict, `beam.Row` or NamedTuple element as a dict.

    Raises:
      TypeError: anything else; `expected` says what the caller accepts.
    """
    if isinstance(row, dict):
        return row
    if hasattr(row, "_asdict"):  # beam.Row and NamedTuples
        return dict(row._asdict())
    raise InputTypeError(f"{expected} Received: {type(row).__name__}.")


def rows_to_record_batch(rows: Sequence[Dict[str, Any]]) -> pa.RecordBatch:
    """Python rows (dicts) -> one record batch, column by column.

    A column whose values Arrow cannot unify (e.g. numbers mixed with text) is kept as
    text, so `to_matrix` reports the offending rows as `non_numeric` instead of the
    whole batch failing.
    """
    names: Dict[str, None] = {}
    for r in rows:
        for k in r:
            names.setdefault(k, None)
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arr = pa.array([None if v is None else (v if isinstance(v, str) else repr(v))
                            for v in values], type=pa.string())
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.float64())
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


__all__ = ["as_record_batch", "as_row_dict", "rows_to_record_batch"]
