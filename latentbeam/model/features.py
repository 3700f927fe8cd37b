"""Feature specs and the Arrow -> float32 matrix conversion shared by training and scoring.

Columnar and vectorized: a record batch becomes one (rows, n_inputs) float32 matrix in
bundle feature order. Rows that cannot be scored (nulls, NaN/inf, non-numeric text,
lists of the wrong length, numbers too large for float32) are reported as faults with a
reason code, never dropped silently. Any value of any Arrow type either converts or
is such a fault: integers of any width (int64 / uint64 beyond float64's 53-bit
precision are rounded, as float32 rounds anything beyond 24 bits), decimals,
dictionary-encoded and all-null columns, text; a column of another type (timestamps,
structs, binary, ...) is a whole-batch `wrong_type` fault.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latentbeam.errors import InputError
from latentbeam.model.arrow_types import (dtype_name, is_numeric, is_text, list_depth,
                                          list_value_type, numeric_values, plain_column)
# Re-exported: dead-letter code imports the payload with the reason codes from here.
from latentbeam.model.payload import MAX_PAYLOAD_CHARS, row_payload  # noqa: F401
from latentbeam.text import clip, echo  # noqa: F401  (echoed values are clipped)

# Dead-letter reason codes (short, stable; documented in the README).
REASON_NULL = "null_value"
REASON_NOT_FINITE = "not_finite"
REASON_NON_NUMERIC = "non_numeric"
REASON_WRONG_LENGTH = "wrong_length"
REASON_MISSING_COLUMN = "missing_column"
REASON_UNREADABLE = "unreadable_file"
REASON_MODEL_ERROR = "model_error"  # finite inputs, non-finite reconstruction error
REASON_WRONG_TYPE = "wrong_type"  # a column's Arrow type cannot be used (whole file)
REASON_OUT_OF_RANGE = "out_of_range"  # a finite number beyond float32's range
BEYOND_FLOAT32 = f"beyond float32's range (|x| <= {float(np.finfo(np.float32).max):.4g})"
REASON_CONVERSION_ERROR = "conversion_error"  # any other failure on a file's data (whole file)
REASON_NO_OBSERVED = "no_observed_values"  # imputing or masking: every feature value missing
REASON_DUPLICATE_COLUMN = "duplicate_column"  # a column the job uses appears twice (whole file)


@dataclass(frozen=True)
class Feature:
    name: str  # column name (Parquet) or feature key (TFDS)
    dtype: str  # Arrow/numpy value type seen at training, e.g. "float64", "uint8"
    shape: Tuple[int, ...] = ()  # () scalar; (n,) list; (h, w) or (h, w, c) image

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> "Feature":
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(int(s) for s in d["shape"]))


def n_inputs(features: Sequence[Feature]) -> int:
    return sum(f.size for f in features)


def shared_scale_inputs(features: Sequence[Feature], normalization: str) -> List[slice]:
    """The groups of model inputs that share one scale, in model order.

    `per_feature`: the elements of every list or image feature; `auto`: of image features
    (2-D or 3-D shapes), whose elements are one measurement at different places;
    `shared`: all inputs together, one group; `per_input`: none.
    """
    total = sum(f.size for f in features)
    if normalization == "shared":
        return [slice(0, total)] if total > 1 else []
    out: List[slice] = []
    start = 0
    for f in features:
        if f.size > 1 and (normalization == "per_feature"
                           or (normalization == "auto" and len(f.shape) >= 2)):
            out.append(slice(start, start + f.size))
        start += f.size
    return out


def shared_scale_features(features: Sequence[Feature], groups: Sequence[slice]) -> List[str]:
    """Names of the features whose inputs share a scale (with each other or with others)
    in `groups` (`shared_scale_inputs`, or the groups training settled on)."""
    names, start = [], 0
    for f in features:
        if any(g.start <= start and start + f.size <= g.stop for g in groups):
            names.append(f.name)
        start += f.size
    return names


def input_names(features: Sequence[Feature]) -> List[str]:
    """One name per model input, in model order: what `top_features` and the report show.

    A scalar feature is its column name; an element of a list or image feature is the
    name with its index in the feature's shape, row-major as the matrix is flattened:
    `pixels[12]` for shape (64,), `image[3,5]` (row 3, column 5) for shape (8, 8),
    `rgb[3,5,2]` for shape (h, w, 3).
    """
    names: List[str] = []
    for f in features:
        if not f.shape:
            names.append(f.name)
        else:
            names += [f"{f.name}[{','.join(map(str, ix))}]" for ix in np.ndindex(*f.shape)]
    return names


def infer_features(batch: pa.RecordBatch | pa.Table, *, include: Optional[Sequence[str]] = None,
                   exclude: Sequence[str] = (), source: str = "") -> List[Feature]:
    """Feature specs from a sample batch: numeric columns and numeric list columns.

    Args:
      batch: a sample of the data (the first record batch is enough for fixed-size
        lists; variable lists take their length from the first non-null row).
      include: explicit feature names in order; default every numeric column.
      exclude: columns never used as features (label, keys).
      source: file name used in error messages.

    Raises:
      InputError: a named feature is missing or not numeric, or nothing is usable.
    """
    schema = batch.schema
    names = list(include) if include else [n for n in dict.fromkeys(schema.names)
                                           if n not in set(exclude)]
    check_unique_columns(schema.names, names, "Feature", source or "the data")
    features = []
    for name in names:
        if name not in schema.names:
            raise InputError(
                f"Feature column {name!r} not found in {source or 'the data'}. "
                f"Available columns: {', '.join(schema.names)}.")
        t = schema.field(name).type
        column = batch.column(schema.get_field_index(name))
        if is_numeric(t):
            features.append(Feature(name, dtype_name(t), ()))
            continue
        inner = list_value_type(t)
        if inner is not None and is_numeric(inner):
            shape = _list_shape(t, column)
            if shape is None:
                raise InputError(f"List column {name!r} in {source or 'the data'} has no non-null "
                                 f"row to take its length from; list features need a fixed length.")
            features.append(Feature(name, dtype_name(inner), shape))
            continue
        if include:
            raise InputError(
                f"Feature column {name!r} in {source or 'the data'} has type {t}, expected a "
                f"number or a list of numbers. Remove it from `data.features` or convert it.")
    if not features:
        raise InputError(f"No numeric feature columns in {source or 'the data'} "
                         f"(columns: {', '.join(schema.names)}). Set `data.features`.")
    return features


def _list_shape(t: pa.DataType, column) -> Optional[Tuple[int, ...]]:
    """Shape of a list feature: fixed sizes from the type, else the first non-null row."""
    shape = []
    while pa.types.is_fixed_size_list(t):
        shape.append(t.list_size)
        t = t.value_type
    if is_numeric(t):
        return tuple(shape)
    for value in column.to_pylist():
        if value is not None:
            return np.asarray(value, dtype=np.float64).shape
    return None


@dataclass
class Conversion:
    """Result of converting one record batch to the model's input matrix."""
    matrix: np.ndarray  # (n_valid, n_inputs) float32, valid rows only, in batch order
    valid: np.ndarray  # (n_valid,) int64 row indices into the batch
    faults: List[Tuple[int, str, str]]  # (row index, reason code, detail), one per bad row
    # (n_valid, n_inputs) bool, False where a value is missing (matrix holds NaN there);
    # None when every value of the valid rows is present. Only with `allow_missing`.
    observed: Optional[np.ndarray] = None


# Schema metadata key of a projected batch: the JSON list of every column of its file.
FILE_COLUMNS_KEY = b"latentbeam.file_columns"


def file_columns(batch) -> List[str]:
    """The columns of the file a batch was read from (its own names unless projected)."""
    meta = batch.schema.metadata or {}
    if FILE_COLUMNS_KEY in meta:
        return json.loads(meta[FILE_COLUMNS_KEY])
    return list(batch.schema.names)


class SchemaMismatch(InputError):
    """A whole batch cannot be used; `reason` is the dead-letter reason code of why
    (missing_column by default, wrong_type, conversion_error, ...)."""

    def __init__(self, message: str, reason: str = REASON_MISSING_COLUMN):
        super().__init__(message)
        self.reason = reason


def check_unique_columns(names: Sequence[str], used: Sequence[str], what: str,
                         where: str = "the file") -> None:
    """Refuses a batch in which a column the job uses appears more than once.

    Arrow and pandas allow repeated column names; which of them is the feature (or the
    key) would be a guess, so the file is refused rather than read by position.

    Raises:
      SchemaMismatch: reason `duplicate_column`, naming the column and its positions.
    """
    names = list(names)
    if len(set(names)) == len(names):
        return  # the usual case, in one pass over the names
    for name in used:
        if names.count(name) > 1:
            at = [i for i, n in enumerate(names) if n == name]
            raise SchemaMismatch(
                f"{what} column {clip(name, 200)!r} appears {len(at)} times in {where} (at "
                f"column positions {', '.join(map(str, at[:10]))}); which one is meant is "
                f"ambiguous. Write the file with unique column names.",
                REASON_DUPLICATE_COLUMN)


def _column_to_array(column, feature: Feature, n: int, bad: Dict[int, Tuple[str, str]],
                     hard: Dict[int, Tuple[str, str]]) -> np.ndarray:
    """(n, feature.size) values (float64, or float32/16 as stored) for one column.

    Marks bad rows in `bad`, and those whose fault is not a missing value (null) also
    in `hard`. Missing values are NaN in the result.
    """
    column = plain_column(column)
    t = column.type
    name = feature.name
    if pa.types.is_null(t):  # a column of nulls only (e.g. written from an empty frame)
        for i in range(n):
            bad.setdefault(i, (REASON_NULL, f"column {name!r} is null"))
        return np.full((n, feature.size), np.nan)
    if feature.shape == ():
        if is_text(t):
            return _text_column(column, name, n, bad, hard)
        if not is_numeric(t):
            raise SchemaMismatch(f"column {name!r} has type {clip(t)}, expected a number",
                                 REASON_WRONG_TYPE)
        values = numeric_values(column)
        if column.null_count:
            for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
                bad.setdefault(int(i), (REASON_NULL, f"column {name!r} is null"))
        return values.reshape(n, 1)
    inner = list_value_type(t)
    if inner is None or not is_numeric(inner):
        raise SchemaMismatch(f"column {name!r} has type {clip(t)}, expected a list of "
                             f"{feature.size} numbers", REASON_WRONG_TYPE)
    return _list_column(column, feature, n, bad, hard)


def _text_column(column, name: str, n: int, bad: Dict[int, Tuple[str, str]],
                 hard: Dict[int, Tuple[str, str]]) -> np.ndarray:
    """(n, 1) numbers parsed from a text column; text that is not a number is a fault."""
    values = np.full(n, np.nan)
    for i, s in enumerate(column.to_pylist()):
        if s is None:
            bad.setdefault(i, (REASON_NULL, f"column {name!r} is null"))
            continue
        try:
            values[i] = float(s)
        except (ValueError, OverflowError):
            _fault(bad, hard, i, REASON_NON_NUMERIC,
                   f"column {name!r} value {echo(s)} is not a number")
            continue
        if np.isinf(values[i]) and s.strip().lstrip("+-").lower() not in ("inf", "infinity"):
            # "1e400": a finite number written out, beyond even float64's range.
            _fault(bad, hard, i, REASON_OUT_OF_RANGE,
                   f"column {name!r} value {echo(s)} is {BEYOND_FLOAT32}")
    return values.reshape(n, 1)


def _flatten(column, feature: Feature, n: int):
    """(values array, row of each value or None, (n,) ragged rows) of a numeric list column.

    Nested lists as deep as the feature shape must match it level by level: a ragged
    [[1, 2, 3], [4]] has the 4 values of a 2x2 image but not its shape.
    """
    flat = column
    row_of = None
    check_levels = len(feature.shape) > 1 and list_depth(column.type) == len(feature.shape)
    ragged = np.zeros(n, dtype=bool)
    depth = 0
    while not is_numeric(flat.type):
        if check_levels:
            lens = pc.list_value_length(flat).fill_null(feature.shape[depth])
            off = np.flatnonzero(lens.to_numpy(zero_copy_only=False) != feature.shape[depth])
            ragged[off if row_of is None else row_of[off]] = True
        depth += 1
        parents = pc.list_parent_indices(flat).to_numpy(zero_copy_only=False).astype(np.int64)
        row_of = parents if row_of is None else row_of[parents]
        flat = pc.list_flatten(flat)
    return flat, row_of, ragged


def _list_column(column, feature: Feature, n: int, bad: Dict[int, Tuple[str, str]],
                 hard: Dict[int, Tuple[str, str]]) -> np.ndarray:
    """(n, feature.size) values of a numeric list column; wrong lengths and shapes are faults."""
    name = feature.name
    flat, row_of, ragged = _flatten(column, feature, n)
    lengths = np.bincount(row_of, minlength=n) if row_of is not None else np.ones(n, np.int64)
    row_null = column.is_null().to_numpy(zero_copy_only=False)
    values = numeric_values(flat)
    value_null = flat.is_null().to_numpy(zero_copy_only=False) if flat.null_count else None
    out = np.full((n, feature.size), np.nan)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    ok_len = lengths == feature.size
    for i in np.flatnonzero(row_null):
        bad.setdefault(int(i), (REASON_NULL, f"column {name!r} is null"))
    for i in np.flatnonzero(~ok_len & ~row_null):
        _fault(bad, hard, int(i), REASON_WRONG_LENGTH,
               f"column {name!r} has {int(lengths[i])} values, expected {feature.size}")
    for i in np.flatnonzero(ragged & ok_len & ~row_null):
        _fault(bad, hard, int(i), REASON_WRONG_LENGTH,
               f"column {name!r} does not have shape {feature.shape}")
    good = np.flatnonzero(ok_len & ~row_null & ~ragged)
    if len(good):
        if len(good) == n and ok_len.all():
            out = values.reshape(n, feature.size)
        else:
            idx = starts[good][:, None] + np.arange(feature.size)[None, :]
            out[good] = values[idx]
        if value_null is not None:
            null_rows = good[value_null[starts[good][:, None] + np.arange(feature.size)].any(axis=1)]
            for i in null_rows:
                bad.setdefault(int(i), (REASON_NULL, f"column {name!r} has a null element"))
    return out


def _fault(bad, hard, row: int, reason: str, detail: str) -> None:
    bad.setdefault(row, (reason, detail))
    hard.setdefault(row, (reason, detail))


def to_matrix(batch: pa.RecordBatch | pa.Table, features: Sequence[Feature], *,
              allow_missing: bool = False) -> Conversion:
    """Converts a record batch to the float32 model input, separating bad rows.

    Args:
      batch: Arrow record batch or table with (at least) the feature columns.
      features: bundle feature specs, in model order.
      allow_missing: keep rows whose only faults are missing values (null values,
        null lists or list elements, NaN): they stay NaN in the matrix and False in
        `observed`. ±inf, text, wrong lengths and out-of-range numbers are still
        faults, and so is a row with no value present (`no_observed_values`).

    Returns:
      Conversion with the (n_valid, n_inputs) float32 matrix of good rows.

    Raises:
      SchemaMismatch: a feature column is missing or has an unusable type; the
        message names the column and what was expected.
    """
    n = batch.num_rows
    bad: Dict[int, Tuple[str, str]] = {}
    hard: Dict[int, Tuple[str, str]] = {}  # faults that are not missing values
    matrix = _fill_matrix(batch, features, bad, hard)
    if allow_missing:
        return _with_missing(matrix, features, hard)
    finite = np.isfinite(matrix)
    if not finite.all():
        for i in np.flatnonzero(~finite.all(axis=1)):
            if int(i) in bad:
                continue
            col = int(np.flatnonzero(~finite[i])[0])
            fname, offset = _locate(features, col)
            bad[int(i)] = (REASON_NOT_FINITE,
                           f"column {fname!r}{offset} is {float(matrix[i, col])!r}")
    if bad:
        keep = np.ones(n, dtype=bool)
        keep[list(bad)] = False
        valid = np.flatnonzero(keep)
        matrix = matrix[valid]
    else:
        valid = np.arange(n, dtype=np.int64)
    faults = [(i, r, d) for i, (r, d) in sorted(bad.items())]
    return Conversion(np.ascontiguousarray(matrix), valid, faults)


def _fill_matrix(batch: pa.RecordBatch | pa.Table, features: Sequence[Feature],
                 bad: Dict[int, Tuple[str, str]], hard: Dict[int, Tuple[str, str]]
                 ) -> np.ndarray:
    """The (rows, n_inputs) float32 matrix of every row, faults marked in `bad` / `hard`."""
    n = batch.num_rows
    names = batch.schema.names
    # Filled column by column in the model's dtype; checking finiteness after the float32
    # conversion also catches values too large for float32 (they become inf).
    matrix = np.empty((n, n_inputs(features)), dtype=np.float32)
    offset = 0
    check_unique_columns(names, [f.name for f in features], "feature")
    for f in features:
        if f.name not in names:
            raise SchemaMismatch(
                f"feature column {f.name!r} is missing (columns present: "
                f"{clip(', '.join(file_columns(batch)), 400)})", REASON_MISSING_COLUMN)
        values = _column_to_array(batch.column(names.index(f.name)), f, n, bad, hard)
        block = matrix[:, offset:offset + f.size]
        with np.errstate(over="ignore", invalid="ignore"):
            block[...] = values
        overflow = ~np.isfinite(block) & np.isfinite(values)
        for i in np.flatnonzero(overflow.any(axis=1)):
            j = int(np.flatnonzero(overflow[i])[0])
            _fault(bad, hard, int(i), REASON_OUT_OF_RANGE,
                   f"column {f.name!r}{f'[{j}]' if f.shape else ''} value "
                   f"{float(values[i, j])!r} is {BEYOND_FLOAT32}")
        offset += f.size
    return matrix


def _with_missing(matrix: np.ndarray, features: Sequence[Feature],
                  hard: Dict[int, Tuple[str, str]]) -> Conversion:
    """The Conversion of `to_matrix(allow_missing=True)`: NaN is missing, ±inf a fault."""
    n = len(matrix)
    bad = dict(hard)
    infinite = np.isinf(matrix)
    for i in np.flatnonzero(infinite.any(axis=1)):
        if int(i) not in bad:
            col = int(np.flatnonzero(infinite[i])[0])
            fname, offset = _locate(features, col)
            bad[int(i)] = (REASON_NOT_FINITE, f"column {fname!r}{offset} is {float(matrix[i, col])!r}")
    observed = ~np.isnan(matrix)
    for i in np.flatnonzero(~observed.any(axis=1)):
        bad.setdefault(int(i), (REASON_NO_OBSERVED, "every feature value is null or NaN"))
    keep = np.ones(n, dtype=bool)
    keep[list(bad)] = False
    valid = np.flatnonzero(keep).astype(np.int64)
    observed = observed[valid]
    faults = [(i, r, d) for i, (r, d) in sorted(bad.items())]
    return Conversion(np.ascontiguousarray(matrix[valid]), valid, faults,
                      None if observed.all() else observed)


def _locate(features: Sequence[Feature], col: int) -> Tuple[str, str]:
    for f in features:
        if col < f.size:
            return f.name, (f"[{col}]" if f.shape else "")
        col -= f.size
    return "?", ""
