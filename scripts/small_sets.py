"""Writes small anomaly-detection sets built from scikit-learn's bundled data (no
download), and one synthetic set, in the ODDS layout (`X`, `y` in NAME.npz) for
`bench_quality.py --data-dir`.

    python scripts/small_sets.py DIR
    python scripts/bench_quality.py --data-dir DIR [--protocol semi|unsup]

Tables of a few hundred rows, the size at which a training epoch is a few batches:
  wdbc    breast cancer: 357 benign rows normal, 21 of the malignant ones anomalies (30 inputs)
  wine    classes 0 and 1 normal, 10 rows of class 2 anomalies (13 inputs)
  iris    setosa and versicolor normal, 10 virginica anomalies (4 inputs)
  digits  digits 0-4 normal, 45 eights anomalies (64 integer pixels 0..16)
  densities  two clusters of 1,500 rows in 8 inputs, one of spread 0.2 at 0 and one of
          spread 3 at 10; 40 anomalies of spread 0.2 at 1.2, just outside the tight one
          and nearer to it than the loose cluster's rows are to each other
The anomalies are drawn with a fixed seed, so the files are the same on every run.
"""
import argparse
import os

import numpy as np


def write_sets(out_dir: str) -> list:
    from sklearn import datasets

    rng = np.random.RandomState(42)
    os.makedirs(out_dir, exist_ok=True)
    specs = [("90_wdbc", datasets.load_breast_cancer(), lambda t: t == 1, lambda t: t == 0, 21),
             ("91_wine", datasets.load_wine(), lambda t: t != 2, lambda t: t == 2, 10),
             ("92_iris", datasets.load_iris(), lambda t: t != 2, lambda t: t == 2, 10),
             ("93_digits", datasets.load_digits(), lambda t: t < 5, lambda t: t == 8, 45)]
    written = []
    for name, d, normal, anomalous, n_anomalies in specs:
        normal_rows = np.flatnonzero(normal(d.target))
        anomalies = rng.choice(np.flatnonzero(anomalous(d.target)), n_anomalies, replace=False)
        rows = np.concatenate([normal_rows, anomalies])
        y = np.r_[np.zeros(len(normal_rows)), np.ones(n_anomalies)].astype(int)
        path = os.path.join(out_dir, f"{name}.npz")
        np.savez(path, X=d.data[rows].astype(np.float64), y=y)
        written.append((path, len(rows), d.data.shape[1], n_anomalies))
    gen = np.random.RandomState(0)
    x = np.concatenate([gen.normal(0.0, 0.2, (1500, 8)), gen.normal(10.0, 3.0, (1500, 8)),
                        gen.normal(1.2, 0.2, (40, 8))])
    y = np.r_[np.zeros(3000), np.ones(40)].astype(int)
    path = os.path.join(out_dir, "94_densities.npz")
    np.savez(path, X=x, y=y)
    written.append((path, len(x), 8, 40))
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    for path, rows, cols, anomalies in write_sets(ap.parse_args(argv).out_dir):
        print(f"{path}: {rows} rows x {cols}, {anomalies} anomalies")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
