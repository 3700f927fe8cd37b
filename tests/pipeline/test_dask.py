"""Scale-out on a real Dask cluster (the `dask_cluster` fixture: scheduler + 2 worker processes).

`latentbeam score` / `decode` with `--runner dask` write the same bytes as the in-process
run and commit them although Dask has no runner metrics; a worker killed mid-job still
leaves every row in the output exactly once; a user pipeline (ReadFromParquetBatched ->
Score -> WriteToParquet, with dead letters as a second sink) gives the scoring core's
numbers on the cluster.
"""
from __future__ import annotations

import filecmp
import glob
import os
import shutil
import signal
import threading
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentbeam.cli import main
from latentbeam.demo import digits_table, pixel_columns
from latentbeam.model import load_bundle_info, score
from latentbeam.pipeline.batch import FileJob, run_file_job
from latentbeam.pipeline.options import pipeline_options
from latentbeam.pipeline.records import MODE_DECODE, ScoringOptions, output_schema
from latentbeam.pipeline.transforms import Score
from test_pipeline_batch import write_faulty_dir

distributed = pytest.importorskip("distributed")

OPTS = ScoringOptions(key_columns=("id",))
COUNTS = ("rows_read", "rows_scored", "rows_dead_lettered", "files_dead_lettered", "anomalies")


def dask_args(address):
    return ["--runner", "dask", "--dask_client_address", address]


@pytest.fixture(scope="module")
def faulty_dir(tmp_path_factory, digits_dir) -> str:
    return write_faulty_dir(str(tmp_path_factory.mktemp("faulty")), digits_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bundle_dir, faulty_dir):
    """The in-process run: score the faulty inputs, then decode the scored output."""
    root = tmp_path_factory.mktemp("ref")
    scored = run_file_job(FileJob(tiny_bundle_dir, os.path.join(faulty_dir, "*.parquet"),
                                  str(root / "scored"), opts=OPTS))
    decoded = run_file_job(FileJob(tiny_bundle_dir, str(root / "scored"), str(root / "decoded"),
                                   mode=MODE_DECODE, opts=OPTS))
    return str(root), scored, decoded


def _same_files(ref_dir, out_dir):
    names = sorted(os.path.relpath(p, ref_dir) for p in glob.glob(f"{ref_dir}/**/*", recursive=True)
                   if os.path.isfile(p))
    got = sorted(os.path.relpath(p, out_dir) for p in glob.glob(f"{out_dir}/**/*", recursive=True)
                 if os.path.isfile(p))
    assert got == names
    for name in names:
        if name == "_SUCCESS":
            continue  # names the input / output paths, which differ
        assert filecmp.cmp(os.path.join(ref_dir, name), os.path.join(out_dir, name),
                           shallow=False), name


def _workers_with_bundle(address, bundle_dir):
    def loaded():
        from latentbeam.pipeline import io
        return bundle_dir in io._BUNDLES

    with distributed.Client(address) as client:
        return sorted(client.run(loaded).values())


def test_score_and_decode_on_dask_equal_the_in_process_run(tmp_path, dask_cluster, reference,
                                                           tiny_bundle_dir, faulty_dir, capsys):
    ref_root, ref_scored, ref_decoded = reference
    scored_out, decoded_out = str(tmp_path / "scored"), str(tmp_path / "decoded")
    assert main(["score", "--bundle", tiny_bundle_dir, "--input",
                 os.path.join(faulty_dir, "*.parquet"), "--output", scored_out,
                 "--key-columns", "id", *dask_args(dask_cluster)]) == 0
    out = capsys.readouterr().out
    assert "rows read:            1807" in out  # 1797 digits + 10 rows of the bad-rows file
    assert "rows scored:          1804" in out
    assert "rows dead-lettered:   3" in out
    assert "files dead-lettered:  2" in out  # the corrupt and the 0-byte file
    assert "runner metrics:       unavailable on this runner" in out
    _same_files(os.path.join(ref_root, "scored"), scored_out)
    # Five input files, one Dask task each: both worker processes scored some.
    assert _workers_with_bundle(dask_cluster, tiny_bundle_dir) == [True, True]

    summary = run_file_job(FileJob(tiny_bundle_dir, scored_out, decoded_out, mode=MODE_DECODE,
                                   opts=OPTS), dask_args(dask_cluster))
    assert summary.metrics == {}
    assert [getattr(summary, c) for c in COUNTS] == [getattr(ref_decoded, c) for c in COUNTS]
    assert summary.rows_scored == 1804
    _same_files(os.path.join(ref_root, "decoded"), decoded_out)


def test_user_pipeline_read_score_write_parquet_on_dask(tmp_path, dask_cluster, tiny_bundle_dir,
                                                        tiny_bundle, digits_dir):
    """ReadFromParquetBatched -> Score -> WriteToParquet, dead letters to a second sink."""
    data = tmp_path / "in"
    data.mkdir()
    for name in sorted(os.listdir(digits_dir)):
        shutil.copy(os.path.join(digits_dir, name), data / name)
    bad = digits_table().slice(0, 5).to_pydict()
    bad["pixel_03"][1] = None
    pq.write_table(pa.table(bad, schema=digits_table().schema), data / "x-bad.parquet")
    out = str(tmp_path / "out")
    schema = output_schema(load_bundle_info(tiny_bundle_dir), OPTS, [pa.field("id", pa.int64())])

    p = beam.Pipeline(options=pipeline_options(dask_args(dask_cluster)))
    scored, dead = (p
                    | "Read" >> beam.io.ReadFromParquetBatched(str(data / "*.parquet"))
                    | "Score" >> Score(tiny_bundle_dir, key_columns=["id"]).with_dead_letters())
    _ = (scored
         | "Rows" >> beam.FlatMap(pa.RecordBatch.to_pylist)
         | "Write scored" >> beam.io.WriteToParquet(f"{out}/scored", schema=schema,
                                                    file_name_suffix=".parquet"))
    _ = (dead
         | "Dead letters" >> beam.io.WriteToParquet(f"{out}/dead", schema=pa.schema(
             [("source", pa.string()), ("row", pa.int64()), ("reason", pa.string()),
              ("detail", pa.string()), ("payload", pa.string())]), file_name_suffix=".parquet"))
    result = p.run()
    assert result.wait_until_finish() == "DONE"

    assert sorted(os.listdir(out)) == [n for n in sorted(os.listdir(out)) if n.startswith(
        ("scored-", "dead-"))]  # no temporary directories left behind
    table = pq.read_table(sorted(glob.glob(f"{out}/scored-*.parquet"))).sort_by("id")
    ids = table.column("id").to_pylist()
    # 1797 digits + 4 good rows of x-bad.parquet (ids 0, 2, 3, 4 again).
    assert len(ids) == 1801 and sorted(set(ids)) == list(range(1797))
    digits = digits_table()
    x = np.stack([digits.column(c).to_numpy() for c in pixel_columns()], axis=1)
    expected = score(tiny_bundle, x)
    first = table.group_by("id").aggregate([("reconstruction_error", "max"),
                                            ("anomaly_score", "max")]).sort_by("id")
    np.testing.assert_allclose(first.column("reconstruction_error_max").to_numpy(),
                               expected.reconstruction_error, rtol=1e-5)
    np.testing.assert_allclose(first.column("anomaly_score_max").to_numpy(),
                               expected.anomaly_score, rtol=1e-5)
    assert int(np.count_nonzero(table.column("is_anomaly").to_numpy(zero_copy_only=False))) == (
        int(expected.is_anomaly.sum()) + int(expected.is_anomaly[[0, 2, 3, 4]].sum()))
    dead_rows = pq.read_table(glob.glob(f"{out}/dead-*.parquet")).to_pylist()
    assert [(d["row"], d["reason"]) for d in dead_rows] == [(1, "null_value")]


def test_a_worker_killed_mid_job_still_commits_every_row_once(tmp_path, dask_cluster,
                                                              tiny_bundle_dir, digits_dir):
    """Dask re-runs the lost worker's tasks on the other worker; each task rewrites the
    same deterministic temporary files, so the commit holds every row exactly once."""
    data = tmp_path / "in"
    data.mkdir()
    names = sorted(os.listdir(digits_dir))
    for copy in range(6):
        for name in names:
            shutil.copy(os.path.join(digits_dir, name), data / f"{copy}-{name}")
    ref = run_file_job(FileJob(tiny_bundle_dir, str(data), str(tmp_path / "ref"), opts=OPTS,
                               batch_rows=32))
    out = str(tmp_path / "out")
    outcome = {}

    def run():
        try:
            outcome["summary"] = run_file_job(FileJob(tiny_bundle_dir, str(data), out, opts=OPTS,
                                                      batch_rows=32), dask_args(dask_cluster))
        except BaseException as e:  # reported by the assertions below
            outcome["error"] = e

    job = threading.Thread(target=run)
    with distributed.Client(dask_cluster) as client:
        before = client.run(os.getpid)  # worker address -> process id
        job.start()
        victim, deadline = None, time.time() + 60
        while victim is None and job.is_alive() and time.time() < deadline:
            staged = glob.glob(os.path.join(out, ".tmp-*", "_stats", "*.json"))
            busy = [a for a, keys in client.processing().items() if keys]
            if staged and busy:  # some files done, others being scored right now
                victim, done_at_kill = busy[0], len(staged)
            else:
                time.sleep(0.02)
        assert victim is not None, "the job ended before a worker could be killed"
        assert 0 < done_at_kill < 12
        os.kill(before[victim], signal.SIGKILL)
        job.join(timeout=120)
        assert not job.is_alive()
        client.wait_for_workers(2, timeout=90)  # the nanny restarts the killed process
        after = client.run(os.getpid)
    assert before[victim] not in after.values()

    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert [getattr(summary, c) for c in COUNTS] == [getattr(ref, c) for c in COUNTS]
    assert summary.rows_scored == 6 * 1797
    table = pq.read_table(out)
    assert table.num_rows == 6 * 1797
    assert table.group_by("id").aggregate([("id", "count")]).column("id_count").to_pylist() \
        == [6] * 1797
    _same_files(str(tmp_path / "ref"), out)
