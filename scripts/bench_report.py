"""Report build time and memory on large scored output, against reading the columns it needs.

Trains a small bundle on the 8x8 digits (image feature, latent_dim 2), then writes N
synthetic scored rows with the scored-output schema of that bundle (`id`, `label`,
`latent`, `reconstruction_error`, `anomaly_score`, `is_anomaly`, `model_version`,
`top_features` with K=3; built by records.output_schema / top_features_array) as 8
Parquet files in 8192-row row groups, as `latentbeam score` writes them. Then, each in its
own child process: wall time, the work time after the child's imports, and that
child's peak RSS from os.wait4:

  (a) baseline   pyarrow reads the columns the report needs (reconstruction_error,
                 anomaly_score, is_anomaly, latent) of every row into memory: the
                 simplest way to get the data for these plots
  (b) start-up   import TensorFlow + load the bundle: paid by any report, whatever N
  (c) scan       report.scored.summarize_scored only: the one pass over the data
                 (histogram, counts, top-N, sample), no model, no plots
  (d) report     build_report (scan, bundle load, calibration rows, every figure, the
                 page); work = build_report after importing TensorFlow
  (e) CLI        `latentbeam report --bundle B --scored OUT --output R`, end to end

The machine's other load shows in wall times; compare within one run.

    .venv/bin/python scripts/bench_report.py [--rows 1000000] [--big-rows 10000000]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

# The same child measurement as the scoring benchmark (this directory is on sys.path).
from bench_score import measure as _child_measure  # noqa: E402

FILES = 8
ROW_GROUP = 8192
NEEDED = ["reconstruction_error", "anomaly_score", "is_anomaly", "latent"]


# --------------------------------------------------------------------------- children

def child_train(out: str) -> None:
    from latentbeam.config import from_dict
    from latentbeam.demo import write_digits_parquet
    from latentbeam.model import train

    data = os.path.join(os.path.dirname(out), "digits")
    write_digits_parquet(data, images=True)
    train(from_dict({"data": {"path": os.path.join(data, "*.parquet"), "label": "label",
                              "key_columns": ["id"]}},
                    ["model.latent_dim=2", "model.hidden_units=[32,16]", "train.epochs=10",
                     "train.verbose=0"]), out)


def child_data(bundle_dir: str, out: str, rows: int) -> None:
    """`rows` scored rows of this bundle's schema: 10 latent clusters, 1% anomalies."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentbeam.model import load_bundle_info
    from latentbeam.model.features import input_names
    from latentbeam.pipeline.records import (ScoringOptions, float_list_array, output_schema,
                                             top_features_array)

    info = load_bundle_info(bundle_dir)
    opts = ScoringOptions(key_columns=("id", "label"), top_features=3)
    schema = output_schema(info, opts, [pa.field("id", pa.int64()), pa.field("label", pa.int64())])
    names = pa.array(input_names(info.features))
    threshold = np.float32(info.threshold.threshold)
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(10, info.latent_dim))
    os.makedirs(out, exist_ok=True)
    per_file = -(-rows // FILES)
    for f in range(FILES):
        start, n = f * per_file, max(0, min(per_file, rows - f * per_file))
        if not n:
            break
        writer = pq.ParquetWriter(os.path.join(out, f"part-{f:05d}.parquet"), schema)
        for s in range(0, n, ROW_GROUP):
            m = min(ROW_GROUP, n - s)
            label = rng.integers(0, 10, m)
            z = centres[label] + rng.normal(size=(m, info.latent_dim))
            ferr = rng.gamma(0.5, 0.02, size=(m, info.n_inputs)).astype(np.float32)
            spike = rng.random(m) < 0.01
            # One input of each spiked row carries 3x the threshold's total error.
            ferr[spike, rng.integers(0, info.n_inputs, int(spike.sum()))] += \
                3.0 * threshold * info.n_inputs
            err = ferr.mean(axis=1).astype(np.float32)
            score = (err / threshold).astype(np.float32)
            batch = pa.RecordBatch.from_arrays([
                pa.array(np.arange(start + s, start + s + m, dtype=np.int64)),
                pa.array(label.astype(np.int64)), float_list_array(z), pa.array(err),
                pa.array(score), pa.array(score > 1),
                pa.array([info.model_version] * m, pa.string()),
                top_features_array(ferr, names, 3)], schema=schema)
            writer.write_batch(batch)
        writer.close()


def child_baseline(scored: str) -> float:
    import glob

    import pyarrow.parquet as pq

    t = time.perf_counter()
    pq.read_table(sorted(glob.glob(os.path.join(scored, "*.parquet"))), columns=NEEDED)
    return time.perf_counter() - t


def child_startup(bundle_dir: str) -> float:
    t = time.perf_counter()
    import tensorflow  # noqa: F401  (the import is the start-up being timed)

    from latentbeam.model import load_bundle

    load_bundle(bundle_dir)
    return time.perf_counter() - t


def child_scan(scored: str) -> float:
    from latentbeam.report.scored import summarize_scored

    t = time.perf_counter()
    summarize_scored(scored, label_column="label")
    return time.perf_counter() - t


def child_report(bundle_dir: str, scored: str, out: str) -> float:
    import tensorflow  # noqa: F401  (imported before the clock starts)

    from latentbeam.report import build_report

    t = time.perf_counter()
    build_report(bundle_dir, out, scored=scored)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- measurement

def measure(cmd) -> dict:
    """bench_score.measure (wall seconds, the child's peak RSS, stdout) plus `work`: the
    seconds the child printed on its last line (its time after its own imports)."""
    r = _child_measure(cmd)
    try:
        r["work"] = float(r["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        r["work"] = float("nan")
    return r


def run_child(mode: str, *args: str) -> dict:
    return measure([sys.executable, __file__, "--child", mode, *args])


def run_report(bundle: str, scored: str, out: str) -> dict:
    return measure([sys.executable, "-m", "latentbeam", "--log-level", "WARNING", "report",
                    "--bundle", bundle, "--scored", scored, "--output", out])


def bench(bundle: str, workdir: str, rows: int) -> None:
    scored = os.path.join(workdir, f"scored-{rows}")
    print(f"writing {rows:,d} synthetic scored rows ({FILES} files, {ROW_GROUP}-row groups) ...",
          flush=True)
    run_child("data", bundle, scored, str(rows))
    size = sum(os.path.getsize(os.path.join(scored, f)) for f in os.listdir(scored))
    report_dir = os.path.join(workdir, f"report-{rows}")
    results = [("(a) baseline: pyarrow reads the needed columns", run_child("baseline", scored)),
               ("(b) start-up: import TensorFlow + load bundle", run_child("startup", bundle)),
               ("(c) scan: summarize_scored (no model, no plots)", run_child("scan", scored)),
               ("(d) build_report: scan + model + figures + page",
                run_child("report", bundle, scored, report_dir)),
               ("(e) latentbeam report CLI, end to end", run_report(bundle, scored, report_dir))]
    base = results[0][1]["work"]
    print(f"\n{rows:,d} scored rows, {size / 2**20:,.0f} MiB of Parquet")
    print(f"{'path':<50} {'wall s':>7} {'work s':>7} {'work/(a)':>9} {'peak RSS':>10}")
    for name, r in results:
        work = f"{r['work']:>7.2f} {r['work'] / base:>9.2f}" if r["work"] == r["work"] else \
            f"{'-':>7} {'-':>9}"
        print(f"{name:<50} {r['seconds']:>7.2f} {work} {r['peak_rss'] / 2**20:>7,.0f} MiB")
    shutil.rmtree(scored, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=0, help="also run on this many rows")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {"train": child_train, "data": lambda b, o, n: child_data(b, o, int(n)),
              "baseline": child_baseline, "startup": child_startup, "scan": child_scan,
              "report": child_report}
        print(fn[args.child](*args.args))
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="latentbeam-bench-report-")
    try:
        bundle = os.path.join(workdir, "bundle")
        print("training a 64 -> 2 -> 64 bundle on the 8x8 digits ...", flush=True)
        run_child("train", bundle)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
              f"{platform.python_version()}")
        for rows in [args.rows] + ([args.big_rows] if args.big_rows else []):
            bench(bundle, workdir, rows)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
