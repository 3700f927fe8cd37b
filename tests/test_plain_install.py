"""A plain `pip install` (no extras) runs every command: the way Dataflow/Flink workers
(`--setup_file`) and users without `make` install latentbeam.

The wheel is built from this checkout and installed into a fresh virtualenv; the
commands then run on tiny data in that virtualenv's interpreter (the console script once).
The test extras (duckdb, pytest, ...) are absent there, so an accidental import of one
fails here.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, *, cwd=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout[-3000:]}\n"
                                    f"stderr:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory) -> str:
    """bin/ directory of a fresh virtualenv holding latentbeam and install_requires only."""
    root = tmp_path_factory.mktemp("plain")
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
          "-w", str(wheels), REPO])
    (wheel,) = glob.glob(str(wheels / "latentbeam-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    bin_dir = venv / "bin"
    # --no-compile: byte-compiling TensorFlow's sources is most of an install's time.
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-compile",
          "--disable-pip-version-check", wheel])
    return str(bin_dir)


def test_pip_check_passes_and_no_test_extra_is_installed(plain_venv):
    out = _run([os.path.join(plain_venv, "python"), "-m", "pip", "check"])
    assert "No broken requirements found" in out.stdout
    probe = ("import importlib.util as u; "
             "print([m for m in ('duckdb', 'pytest', 'hypothesis') if u.find_spec(m)])")
    assert _run([os.path.join(plain_venv, "python"), "-c", probe]).stdout.strip() == "[]"


def _tiny_table(start: int, n: int) -> pa.Table:
    rng = np.random.default_rng(start)
    x = rng.normal(size=(n, 3))
    return pa.table({"id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                     # an int column and a float32 column: dtype handling without pandas
                     "a": pa.array(np.round(x[:, 0] * 10).astype(np.int32)),
                     "b": pa.array(x[:, 1].astype(np.float32)),
                     "c": pa.array(x[:, 1] + 0.1 * x[:, 2])})


# Every command in one interpreter of the plain virtualenv: a plain install is about which
# packages are there, and TensorFlow + Beam take ~10 s to import per process. The console
# script itself runs once below.
DRIVER = """
import json, sys
from latentbeam.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code != 0:
        sys.exit(f"latentbeam {' '.join(argv)} exited {code}")
"""


def test_train_score_decode_generate_stream_demo_after_a_plain_install(plain_venv, tmp_path):
    # A Hive-partitioned directory: read at any depth, its `split` passed through as a key.
    data = tmp_path / "data"
    (data / "split=a").mkdir(parents=True)
    (data / "split=b").mkdir()
    pq.write_table(_tiny_table(0, 300), data / "split=a" / "part-0.parquet")
    pq.write_table(_tiny_table(300, 200), data / "split=b" / "part-1.parquet")
    config = tmp_path / "train.yaml"
    config.write_text(f"data:\n  path: {data}\n  key_columns: [id]\n")
    bundle, scored, decoded = tmp_path / "bundle", tmp_path / "scored", tmp_path / "decoded"
    generated, streamed, report = tmp_path / "generated", tmp_path / "streamed", tmp_path / "report"
    commands = [
        ["train", "--config", config, "--set", "train.epochs=2", "--set", "train.verbose=0",
         "--output", bundle],
        ["score", "--bundle", bundle, "--input", data, "--output", scored,
         "--key-columns", "id,split", "--top-features", "2", "--max-dead-letter-fraction", "0"],
        ["decode", "--bundle", bundle, "--input", scored / "*.parquet", "--output", decoded,
         "--key-columns", "id"],
        ["generate", "--bundle", bundle, "--num-samples", "7", "--output", generated],
        ["stream", "--bundle", bundle, "--watch", data, "--output", streamed,
         "--window-seconds", "1", "--poll-seconds", "0.5", "--stop-after-seconds", "3",
         "--key-columns", "id"],
        ["report", "--bundle", bundle, "--scored", scored, "--output", report],
        # The demo end to end (its data, TFDS build, Beam job, report); test_cli runs it
        # with the default training.
        ["demo", "--workdir", tmp_path / "demo", "--set", "train.epochs=2"],
    ]
    _run([os.path.join(plain_venv, "python"), "-c", DRIVER,
          json.dumps([[str(a) for a in argv] for argv in commands])], cwd=str(tmp_path))

    assert (bundle / "bundle.json").exists() and (bundle / "model.keras").exists()
    table = pq.read_table(sorted(glob.glob(str(scored / "*.parquet"))))
    assert table.num_rows == 500
    assert sorted(table.column("id").to_pylist()) == list(range(500))
    assert sorted(zip(table.column("id").to_pylist(), table.column("split").to_pylist()))[299:301] \
        == [(299, "a"), (300, "b")]
    top = table.column("top_features").to_pylist()
    assert all(len(t) == 2 for t in top)
    dec = pq.read_table(sorted(glob.glob(str(decoded / "*.parquet"))))
    assert dec.num_rows == 500
    assert {"a", "b", "c"} <= set(dec.column_names)
    gen = pq.read_table(glob.glob(str(generated / "*.parquet")))
    assert gen.num_rows == 7 and np.isfinite(gen.column("c").to_numpy()).all()
    windows = sorted(glob.glob(str(streamed / "*.parquet")))
    assert sum(pq.read_metadata(f).num_rows for f in windows) == 500
    assert (report / "index.html").exists() and len(glob.glob(str(report / "*.png"))) >= 4
    assert glob.glob(str(tmp_path / "demo" / "scored" / "*.parquet"))
    assert (tmp_path / "demo" / "report" / "index.html").exists()
    demo_config = (tmp_path / "demo" / "demo.yaml").read_text()
    assert "epochs: 2" in demo_config

    # The console script the package installs.
    info = json.loads(_run([os.path.join(plain_venv, "latentbeam"), "info", str(bundle),
                            "--json"]).stdout)
    assert info["integrity"]["ok"] is True
