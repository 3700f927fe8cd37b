"""The embedded demo data: scikit-learn's bundled 8x8 digits as Parquet and as TFDS.

The data ships with scikit-learn, so the demo and the tests run offline.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from typing import List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

DIGITS_TFDS_NAME = "latentbeam_digits"
PIXELS = 64


def pixel_columns() -> List[str]:
    return [f"pixel_{i:02d}" for i in range(PIXELS)]


def digits_table() -> pa.Table:
    """1797 rows: `id`, `label` (the digit) and 64 float32 pixel columns (0..16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32)
    cols = {"id": pa.array(np.arange(len(x), dtype=np.int64)),
            "label": pa.array(d.target.astype(np.int64))}
    for i, name in enumerate(pixel_columns()):
        cols[name] = pa.array(x[:, i])
    return pa.table(cols)


IMAGE_SHAPE = (8, 8)


def digit_images_table() -> pa.Table:
    """1797 rows: `id`, `label` and `image`, the 8x8 pixels (0..16) as a fixed-size 8x8 list.

    The same numbers as `digits_table` (its pixel_NN is image[NN // 8, NN % 8]); as an image
    feature the model inputs are named image[R,C] and the report draws the rows as images.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    h, w = IMAGE_SHAPE
    pixels = pa.array(d.images.astype(np.float32).reshape(-1))
    image = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pixels, w), h)
    return pa.table({"id": pa.array(np.arange(len(d.images), dtype=np.int64)),
                     "label": pa.array(d.target.astype(np.int64)), "image": image})


def write_digits_parquet(directory: str, files: int = 2, images: bool = False) -> List[str]:
    """Writes the digits as `files` Parquet files; returns their paths.

    `images=False`: 64 pixel columns (`digits_table`); `images=True`: one 8x8 `image`
    column (`digit_images_table`).
    """
    os.makedirs(directory, exist_ok=True)
    table = digit_images_table() if images else digits_table()
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    paths = []
    for i in range(files):
        path = os.path.join(directory, f"digits-{i:05d}-of-{files:05d}.parquet")
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), path)
        paths.append(path)
    return paths


def write_digits_tfds(data_dir: str, name: str = DIGITS_TFDS_NAME) -> str:
    """Stores the digits as a prepared TFDS dataset (`image` (8, 8) float32, `label`).

    Splits: train (first 1500 rows) and test (the rest), in a stable order. An earlier
    copy of this dataset in `data_dir` is replaced (TFDS refuses to prepare it twice).
    Returns the data_dir; load with `tfds.load(name, data_dir=..., download=False)`.
    """
    import shutil

    import tensorflow as tf
    import tensorflow_datasets as tfds

    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32)
    labels = d.target.astype(np.int64)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(8, 8), dtype=np.float32),
        "label": tfds.features.ClassLabel(num_classes=10),
    })
    splits = {
        "train": tf.data.Dataset.from_tensor_slices({"image": images[:1500], "label": labels[:1500]}),
        "test": tf.data.Dataset.from_tensor_slices({"image": images[1500:], "label": labels[1500:]}),
    }
    shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)
    # TFDS prints "Downloading and preparing dataset ..." and progress bars per split and
    # shard, and warns that the new folder has no dataset_info.json yet: keep them out
    # of the demo's screen (they go to the debug log).
    tfds.disable_progress_bar()
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            tfds.dataset_builders.store_as_tfds_dataset(
                name=name, version="1.0.0", features=features, split_datasets=splits,
                data_dir=data_dir, description="scikit-learn 8x8 digits", disable_shuffling=True)
    finally:
        absl_log.setLevel(level)
    log.debug("TFDS: %s", printed.getvalue().strip())
    return data_dir


# The demo's training config; configs/demo.yaml is the same file for users to copy
# (a test keeps the two equal). `data.path` is relative to the demo workdir.
DEMO_CONFIG = {
    "data": {"source": "parquet", "path": "data/*.parquet", "features": ["image"],
             "label": "label", "key_columns": ["id"]},
    "model": {"latent_dim": 2, "hidden_units": [32, 16]},
    "train": {"epochs": 60, "seed": 0},
    "threshold": {"method": "quantile", "value": 0.99},
}


# What the demo writes in its workdir, and nothing else. The marker says a directory is a
# demo workdir, whose entries a new run may replace.
WORKDIR_MARKER = ".latentbeam-demo"
WORKDIR_ENTRIES = ("data", "tensorflow_datasets", "demo.yaml", "bundle", "scored", "report",
                   WORKDIR_MARKER)
DIGITS_FILES = 2


def _digits_file_names(files: int = DIGITS_FILES) -> List[str]:
    return [f"digits-{i:05d}-of-{files:05d}.parquet" for i in range(files)]


def check_workdir(workdir: str) -> None:
    """Refuses a workdir that holds anything the demo did not write (it would replace it,
    or train on it).

    A new or empty directory is fine, and so is one an earlier demo run wrote (it has
    WORKDIR_MARKER, or, written before the marker existed, only the demo's entries and a
    demo.yaml whose data is the workdir's own digits).
    """
    from latentbeam.errors import ConfigError

    if not os.path.isdir(workdir):
        if os.path.exists(workdir):
            raise ConfigError(f"--workdir {workdir} is a file; the demo needs a directory. "
                              f"Give a new or empty directory (default build/demo).")
        return
    entries = sorted(os.listdir(workdir))
    if not entries:
        return
    expected = {
        "data": _digits_file_names(),
        "tensorflow_datasets": (DIGITS_TFDS_NAME, "downloads"),  # TFDS makes the latter
    }
    foreign = [e for e in entries if e not in WORKDIR_ENTRIES]
    for sub in ("data", "tensorflow_datasets"):
        path = os.path.join(workdir, sub)
        if os.path.isdir(path):
            foreign += [os.path.join(sub, e) for e in sorted(os.listdir(path))
                        if e not in expected[sub]]
        elif os.path.exists(path):
            foreign.append(sub)
    if not foreign and WORKDIR_MARKER not in entries and not _earlier_demo_config(workdir):
        foreign = ["demo.yaml"]  # not a config the demo wrote for this workdir
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise ConfigError(
            f"--workdir {workdir} holds what the demo did not write ({shown}). The demo writes "
            f"{', '.join(e for e in WORKDIR_ENTRIES if e != WORKDIR_MARKER)} there, replaces "
            f"them on each run and trains on every file of data/: give it a new or empty "
            f"directory (default build/demo), or move those files out.")


def _earlier_demo_config(workdir: str) -> bool:
    """An unmarked workdir's demo.yaml is one the demo wrote: its data is the workdir's digits."""
    import yaml

    path = os.path.join(workdir, "demo.yaml")
    if not os.path.exists(path):
        return True  # nothing of the user's to replace there
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
        return raw["data"]["path"] == os.path.join(workdir, DEMO_CONFIG["data"]["path"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False


def run_demo(workdir: str, top: int = 5, overrides: Sequence[str] = ()) -> int:
    """Digits -> Parquet + TFDS -> 64 -> 2 -> 64 autoencoder -> Beam scoring -> HTML report,
    on one screen.

    Args:
      overrides: `--set` KEY=VALUE overrides of DEMO_CONFIG's model, train and threshold
        keys (the data is the demo's own), written into the run's demo.yaml.
    """
    import time

    import yaml

    from latentbeam.config import from_dict, merge_overrides, parse_overrides
    from latentbeam.errors import ConfigError
    from latentbeam.text import clip
    from latentbeam.console import ProgressLine
    from latentbeam.model import train
    from latentbeam.summaries import summarize_bundle

    fixed = [o for o in overrides if "data" in parse_overrides([o])]
    if fixed:
        raise ConfigError(f"The demo's data is fixed (the 8x8 digits); it takes --set for the "
                          f"model, train and threshold keys only. Received: --set "
                          f"{clip(fixed[0])}. To train on other data, use `latentbeam train "
                          f"--config FILE`.")
    workdir = os.path.abspath(workdir)
    raw = merge_overrides(DEMO_CONFIG, overrides)
    raw["data"] = dict(raw["data"], path=os.path.join(workdir, raw["data"]["path"]))
    from_dict(raw)  # a bad override fails here, before anything is written
    check_workdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, WORKDIR_MARKER), "w") as f:
        f.write("latentbeam demo workdir: `latentbeam demo` replaces what it holds\n")
    out = sys.stdout
    data_dir = os.path.join(workdir, "data")
    out.write("== latentbeam demo: 8x8 digits (scikit-learn), autoencoder 64 -> 2 -> 64 ==\n")
    paths = write_digits_parquet(data_dir, files=DIGITS_FILES, images=True)
    tfds_dir = write_digits_tfds(os.path.join(workdir, "tensorflow_datasets"))
    out.write(f"[1/4] data: 1797 digits as {len(paths)} Parquet files in {data_dir}/\n"
              f"      and as TFDS {DIGITS_TFDS_NAME} (train 1500 / test 297) in {tfds_dir}/\n")
    config_path = os.path.join(workdir, "demo.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    bundle_dir = os.path.join(workdir, "bundle")
    # A live bar over the epochs on a terminal; nothing per epoch otherwise.
    verbose = 1 if ProgressLine().tty else 0
    out.write(f"[2/4] train: {config_path} -> {bundle_dir}/\n")
    out.flush()
    t0 = time.time()
    bundle = train(from_dict(raw, [f"train.verbose={verbose}"]), bundle_dir)
    out.write("\n".join("      " + line for line in summarize_bundle(bundle.info).splitlines()[1:]))
    out.write(f"\n      ({time.time() - t0:.1f} s)\n")
    scored = os.path.join(workdir, "scored")
    out.write(f"[3/4] score: Beam batch job (latentbeam score) -> {scored}/\n")
    out.flush()
    score_digits_with_beam(bundle_dir, os.path.join(data_dir, "*.parquet"), scored, top=top)
    index = report_digits(bundle_dir, scored, os.path.join(workdir, "report"))
    out.write(f"\nnext: latentbeam score --bundle {bundle_dir} --input 'DATA/*.parquet' "
              f"--output OUT --key-columns id --top-features 3\n"
              f"      latentbeam report --bundle {bundle_dir} --scored OUT --output REPORT\n")
    out.write(f"\nopen the report: file://{os.path.abspath(index)}\n")
    return 0


def report_digits(bundle_dir: str, scored_dir: str, out: str) -> str:
    """Writes the HTML report of the demo run (`latentbeam report`); prints where to open it."""
    from latentbeam.report import build_report

    t0 = time.time()
    sys.stdout.write(f"[4/4] report: latentbeam report -> {out}/\n")
    sys.stdout.flush()
    result = build_report(bundle_dir, out, scored=scored_dir)
    sys.stdout.write("      the 2-number code of every digit grouped by class, anomalies marked;\n"
                     "      originals beside reconstructions; generated digits; the latent plane "
                     f"decoded ({time.time() - t0:.1f} s)\n")
    return result.index


def score_digits_with_beam(bundle_dir: str, pattern: str, out: str, top: int = 10) -> None:
    """Runs the `latentbeam score` job over the digits and prints the most anomalous rows."""
    from latentbeam.console import ProgressLine
    from latentbeam.pipeline.batch import run_file_job
    from latentbeam.pipeline.jobs import FileJob
    from latentbeam.pipeline.records import ScoringOptions
    from latentbeam.summaries import format_summary

    t0 = time.time()
    line = ProgressLine()
    summary = run_file_job(FileJob(bundle_dir, pattern, out, overwrite=True,
                                   opts=ScoringOptions(key_columns=("id", "label", "image"),
                                                       per_feature_errors=True,
                                                       top_features=3)),
                           progress=line if line.tty else None)
    text = format_summary(summary)
    sys.stdout.write("\n".join("      " + line for line in text.splitlines()
                                if not line.startswith("  /")))  # not one line per file
    sys.stdout.write(f"\n      ({time.time() - t0:.1f} s)\n")
    table = pq.read_table(summary.files, columns=["id", "label", "anomaly_score", "top_features"])
    rows = table.sort_by([("anomaly_score", "descending"), ("id", "ascending")]).slice(0, top)
    sys.stdout.write(f"\nmost anomalous {top} digits (anomaly_score > 1 is flagged):\n"
                     f"{'id':>6} {'label':>5} {'anomaly_score':>14}  top_features "
                     f"(share of the error)\n")
    for r in rows.to_pylist():
        why = ", ".join(f"{t['name']} {t['share']:.0%}" for t in r["top_features"])
        sys.stdout.write(f"{r['id']:>6} {r['label']:>5} {r['anomaly_score']:>14.3f}  {why}\n")
