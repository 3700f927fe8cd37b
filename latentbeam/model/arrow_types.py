"""Arrow type predicates, value access and list arrays of the feature conversion (no pandas)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
        or pa.types.is_decimal(t)


def dtype_name(t: pa.DataType) -> str:
    if pa.types.is_decimal(t):
        return "float64"
    # Not t.to_pandas_dtype(): it imports pandas, which a plain install does not have.
    return pa.array([], type=t).to_numpy(zero_copy_only=False).dtype.name


def list_value_type(t: pa.DataType) -> Optional[pa.DataType]:
    """Innermost value type of a (nested) list type, or None for non-lists."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return None
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return t


def list_depth(t: pa.DataType) -> int:
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        depth += 1
        t = t.value_type
    return depth


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or \
        (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))


def plain_column(column):
    """One Arrow array, dictionary encoding removed."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def numeric_values(array) -> np.ndarray:
    """Numbers of a numeric Arrow array as numpy, nulls as NaN (floats are not widened).

    Integers, booleans and decimals go through an unchecked cast: Arrow's checked cast
    refuses int64 / uint64 values beyond 2**53 (and so would fail the whole file on
    one large id); rounding them is what float32 model inputs do anyway.
    """
    if pa.types.is_floating(array.type):
        return array.to_numpy(zero_copy_only=False)
    return pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False)


def list_array(matrix: np.ndarray) -> pa.ListArray:
    """(n, k) matrix -> list array of its dtype (one list of k values per row)."""
    matrix = np.ascontiguousarray(matrix)
    n, k = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
