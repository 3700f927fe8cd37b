"""Batch scoring throughput: `latentbeam score` vs a bare pyarrow loop vs row-per-element RunInference.

Generates N synthetic rows x 64 float32 features (low-rank plus noise, with an `id`
key) as Parquet files, trains a dense autoencoder 64-32-8 on a 50k-row sample, then
scores with three paths, each in its own child process (wall time and that child's
peak RSS, from os.wait4):

  (a) beam      `latentbeam score` on the in-process runner (FnApiRunner, in_memory)
  (b) bare      no Beam: pyarrow read -> the same scoring core (records.score_record_batch,
                one model call per 8192-row batch) -> pyarrow write; the practical limit
  (c) rowwise   Beam ReadFromParquet (one dict per row) -> numpy array per element ->
                RunInference with a numpy ModelHandler calling model.predict on each
                batch (what TFModelHandlerNumpy does) -> dict per row -> WriteToParquet;
                what users write today. Measured on --rows-rowwise rows (it is slow),
                reported as measured rows/s, never extrapolated.

Data generation and training also run in children: Linux charges a child's
ru_maxrss with the launching process's RSS (the address space it had before exec), so
the launcher stays small (no TensorFlow, no data in memory).

  (a0) recon   (a) on a bundle whose score is the reconstruction term alone
                (score.latent_neighbors=0): what scoring cost before the latent-distance
                term; the term may cost at most 20% (a >= 0.8 x a0).

Prints rows/s, peak RSS and the ratios (targets: a >= 0.8 x a0, a >= 0.6 x b, a >= 50 x c).
With --rss-rows N (e.g. 10000000) also runs (a) on N rows and reports its peak RSS
(target < 1.5 GB).

With --runner dask also runs

  (d) dask      `latentbeam score --runner dask` on a Dask cluster: --dask-address, or a
                local one started here (a scheduler and 2 single-thread worker processes
                on 127.0.0.1, from this virtualenv's `dask` command, stopped at the end).
                The data is then split into 8 files (--rows-per-file) so both workers get
                files. Peak RSS is the launcher's; the workers are separate processes.
                Wall time includes the workers' start-up (TensorFlow import and bundle load,
                in parallel on each worker) on a fresh cluster.

    .venv/bin/python scripts/bench_score.py [--rows 1000000] [--rows-rowwise 50000]
                                            [--rss-rows 10000000] [--runner dask]
"""
from __future__ import annotations

import argparse
import contextlib
import filecmp
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = 64
ROWS_PER_FILE = 1_000_000
TARGET_VS_RECON = 0.8
TARGET_VS_BARE = 0.6
TARGET_VS_ROWWISE = 50.0
TARGET_RSS_GB = 1.5


# --------------------------------------------------------------------------- data + bundle

def write_data(directory: str, rows: int, seed: int = 0, rows_per_file: int = ROWS_PER_FILE
               ) -> None:
    """`rows` synthetic rows in files of at most `rows_per_file` rows (1% off-manifold)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, FEATURES))
    names = [f"f{i:02d}" for i in range(FEATURES)]
    for i, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        x = rng.normal(size=(n, 8)) @ w + 0.1 * rng.normal(size=(n, FEATURES)) + 5.0
        outliers = rng.random(n) < 0.01
        x[outliers] += rng.normal(scale=3.0, size=(int(outliers.sum()), FEATURES))
        x = x.astype(np.float32)
        table = pa.table({"id": np.arange(start, start + n, dtype=np.int64),
                          **{c: x[:, j] for j, c in enumerate(names)}})
        pq.write_table(table, os.path.join(directory, f"data-{i:05d}.parquet"))


def child_train(workdir: str, name: str = "bundle", latent_neighbors: int = -1) -> str:
    """Trains the benchmark bundle; latent_neighbors >= 0 overrides score.latent_neighbors."""
    from latentbeam.config import from_dict
    from latentbeam.model import train

    sample_dir = os.path.join(workdir, "train")
    if not os.path.isdir(sample_dir):
        write_data(sample_dir, 50_000, seed=1)
    bundle_dir = os.path.join(workdir, name)
    config = {"data": {"path": os.path.join(sample_dir, "*.parquet"), "key_columns": ["id"]},
              "model": {"latent_dim": 8, "hidden_units": [32]},
              "train": {"epochs": 3, "seed": 0, "verbose": 0}}
    if latent_neighbors >= 0:
        config["score"] = {"latent_neighbors": latent_neighbors}
    train(from_dict(config), bundle_dir)
    return bundle_dir


# --------------------------------------------------------------------------- child paths

def child_bare(bundle_dir: str, pattern: str, out: str) -> int:
    """(b): pyarrow read -> scoring core -> pyarrow write, one output file per input."""
    from latentbeam.model import load_bundle
    from latentbeam.pipeline.records import ScoringOptions, score_record_batch

    bundle = load_bundle(bundle_dir)
    opts = ScoringOptions(key_columns=("id",))
    os.makedirs(out, exist_ok=True)
    rows = 0
    for i, path in enumerate(sorted(glob.glob(pattern))):
        writer = None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            scored, _ = score_record_batch(bundle, batch, source=path, opts=opts)
            if writer is None:
                writer = pq.ParquetWriter(os.path.join(out, f"part-{i:05d}.parquet"),
                                          scored.schema)
            writer.write_batch(scored)
            rows += scored.num_rows
        writer.close()
    return rows


def child_startup(bundle_dir: str) -> int:
    """The fixed cost every path pays: imports (TensorFlow, Beam) and loading the bundle."""
    import apache_beam  # noqa: F401

    from latentbeam.model import load_bundle
    from latentbeam.pipeline import batch  # noqa: F401

    load_bundle(bundle_dir)
    return 0


def child_rowwise(bundle_dir: str, pattern: str, out: str, rows: int) -> int:
    """(c): one Beam element per row, RunInference with a numpy handler (model.predict)."""
    import apache_beam as beam
    from apache_beam.io.parquetio import ReadFromParquet, WriteToParquet
    from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler, PredictionResult,
                                                RunInference)
    from apache_beam.options.pipeline_options import PipelineOptions

    from latentbeam.model import load_bundle_info

    info = load_bundle_info(bundle_dir)
    names = info.feature_names
    threshold = info.threshold.threshold

    class NumpyHandler(ModelHandler):
        """The usual hand-written handler: stack arrays, model.predict, one result per row."""

        def load_model(self):
            from latentbeam.model import load_bundle
            return load_bundle(bundle_dir).model

        def run_inference(self, batch, model, inference_args=None):
            out = model.predict(np.stack(batch), verbose=0)
            return [PredictionResult(x, {k: v[i] for k, v in out.items()})
                    for i, x in enumerate(batch)]

    def to_output(keyed):
        key, result = keyed
        err = float(np.mean(result.inference["feature_errors"]))
        return {"id": key, "latent": result.inference["latent"].tolist(),
                "reconstruction_error": err, "anomaly_score": err / threshold,
                "is_anomaly": err / threshold > 1.0}

    # The first `rows` rows of the data, as one file for ReadFromParquet.
    src = os.path.join(out + "-input", "input.parquet")
    os.makedirs(os.path.dirname(src), exist_ok=True)
    first = sorted(glob.glob(pattern))[0]
    pq.write_table(_head(first, rows), src)
    schema = pa.schema([("id", pa.int64()), ("latent", pa.list_(pa.float32())),
                        ("reconstruction_error", pa.float32()), ("anomaly_score", pa.float32()),
                        ("is_anomaly", pa.bool_())])
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=in_memory"])
    with beam.Pipeline(options=options) as p:
        _ = (p | ReadFromParquet(src)
             | beam.Map(lambda r: (r["id"], np.array([r[c] for c in names], np.float32)))
             | RunInference(KeyedModelHandler(NumpyHandler()))
             | beam.Map(to_output)
             | WriteToParquet(os.path.join(out, "part"), schema, file_name_suffix=".parquet"))
    return rows


def _head(path: str, rows: int) -> pa.Table:
    batches, n = [], 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
        batches.append(batch)
        n += batch.num_rows
        if n >= rows:
            break
    return pa.Table.from_batches(batches).slice(0, rows)


# --------------------------------------------------------------------------- measurement

def measure(cmd) -> dict:
    """Runs `cmd` as a child; wall seconds and that child's peak RSS (bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be a max over all).
    out_err = [b"", b""]

    def drain(stream, i):
        out_err[i] = stream.read()
    threads = [threading.Thread(target=drain, args=(s, i))
               for i, s in enumerate((proc.stdout, proc.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(out_err[1].decode(errors="replace")[-4000:])
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(cmd)}")
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024,
            "stdout": out_err[0].decode(errors="replace")}


def run_beam(bundle: str, pattern: str, out: str, beam_args=()) -> dict:
    r = measure([sys.executable, "-m", "latentbeam", "--log-level", "WARNING", "score",
                 "--bundle", bundle, "--input", pattern, "--output", out, "--key-columns", "id",
                 "--overwrite", "--quiet", *beam_args])
    done = json.load(open(os.path.join(out, "_SUCCESS")))
    r["rows"] = done["rows_scored"]
    return r


def run_child(mode: str, bundle: str, pattern: str, out: str, rows: int = 0) -> dict:
    r = measure([sys.executable, __file__, "--child", mode, "--bundle", bundle,
                 "--pattern", pattern, "--out", out, "--child-rows", str(rows)])
    r["rows"] = int(r["stdout"].strip().splitlines()[-1])
    return r


class LocalDaskCluster:
    """A scheduler and 2 single-thread worker processes on 127.0.0.1 (this venv's `dask`)."""

    def __init__(self, workers: int = 2):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.workers = workers
        self.procs = []

    def __enter__(self) -> str:
        dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1",
                                            "--port", str(self.port), "--no-dashboard"], **quiet))
        self.procs.append(subprocess.Popen([dask_cli, "worker", self.address, "--nworkers",
                                            str(self.workers), "--nthreads", "1",
                                            "--no-dashboard"], **quiet))
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(self.workers, timeout=120)
        return self.address

    def __exit__(self, *exc) -> None:
        import signal

        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()


def _fmt(name: str, r: dict, startup: float) -> str:
    net = max(r["seconds"] - startup, 1e-9)
    return (f"{name:<44} {r['rows']:>10,d} rows {r['seconds']:>7.1f} s "
            f"{r['rows'] / r['seconds']:>10,.0f} rows/s ({r['rows'] / net:>10,.0f} net of "
            f"start-up)  peak RSS {r['peak_rss'] / 2**30:5.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rows-rowwise", type=int, default=50_000)
    ap.add_argument("--rss-rows", type=int, default=0,
                    help="also run (a) on this many rows and report its peak RSS")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    ap.add_argument("--runner", choices=["dask"], default=None,
                    help="also run (d): latentbeam score on a Dask cluster")
    ap.add_argument("--dask-address", default=None,
                    help="scheduler of an existing cluster (default: start 2 local workers)")
    ap.add_argument("--rows-per-file", type=int, default=None,
                    help=f"rows per input file (default {ROWS_PER_FILE:,d}; rows / 8 with "
                         f"--runner dask)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pattern", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-rows", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "bare":
        print(child_bare(args.bundle, args.pattern, args.out))
        return
    if args.child == "data":
        seed, per_file = (int(v) for v in args.pattern.split(":"))
        write_data(args.out, args.child_rows, seed=seed, rows_per_file=per_file)
        print(args.child_rows)
        return
    if args.child == "train":
        if args.pattern:  # NAME:K, a second bundle with score.latent_neighbors=K
            name, k = args.pattern.split(":")
            child_train(args.out, name, int(k))
        else:
            child_train(args.out)
        print(0)
        return
    if args.child == "startup":
        print(child_startup(args.bundle))
        return
    if args.child == "rowwise":
        print(child_rowwise(args.bundle, args.pattern, args.out, args.child_rows))
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="latentbeam-bench-score-")
    try:
        data = os.path.join(workdir, "data")
        print(f"writing {args.rows:,d} rows x {FEATURES} float32 features to {data} ...",
              flush=True)
        per_file = args.rows_per_file or (max(1, -(-args.rows // 8)) if args.runner
                                          else ROWS_PER_FILE)
        run_child("data", "", f"0:{per_file}", data, args.rows)
        pattern = os.path.join(data, "*.parquet")
        print("training the 64-32-8 dense autoencoder on a 50k-row sample ...", flush=True)
        run_child("train", "", "", workdir)
        bundle = os.path.join(workdir, "bundle")

        s = run_child("startup", bundle, pattern, os.path.join(workdir, "out-s"))
        startup = s["seconds"]
        print(f"start-up (imports + bundle load, paid by every path): {startup:.1f} s, "
              f"peak RSS {s['peak_rss'] / 2**30:.2f} GB", flush=True)
        a = run_beam(bundle, pattern, os.path.join(workdir, "out-a"))
        print(_fmt("(a) latentbeam score, in-process runner", a, startup), flush=True)
        # (a0): the same job on a bundle whose score is the reconstruction term alone (no
        # latent-distance term): the cost of scoring before that term existed.
        run_child("train", "", "bundle-recon:0", workdir)
        a0 = run_beam(os.path.join(workdir, "bundle-recon"), pattern,
                      os.path.join(workdir, "out-a0"))
        print(_fmt("(a0) latentbeam score, reconstruction-only score", a0, startup),
              flush=True)
        b = run_child("bare", bundle, pattern, os.path.join(workdir, "out-b"))
        print(_fmt("(b) bare pyarrow loop, no Beam", b, startup), flush=True)
        c = run_child("rowwise", bundle, pattern, os.path.join(workdir, "out-c"),
                      min(args.rows_rowwise, args.rows))
        print(_fmt("(c) RunInference, numpy handler, row/element", c, startup), flush=True)
        d = None
        if args.runner == "dask":
            cluster = (contextlib.nullcontext(args.dask_address) if args.dask_address
                       else LocalDaskCluster(workers=2))
            with cluster as address:
                d = run_beam(bundle, pattern, os.path.join(workdir, "out-d"),
                             ["--runner", "dask", "--dask_client_address", address])
            print(_fmt("(d) latentbeam score, Dask, 2 workers", d, startup), flush=True)
        ra, rb, rc = (r["rows"] / r["seconds"] for r in (a, b, c))
        na, nb, nc = (r["rows"] / max(r["seconds"] - startup, 1e-9) for r in (a, b, c))
        ra0, na0 = a0["rows"] / a0["seconds"], a0["rows"] / max(a0["seconds"] - startup, 1e-9)
        print()
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
              f"{platform.python_version()}")
        # "wall" includes the start-up every path pays once (it dominates a 1M-row run);
        # "net" is the steady-state throughput. Both are judged.
        for label, wall, net, target in (("(a) / (a0)", ra / ra0, na / na0, TARGET_VS_RECON),
                                         ("(a) / (b)", ra / rb, na / nb, TARGET_VS_BARE),
                                         ("(a) / (c)", ra / rc, na / nc, TARGET_VS_ROWWISE)):
            print(f"{label} = {wall:.2f} wall {'OK' if wall >= target else 'MISSED'}, "
                  f"{net:.2f} net {'OK' if net >= target else 'MISSED'}   (target >= {target:g})")
        if args.rss_rows:
            big = os.path.join(workdir, "big")
            shutil.rmtree(data)
            print(f"\nwriting {args.rss_rows:,d} rows for the memory run ...", flush=True)
            run_child("data", "", f"2:{ROWS_PER_FILE}", big, args.rss_rows)
            r = run_beam(bundle, os.path.join(big, "*.parquet"), os.path.join(workdir, "out-big"))
            print(_fmt("(a) latentbeam score, memory run", r, startup))
            print(f"(a, {args.rss_rows:,d} rows) / (c) = {r['rows'] / r['seconds'] / rc:.1f} wall")
            print(f"peak RSS {r['peak_rss'] / 2**30:.2f} GB (target < {TARGET_RSS_GB} GB)  "
                  f"{'OK' if r['peak_rss'] / 2**30 < TARGET_RSS_GB else 'MISSED'}")
        # Last: reading the outputs makes this process large.
        same = all(pq.read_table(os.path.join(workdir, "out-a", n)).equals(
            pq.read_table(os.path.join(workdir, "out-b", n)))
            for n in sorted(os.listdir(os.path.join(workdir, "out-b"))))
        print(f"(a) and (b) outputs equal: {same}")
        if d is not None:
            print(f"(d) / (a) = {d['rows'] / d['seconds'] / ra:.2f} wall, "
                  f"{d['rows'] / max(d['seconds'] - startup, 1e-9) / na:.2f} net")
            same_d = all(filecmp.cmp(os.path.join(workdir, "out-a", n),
                                     os.path.join(workdir, "out-d", n), shallow=False)
                         for n in sorted(os.listdir(os.path.join(workdir, "out-a")))
                         if n.endswith(".parquet"))
            print(f"(a) and (d) part files byte-identical: {same_d}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
