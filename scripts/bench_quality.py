"""Detection quality on the ODDS benchmark sets: latentbeam beside scikit-learn peers.

For every set and seed, latentbeam trains exactly as `latentbeam train` does (a config
with only `data`, plus any `--set` overrides) from Parquet files, and scores through the
scoring core that `latentbeam score` runs in Beam (`latentbeam.model.score`). In the same
run, on the same splits: IsolationForest, kNN (distance to the nearest training row after
StandardScaler) and PCA reconstruction error from scikit-learn.

Protocols (see ../shared/data/odds/README.md):
  semi    train on 60% of the normal rows, test on the other normal rows + all anomalies;
          ROC-AUC and average precision.
  unsup   train on all rows, anomalies included, score all rows; ROC-AUC and
          precision@k with k = number of anomalies.

    python scripts/bench_quality.py [--protocol semi|unsup] [--seeds 0 1 2]
        [--sets cardio thyroid] [--set model.latent_dim=4 ...] [--no-peers]
        [--image optdigits=8x8]

Every set is written as one Parquet column per input (the ODDS files are flat tables).
`--image SET=HxW` writes that set's rows as one image column instead, as image data
arrives from TFDS or an image table; the peers see the same flat matrix either way.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "odds")
METHODS = ("latentbeam", "IsolationForest", "kNN", "PCA")


def load_sets(data_dir: str, names):
    sets = {}
    for path in sorted(glob.glob(os.path.join(data_dir, "*.npz"))):
        name = os.path.basename(path)[:-4].split("_", 1)[1]
        if names and name not in names:
            continue
        d = np.load(path, allow_pickle=False)
        sets[name] = (d["X"].astype(np.float64), d["y"].astype(int))
    if names and set(names) - set(sets):
        raise SystemExit(f"unknown set(s) {sorted(set(names) - set(sets))}; "
                         f"available: {sorted(os.path.basename(p)[:-4].split('_', 1)[1] for p in glob.glob(os.path.join(data_dir, '*.npz')))}")
    return sets


def split(x, y, protocol: str, seed: int):
    """(train rows, test rows, test labels) for one seed."""
    if protocol == "semi":
        normal = np.flatnonzero(y == 0)
        perm = np.random.RandomState(seed).permutation(normal)
        n_train = int(round(0.6 * len(normal)))
        test = np.concatenate([perm[n_train:], np.flatnonzero(y == 1)])
        return x[perm[:n_train]], x[test], y[test]
    order = np.random.RandomState(seed).permutation(len(x))
    return x[order], x[order], y[order]


def _columns(x, image_shape):
    """Parquet columns of the rows: one per input, or one image column of that shape."""
    if not image_shape:
        return {f"f{i:03d}": pa.array(x[:, i]) for i in range(x.shape[1])}
    h, w = image_shape
    return {"image": pa.array(x.reshape(len(x), h, w).tolist(),
                              type=pa.list_(pa.list_(pa.float64(), w), h))}


def latentbeam_scores(x_train, x_test, seed: int, overrides, workdir: str, image_shape=None):
    from latentbeam.config import from_dict
    from latentbeam.model import load_bundle, score, train

    data = os.path.join(workdir, "data")
    os.makedirs(data, exist_ok=True)
    for f in glob.glob(os.path.join(data, "*")):
        os.remove(f)
    pq.write_table(pa.table(_columns(x_train, image_shape)), os.path.join(data, "train.parquet"))
    config = from_dict({"data": {"path": os.path.join(data, "*.parquet")}},
                       [f"train.seed={seed}", "train.verbose=0", *overrides])
    bundle_dir = os.path.join(workdir, f"bundle-{seed}")
    t0 = time.time()
    train(config, bundle_dir)
    seconds = time.time() - t0
    bundle = load_bundle(bundle_dir)
    s = score(bundle, x_test.astype(np.float32))
    return s.anomaly_score.astype(np.float64), seconds


def peer_scores(method: str, x_train, x_test, seed: int, protocol: str):
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    if method == "IsolationForest":
        model = IsolationForest(random_state=seed).fit(x_train)
        return -model.score_samples(x_test), time.time() - t0
    scaler = StandardScaler().fit(x_train)
    a, b = scaler.transform(x_train), scaler.transform(x_test)
    if method == "kNN":
        nn = NearestNeighbors(n_neighbors=2 if protocol == "unsup" else 1).fit(a)
        dist, _ = nn.kneighbors(b)
        # unsup scores the training rows themselves: skip the row's own zero distance.
        return dist[:, -1], time.time() - t0
    pca = PCA(n_components=0.9, random_state=seed).fit(a)
    recon = pca.inverse_transform(pca.transform(b))
    return ((b - recon) ** 2).sum(axis=1), time.time() - t0


def metrics(y, s, protocol: str):
    from sklearn.metrics import average_precision_score, roc_auc_score

    auc = roc_auc_score(y, s)
    if protocol == "semi":
        return auc, average_precision_score(y, s)
    k = int(y.sum())
    top = np.argsort(-s, kind="stable")[:k]
    return auc, float(y[top].mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", choices=("semi", "unsup"), default="semi")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sets", nargs="*", default=None, help="set names (default: all 11)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="latentbeam config override (repeatable)")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--no-peers", action="store_true", help="latentbeam only")
    ap.add_argument("--image", action="append", default=[], metavar="SET=HxW",
                    help="write SET's rows as one image column of that shape (as image "
                         "data arrives from TFDS or an image table) instead of one column "
                         "per input, e.g. optdigits=8x8")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("latentbeam", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)

    images = {}
    for spec in args.image:
        name, _, shape = spec.partition("=")
        images[name] = tuple(int(v) for v in shape.lower().split("x"))
    methods = ("latentbeam",) if args.no_peers else METHODS
    sets = load_sets(args.data_dir, args.sets)
    second = "AP" if args.protocol == "semi" else "P@k"
    # results[set][method] = list of (auc, second, seconds)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as work:
        for name, (x, y) in sets.items():
            results[name] = {m: [] for m in methods}
            for seed in args.seeds:
                x_train, x_test, y_test = split(x, y, args.protocol, seed)
                for m in methods:
                    if m == "latentbeam":
                        s, sec = latentbeam_scores(x_train, x_test, seed, args.overrides, work,
                                                   images.get(name))
                    else:
                        s, sec = peer_scores(m, x_train, x_test, seed, args.protocol)
                    results[name][m].append((*metrics(y_test, s, args.protocol), sec))
            row = results[name]
            print(f"{name:18s} " + "  ".join(
                f"{m} {np.mean([r[0] for r in row[m]]):.3f}/{np.mean([r[1] for r in row[m]]):.3f}"
                for m in methods), file=sys.stderr, flush=True)

    print(f"\nprotocol {args.protocol}, seeds {args.seeds}, latentbeam overrides "
          f"{args.overrides or '(none: default config)'}; cells: ROC-AUC / {second}, mean "
          f"over seeds; lb s = latentbeam train seconds per seed (mean)"
          + (f"; as one image column: {', '.join(args.image)}" if args.image else "") + "\n")
    header = "| set | " + " | ".join(methods) + " | lb s |"
    print(header)
    print("|" + "---|" * (len(methods) + 2))
    means = {m: [] for m in methods}
    for name, row in results.items():
        cells = []
        for m in methods:
            auc = np.mean([r[0] for r in row[m]])
            sec_metric = np.mean([r[1] for r in row[m]])
            means[m].append((auc, sec_metric))
            cells.append(f"{auc:.3f} / {sec_metric:.3f}")
        secs = np.mean([r[2] for r in row["latentbeam"]])
        print(f"| {name} | " + " | ".join(cells) + f" | {secs:.1f} |")
    print("| **mean** | " + " | ".join(
        f"**{np.mean([a for a, _ in means[m]]):.3f}** / {np.mean([b for _, b in means[m]]):.3f}"
        for m in methods) + " | |")
    if not args.no_peers:
        lb = np.array([a for a, _ in means["latentbeam"]])
        best_peer = np.maximum([a for a, _ in means["IsolationForest"]],
                               [a for a, _ in means["kNN"]])
        gap = lb - best_peer
        worst = int(np.argmin(gap))
        print(f"\nlatentbeam - max(IsolationForest, kNN) ROC-AUC: worst {gap[worst]:+.3f} "
              f"({list(results)[worst]}), mean {gap.mean():+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
