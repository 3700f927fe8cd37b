"""Training throughput: latentbeam's streaming Parquet path vs in-memory numpy `model.fit`.

Generates N synthetic rows (64 low-rank features plus noise) as Parquet files in a
temporary directory, then trains the same dense autoencoder (hidden [32, 16], latent 8,
batch 256, a fixed number of epochs; early stopping effectively off) twice:

  (a) parquet  `latentbeam.model.training.train` on the Parquet glob: ParquetSource
               streaming, split assignment, shuffling, tf.data, plus the scan pass,
               calibration and writing the bundle; with the default settings (data
               that fits `train.cache_mb` is decoded once and replayed from memory), with
               `train.cache_mb=0` (larger-than-memory data: decoded once into a temp file
               and replayed from disk) and with `train.cache_mb=0 train.disk_cache=false`
               (the files are read and decoded again every epoch)
  (b) numpy    the same architecture (`build_autoencoder`) fitted with `model.fit` on
               the same training rows held in memory as one numpy array

and prints samples/s (training rows x epochs / seconds) and the ratio (target >= 0.8x),
for train() end to end and for its fit phase alone (bundle.json `training.fit_seconds`).

    .venv/bin/python scripts/bench_train.py [--rows 200000] [--epochs 10]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentbeam.config import from_dict
from latentbeam.model import data as data_mod
from latentbeam.model.architectures import build_autoencoder
from latentbeam.model.bundle import load_bundle_info
from latentbeam.model.training import set_seed, train

TARGET_RATIO = 0.8


def write_data(directory: str, rows: int, features: int, files: int, seed: int) -> np.ndarray:
    """Writes `rows` synthetic rows as `files` Parquet files; returns them as float32."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 8))
    w = rng.normal(size=(8, features))
    x = (z @ w + 0.1 * rng.normal(size=(rows, features)) + 5.0).astype(np.float32)
    names = [f"f{i:02d}" for i in range(features)]
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i in range(files):
        part = x[bounds[i]:bounds[i + 1]]
        table = pa.table({"id": np.arange(bounds[i], bounds[i + 1], dtype=np.int64),
                          **{n: part[:, j] for j, n in enumerate(names)}})
        pq.write_table(table, os.path.join(directory, f"part-{i:05d}.parquet"))
    return x


def run_parquet(pattern: str, output: str, args, cache_mb: int, disk_cache: bool = True) -> dict:
    config = from_dict({
        "data": {"path": pattern, "key_columns": ["id"]},
        "model": {"latent_dim": 8, "hidden_units": [32, 16]},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size,
                  "patience": 10 * args.epochs, "seed": 0, "verbose": 0,
                  "cache_mb": cache_mb, "disk_cache": disk_cache,
                  # Full passes, as numpy's model.fit makes them: samples/s compare alike.
                  "epoch_rows": None},
    })
    t0 = time.perf_counter()
    train(config, output)
    seconds = time.perf_counter() - t0
    t = load_bundle_info(output).training
    assert t["epochs"] == args.epochs, "early stopping ended the run early"
    return {"seconds": seconds, "fit_seconds": t["fit_seconds"],
            "train_rows": t["rows_by_split"]["train"], "epochs": t["epochs"]}


def run_numpy(x: np.ndarray, args) -> dict:
    import keras

    codes = data_mod.assign_splits(0, len(x), 0.1, 0.1)
    x_train = x[codes == data_mod.SPLIT_TRAIN]
    x_val = x[codes == data_mod.SPLIT_VALIDATION]
    set_seed(0)
    variance = x_train.var(axis=0, dtype=np.float64)
    model = build_autoencoder(
        from_dict({"data": {"path": "-"}, "model": {"latent_dim": 8, "hidden_units": [32, 16]}}).model,
        n_inputs=x.shape[1], mean=x_train.mean(axis=0, dtype=np.float64),
        variance=np.where(variance > 0, variance, 1.0), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    t0 = time.perf_counter()
    model.fit(x_train, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
              validation_data=(x_val,), verbose=0)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "train_rows": len(x_train), "epochs": args.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate the two runs this many times; report the fastest of each "
                             "(steadier figures on a shared machine)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="latentbeam-bench-") as tmp:
        data_dir = os.path.join(tmp, "data")
        os.makedirs(data_dir)
        x = write_data(data_dir, args.rows, args.features, args.files, seed=0)
        pattern = os.path.join(data_dir, "*.parquet")
        # Warm-up: the first fit in a process pays one-time TensorFlow start-up costs.
        warm_dir = os.path.join(tmp, "warm")
        os.makedirs(warm_dir)
        warm = argparse.Namespace(**{**vars(args), "epochs": 1})
        write_data(warm_dir, 5000, args.features, 1, seed=1)
        run_parquet(os.path.join(warm_dir, "*.parquet"), os.path.join(tmp, "warm-bundle"), warm, 256)
        run_numpy(x[:5000], warm)
        runs = {"cached": [], "disk": [], "streamed": [], "numpy": []}
        for i in range(args.repeat):
            # Default settings: the data fits train.cache_mb, so Parquet is read once.
            runs["cached"].append(run_parquet(pattern, os.path.join(tmp, f"a-{i}"), args, 256))
            # train.cache_mb=0: as data larger than memory, replayed from a temp file.
            runs["disk"].append(run_parquet(pattern, os.path.join(tmp, f"d-{i}"), args, 0))
            # ... and with disk_cache off: every epoch decodes the Parquet files again.
            runs["streamed"].append(run_parquet(pattern, os.path.join(tmp, f"s-{i}"), args, 0,
                                                disk_cache=False))
            runs["numpy"].append(run_numpy(x, args))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}

    def rate(r, key="seconds"):
        return r["train_rows"] * r["epochs"] / r[key]

    rows = []
    for key, label in (("cached", "(a) parquet"), ("disk", "(a) parquet, cache_mb=0"),
                       ("streamed", "(a) parquet, no cache")):
        r = best[key]
        rows.append((f"{label}: train() end to end", rate(r), r["seconds"]))
        rows.append((f"{label}: fit phase", rate(r, "fit_seconds"), r["fit_seconds"]))
    numpy_rate = rate(best["numpy"])
    rows.append(("(b) numpy: model.fit", numpy_rate, best["numpy"]["seconds"]))
    print(f"\nrows {args.rows} ({best['numpy']['train_rows']} training) x {args.features} "
          f"features, {args.files} files, {args.epochs} epochs, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}, best of {args.repeat}")
    print(f"{'path':44s} {'samples/s':>10s} {'seconds':>8s} {'vs numpy':>9s}")
    for name, r, seconds in rows:
        ratio = r / numpy_rate
        flag = "" if ratio >= TARGET_RATIO or name.startswith("(b)") else "  < target"
        print(f"{name:44s} {r:10,.0f} {seconds:8.2f} {ratio:8.2f}x{flag}")
    print(f"target: (a) >= {TARGET_RATIO}x of (b)")


if __name__ == "__main__":
    main()
