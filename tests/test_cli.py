"""The `latentbeam` command line: train and generate end to end, one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentbeam.cli import main
from latentbeam.model import decode, sample_latent

CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "latentbeam")


def run(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)


def test_train_writes_a_bundle(tmp_path, digits_glob):
    config = tmp_path / "train.yaml"
    config.write_text(f"data:\n  path: {digits_glob}\n  label: label\n  key_columns: [id]\n"
                      "model:\n  latent_dim: 4\n")
    out = str(tmp_path / "bundle")
    result = run(sys.executable, "-m", "latentbeam", "train", "--config", str(config),
                 "--set", "model.latent_dim=3", "--set", "model.hidden_units=[16]",
                 "--set", "train.epochs=2", "--set", "train.verbose=0", "--output", out)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(out, "bundle.json")) as f:
        doc = json.load(f)
    assert doc["latent_dim"] == 3
    assert doc["training"]["epochs"] == 2
    assert doc["training"]["config"]["model"]["hidden_units"] == [16]
    assert len(doc["features"]) == 64
    assert os.path.exists(os.path.join(out, "model.keras"))
    assert f"bundle:          {out}" in result.stdout
    assert "features:        64 (64 inputs) -> latent_dim 3" in result.stdout
    assert f"model_version:   {doc['model_version']}" in result.stdout
    # What `auto` found in the 64 integer pixel columns, as `latentbeam info` says it.
    assert doc["training"]["one_unit_range"] == [0.0, 16.0]
    assert ("normalization:   auto; one scale for all 64 inputs (integer values within 0 "
            f"to 16); 64 of 64 inputs by median and quartiles; 3 constant\n") in result.stdout


def test_train_warns_once_about_an_input_that_one_extreme_value_stretches(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    x[7, 2] = 3e38  # a glitch near float32's limit stretches the std of `c` to ~1.5e37
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}),
                   str(tmp_path / "data" / "d.parquet"))
    config = tmp_path / "train.yaml"
    config.write_text(f"data:\n  path: {tmp_path / 'data' / '*.parquet'}\n")
    out = str(tmp_path / "bundle")
    result = run(CONSOLE_SCRIPT, "train", "--config", str(config), "--set", "train.epochs=2",
                 "--set", "train.verbose=0", "--output", out)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "extreme values" in line]
    # Exactly once: no second copy from a handler a library's import-time log added.
    assert len(warned) == 1, result.stderr
    assert "WARNING latentbeam.model.training: Input c of parquet:" in warned[0]
    assert "(e.g. 3e+38)" in warned[0] and "fix or filter those rows" in warned[0]
    assert "RuntimeWarning" not in result.stderr
    with open(os.path.join(out, "bundle.json")) as f:
        assert json.load(f)["training"]["stretched_inputs"] == ["c"]
    from latentbeam.report.info import bundle_summary, format_info
    assert ("normalization:   auto; every input scaled alone; 2 of 3 inputs by median and "
            "quartiles; stretched by extreme values: c\n") in format_info(bundle_summary(out))
    from latentbeam.model import load_bundle, score
    s = score(load_bundle(out), x.astype(np.float32))
    assert np.isfinite(s.score).all()


@pytest.mark.parametrize("config_text, extra, message", [
    ("data:\n  path: x\nmodel:\n  latent_dims: 2\n", [],
     "{config}: Unknown config key(s) in `model`: latent_dims. Valid keys: model.kind, "),
    ("data:\n  path: x\n", ["--set", "train.epochs=many"],
     "{config}: `train.epochs` expects an integer, received: 'many'"),
    ("data:\n  source: parquet\n", [], "{config}: `data.source: parquet` needs `data.path`"),
    # Refused before training, not as a Keras traceback when the model is built.
    ("data:\n  path: x\n", ["--set", "model.activation=relux"],
     "{config}: Received an invalid value for `model.activation`, expected the name of a Keras "
     "activation such as relu, elu, "),
])
def test_a_bad_config_is_one_line_and_exit_code_2(tmp_path, config_text, extra, message):
    config = tmp_path / "bad.yaml"
    config.write_text(config_text)
    result = run(CONSOLE_SCRIPT, "train", "--config", str(config), *extra,
                 "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("latentbeam train: error: " + message.format(config=config))
    assert not os.path.exists(tmp_path / "out")


def test_user_errors_in_process_return_2(tmp_path, capsys):
    missing = str(tmp_path / "missing.yaml")
    assert main(["train", "--config", missing, "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"latentbeam train: error: Config file {missing} does not exist. Pass --config with a "
        f"YAML file such as configs/tabular_parquet.yaml.")
    assert main(["generate", "--bundle", str(tmp_path / "none"), "--num-samples", "3",
                 "--output", str(tmp_path / "g")]) == 2
    assert "bundle.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", missing, "--output", "o", "--runner", "DirectRunner"])
    assert e.value.code == 2
    assert "unrecognized arguments: --runner DirectRunner" in capsys.readouterr().err


def test_generate_writes_num_samples_decoded_rows(tmp_path, tiny_bundle_dir, tiny_bundle, capfd):
    out = str(tmp_path / "generated")
    assert main(["generate", "--bundle", tiny_bundle_dir, "--num-samples", "25",
                 "--output", out, "--seed", "3"]) == 0
    assert sorted(os.listdir(out)) == ["_SUCCESS", "generated-00000-of-00001.parquet"]
    path = os.path.join(out, "generated-00000-of-00001.parquet")
    captured = capfd.readouterr()
    assert captured.out.strip() == f"wrote 25 samples to {path}"
    assert "generate: 25 / 25 rows (100%)" in captured.err.splitlines()  # progress on stderr
    assert main(["generate", "--bundle", tiny_bundle_dir, "--num-samples", "25", "--quiet",
                 "--output", str(tmp_path / "quiet")]) == 0
    assert "generate:" not in capfd.readouterr().err
    table = pq.read_table(path)
    assert table.num_rows == 25
    assert table.column_names == (["sample", "latent"] + [f"pixel_{i:02d}" for i in range(64)]
                                  + ["model_version"])
    assert table.schema.field("latent").type == pa.list_(pa.float32())
    assert table.schema.metadata[b"latentbeam.model_version"] == \
        tiny_bundle.info.model_version.encode()
    z = sample_latent(tiny_bundle, 25, seed=3)
    np.testing.assert_allclose(np.array(table.column("latent").to_pylist()), z, rtol=1e-6)
    x = np.stack([table.column(f"pixel_{i:02d}").to_numpy() for i in range(64)], axis=1)
    np.testing.assert_allclose(x, decode(tiny_bundle, z), rtol=1e-5, atol=1e-5)
    assert table.column("sample").to_pylist() == list(range(25))
    # The samples follow the calibration rows' latent distribution, in input units (0..16).
    assert 0 < x.mean() < 16
    # Generated a batch at a time (bounded memory): the same codes whatever the batch size,
    # decoded to the same rows up to float32 rounding.
    from latentbeam.pipeline.generate import generated_batches
    batches = list(generated_batches(tiny_bundle, 25, seed=3, batch_rows=7))
    assert [b.num_rows for b in batches] == [7, 7, 7, 4]
    small = pa.Table.from_batches(batches)
    assert small.column_names == table.column_names
    for name in ("sample", "latent", "model_version"):
        assert small.column(name).to_pylist() == table.column(name).to_pylist()
    np.testing.assert_allclose(
        np.stack([small.column(f"pixel_{i:02d}").to_numpy() for i in range(64)], axis=1), x,
        rtol=1e-5, atol=1e-5)


def test_generate_rejects_zero_samples(tmp_path, tiny_bundle_dir, capsys):
    assert main(["generate", "--bundle", tiny_bundle_dir, "--num-samples", "0",
                 "--output", str(tmp_path / "g")]) == 2
    assert "--num-samples must be >= 1. Received: 0" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_generate_refuses_a_seed_numpy_cannot_take(tmp_path, tiny_bundle_dir, capsys, seed):
    out = tmp_path / "g"
    assert main(["generate", "--bundle", tiny_bundle_dir, "--num-samples", "3",
                 "--output", str(out), "--seed", seed]) == 2
    assert capsys.readouterr().err == (f"latentbeam generate: error: --seed must be an integer "
                                       f"in [0, 2**32 - 1]. Received: {seed}\n")
    assert not out.exists()
    assert main(["generate", "--bundle", tiny_bundle_dir, "--num-samples", "3",
                 "--output", str(out), "--seed", str(2 ** 32 - 1)]) == 0


def test_demo_end_to_end_and_again_in_the_same_workdir(tmp_path, capfd):
    from latentbeam.cli import main

    # A second run replaces the TFDS copy, the bundle and the scores; it trains 3 epochs
    # (--set), which its demo.yaml records.
    for extra in ([], ["--set", "train.epochs=3"]):
        assert main(["demo", "--workdir", str(tmp_path), *extra]) == 0
        captured = capfd.readouterr()
        out = captured.out
        assert "latent_dim 2" in out
        assert "rows scored:          1797" in out
        assert "most anomalous 5 digits" in out
        # One screen: what each phase did and where its output is; no per-epoch lines,
        # TFDS progress or INFO lines from Beam, absl or TensorFlow.
        lines = out.splitlines()
        assert len(lines) <= 40
        assert [line.split(":")[0] for line in lines if line.startswith("[")] == [
            "[1/4] data", "[2/4] train", "[3/4] score", "[4/4] report"]
        assert f"2 Parquet files in {tmp_path}/data/" in out
        assert f"in {tmp_path}/tensorflow_datasets/" in out
        assert f"[2/4] train: {tmp_path}/demo.yaml -> {tmp_path}/bundle/" in out
        assert f"[3/4] score: Beam batch job (latentbeam score) -> {tmp_path}/scored/" in out
        assert f"[4/4] report: latentbeam report -> {tmp_path}/report/" in out
        # It ends with the page to open.
        assert lines[-1] == f"open the report: file://{tmp_path}/report/index.html"
        assert captured.err == ""
    import pyarrow.parquet as pq
    import yaml
    written = yaml.safe_load((tmp_path / "demo.yaml").read_text())
    assert written["train"] == {"epochs": 3, "seed": 0}
    assert written["data"]["path"] == f"{tmp_path}/data/*.parquet"
    info = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert info["training"]["epochs"] == 3
    scored = pq.read_table(str(tmp_path / "scored")).to_pandas()
    assert len(scored) == 1797 and scored["id"].is_unique
    # The demo trains on the 8x8 image column, so explanations name pixels by row and column.
    assert all(t["name"].startswith("image[") for top in scored["top_features"] for t in top)
    report = {f for f in os.listdir(tmp_path / "report")}
    assert {"index.html", "latent_calibration.png", "latent_scored.png", "anomalies_scored.png",
            "generated.png", "latent_plane.png"} <= report


def test_demo_refuses_a_data_override_and_a_bad_value_before_writing(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--set", "data.path=/elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "The demo's data is fixed" in err and "--set data.path=/elsewhere" in err
    assert main(["demo", "--workdir", str(workdir), "--set", "model.latent_dim=0"]) == 2
    assert "latent_dim" in capsys.readouterr().err
    assert not workdir.exists()


def test_demo_refuses_a_workdir_holding_what_it_did_not_write(tmp_path, capsys):
    import hashlib

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "demo.yaml").write_text("my own notes\n")
    (mine / "data" / "digits-00000-of-00002.parquet").write_text("not the demo's\n")
    before = {p: digest(p) for p in mine.rglob("*") if p.is_file()}
    assert main(["demo", "--workdir", str(mine), "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert f"--workdir {mine} holds what the demo did not write (demo.yaml)" in err
    assert "give it a new or empty directory" in err
    assert {p: digest(p) for p in mine.rglob("*") if p.is_file()} == before

    # A marked demo workdir with a file dropped into data/ (training would read it).
    from latentbeam.demo import WORKDIR_MARKER, check_workdir
    from latentbeam.errors import ConfigError
    demo = tmp_path / "demo"
    (demo / "data").mkdir(parents=True)
    (demo / WORKDIR_MARKER).write_text("")
    (demo / "data" / "extra.parquet").write_text("")
    with pytest.raises(ConfigError, match=r"holds what the demo did not write \(data/extra.parquet\)"):
        check_workdir(str(demo))
    (demo / "data" / "extra.parquet").unlink()
    (demo / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match=r"\(notes.txt\)"):
        check_workdir(str(demo))
    (demo / "notes.txt").unlink()
    check_workdir(str(demo))  # only the demo's own entries: a rerun may replace them
    # Written before the marker existed: the demo's entries and its own demo.yaml.
    old = tmp_path / "old"
    (old / "bundle").mkdir(parents=True)
    (old / "demo.yaml").write_text(f"data:\n  path: {old}/data/*.parquet\n")
    check_workdir(str(old))
    (old / "demo.yaml").write_text(f"data:\n  path: /elsewhere/*.parquet\n")
    with pytest.raises(ConfigError, match=r"\(demo.yaml\)"):
        check_workdir(str(old))
    check_workdir(str(tmp_path / "new"))  # does not exist yet
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_workdir(str(tmp_path / "file"))


def test_a_bug_shows_its_traceback_and_where_to_report_it(monkeypatch, capsys):
    from latentbeam import cli
    from latentbeam.errors import BUG_HINT

    def broken(args, beam_args):
        import numpy as np
        np.zeros(3).reshape(2, 2)  # a ValueError raised inside numpy: a bug, not user input

    monkeypatch.setitem(cli.COMMANDS, "info", broken)
    assert main(["info", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "ValueError: cannot reshape array of size 3 into shape (2,2)" in err
    assert err.strip().splitlines()[-1] == f"latentbeam info: internal error. {BUG_HINT}"


def test_user_errors_are_latentbeam_errors_or_plain_errors_of_unconverted_modules(monkeypatch,
                                                                                   capsys):
    from latentbeam import cli
    from latentbeam.errors import InputError
    from latentbeam.pipeline import options

    def user_error(args, beam_args):
        raise InputError("No files match --input 'x'.")

    def pipeline_error(args, beam_args):
        options.check_beam_flags(["--runner", "Dsk"])

    monkeypatch.setitem(cli.COMMANDS, "info", user_error)
    assert main(["info", "b"]) == 2
    assert capsys.readouterr().err == "latentbeam info: error: No files match --input 'x'.\n"
    monkeypatch.setitem(cli.COMMANDS, "info", pipeline_error)
    assert main(["info", "b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentbeam info: error: Unknown runner --runner Dsk.")
    assert len(err.strip().splitlines()) == 1
