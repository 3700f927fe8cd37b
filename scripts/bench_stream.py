"""Streaming latency and throughput of `latentbeam stream` on this machine.

Latency: a thread lands N Parquet files (temp name, then rename) into a watched
directory, one every --interval seconds; for each, the time from its rename until its
scored output file is readable (pyarrow reads it back). Throughput: rows/s while
scoring a backlog of files present at start.

    python scripts/bench_stream.py --bundle BUNDLE_DIR [--files 20 --poll 1 --rows 1000]

Without --bundle a tiny bundle is trained on the embedded digits first.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _table(rows: int, start: int) -> pa.Table:
    from latentbeam.demo import digits_table

    base = digits_table().drop_columns(["label"])
    reps = -(-rows // base.num_rows)
    t = pa.concat_tables([base] * reps).slice(0, rows)
    return t.set_column(0, "id", pa.array(np.arange(start, start + rows, dtype=np.int64)))


def _land(directory: str, name: str, table: pa.Table) -> float:
    tmp = os.path.join(directory, f".{name}.tmp")
    pq.write_table(table, tmp)
    os.rename(tmp, os.path.join(directory, name))
    return time.time()


def _tiny_bundle(work: str) -> str:
    from latentbeam.config import from_dict
    from latentbeam.demo import write_digits_parquet
    from latentbeam.model import train

    data = os.path.join(work, "digits")
    write_digits_parquet(data, files=2)
    out = os.path.join(work, "bundle")
    train(from_dict({"data": {"path": f"{data}/*.parquet", "label": "label"}},
                    ["model.latent_dim=2", "model.hidden_units=[16]", "train.epochs=3",
                     "train.verbose=0"]), out)
    return out


def _stream(bundle, watch, out, poll, stop, extra=()):
    from latentbeam import cli

    return cli.main(["--log-level", "WARNING", "stream", "--bundle", bundle, "--watch",
                     os.path.join(watch, "*.parquet"), "--output", out, "--window-seconds",
                     "10", "--poll-seconds", str(poll), "--stop-after-seconds", str(stop),
                     "--key-columns", "id", *extra])


def latency(bundle: str, work: str, files: int, poll: float, rows: int, interval: float):
    watch, out = os.path.join(work, "lat-in"), os.path.join(work, "lat-out")
    os.makedirs(watch)
    landed, readable = {}, {}

    def feed():
        time.sleep(8.0)  # job start-up (TensorFlow, first bundle load) is not landing latency
        for i in range(files):
            landed[f"f{i:03d}.parquet"] = _land(watch, f"f{i:03d}.parquet", _table(rows, i * rows))
            time.sleep(interval)

    def watch_outputs():
        tags = {}
        while len(readable) < files:
            for name in list(landed):
                if name in readable:
                    continue
                path = os.path.join(watch, name)
                tag = tags.setdefault(name, hashlib.sha256(path.encode()).hexdigest()[:16])
                for f in glob.glob(os.path.join(out, f"scored-*-{tag}.parquet")):
                    try:
                        if pq.read_table(f).num_rows == rows:
                            readable[name] = time.time()
                    except (OSError, pa.ArrowException):
                        pass  # not there yet
            time.sleep(0.05)

    threads = [threading.Thread(target=feed), threading.Thread(target=watch_outputs, daemon=True)]
    for t in threads:
        t.start()
    _stream(bundle, watch, out, poll, 8.0 + files * interval + 4 * poll)
    threads[0].join()
    threads[1].join(timeout=10)
    lat = np.array([readable[n] - landed[n] for n in landed if n in readable])
    return lat, len(readable)


def throughput(bundle: str, work: str, files: int, rows: int, poll: float):
    watch, out = os.path.join(work, "tp-in"), os.path.join(work, "tp-out")
    os.makedirs(watch)
    for i in range(files):
        _land(watch, f"b{i:03d}.parquet", _table(rows, i * rows))
    t0 = time.time()
    _stream(bundle, watch, out, poll, poll * 2)
    # Rows after the first output file / time from the first to the last output file
    # (excludes start-up and the first poll wait).
    outs = sorted(glob.glob(os.path.join(out, "scored-*.parquet")), key=os.path.getmtime)
    total = sum(pq.read_metadata(f).num_rows for f in outs)
    first, last = os.path.getmtime(outs[0]), os.path.getmtime(outs[-1])
    after_first = total - pq.read_metadata(outs[0]).num_rows
    return total, after_first / max(last - first, 1e-9), last - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--rows", type=int, default=1000, help="rows per landing file")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between landings")
    ap.add_argument("--backlog-files", type=int, default=20)
    ap.add_argument("--backlog-rows", type=int, default=20000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="latentbeam-bench-stream-")
    try:
        bundle = args.bundle or _tiny_bundle(work)
        lat, n = latency(bundle, work, args.files, args.poll, args.rows, args.interval)
        print(f"latency  file landed -> scores readable: {n}/{args.files} files, {args.rows} rows "
              f"each, poll {args.poll:g}s: p50 {np.percentile(lat, 50):.2f}s, "
              f"p95 {np.percentile(lat, 95):.2f}s, max {lat.max():.2f}s")
        total, rate, _ = throughput(bundle, work, args.backlog_files, args.backlog_rows, args.poll)
        print(f"throughput  backlog of {args.backlog_files} x {args.backlog_rows} rows: "
              f"{total} rows scored at {rate:,.0f} rows/s (first to last output file)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
