"""The same score job on other runners: multi-process DirectRunner engine and PortableRunner.

Each run must write the same bytes as the in-process run and report the same metrics.
"""
from __future__ import annotations

import filecmp
import os
import socket
import subprocess
import sys
import time

import pytest

from latentbeam.pipeline.batch import FileJob, run_file_job
from latentbeam.pipeline.records import ScoringOptions
from test_pipeline_batch import write_faulty_dir

OPTS = ScoringOptions(key_columns=("id",))
NAMES = ["part-00000.parquet", "part-00001.parquet", "part-00003.parquet"]


@pytest.fixture(scope="module")
def faulty_dir(tmp_path_factory, digits_dir) -> str:
    return write_faulty_dir(str(tmp_path_factory.mktemp("faulty")), digits_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bundle_dir, faulty_dir):
    out = str(tmp_path_factory.mktemp("ref") / "out")
    return out, run_file_job(FileJob(tiny_bundle_dir, os.path.join(faulty_dir, "*.parquet"),
                                     out, opts=OPTS))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_endpoint():
    """A local Beam job service (a separate process), stopped at teardown."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"job service exited with code {proc.returncode}")
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"job service did not listen on port {port} within 60 s")
                time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _same_as_reference(reference, out, summary):
    ref_dir, ref = reference
    for name in NAMES + ["_SUCCESS"] + [f"_dead_letter/part-0000{i}.pq" for i in (2, 3, 4)]:
        assert filecmp.cmp(os.path.join(ref_dir, name), os.path.join(out, name), shallow=False), name
    counts = ("rows_read", "rows_scored", "rows_dead_lettered", "files_dead_lettered",
              "anomalies")
    assert [getattr(summary, c) for c in counts] == [getattr(ref, c) for c in counts]
    assert [summary.metrics[c] for c in counts] == [ref.metrics[c] for c in counts]
    assert summary.metrics["reconstruction_error_micros"] == ref.metrics[
        "reconstruction_error_micros"]
    assert summary.metrics["reconstruction_error_micros"].count == 1804
    assert summary.metrics["rows_read"] == (summary.metrics["rows_scored"]
                                            + summary.metrics["rows_dead_lettered"]) == 1807


def test_multi_processing_two_workers(tmp_path, reference, tiny_bundle_dir, faulty_dir):
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, os.path.join(faulty_dir, "*.parquet"), out,
                                   opts=OPTS),
                           ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    _same_as_reference(reference, out, summary)


def test_portable_runner_against_a_local_job_service(tmp_path, reference, job_endpoint,
                                                     tiny_bundle_dir, faulty_dir):
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, os.path.join(faulty_dir, "*.parquet"), out,
                                   opts=OPTS),
                           ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}",
                            "--environment_type=LOOPBACK"])
    _same_as_reference(reference, out, summary)
