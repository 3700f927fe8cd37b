"""Encode / Decode / Score: the Arrow path and the row path give the scoring core's numbers."""
from __future__ import annotations

import json
import math

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from latentbeam.demo import digits_table
from latentbeam.model import decode, score
from latentbeam.pipeline.metrics import query_metrics
from latentbeam.pipeline.options import pipeline_options
from latentbeam.pipeline.transforms import Decode, Encode, Score

N = 200


class Collected:
    """Pipeline outputs, gathered in this process (the in-process runner pickles
    closures by value, so they cannot fill a local dict; this class is pickled by
    reference)."""
    store: dict = {}

    @classmethod
    def into(cls, name):
        cls.store.pop(name, None)

        def check(elements):
            Collected.store[name] = list(elements)
        return check


def _expected(tiny_bundle, digits_matrix, n=N):
    return score(tiny_bundle, digits_matrix[:n])


def _check_scored(got_by_id, expected, ids):
    err = np.array([got_by_id[i]["reconstruction_error"] for i in ids], np.float32)
    np.testing.assert_allclose(err, expected.reconstruction_error[ids], rtol=1e-5)
    np.testing.assert_allclose(np.array([got_by_id[i]["anomaly_score"] for i in ids]),
                               expected.anomaly_score[ids], rtol=1e-5)
    assert [got_by_id[i]["is_anomaly"] for i in ids] == expected.is_anomaly[ids].tolist()
    np.testing.assert_allclose(np.array([got_by_id[i]["latent"] for i in ids]),
                               expected.latent[ids], rtol=1e-5, atol=1e-6)


def test_arrow_and_row_paths_give_the_scoring_core_numbers(tiny_bundle_dir, tiny_bundle,
                                                           digits_matrix):
    table = digits_table().slice(0, N)
    rows = table.to_pylist()
    expected = _expected(tiny_bundle, digits_matrix)
    collected = Collected.store
    keep = Collected.into

    with beam.Pipeline(options=pipeline_options()) as p:
        arrow = (p | "Arrow" >> beam.Create(table.to_batches(max_chunksize=64))
                 | "Score arrow" >> Score(tiny_bundle_dir, key_columns=["id"],
                                          per_feature_errors=True, reconstruction=True,
                                          latent_distance=True))
        dicts = (p | "Dicts" >> beam.Create(rows)
                 | "Score dicts" >> Score(tiny_bundle_dir, key_columns=["id", "label"]))
        brows = (p | "Rows" >> beam.Create([beam.Row(**r) for r in rows[:20]])
                 | "Score rows" >> Score(tiny_bundle_dir, key_columns=["id"]))
        whole = (p | "Table" >> beam.Create([table])
                 | "Score table" >> Score(tiny_bundle_dir, key_columns=["id"]))
        assert_that(arrow, keep("arrow"), label="arrow")
        assert_that(dicts, keep("dicts"), label="dicts")
        assert_that(brows, keep("rows"), label="rows")
        assert_that(whole, keep("table"), label="table")

    ids = np.arange(N)
    batches = collected["arrow"]
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    assert sorted(b.num_rows for b in batches) == [8, 64, 64, 64]
    arrow = pa.Table.from_batches(batches).sort_by("id")
    assert arrow.schema.names == ["id", "latent", "reconstruction_error", "anomaly_score",
                                  "is_anomaly", "model_version", "feature_errors",
                                  "reconstruction", "latent_distance"]
    np.testing.assert_allclose(arrow.column("latent_distance").to_numpy(),
                               expected.latent_distance, rtol=1e-5, atol=1e-6)
    _check_scored({r["id"]: r for r in arrow.to_pylist()}, expected, ids)
    np.testing.assert_allclose(np.array(arrow.column("reconstruction").to_pylist()),
                               expected.reconstruction, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(arrow.column("feature_errors").to_pylist()),
                               expected.feature_errors, rtol=1e-5, atol=1e-6)

    dicts = {d["id"]: d for d in collected["dicts"]}
    assert sorted(dicts) == list(range(N))
    assert set(dicts[0]) == {"id", "label", "latent", "reconstruction_error", "anomaly_score",
                             "is_anomaly", "model_version"}
    assert dicts[7]["label"] == 7 and dicts[0]["model_version"] == tiny_bundle.info.model_version
    _check_scored(dicts, expected, ids)

    assert all(isinstance(r, beam.Row) for r in collected["rows"])
    _check_scored({r.id: r._asdict() for r in collected["rows"]}, expected, np.arange(20))
    (tbl,) = collected["table"]
    _check_scored({r["id"]: r for r in tbl.to_pylist()}, expected, ids)


def test_row_faults_become_dead_letters_and_metrics_add_up(tiny_bundle_dir, tiny_bundle,
                                                           digits_matrix):
    rows = digits_table().slice(0, 30).to_pylist()
    rows[3]["pixel_05"] = None
    rows[6]["pixel_07"] = float("nan")
    rows[9]["pixel_09"] = float("-inf")
    rows[12]["pixel_11"] = "abc"
    del rows[15]["pixel_13"]
    # A field absent from one dict reads as null, like a null value.
    bad = {3: "null_value", 6: "not_finite", 9: "not_finite", 12: "non_numeric",
           15: "null_value"}
    good = [i for i in range(30) if i not in bad]
    expected = _expected(tiny_bundle, digits_matrix, 30)
    out = Collected.store
    keep = Collected.into

    p = beam.Pipeline(options=pipeline_options())
    scored, dead = (p | beam.Create(rows)
                    | Score(tiny_bundle_dir, key_columns=["id"], source="unit-test")
                    .with_dead_letters())
    assert_that(scored, keep("scored"), label="scored")
    assert_that(dead, keep("dead"), label="dead")
    result = p.run()
    result.wait_until_finish()

    assert sorted(d["id"] for d in out["scored"]) == good
    _check_scored({d["id"]: d for d in out["scored"]}, expected, np.array(good))
    letters = {json.loads(d["payload"])["id"]: d for d in out["dead"]}
    assert {i: d["reason"] for i, d in letters.items()} == bad
    assert all(d["source"] == "unit-test" for d in letters.values())
    assert "pixel_13" in letters[15]["detail"] and "pixel_13" not in letters[15]["payload"]
    payload = json.loads(letters[12]["payload"])
    assert payload["pixel_11"] == "abc" and payload["pixel_10"] == rows[12]["pixel_10"]
    assert json.loads(letters[9]["payload"])["pixel_09"] == "-inf"

    m = query_metrics(result)
    assert (m["rows_read"], m["rows_scored"], m["rows_dead_lettered"]) == (30, 25, 5)
    assert m["rows_read"] == m["rows_scored"] + m["rows_dead_lettered"]
    assert m["anomalies"] == int(expected.is_anomaly[good].sum())
    dist = m["reconstruction_error_micros"]
    assert dist.count == 25
    assert dist.mean == pytest.approx(float(expected.reconstruction_error[good].mean()), rel=1e-4)


def test_pandas_frames_in_give_frames_out_and_only_bad_rows_are_dead_letters(
        tiny_bundle_dir, tiny_bundle, digits_matrix):
    import pandas as pd

    clean = digits_table().slice(0, 20).to_pandas()
    clean.loc[4, "pixel_05"] = np.nan  # pandas' missing value: a null in Arrow
    mixed = digits_table().slice(20, 10).to_pandas()
    mixed["pixel_11"] = mixed["pixel_11"].astype(object)
    mixed.loc[3, "pixel_11"] = "abc"  # an object column Arrow cannot convert as a whole
    expected = _expected(tiny_bundle, digits_matrix, 30)
    out = Collected.store
    p = beam.Pipeline(options=pipeline_options())
    scored, dead = (p | beam.Create([clean, mixed], reshuffle=False)
                    | Score(tiny_bundle_dir, key_columns=["id"], source="frames")
                    .with_dead_letters())
    assert_that(scored, Collected.into("frames"), label="scored")
    assert_that(dead, Collected.into("frame letters"), label="dead")
    result = p.run()
    result.wait_until_finish()

    frames = out["frames"]
    assert all(isinstance(f, pd.DataFrame) for f in frames)
    got = pd.concat(frames).sort_values("id")
    good = [i for i in range(30) if i not in (4, 23)]
    assert got["id"].tolist() == good
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), expected.anomaly_score[good],
                               rtol=1e-5)
    assert sorted((d["row"], d["reason"], json.loads(d["payload"])["id"])
                  for d in out["frame letters"]) == [(3, "non_numeric", 23),
                                                     (4, "null_value", 4)]
    m = query_metrics(result)
    assert (m["rows_read"], m["rows_scored"], m["rows_dead_lettered"]) == (30, 28, 2)


def test_arrow_batch_without_a_feature_column_is_one_dead_letter(tiny_bundle_dir):
    batch = pa.RecordBatch.from_pydict({"id": [1, 2], "pixel_00": [0.0, 1.0]})
    with beam.Pipeline(options=pipeline_options()) as p:
        scored, dead = (p | beam.Create([batch])
                        | Score(tiny_bundle_dir, source="s").with_dead_letters())
        assert_that(scored, equal_to([]), label="nothing scored")
        assert_that(dead | beam.Map(lambda d: (d["source"], d["row"], d["reason"],
                                               d["payload"])),
                    equal_to([("s", None, "missing_column", None)]), label="one letter")


def test_encode_then_decode_match_the_model(tiny_bundle_dir, tiny_bundle, digits_matrix):
    table = digits_table().slice(0, 40)
    expected = _expected(tiny_bundle, digits_matrix, 40)
    decoded_expected = decode(tiny_bundle, expected.latent)
    out = Collected.store
    keep = Collected.into

    with beam.Pipeline(options=pipeline_options()) as p:
        codes = (p | beam.Create(table.to_batches(max_chunksize=16))
                 | Encode(tiny_bundle_dir, key_columns=["id"]))
        decoded = codes | "Decode arrow" >> Decode(tiny_bundle_dir, key_columns=["id"])
        latent_rows = [{"id": 100, "latent": expected.latent[0].tolist()},
                       {"id": 101, "latent": [0.5]},  # wrong length
                       {"id": 102, "latent": None},
                       {"id": 103, "latent": [float("nan"), 0.0]}]
        row_decoded, dead = (p | "Latent rows" >> beam.Create(latent_rows)
                             | "Decode rows" >> Decode(tiny_bundle_dir, key_columns=["id"])
                             .with_dead_letters())
        assert_that(codes, keep("codes"), label="codes")
        assert_that(decoded, keep("decoded"), label="decoded")
        assert_that(row_decoded, keep("row_decoded"), label="row_decoded")
        assert_that(dead, keep("dead"), label="dead")

    codes = pa.Table.from_batches(out["codes"]).sort_by("id")
    assert codes.schema.names == ["id", "latent", "model_version"]
    np.testing.assert_allclose(np.array(codes.column("latent").to_pylist()), expected.latent,
                               rtol=1e-5, atol=1e-6)
    dec = pa.Table.from_batches(out["decoded"]).sort_by("id")
    assert dec.schema.names == ["id"] + [f"pixel_{i:02d}" for i in range(64)] + ["model_version"]
    got = np.stack([dec.column(f"pixel_{i:02d}").to_numpy() for i in range(64)], axis=1)
    np.testing.assert_allclose(got, decoded_expected, rtol=1e-4, atol=1e-4)
    # Decoding the code of a row gives the model's reconstruction of that row.
    np.testing.assert_allclose(got, expected.reconstruction, rtol=1e-4, atol=1e-4)
    (row,) = out["row_decoded"]
    assert row["id"] == 100 and row["pixel_10"] == pytest.approx(decoded_expected[0, 10], rel=1e-5)
    reasons = sorted((json.loads(d["payload"])["id"], d["reason"]) for d in out["dead"])
    assert reasons == [(101, "wrong_length"), (102, "null_value"), (103, "not_finite")]
    assert not any(math.isnan(v) for v in [row["pixel_00"]])
