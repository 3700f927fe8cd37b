"""Score / Encode / Decode on schema'd input give schema'd rows that Beam's schema-aware
transforms (Filter, Select, DataFrames, WriteToParquet without a schema) take unchanged.

Beam SQL is not tested: SqlTransform needs a Java expansion service that cannot be
downloaded here.
"""
from __future__ import annotations

import os
import shutil
import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that
from apache_beam.typehints.row_type import RowTypeConstraint

from latentbeam.demo import digits_table, pixel_columns
from latentbeam.model import decode, load_bundle_info, score
from latentbeam.pipeline.options import pipeline_options
from latentbeam.pipeline.records import ScoringOptions, decode_output_schema, output_schema
from latentbeam.pipeline.transforms import Decode, Encode, Score
from test_pipeline_transforms import Collected

N = 60
F32 = typing.Optional[np.float32]
F32_LIST = typing.Optional[typing.Sequence[F32]]


# A NamedTuple input type: the id and the 64 pixel columns.
Digit = typing.NamedTuple("Digit", [("id", int)] + [(c, float) for c in pixel_columns()])


def _rows(n=N):
    return [beam.Row(**r) for r in digits_table().slice(0, n).to_pylist()]


def _canonical(tp):
    """A type hint with its generic aliases spelled one way: Beam 2.78 turns
    typing.Sequence[X] into collections.abc.Sequence[X], the same type."""
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    return origin, tuple(_canonical(arg) for arg in typing.get_args(tp))


def _fields(row_type):
    return [(name, _canonical(tp)) for name, tp in row_type._fields]


def _expected(fields):
    return [(name, _canonical(tp)) for name, tp in fields]


def test_score_encode_decode_declare_row_schemas_from_bundle_json(tiny_bundle_dir):
    """The schema is known at construction time, from bundle.json alone."""
    only_json = os.path.join(os.path.dirname(tiny_bundle_dir), "json-only")
    os.makedirs(only_json, exist_ok=True)
    shutil.copy(os.path.join(tiny_bundle_dir, "bundle.json"), only_json)  # no model.keras

    p = beam.Pipeline(options=pipeline_options())
    rows = p | beam.Create(_rows())
    scored = rows | "Score" >> Score(only_json, key_columns=["id", "label"],
                                     per_feature_errors=True)
    codes = rows | "Encode" >> Encode(only_json, key_columns=["label"])
    decoded = codes | "Decode" >> Decode(only_json)

    assert isinstance(scored.element_type, RowTypeConstraint)
    assert _fields(scored.element_type) == _expected([
        ("id", np.int64), ("label", np.int64), ("latent", F32_LIST),
        ("reconstruction_error", F32), ("anomaly_score", F32),
        ("is_anomaly", typing.Optional[bool]), ("model_version", typing.Optional[str]),
        ("feature_errors", F32_LIST)])
    assert _fields(codes.element_type) == _expected([
        ("label", np.int64), ("latent", F32_LIST), ("model_version", typing.Optional[str])])
    assert _fields(decoded.element_type) == _expected(
        [(c, F32) for c in pixel_columns()] + [("model_version", typing.Optional[str])])
    # One column list: the Beam fields follow the Arrow output schemas in records.py.
    info = load_bundle_info(only_json)
    opts = ScoringOptions(per_feature_errors=True)
    assert [n for n, _ in _fields(scored.element_type)][2:] == output_schema(info, opts).names
    assert [n for n, _ in _fields(decoded.element_type)] == decode_output_schema(info).names


def test_a_key_column_missing_from_the_input_schema_is_refused(tiny_bundle_dir):
    p = beam.Pipeline(options=pipeline_options())
    rows = p | beam.Create(_rows(3))
    with pytest.raises(ValueError, match=r"Key column\(s\) 'user' are not fields of the input "
                                         r"schema \(id, label, pixel_00, "):
        _ = rows | Score(tiny_bundle_dir, key_columns=["user"])


def test_schema_aware_transforms_downstream(tmp_path, tiny_bundle_dir, tiny_bundle,
                                            digits_matrix):
    expected = score(tiny_bundle, digits_matrix[:N])
    cut = float(np.median(expected.anomaly_score))  # Filter keeps about half the rows
    out = Collected.store
    keep = Collected.into
    parquet_prefix = str(tmp_path / "scored")

    from apache_beam.dataframe.convert import to_dataframe, to_pcollection

    with beam.Pipeline(options=pipeline_options()) as p:
        scored = (p | beam.Create(_rows())
                  | "Score" >> Score(tiny_bundle_dir, key_columns=["id", "label"]))
        picked = (scored
                  | "Filter" >> beam.Filter(lambda r, cut=cut: r.anomaly_score > cut)
                  | "Select" >> beam.Select("id", "anomaly_score"))
        _ = scored | "Write" >> beam.io.WriteToParquet(parquet_prefix, file_name_suffix=".parquet")
        frame = to_dataframe(scored, label="To DataFrame")
        means = to_pcollection(frame.groupby("label").reconstruction_error.mean().to_frame(),
                               include_indexes=True, label="From DataFrame")
        assert_that(picked, keep("picked"), label="picked")
        assert_that(means, keep("means"), label="means")

    above = np.nonzero(expected.anomaly_score > cut)[0]
    assert 0 < len(above) < N
    picked = sorted(out["picked"], key=lambda r: r.id)
    assert [r.id for r in picked] == above.tolist()
    assert set(picked[0]._asdict()) == {"id", "anomaly_score"}
    np.testing.assert_allclose([r.anomaly_score for r in picked], expected.anomaly_score[above],
                               rtol=1e-5)

    labels = digits_table().slice(0, N).column("label").to_numpy()
    got = {int(r.label): float(r.reconstruction_error) for r in out["means"]}
    assert sorted(got) == sorted(set(labels.tolist()))
    for label, mean in got.items():
        assert mean == pytest.approx(float(expected.reconstruction_error[labels == label].mean()),
                                     rel=1e-5)

    (path,) = [os.path.join(tmp_path, f) for f in os.listdir(tmp_path) if f.endswith(".parquet")]
    table = pq.read_table(path).sort_by("id")
    assert table.column_names == ["id", "label", "latent", "reconstruction_error",
                                  "anomaly_score", "is_anomaly", "model_version"]
    assert table.schema.field("reconstruction_error").type == pa.float32()
    assert table.schema.field("latent").type.value_type == pa.float32()
    assert table.column("id").to_pylist() == list(range(N))
    np.testing.assert_allclose(table.column("reconstruction_error").to_numpy(),
                               expected.reconstruction_error, rtol=1e-5)
    np.testing.assert_allclose(np.array(table.column("latent").to_pylist()), expected.latent,
                               rtol=1e-5, atol=1e-6)
    assert table.column("is_anomaly").to_pylist() == expected.is_anomaly.tolist()


def test_named_tuples_and_row_typed_input_give_rows_dicts_stay_dicts(tiny_bundle_dir,
                                                                     tiny_bundle):
    """NamedTuples, or rows in a PCollection typed as rows, give beam.Row; dicts give dicts."""
    table = digits_table().slice(0, 10)
    dicts = table.to_pylist()
    row_type = RowTypeConstraint.from_fields(
        [("id", int)] + [(c, float) for c in pixel_columns()] + [("label", int)])
    out = Collected.store
    keep = Collected.into

    with beam.Pipeline(options=pipeline_options()) as p:
        latent = [{"id": d["id"], "latent": [0.1 * d["id"], -0.2]} for d in dicts]
        named = (p | "Named" >> beam.Create(
                     [Digit(**{k: d[k] for k in Digit._fields}) for d in dicts])
                 | "Encode named" >> Encode(tiny_bundle_dir, key_columns=["id"]))
        typed = (p | "Typed" >> beam.Create(dicts)
                 | "As rows" >> beam.Map(lambda d: beam.Row(**d)).with_output_types(row_type)
                 | "Score typed" >> Score(tiny_bundle_dir, key_columns=["id"]))
        plain = (p | "Plain" >> beam.Create(dicts)
                 | "Score plain" >> Score(tiny_bundle_dir, key_columns=["id"]))
        decoded = (p | "Latent" >> beam.Create(latent)
                   | "Decode plain" >> Decode(tiny_bundle_dir, key_columns=["id"]))
        assert _fields(named.element_type) == _expected(
            [("id", np.int64), ("latent", F32_LIST), ("model_version", typing.Optional[str])])
        assert isinstance(typed.element_type, RowTypeConstraint)
        assert not isinstance(plain.element_type, RowTypeConstraint)
        assert_that(named, keep("named"), label="named")
        assert_that(typed, keep("typed"), label="typed")
        assert_that(plain, keep("plain"), label="plain")
        assert_that(decoded, keep("decoded"), label="decoded")

    assert all(isinstance(r, beam.Row) for r in out["typed"] + out["named"])
    assert all(type(r) is dict for r in out["plain"] + out["decoded"])
    expected = score(tiny_bundle, np.stack([table.column(c).to_numpy() for c in pixel_columns()],
                                           axis=1))
    named = sorted(out["named"], key=lambda r: r.id)
    np.testing.assert_allclose([r.latent for r in named], expected.latent, rtol=1e-5, atol=1e-6)
    typed = sorted(out["typed"], key=lambda r: r.id)
    np.testing.assert_allclose([r.anomaly_score for r in typed], expected.anomaly_score,
                               rtol=1e-5)
    decoded = sorted(out["decoded"], key=lambda r: r["id"])
    z = np.array([[0.1 * i, -0.2] for i in range(10)], np.float32)
    np.testing.assert_allclose([r["pixel_20"] for r in decoded], decode(tiny_bundle, z)[:, 20],
                               rtol=1e-5, atol=1e-5)
