"""The command line's terminal output: unknown flags, quiet logging, progress lines."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from latentbeam.cli import main
from latentbeam.console import (FileJobProgress, NativeLogFilter, ProgressLine, StreamProgress,
                                format_duration)
from latentbeam.pipeline.streaming import read_manifest

CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "latentbeam")
NOISE = re.compile(r"INFO|I0000|W0000|absl::InitializeLog|Converting string literal|apitools")


# --------------------------------------------------------------------------- unknown flags

@pytest.mark.parametrize("flags, message", [
    (["--keycolumns", "id"],
     "Unknown flag --keycolumns: neither latentbeam nor Beam's PipelineOptions knows it. "
     "Did you mean --key-columns?"),
    (["--direct_num_worker=2"],
     "Unknown flag --direct_num_worker: neither latentbeam nor Beam's PipelineOptions knows "
     "it. Did you mean --direct_num_workers?"),
    (["--runner", "dask", "--dask_client_adress", "tcp://127.0.0.1:1"],
     "Unknown flag --dask_client_adress: neither latentbeam nor Beam's PipelineOptions "
     "(runner latentbeam.pipeline.dask_runner.DaskRunner) knows it. Did you mean "
     "--dask_client_address?"),
    (["--runner", "Dsk"], "Unknown runner --runner Dsk. Did you mean dask?"),
    (["extra"], "Unknown argument extra: neither latentbeam nor Beam's PipelineOptions"),
])
def test_an_unknown_flag_is_an_error_naming_the_closest_valid_one(tmp_path, digits_glob, flags,
                                                                  message, capsys):
    out = tmp_path / "out"
    assert main(["score", "--bundle", str(tmp_path), "--input", digits_glob,
                 "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("latentbeam score: error: " + message), err[0]
    assert not out.exists()


def test_stream_refuses_the_batch_only_dask_runner(tmp_path, tiny_bundle_dir, capsys):
    assert main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(tmp_path / "*.parquet"),
                 "--output", str(tmp_path / "o"), "--runner", "dask"]) == 2
    assert ("latentbeam stream: error: latentbeam stream needs a streaming runner; Dask runs "
            "batch pipelines only.") in capsys.readouterr().err


def test_runner_options_are_known_once_the_runner_is_chosen(tmp_path, digits_glob, capsys):
    """--dask_client_address is a DaskRunner option: with --runner dask it is accepted (the
    job then fails on the missing bundle, after the flag check)."""
    assert main(["decode", "--bundle", str(tmp_path / "none"), "--input", digits_glob,
                 "--output", str(tmp_path / "o"), "--runner", "dask",
                 "--dask_client_address", "tcp://127.0.0.1:1"]) == 2
    assert "bundle.json is missing" in capsys.readouterr().err


# --------------------------------------------------------------------------- quiet logs

def _run(*args, timeout=180):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    return subprocess.run([CONSOLE_SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_score_is_quiet_shows_progress_and_prints_the_summary(tmp_path, tiny_bundle_dir,
                                                              digits_glob):
    result = _run("score", "--bundle", tiny_bundle_dir, "--input", digits_glob,
                  "--output", str(tmp_path / "a"), "--key-columns", "id",
                  "--progress-seconds", "0.2")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert not [line for line in lines if NOISE.search(line)], result.stderr
    assert lines[0] == "score: 0/2 files, starting the pipeline"
    assert all(line.startswith("score: ") for line in lines), result.stderr
    assert re.fullmatch(r"score: 2/2 files, 1,797 rows, [\d.]+k? rows/s, \d+:\d\d elapsed",
                        lines[-1]), lines[-1]
    assert any(re.search(r"elapsed, ETA (--|\d+:\d\d)$", line) for line in lines[1:-1])
    assert "rows scored:          1797" in result.stdout



def test_quiet_has_no_progress_and_log_level_info_brings_beam_info_back(tmp_path, capfd,
                                                                       tiny_bundle_dir,
                                                                       digits_glob):
    assert main(["score", "--bundle", tiny_bundle_dir, "--input", digits_glob, "--output",
                 str(tmp_path / "b"), "--quiet", "--log-level", "INFO"]) == 0
    captured = capfd.readouterr()
    assert "INFO apache_beam" in captured.err
    assert "score: " not in captured.err
    assert "rows scored:          1797" in captured.out


@pytest.fixture
def root_logger():
    """The root logger; its handlers and level are restored afterwards."""
    import logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_a_root_handler_that_basicconfig_added_does_not_double_every_line(root_logger,
                                                                          capsys):
    import logging

    from latentbeam.console import configure_logging

    for handler in list(root_logger.handlers):
        root_logger.removeHandler(handler)
    # What Beam's GCP clients do on import without apitools: a root-logger warning with
    # no handler yet, so logging.basicConfig adds a StreamHandler on stderr.
    logging.warning("a library's message at import")
    assert [type(h) for h in root_logger.handlers] == [logging.StreamHandler]
    configure_logging("WARNING")
    logging.getLogger("latentbeam.check").warning("said once")
    err = capsys.readouterr().err
    assert err.count("said once") == 1, err
    assert "WARNING latentbeam.check: said once" in err


def test_tensorflow_retracing_hints_are_dropped_and_its_other_warnings_pass(root_logger,
                                                                           capsys):
    """Each Keras model a process trains traces its own functions; after a few, TensorFlow
    warns about retracing, which a user of latentbeam cannot act on."""
    import logging

    from latentbeam.console import configure_logging

    configure_logging("WARNING")
    tf_log = logging.getLogger("tensorflow")
    tf_log.warning("5 out of the last 29 calls to <function f at 0x7f> triggered "
                   "tf.function retracing. Tracing is expensive ...")
    tf_log.warning("a warning of its own")
    err = capsys.readouterr().err
    assert "retracing" not in err and "WARNING tensorflow: a warning of its own" in err
    configure_logging("INFO")  # shown when asked for everything
    tf_log.warning("6 out of the last 30 calls to <f> triggered tf.function retracing.")
    assert "triggered tf.function retracing" in capsys.readouterr().err


def test_native_log_lines_are_dropped_and_everything_else_passes(capfd):
    with NativeLogFilter() as native:
        os.write(2, b"I0000 00:00:1795954364.233256   11652 port.cc:153] oneDNN custom ops\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"E0000 00:00:1795954372.316305   11652 cuda_platform.cc:52] failed call "
                    b"to cuInit: INTERNAL\n")
        os.write(2, b"E0000 00:00:1795954372.316305   11652 op.cc:1] a real error\n")
        os.write(2, b"Traceback (most recent call last):\n")
        native.original.write("live\r")
        native.original.flush()
    err = capfd.readouterr().err
    assert err.count("\n") == 2 and "live\r" in err
    assert "E0000 00:00:1795954372.316305   11652 op.cc:1] a real error\n" in err
    assert "Traceback (most recent call last):\n" in err


# --------------------------------------------------------------------------- progress lines

def test_progress_line_is_live_on_a_tty_and_periodic_otherwise():
    tty = io.StringIO()
    line = ProgressLine(tty, tty=True)
    line.update("a 1", force=True)
    line.update("b 22", force=True)
    line.finish("done")
    assert tty.getvalue() == "\ra 1\rb 22\rdone\n"

    log = io.StringIO()
    line = ProgressLine(log, interval=3600, tty=False)
    line.update("first")  # the first update always prints
    line.update("too soon")
    line.update("forced", force=True)
    line.finish("end")
    assert log.getvalue() == "first\nforced\nend\n"

    quiet = io.StringIO()
    line = ProgressLine(quiet, enabled=False)
    line.update("x", force=True)
    line.finish("y")
    assert quiet.getvalue() == ""


def test_file_job_progress_counts_records_and_estimates_by_bytes(tmp_path):
    stats = tmp_path / "_stats"
    stats.mkdir()
    sources = ["/in/a.parquet", "/in/b.parquet", "/in/c.parquet", "/in/d.parquet"]
    sizes = {"/in/a.parquet": 100, "/in/b.parquet": 100, "/in/c.parquet": 600,
             "/in/d.parquet": 200}
    out = io.StringIO()
    now = [100.0]
    progress = FileJobProgress(ProgressLine(out, tty=False, interval=0), "score", str(stats),
                               sources, sizes, clock=lambda: now[0])
    now[0] += 10  # 10 s into the job
    for name, rows in (("a", 1000), ("b", 1500)):
        (stats / f"part-{name}.parquet.json").write_text(json.dumps(
            {"source": f"/in/{name}.parquet", "rows_read": rows}))
    progress.poll()
    # 200 of 1000 bytes in 10 s: 40 s to go.
    assert out.getvalue() == "score: 2/4 files, 2,500 rows, 250 rows/s, 0:10 elapsed, ETA 0:40\n"
    assert progress.text(final=True) == "score: 2/4 files, 2,500 rows, 250 rows/s, 0:10 elapsed"
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "--"


def test_stream_shows_progress_and_ends_with_a_summary(tmp_path, tiny_bundle_dir, digits_glob,
                                                       capfd):
    out = tmp_path / "out"
    assert main(["stream", "--bundle", tiny_bundle_dir, "--watch", digits_glob,
                 "--output", str(out), "--poll-seconds", "0.5", "--stop-after-seconds", "2",
                 "--key-columns", "id", "--progress-seconds", "0.3"]) == 0
    captured = capfd.readouterr()
    summary, err = captured.out, captured.err
    assert "files scored:         2 (manifest: 2 in total)" in summary
    assert "rows read:            1797" in summary
    assert "rows scored:          1797" in summary
    assert f"output:               {out}" in summary
    assert re.search(r"stream: 2 new files, 1,797 rows in the manifest, \d:\d\d elapsed, "
                     r"stops in \d:\d\d", err), err
    progress = StreamProgress(ProgressLine(io.StringIO(), tty=False),
                              lambda: read_manifest(str(out)), already=2)
    progress.poll()
    assert progress.text().startswith("stream: 0 new files, 1,797 rows in the manifest")


def test_train_prints_one_line_per_epoch_when_not_a_terminal(tmp_path, digits_glob, capfd):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  path: {digits_glob}\n  label: label\n")
    assert main(["train", "--config", str(config), "--set", "train.epochs=3",
                 "--set", "model.hidden_units=[16]", "--set", "train.patience=5",
                 "--output", str(tmp_path / "b")]) == 0
    captured = capfd.readouterr()
    epochs = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert [e.split()[1] for e in epochs] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"loss [\d.]+  val_loss [\d.]+", e) for e in epochs)
    assert "━" not in captured.err and "step" not in captured.err  # no Keras bars
    assert not NOISE.search(captured.err), captured.err
    assert captured.out.splitlines()[0] == f"bundle:          {tmp_path / 'b'}"
    assert "threshold:" in captured.out


def test_the_job_summary_lists_ten_files_and_counts_the_rest():
    from latentbeam.pipeline.jobs import JobSummary
    from latentbeam.summaries import format_summary

    files = [f"out/part-{i:05d}.parquet" for i in range(2000)]
    dead = [f"out/_dead_letter/part-{i:05d}.pq" for i in range(3)]
    text = format_summary(JobSummary(
        output="out", model_version="v", files_read=2003, rows_read=20000, rows_scored=19990,
        rows_dead_lettered=10, files_dead_lettered=3, anomalies=7, files=files,
        dead_letter_files=dead, metrics={"rows_read": 20000}))
    lines = text.splitlines()
    at = lines.index("output files:         2000 in out")
    assert lines[at + 1:at + 12] == [f"  {p}" for p in files[:10]] + [
        "  ... and 1990 more (all listed in _SUCCESS)"]
    assert lines[at + 12:at + 16] == ["dead-letter files:    3"] + [f"  {p}" for p in dead]
    assert len(lines) == 22 and lines[-1] == "model_version:        v"
