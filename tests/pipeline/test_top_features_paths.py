"""`top_features` is the same in the batch job, the transforms (Arrow and rows) and the stream."""
import glob

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that

from latentbeam.cli import main
from latentbeam.demo import digits_table
from latentbeam.pipeline.options import pipeline_options
from latentbeam.pipeline.transforms import Score
from test_pipeline_transforms import Collected  # noqa: E402  (same directory)

pytestmark = pytest.mark.filterwarnings("ignore")

N, K = 150, 3




def _by_id(rows):
    return {r["id"]: r["top_features"] for r in rows}


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for i in a:
        assert [t["name"] for t in a[i]] == [t["name"] for t in b[i]], i
        np.testing.assert_allclose([t["share"] for t in a[i]], [t["share"] for t in b[i]],
                                   rtol=1e-5, atol=1e-7)


def test_batch_transforms_and_stream_give_the_same_top_features(tmp_path, tiny_bundle_dir):
    table = digits_table().slice(0, N)
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(table, str(inputs / "digits.parquet"))

    # Batch job, through the command line.
    assert main(["score", "--bundle", tiny_bundle_dir, "--input", str(inputs / "*.parquet"),
                 "--output", str(tmp_path / "batch"), "--key-columns", "id",
                 "--top-features", str(K)]) == 0
    batch = pq.read_table(str(tmp_path / "batch"))
    assert batch.schema.field("top_features").type == pa.list_(
        pa.struct([("name", pa.string()), ("share", pa.float32())]))
    batch_top = _by_id(batch.to_pylist())

    # Streaming job, through the command line: the file is there at the first poll.
    assert main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(inputs / "*.parquet"),
                 "--output", str(tmp_path / "stream"), "--window-seconds", "60",
                 "--poll-seconds", "0.5", "--stop-after-seconds", "2", "--key-columns", "id",
                 "--top-features", str(K)]) == 0
    files = glob.glob(str(tmp_path / "stream" / "scored-*.parquet"))
    stream_top = _by_id(pa.concat_tables([pq.read_table(f) for f in files]).to_pylist())

    # Transforms: Arrow batches and Python rows.
    keep = Collected.into
    with beam.Pipeline(options=pipeline_options()) as p:
        arrow = (p | "Arrow" >> beam.Create(table.to_batches(max_chunksize=64))
                 | "Score arrow" >> Score(tiny_bundle_dir, key_columns=["id"], top_features=K))
        rows = (p | "Rows" >> beam.Create(table.to_pylist())
                | "Score rows" >> Score(tiny_bundle_dir, key_columns=["id"], top_features=K))
        assert_that(arrow, keep("arrow"), label="arrow")
        assert_that(rows, keep("rows"), label="rows")
    arrow_top = _by_id(pa.Table.from_batches(Collected.store["arrow"]).to_pylist())
    rows_top = _by_id(Collected.store["rows"])

    assert len(batch_top) == N and all(len(v) == K for v in batch_top.values())
    for other in (stream_top, arrow_top, rows_top):
        _assert_same(batch_top, other)
    # Shares are fractions of the error, largest first.
    for top in batch_top.values():
        shares = [t["share"] for t in top]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-6
    assert all(t["name"].startswith("pixel_") for t in batch_top[0])


def test_schemad_rows_get_top_features_as_nested_rows(tiny_bundle_dir):
    """On schema'd input the output schema declares top_features as a sequence of rows
    {name, share}; the values are the Arrow path's."""
    table = digits_table().slice(0, 40)
    keep = Collected.into
    with beam.Pipeline(options=pipeline_options()) as p:
        rows = p | "Rows" >> beam.Create([beam.Row(**r) for r in table.to_pylist()])
        scored = rows | "Score rows" >> Score(tiny_bundle_dir, key_columns=["id"], top_features=2)
        arrow = (p | "Arrow" >> beam.Create([table])
                 | "Score arrow" >> Score(tiny_bundle_dir, key_columns=["id"], top_features=2))
        fields = dict(scored.element_type._fields)
        assert_that(scored, keep("schemad"), label="schemad")
        assert_that(arrow, keep("arrow2"), label="arrow")
    inner = fields["top_features"]
    assert "name" in str(inner) and "share" in str(inner)
    got = Collected.store["schemad"]
    assert all(isinstance(t, beam.Row) for r in got for t in r.top_features)
    by_id = {r.id: [{"name": t.name, "share": t.share} for t in r.top_features] for r in got}
    _assert_same(by_id, _by_id(pa.Table.from_batches(Collected.store["arrow2"]).to_pylist()))
