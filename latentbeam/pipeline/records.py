"""Arrow in, Arrow out: the scoring core applied to one record batch (no Beam here).

Every Beam path (the `Score` transform, the `latentbeam score` job, streaming) and the
benchmarks call `score_record_batch`; the output schema is defined once, here (the
dead-letter schema in `dead_letters`).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from latentbeam.errors import ConfigError
from latentbeam.text import echo, first_repeated
from latentbeam.model.arrow_types import list_array
from latentbeam.model.features import (REASON_MISSING_COLUMN, REASON_MODEL_ERROR,
                                       SchemaMismatch, check_unique_columns, input_names,
                                       row_payload, to_matrix)
from latentbeam.model.scoring import (MISSING_IMPUTE, MISSING_MASK, MISSING_MODES,
                                      MISSING_REJECT, Scores, check_missing_mode, impute, score)
from latentbeam.pipeline.rows import as_record_batch
# Dead letters are built in dead_letters; their names stay importable from here.
from latentbeam.pipeline.dead_letters import (DATA_ERRORS, DEAD_LETTER_SCHEMA, as_file_fault,
                                              dead_letter, dead_letters_to_batch,
                                              whole_file_dead_letter)

# Output column names (the scored-output contract in the README).
COL_LATENT = "latent"
COL_ERROR = "reconstruction_error"
COL_SCORE = "anomaly_score"
COL_FLAG = "is_anomaly"
COL_MODEL_VERSION = "model_version"
COL_FEATURE_ERRORS = "feature_errors"
COL_RECONSTRUCTION = "reconstruction"
COL_LATENT_DISTANCE = "latent_distance"
COL_COVERAGE = "coverage"
COL_TOP_FEATURES = "top_features"
# Columns a scored file can hold besides the key columns (the stream's adaptive columns too).
SCORING_COLUMNS = frozenset({
    COL_LATENT, COL_ERROR, COL_SCORE, COL_FLAG, COL_MODEL_VERSION, COL_FEATURE_ERRORS,
    COL_RECONSTRUCTION, COL_LATENT_DISTANCE, COL_COVERAGE, COL_TOP_FEATURES,
    "adaptive_threshold", "is_anomaly_adaptive"})

# One element of `top_features`: an input (features.input_names) and its share of the
# row's error, sum of its squared error / sum over all inputs (0..1).
TOP_FEATURE_TYPE = pa.struct([pa.field("name", pa.string()), pa.field("share", pa.float32())])

# Parquet key-value metadata written on every scored file.
META_MODEL_VERSION = b"latentbeam.model_version"
META_THRESHOLD = b"latentbeam.threshold"
META_THRESHOLD_METHOD = b"latentbeam.threshold_method"

@dataclass(frozen=True)
class ScoringOptions:
    key_columns: Tuple[str, ...] = ()  # input columns passed through unchanged
    per_feature_errors: bool = False  # add `feature_errors`
    reconstruction: bool = False  # add `reconstruction` (input units)
    latent_distance: bool = False  # add `latent_distance` (the score's density term)
    top_features: int = 0  # > 0: add `top_features`, the K inputs with the largest error share
    missing: str = MISSING_REJECT  # null/NaN features: reject | impute | mask (adds `coverage`)

    def __post_init__(self):
        k = self.top_features
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ConfigError(f"top_features (--top-features) must be a non-negative integer "
                             f"(0 = no `top_features` column). Received: top_features={k!r}")
        if self.missing not in MISSING_MODES:
            raise ConfigError(f"Received an invalid value for `missing`, expected one of "
                             f"{', '.join(MISSING_MODES)}. Received: missing={self.missing!r}")


def check_key_columns(key_columns: Sequence[str], written: Sequence[str]) -> None:
    """Refuses key columns named twice or named like a column the output holds.

    A Parquet file (and an Arrow batch) can hold two columns of one name, but no reader
    tells them apart: a label passed through as `is_anomaly` would sit beside the flag.

    Args:
      key_columns: the input columns passed through (`--key-columns`).
      written: the columns the output adds after them (the job's output schema).

    Raises:
      ConfigError: naming the column, what the output holds and the fix.
    """
    twice = first_repeated(key_columns)
    if twice is not None:
        raise ConfigError(f"--key-columns names {echo(twice)} twice. Name each input column "
                          f"once.")
    clash = [k for k in key_columns if k in set(written)]
    if clash:
        raise ConfigError(
            f"Key column {echo(clash[0])} has the name of a column the output holds "
            f"({', '.join(written)}): one file cannot hold both. Pass through only what "
            f"identifies a row (e.g. --key-columns id) and join the output back to the input "
            f"on it, or rename the column in the input.")


def float_list_array(matrix: np.ndarray) -> pa.ListArray:
    """(n, k) matrix -> list<float32> array (one list of k per row)."""
    return list_array(np.asarray(matrix, dtype=np.float32))


def output_schema(info, opts: ScoringOptions, key_fields: Sequence[pa.Field] = ()) -> pa.Schema:
    """Schema of scored output: key columns, then the scoring columns."""
    fields = list(key_fields) + [
        pa.field(COL_LATENT, pa.list_(pa.float32())),
        pa.field(COL_ERROR, pa.float32()),
        pa.field(COL_SCORE, pa.float32()),
        pa.field(COL_FLAG, pa.bool_()),
        pa.field(COL_MODEL_VERSION, pa.string()),
    ]
    if opts.per_feature_errors:
        fields.append(pa.field(COL_FEATURE_ERRORS, pa.list_(pa.float32())))
    if opts.reconstruction:
        fields.append(pa.field(COL_RECONSTRUCTION, pa.list_(pa.float32())))
    if opts.latent_distance:
        fields.append(pa.field(COL_LATENT_DISTANCE, pa.float32()))
    if opts.top_features:
        fields.append(pa.field(COL_TOP_FEATURES, pa.list_(TOP_FEATURE_TYPE)))
    if opts.missing == MISSING_MASK:
        fields.append(pa.field(COL_COVERAGE, pa.float32()))
    return pa.schema(fields, metadata=output_metadata(info))


def output_metadata(info) -> Dict[bytes, bytes]:
    return {META_MODEL_VERSION: info.model_version.encode(),
            META_THRESHOLD: repr(info.threshold.threshold).encode(),
            META_THRESHOLD_METHOD: info.threshold.method.encode()}


def scores_to_batch(info, scores: Scores, opts: ScoringOptions,
                    keys: Optional[pa.RecordBatch] = None) -> pa.RecordBatch:
    """Builds the scored output batch from Scores (and the key columns of the same rows)."""
    n = len(scores)
    key_fields = list(keys.schema) if keys is not None else []
    columns: List[Any] = list(keys.columns) if keys is not None else []
    columns += [
        float_list_array(scores.latent),
        pa.array(scores.reconstruction_error, type=pa.float32()),
        pa.array(scores.anomaly_score, type=pa.float32()),
        pa.array(scores.is_anomaly, type=pa.bool_()),
        pa.array([info.model_version] * n, type=pa.string()),
    ]
    if opts.per_feature_errors:
        columns.append(float_list_array(scores.feature_errors))
    if opts.reconstruction:
        columns.append(float_list_array(scores.reconstruction))
    if opts.latent_distance:
        columns.append(pa.array(scores.latent_distance, type=pa.float32()))
    if opts.top_features:
        columns.append(top_features_array(scores.feature_errors, _input_names(tuple(info.features)),
                                          opts.top_features))
    if opts.missing == MISSING_MASK:
        coverage = scores.coverage if scores.coverage is not None else np.ones(n, np.float32)
        columns.append(pa.array(coverage, type=pa.float32()))
    return pa.RecordBatch.from_arrays(columns, schema=output_schema(info, opts, key_fields))


@functools.lru_cache(maxsize=32)
def _input_names(features: tuple) -> pa.Array:
    return pa.array(input_names(features), type=pa.string())


def top_features(feature_errors: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The k inputs with the largest share of each row's error, largest first.

    Args:
      feature_errors: (n, n_inputs) per-input squared error (Scores.feature_errors).
      k: inputs per row; at most n_inputs are returned.

    Returns:
      (indices (n, k') int64 into the inputs, shares (n, k') float32), k' = min(k, n_inputs);
      share = input's error / sum of the row's errors (0 when the row's error is 0).
      Equal shares are ordered by input index. An unobserved input (NaN error, the
      `--missing mask` mode) has share 0 and ranks after every observed one.
    """
    ferr = np.asarray(feature_errors, dtype=np.float64)
    n, d = ferr.shape
    k = min(int(k), d)
    unobserved = np.isnan(ferr)
    rank = ferr
    if unobserved.any():
        rank = np.where(unobserved, -1.0, ferr)  # errors are >= 0: unobserved rank last
        ferr = np.where(unobserved, 0.0, ferr)
    if k < d:
        idx = np.argpartition(-rank, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(d), (n, d))
    keys = np.take_along_axis(rank, idx, axis=1)
    vals = np.take_along_axis(ferr, idx, axis=1)
    order = np.lexsort((idx, -keys), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    total = ferr.sum(axis=1, keepdims=True)
    shares = np.divide(vals, total, out=np.zeros_like(vals), where=total > 0)
    return idx.astype(np.int64), shares.astype(np.float32)


def top_features_array(feature_errors: np.ndarray, names: pa.Array, k: int) -> pa.ListArray:
    """`top_features` column: list<struct<name: string, share: float32>>, k per row."""
    idx, shares = top_features(feature_errors, k)
    n, k = idx.shape
    entries = pa.StructArray.from_arrays(
        [names.take(pa.array(idx.reshape(-1))), pa.array(shares.reshape(-1), type=pa.float32())],
        fields=list(TOP_FEATURE_TYPE))
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if n and k
                       else np.zeros(n + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, entries, type=pa.list_(TOP_FEATURE_TYPE))


def _convert(batch: pa.RecordBatch, features, key_columns: Sequence[str], source: str,
             row_offset: int, allow_missing: bool = False):
    """Checks key columns, converts the features; returns (Conversion, dead letters)."""
    missing = [k for k in key_columns if k not in batch.schema.names]
    if missing:
        raise SchemaMismatch(f"key column(s) {', '.join(map(repr, missing))} missing "
                             f"(columns present: {', '.join(batch.schema.names)})")
    check_unique_columns(batch.schema.names, key_columns, "key")
    conv = to_matrix(batch, features, allow_missing=allow_missing)
    letters = [dead_letter(source, row_offset + row, reason, detail, row_payload(batch, row))
               for row, reason, detail in conv.faults]
    return conv, letters


def _key_rows(batch: pa.RecordBatch, key_columns: Sequence[str],
              valid: np.ndarray) -> Optional[pa.RecordBatch]:
    """The key columns of the good rows (None without key columns)."""
    if not key_columns:
        return None
    keys = batch.select(list(key_columns))
    return keys if len(valid) == batch.num_rows else keys.take(pa.array(valid))


def score_record_batch(bundle, batch: pa.RecordBatch | pa.Table, *, source: str = "",
                       row_offset: int = 0, opts: ScoringOptions = ScoringOptions()
                       ) -> Tuple[Optional[pa.RecordBatch], List[Dict[str, Any]]]:
    """Scores one record batch.

    Args:
      bundle: a loaded Bundle.
      batch: input rows with the bundle's feature columns (and any key columns).
      source: where the rows came from (file path), for dead letters.
      row_offset: index of the batch's first row within `source`.
      opts: key columns, optional output columns and how missing values are treated
        (`missing`: reject dead-letters the row; impute fills the training medians;
        mask fills them for the forward pass and scores the observed inputs only).

    Returns:
      (scored batch of the good rows in input order or None if none were good,
       dead-letter records for the bad rows).

    Raises:
      SchemaMismatch: a feature or key column is missing / unusable for the whole
        batch (callers turn this into one whole-file dead letter).
      ValueError: impute or mask with a bundle that has no training medians.
    """
    check_missing_mode(bundle.info, opts.missing)
    batch = as_record_batch(batch)
    conv, letters = _convert(batch, bundle.info.features, opts.key_columns, source, row_offset,
                             allow_missing=opts.missing != MISSING_REJECT)
    if not len(conv.valid):
        return None, letters
    scores = _score_conversion(bundle, conv, opts.missing)
    valid = conv.valid
    finite = np.isfinite(scores.reconstruction_error)
    if not finite.all():
        # Finite inputs far outside the training range can overflow inside the model; a
        # NaN error would read as "not anomalous". Such rows are dead letters instead.
        letters = sorted(letters + [
            dead_letter(source, row_offset + int(valid[i]), REASON_MODEL_ERROR,
                        f"reconstruction error is {float(scores.reconstruction_error[i])!r} "
                        f"for finite inputs (values far outside the training range?)",
                        row_payload(batch, int(valid[i])))
            for i in np.flatnonzero(~finite)], key=lambda d: d["row"])
        if not finite.any():
            return None, letters
        scores = _take_scores(scores, np.flatnonzero(finite))
        valid = valid[finite]
    return scores_to_batch(bundle.info, scores, opts,
                           _key_rows(batch, opts.key_columns, valid)), letters


def _score_conversion(bundle, conv, missing: str) -> Scores:
    """The core's Scores for the good rows of a Conversion, in the given missing-value mode."""
    if missing == MISSING_MASK:
        observed = conv.observed if conv.observed is not None else \
            np.ones(conv.matrix.shape, dtype=bool)
        return score(bundle, conv.matrix, observed=observed)
    if missing == MISSING_IMPUTE and conv.observed is not None:
        return score(bundle, impute(bundle.info, conv.matrix, conv.observed))
    return score(bundle, conv.matrix)


def _take_scores(scores: Scores, rows: np.ndarray) -> Scores:
    """The given rows of every per-row array of `scores` (every field, so none is forgotten)."""
    return Scores(**{f.name: None if getattr(scores, f.name) is None
                     else getattr(scores, f.name)[rows] for f in dataclasses.fields(Scores)})


# --- Decoding and the row path (dicts / beam.Row), shared by the Beam transforms,
# --- the RunInference model handler and the `latentbeam decode` job.

def decode_record_batch(bundle, batch: pa.RecordBatch | pa.Table, *, source: str = "",
                        row_offset: int = 0, key_columns: Sequence[str] = ()
                        ) -> Tuple[Optional[pa.RecordBatch], List[Dict[str, Any]]]:
    """Decodes the `latent` column of one record batch back to features in input units.

    Output columns: the key columns, then one column per bundle feature in bundle
    order: float32 for scalar features, list<float32> (flattened, `Feature.size`
    values) for list and image features.

    Returns:
      (decoded batch of the good rows in input order or None, dead-letter records
       for rows whose latent is null, non-finite or of the wrong length).

    Raises:
      SchemaMismatch: the `latent` column or a key column is missing.
    """
    from latentbeam.model.features import Feature
    from latentbeam.model.scoring import decode

    batch = as_record_batch(batch)
    info = bundle.info
    conv, letters = _convert(batch, [Feature(COL_LATENT, "float32", (info.latent_dim,))],
                             key_columns, source, row_offset)
    if not len(conv.valid):
        return None, letters
    x = decode(bundle, conv.matrix)
    keys = _key_rows(batch, key_columns, conv.valid)
    columns: List[Any] = list(keys.columns) if keys is not None else []
    _, feature_arrays = feature_columns(info.features, x)
    columns += feature_arrays + [pa.array([info.model_version] * len(x), type=pa.string())]
    schema = decode_output_schema(info, list(keys.schema) if keys is not None else [])
    return pa.RecordBatch.from_arrays(columns, schema=schema), letters


def decode_output_schema(info, key_fields: Sequence[pa.Field] = ()) -> pa.Schema:
    """Schema of decoded output: key columns, one column per bundle feature, model_version."""
    feature_fields, _ = feature_columns(info.features, np.zeros((0, info.n_inputs), np.float32))
    return pa.schema(list(key_fields) + feature_fields + [pa.field(COL_MODEL_VERSION, pa.string())],
                     metadata=output_metadata(info))


def feature_columns(features, x: np.ndarray) -> Tuple[List[pa.Field], List[pa.Array]]:
    """A (n, n_inputs) matrix in bundle order -> one Arrow column per feature.

    float32 for scalar features, list<float32> (flattened, `Feature.size` values) for
    list and image features: the input `to_matrix` reads back to the same matrix.
    """
    fields, arrays, offset = [], [], 0
    for f in features:
        block = x[:, offset:offset + f.size]
        offset += f.size
        if f.shape:
            fields.append(pa.field(f.name, pa.list_(pa.float32())))
            arrays.append(float_list_array(block))
        else:
            fields.append(pa.field(f.name, pa.float32()))
            arrays.append(pa.array(np.ascontiguousarray(block[:, 0], dtype=np.float32)))
    return fields, arrays


MODE_SCORE, MODE_DECODE = "score", "decode"


def apply_bundle(bundle, batch: pa.RecordBatch | pa.Table, mode: str, *, source: str = "",
                 row_offset: int = 0, opts: ScoringOptions = ScoringOptions()):
    """`score_record_batch` (mode "score") or `decode_record_batch` (mode "decode")."""
    if mode == MODE_DECODE:
        return decode_record_batch(bundle, batch, source=source, row_offset=row_offset,
                                   key_columns=opts.key_columns)
    if mode != MODE_SCORE:
        raise ConfigError(f"Unknown mode {mode!r}; expected {MODE_SCORE!r} or {MODE_DECODE!r}.")
    return score_record_batch(bundle, batch, source=source, row_offset=row_offset, opts=opts)


__all__ = ["COL_ERROR", "COL_FEATURE_ERRORS", "COL_FLAG", "COL_LATENT", "COL_LATENT_DISTANCE", "COL_MODEL_VERSION",
           "COL_RECONSTRUCTION", "COL_SCORE", "COL_TOP_FEATURES", "DEAD_LETTER_SCHEMA", "MODE_DECODE",
           "MODE_SCORE", "TOP_FEATURE_TYPE",
           "ScoringOptions", "REASON_MISSING_COLUMN", "DATA_ERRORS", "apply_bundle",
           "as_file_fault", "check_key_columns", "dead_letter", "dead_letters_to_batch", "decode_output_schema",
           "decode_record_batch", "feature_columns", "float_list_array",
           "list_array", "output_schema", "score_record_batch", "scores_to_batch",
           "top_features", "top_features_array", "whole_file_dead_letter"]
