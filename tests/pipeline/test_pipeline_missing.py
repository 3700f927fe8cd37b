"""`--missing mask|impute`: the batch job, the Score transform and the stream give the core's numbers."""
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that

from latentbeam import cli
from latentbeam.demo import digits_table
from latentbeam.pipeline.options import pipeline_options
from latentbeam.pipeline.records import ScoringOptions, score_record_batch
from latentbeam.pipeline.transforms import Score
from test_pipeline_transforms import Collected  # noqa: E402  (same directory)

pytestmark = pytest.mark.filterwarnings("ignore")

N = 60




@pytest.fixture(scope="module")
def holes_table() -> pa.Table:
    """60 digits rows: some pixels null or NaN, one row +inf, one row with every pixel null."""
    table = digits_table().slice(0, N)
    cols = {name: table.column(name).to_pylist() for name in table.schema.names}
    for row in range(0, N, 5):
        cols[f"pixel_{row % 64:02d}"][row] = None
        cols[f"pixel_{(row + 9) % 64:02d}"][row] = float("nan") if row % 10 else None
    cols["pixel_30"][7] = float("inf")
    for j in range(64):
        cols[f"pixel_{j:02d}"][11] = None
    return pa.Table.from_pydict(cols, schema=table.schema)


def _by_id(table: pa.Table, column: str) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist()))


def _expected(tiny_bundle, table, missing):
    out, letters = score_record_batch(tiny_bundle, table, source="f",
                                      opts=ScoringOptions(key_columns=("id",), missing=missing))
    return out, sorted((d["row"], d["reason"]) for d in letters)


def _same(got: pa.Table, expected: pa.Table, columns):
    for column in columns:
        want = _by_id(expected, column)
        have = _by_id(got, column)
        assert sorted(have) == sorted(want)
        np.testing.assert_allclose([have[i] for i in sorted(want)],
                                   [want[i] for i in sorted(want)], rtol=1e-5)


def test_batch_job_transform_and_stream_agree_on_masked_rows(tmp_path, holes_table,
                                                             tiny_bundle_dir, tiny_bundle):
    expected, letters = _expected(tiny_bundle, holes_table, "mask")
    assert letters == [(7, "not_finite"), (11, "no_observed_values")]
    assert expected.num_rows == N - 2
    assert sorted(set(expected.column("coverage").to_pylist())) == [62 / 64, 1.0]
    columns = ("anomaly_score", "reconstruction_error", "coverage")

    # The batch job.
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(holes_table, str(src / "holes.parquet"))
    out = str(tmp_path / "scored")
    assert cli.main(["score", "--bundle", tiny_bundle_dir, "--input", str(src / "*.parquet"),
                     "--output", out, "--key-columns", "id", "--missing", "mask",
                     "--direct_running_mode=in_memory"]) == 0
    job = pq.read_table(out)
    _same(job, expected, columns)
    done = json.load(open(os.path.join(out, "_SUCCESS")))
    assert (done["rows_read"], done["rows_scored"], done["rows_dead_lettered"]) == (N, N - 2, 2)
    dead = pq.read_table(os.path.join(out, "_dead_letter"))
    assert sorted(zip(dead.column("row").to_pylist(), dead.column("reason").to_pylist())) == letters

    # The Score transform: Arrow batches and dict rows.
    with beam.Pipeline(options=pipeline_options()) as p:
        arrow, arrow_dead = (p | "Arrow" >> beam.Create(holes_table.to_batches(max_chunksize=16))
                             | "Score arrow" >> Score(tiny_bundle_dir, key_columns=["id"],
                                                      missing="mask").with_dead_letters())
        dicts = (p | "Dicts" >> beam.Create(holes_table.to_pylist())
                 | "Score dicts" >> Score(tiny_bundle_dir, key_columns=["id"], missing="mask"))
        assert_that(arrow, Collected.into("arrow"), label="arrow")
        assert_that(arrow_dead, Collected.into("dead"), label="dead")
        assert_that(dicts, Collected.into("dicts"), label="dicts")
    _same(pa.Table.from_batches(Collected.store["arrow"]), expected, columns)
    assert sorted(d["reason"] for d in Collected.store["dead"]) == ["no_observed_values",
                                                                    "not_finite"]
    _same(pa.Table.from_pylist(Collected.store["dicts"]), expected, columns)

    # The stream.
    stream_out = str(tmp_path / "stream")
    assert cli.main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(src / "*.parquet"),
                     "--output", stream_out, "--window-seconds", "60", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "2", "--key-columns", "id",
                     "--missing", "mask"]) == 0
    streamed = pa.concat_tables(pq.read_table(os.path.join(stream_out, f))
                                for f in sorted(os.listdir(stream_out)) if f.endswith(".parquet"))
    _same(streamed, expected, columns)
    dead_dir = os.path.join(stream_out, "_dead_letter")
    stream_dead = pa.concat_tables(pq.read_table(os.path.join(dead_dir, f))
                                   for f in sorted(os.listdir(dead_dir)))
    assert sorted(zip(stream_dead.column("row").to_pylist(),
                      stream_dead.column("reason").to_pylist())) == letters


def test_batch_job_imputes_as_the_core_does(tmp_path, holes_table, tiny_bundle_dir, tiny_bundle):
    expected, letters = _expected(tiny_bundle, holes_table, "impute")
    assert letters == [(7, "not_finite"), (11, "no_observed_values")]
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(holes_table, str(src / "holes.parquet"))
    out = str(tmp_path / "scored")
    assert cli.main(["score", "--bundle", tiny_bundle_dir, "--input", str(src),
                     "--output", out, "--key-columns", "id", "--missing", "impute",
                     "--direct_running_mode=in_memory"]) == 0
    job = pq.read_table(out)
    assert "coverage" not in job.schema.names
    _same(job, expected, ("anomaly_score", "reconstruction_error"))
    # Reject, the default, dead-letters every row with a hole.
    rejected = str(tmp_path / "rejected")
    assert cli.main(["score", "--bundle", tiny_bundle_dir, "--input", str(src),
                     "--output", rejected, "--direct_running_mode=in_memory"]) == 0
    done = json.load(open(os.path.join(rejected, "_SUCCESS")))
    assert (done["rows_read"], done["rows_scored"], done["rows_dead_lettered"]) == (N, N - 14, 14)


def test_yaml_score_config_takes_missing(tiny_bundle_dir):
    from latentbeam.pipeline.yaml_provider import LatentbeamScore

    transform = LatentbeamScore(tiny_bundle_dir, key_columns=["id"], missing="mask")
    assert transform._transform.output_columns().names[-1] == "coverage"
    with pytest.raises(ValueError, match="expected one of reject, impute, mask"):
        LatentbeamScore(tiny_bundle_dir, missing="zero")
