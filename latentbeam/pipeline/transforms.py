"""Public Beam transforms: `Encode`, `Decode` and `Score` over a model bundle.

Each accepts a PCollection of

* Arrow record batches or tables (the fast path: one model call per element, output
  one `pyarrow.RecordBatch` per element with the scored-output schema), or
* rows: dicts or `beam.Row` (batched with `BatchElements` and converted to one Arrow
  batch per model call; output one dict, or `beam.Row`, per good input row).

On a schema'd PCollection (`beam.Row`s with known field types, NamedTuples, or any
PCollection whose element type is a row type) the output is `beam.Row`s with a
declared schema: the key columns with their input types, then the output columns of
`records.output_schema` (scores) or `records.decode_output_schema` (decode) as Beam
types. So `Filter`, `Select`, Beam YAML, Beam DataFrames and `WriteToParquet` without
an explicit schema work downstream. The schema comes from bundle.json at pipeline
construction time; the model is never loaded there.

Both paths run `records.score_record_batch` / `records.decode_record_batch`, so they
give the same numbers. The bundle is loaded once per worker process in `setup()`
(`io.shared_bundle`) and shared by the DoFn instances of every thread; the transform
objects hold only the bundle path and plain values.

Rows that cannot be used (null, NaN/inf, non-numeric, wrong list length, missing
column) never stop the pipeline: they go to a dead-letter output of dicts with the
`dead_letters.DEAD_LETTER_SCHEMA` fields, returned by `.with_dead_letters()` and counted in
the "latentbeam" Beam metrics.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa

from latentbeam.errors import ConfigError, InputError
from latentbeam.model import load_bundle_info
from latentbeam.model.features import row_payload
from latentbeam.pipeline import io
from latentbeam.pipeline.dead_letters import DATA_ERRORS, as_file_fault, dead_letter
from latentbeam.pipeline.layout import DEFAULT_BATCH_ROWS
from latentbeam.pipeline.metrics import (BATCHES_DEAD_LETTERED, ROWS_DEAD_LETTERED, ROWS_READ,
                                         ROWS_SCORED, ScoringMetrics)
from latentbeam.pipeline.records import (COL_LATENT, COL_MODEL_VERSION, COL_TOP_FEATURES,
                                         MODE_DECODE, MODE_SCORE, ScoringOptions, apply_bundle,
                                         check_key_columns, decode_output_schema,
                                         output_schema)
from latentbeam.pipeline.rows import as_record_batch, as_row_dict, rows_to_record_batch

log = logging.getLogger(__name__)

DEAD_LETTER_TAG = "dead_letter"
MODE_ENCODE = "encode"  # scoring, keeping only the key columns, latent and model_version
DEFAULT_MAX_BATCH_ROWS = DEFAULT_BATCH_ROWS
_ARROW_TYPES = (pa.RecordBatch, pa.Table)


def _is_frame(element: Any) -> bool:
    """A pandas DataFrame (pandas is imported by whoever made one; never imported here)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(element, pandas.DataFrame)


def _element_rows(element: Any) -> int:
    """Weight of an element for BatchElements: its row count (Arrow, pandas) or 1 (a row)."""
    if isinstance(element, _ARROW_TYPES):
        return max(1, element.num_rows)
    return max(1, len(element)) if _is_frame(element) else 1


_EXPECTED_ELEMENT = ("Expected a dict, a beam.Row, an Arrow record batch/table or a pandas "
                     "DataFrame as element.")


def input_row_fields(element_type: Any) -> Optional[List[Tuple[str, Any]]]:
    """(name, Beam type) of each field of a schema'd element type; None if not schema'd."""
    from apache_beam.typehints.row_type import RowTypeConstraint
    from apache_beam.typehints.schemas import named_fields_from_element_type

    if not isinstance(element_type, RowTypeConstraint) and \
            RowTypeConstraint.from_user_type(element_type) is None:
        return None
    return list(named_fields_from_element_type(element_type))


def arrow_to_beam_fields(schema: pa.Schema) -> List[Tuple[str, Any]]:
    """(name, Beam type) per column of an Arrow schema, by Beam's Arrow type mapping."""
    from apache_beam.typehints.arrow_type_compatibility import beam_schema_from_arrow_schema
    from apache_beam.typehints.schemas import named_fields_from_schema

    return list(named_fields_from_schema(beam_schema_from_arrow_schema(schema.remove_metadata())))


def _to_row(out: Dict[str, Any]) -> beam.Row:
    """An output dict as a beam.Row; `top_features` entries become nested rows too, as
    the declared schema (a sequence of rows {name, share}) says."""
    top = out.get(COL_TOP_FEATURES)
    if top is not None:
        out = dict(out, **{COL_TOP_FEATURES: [beam.Row(**t) for t in top]})
    return beam.Row(**out)


def _payload(row: Dict[str, Any]) -> str:
    return row_payload(rows_to_record_batch([row]), 0)


class _BundleDoFn(beam.DoFn):
    """Applies one bundle operation to lists of elements (from BatchElements)."""

    def __init__(self, bundle_path: str, mode: str, opts: ScoringOptions, source: str,
                 as_rows: bool = False):
        self._bundle_path = bundle_path
        self._mode = mode
        self._opts = opts
        self._source = source
        self._as_rows = as_rows  # the output is declared as a row type: always beam.Row
        self._bundle = None
        self._metrics = None

    def setup(self):
        self._bundle = io.shared_bundle(self._bundle_path)
        self._metrics = ScoringMetrics()

    def _apply(self, batch: pa.RecordBatch, row_offset: int = 0
               ) -> Tuple[Optional[pa.RecordBatch], List[dict]]:
        mode = MODE_DECODE if self._mode == MODE_DECODE else MODE_SCORE
        scored, letters = apply_bundle(self._bundle, batch, mode, source=self._source,
                                       row_offset=row_offset, opts=self._opts)
        if scored is not None and mode == MODE_SCORE:
            self._metrics.record_scored(scored)
            if self._mode == MODE_ENCODE:
                scored = scored.select(list(self._opts.key_columns) + [COL_LATENT,
                                                                       COL_MODEL_VERSION])
        return scored, letters

    def _count(self, read: int, letters: int) -> None:
        self._metrics.inc(ROWS_READ, read)
        self._metrics.inc(ROWS_DEAD_LETTERED, letters)
        if self._mode == MODE_DECODE:
            # Decoded rows have no error/flag: rows_scored counts them as processed.
            self._metrics.inc(ROWS_SCORED, read - letters)

    def process(self, elements: Sequence[Any]):
        rows: List[Any] = []
        for element in elements:
            if isinstance(element, _ARROW_TYPES):
                yield from self._process_rows(rows)
                rows = []
                yield from self._process_arrow(element)
            elif _is_frame(element):
                yield from self._process_rows(rows)
                rows = []
                yield from self._process_frame(element)
            else:
                rows.append(element)
        yield from self._process_rows(rows)

    def _process_frame(self, frame):
        """A DataFrame in, a DataFrame out (its index is not kept: pass ids as key columns)."""
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        except DATA_ERRORS:
            # An object column mixing numbers and text: built as rows are, such a column
            # becomes text and only its bad rows are dead letters.
            try:
                table = rows_to_record_batch(frame.to_dict("records"))
            except DATA_ERRORS as e:
                yield from self._batch_fault(as_file_fault(e, "converting the DataFrame"))
                return
        for out in self._process_arrow(table):
            yield out if isinstance(out, beam.pvalue.TaggedOutput) else out.to_pandas()

    def _batch_fault(self, e):
        self._metrics.inc(BATCHES_DEAD_LETTERED)
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            self._source, None, e.reason, f"{type(e).__name__}: {e}", None))

    def _process_arrow(self, element):
        try:
            out, letters = self._apply(as_record_batch(element))
        except DATA_ERRORS as e:
            yield from self._batch_fault(as_file_fault(e, "scoring the batch"))
            return
        self._count(element.num_rows, len(letters))
        for letter in letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
        if out is not None:
            yield out

    def _process_rows(self, rows: List[Any]):
        if not rows:
            return
        dicts = [as_row_dict(r, _EXPECTED_ELEMENT) for r in rows]
        try:
            results = self._rows_batch(dicts)
        except DATA_ERRORS:
            # Some row lacks a column or has an unusable type: find which, row by row.
            results = []
            for i, d in enumerate(dicts):
                try:
                    results.extend(self._rows_batch([d], row_offset=i))
                except DATA_ERRORS as e:
                    e = as_file_fault(e, "scoring the row")
                    results.append((i, None, dead_letter(self._source, i, e.reason,
                                                         str(e), _payload(d))))
        letters = sum(1 for _, out, _ in results if out is None)
        self._count(len(rows), letters)
        for i, out, letter in results:
            if out is None:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            elif isinstance(rows[i], dict) and not self._as_rows:
                yield out
            else:
                yield _to_row(out)

    def _rows_batch(self, dicts: List[Dict[str, Any]], row_offset: int = 0
                    ) -> List[Tuple[int, Optional[dict], Optional[dict]]]:
        """(row index, output dict or None, dead letter or None) per row, in order."""
        out, letters = self._apply(rows_to_record_batch(dicts), row_offset)
        bad = {letter["row"]: letter for letter in letters}
        for i, letter in bad.items():
            # The batch may hold a column as text; the payload shows the row as given.
            letter["payload"] = _payload(dicts[i - row_offset])
        good = iter(out.to_pylist() if out is not None else [])
        return [(i, None, bad[i]) if i in bad else (i, next(good), None)
                for i in range(row_offset, row_offset + len(dicts))]


# What Score, Encode and Decode take and give: Arrow record batches or tables (the
# columnar path) or rows (beam.Row, NamedTuple, dict; schema'd input comes out as
# beam.Row of the output schema, dicts as dicts). Dead letters are dicts of the
# DEAD_LETTER_SCHEMA fields. expand() carries no type annotations: Beam (2.78 on) checks
# them against the input's inferred type, and a union of these input kinds would refuse
# NamedTuples and schema types it handles; the row type of a schema'd output is declared
# with with_output_types.


class _BundleTransform(beam.PTransform):
    _mode = MODE_SCORE
    _step = "Score"

    def __init__(self, bundle_path: str, *, key_columns: Sequence[str] = (),
                 max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS, source: str = "",
                 _opts: Optional[ScoringOptions] = None):
        super().__init__()
        if max_batch_rows < 1:
            raise ConfigError(f"max_batch_rows must be a positive integer. Received: "
                             f"max_batch_rows={max_batch_rows}")
        # Reads bundle.json only: fails fast on a wrong path, never loads the model here (the
        # schema is known from it alone; a launcher need not fetch the model).
        self._info = load_bundle_info(bundle_path)
        self._bundle_path = bundle_path
        self._opts = _opts or ScoringOptions(key_columns=tuple(key_columns))
        check_key_columns(self._opts.key_columns, self.output_columns().names)
        self._max_batch_rows = int(max_batch_rows)
        self._source = source or bundle_path
        self._dead_letters = False

    def with_dead_letters(self) -> "_BundleTransform":
        """Makes the transform return `(output, dead_letters)` instead of `output`."""
        self._dead_letters = True
        return self

    def output_columns(self) -> pa.Schema:
        """The output columns after the key columns (Arrow types), from bundle.json."""
        if self._mode == MODE_DECODE:
            return decode_output_schema(self._info)
        schema = output_schema(self._info, self._opts)
        if self._mode == MODE_ENCODE:
            return pa.schema([schema.field(COL_LATENT), schema.field(COL_MODEL_VERSION)],
                             metadata=schema.metadata)
        return schema

    def output_row_type(self, input_type: Any):
        """The Beam row type of the output for a schema'd `input_type`, else None.

        Raises:
          ValueError: a key column is not a field of the input schema.
        """
        from apache_beam.typehints.row_type import RowTypeConstraint

        fields = input_row_fields(input_type)
        if fields is None:
            return None
        types = dict(fields)
        missing = [k for k in self._opts.key_columns if k not in types]
        if missing:
            raise InputError(f"Key column(s) {', '.join(map(repr, missing))} are not fields of "
                             f"the input schema ({', '.join(types)}). Pass key_columns from "
                             f"those fields.")
        return RowTypeConstraint.from_fields(
            [(k, types[k]) for k in self._opts.key_columns]
            + arrow_to_beam_fields(self.output_columns()))

    def expand(self, pcoll):
        row_type = self.output_row_type(pcoll.element_type)
        apply = beam.ParDo(_BundleDoFn(self._bundle_path, self._mode, self._opts, self._source,
                                       as_rows=row_type is not None))
        if row_type is not None:
            apply = apply.with_output_types(row_type)
        results = (
            pcoll
            | "Batch rows" >> beam.BatchElements(
                min_batch_size=min(256, self._max_batch_rows),
                max_batch_size=self._max_batch_rows, element_size_fn=_element_rows)
            | self._step >> apply.with_outputs(DEAD_LETTER_TAG, main="output"))
        if self._dead_letters:
            return results.output, results[DEAD_LETTER_TAG]
        return results.output


class Score(_BundleTransform):
    """Scores rows with a bundle: latent, reconstruction error, anomaly score and flag.

    Output columns (fields for the row path): the key columns, `latent`,
    `reconstruction_error`, `anomaly_score`, `is_anomaly`, `model_version`, and
    optionally `feature_errors`, `reconstruction` and `top_features` (see the README's
    output schema).

    Example::

        with beam.Pipeline() as p:
            scored, dead = (
                p | beam.Create(table.to_batches(max_chunksize=8192))
                  | Score("gs://models/digits", key_columns=["id"]).with_dead_letters())
            scored | beam.Map(lambda b: b.column("anomaly_score"))

    Args:
      bundle_path: bundle directory (local, gs://, s3://).
      key_columns: input columns copied to the output unchanged.
      per_feature_errors: add `feature_errors` (per-input squared error).
      reconstruction: add `reconstruction` (X-hat in input units).
      latent_distance: add `latent_distance` (the code's distance to training codes).
      top_features: K > 0 adds `top_features`, the K inputs with the largest share of
        the row's error as `{name, share}` structs (dicts on the row path).
      max_batch_rows: rows per model call on the row path.
      source: `source` of dead letters (default: the bundle path).
      missing: rows with null or NaN feature values: "reject" dead-letters them,
        "impute" fills the bundle's training medians, "mask" scores the observed
        inputs only and adds `coverage`.

    Raises:
      ValueError: an unknown `missing`, or impute/mask with a bundle without medians.
    """
    _mode = MODE_SCORE
    _step = "Score"

    def __init__(self, bundle_path: str, *, key_columns: Sequence[str] = (),
                 per_feature_errors: bool = False, reconstruction: bool = False,
                 latent_distance: bool = False,
                 top_features: int = 0,
                 max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS, source: str = "",
                 missing: str = "reject"):
        super().__init__(bundle_path, max_batch_rows=max_batch_rows, source=source,
                         _opts=ScoringOptions(key_columns=tuple(key_columns),
                                              per_feature_errors=per_feature_errors,
                                              reconstruction=reconstruction,
                                              latent_distance=latent_distance,
                                              top_features=top_features,
                                              missing=missing))
        from latentbeam.model.scoring import check_missing_mode
        check_missing_mode(self._info, missing)  # at construction, from bundle.json


class Encode(_BundleTransform):
    """Encodes rows to latent codes: the key columns, `latent` and `model_version`.

    Example::

        codes = (p | beam.Create([{"id": 1, "pixel_00": 0.0, ...}])
                   | Encode("bundle/", key_columns=["id"]))
        # -> {"id": 1, "latent": [0.12, -1.3], "model_version": "4f0c..."}

    Args: as `Score` (without the optional output columns).
    """
    _mode = MODE_ENCODE
    _step = "Encode"


class Decode(_BundleTransform):
    """Decodes latent codes (a `latent` list column / field) to features in input units.

    Output: the key columns, one column per bundle feature (float32, or a flat
    list<float32> for list/image features) and `model_version`.

    Example::

        rows = (p | beam.Create([{"id": 1, "latent": [0.1, -0.4]}])
                  | Decode("bundle/", key_columns=["id"]))
        # -> {"id": 1, "pixel_00": 0.02, ..., "model_version": "4f0c..."}

    Args: as `Encode`.
    """
    _mode = MODE_DECODE
    _step = "Decode"


__all__ = ["DEAD_LETTER_TAG", "Decode", "Encode", "Score", "arrow_to_beam_fields",
           "input_row_fields"]
