"""Never destroy what latentbeam did not write: every command, every spelling of a path.

Each refusal is checked against a fingerprint of the whole workspace tree taken before
the command: not one file outside the output (and nothing inside it) may change.
"""
import json
import os
import shutil

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from latentbeam.cli import main
from latentbeam.model import load_bundle, load_bundle_info
from safety import tree_hashes


@pytest.fixture
def ws(tmp_path, monkeypatch, digits_dir, tiny_bundle_dir):
    """tmp/ws: data/ (2 Parquet files), bundle/ (the tiny bundle); cwd = ws, HOME = ws."""
    root = tmp_path / "ws"
    shutil.copytree(digits_dir, root / "data")
    shutil.copytree(tiny_bundle_dir, root / "bundle")
    os.symlink(root / "data", root / "link")
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(root))
    return root


def refused(capsys, argv, ws, *expected):
    """Runs the CLI, expects exit code 2 with `expected` in the message and an untouched tree."""
    before = tree_hashes(str(ws.parent))
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert tree_hashes(str(ws.parent)) == before
    return err


SCORE = ["score", "--bundle", "bundle", "--overwrite", "--direct_running_mode=in_memory"]


@pytest.mark.parametrize("input_, output, expected", [
    ("data/*.parquet", "{ws}/data", "is inside the output directory --output {ws}/data "),
    ("{ws}/data/*.parquet", "data", "is inside the output directory --output data "),
    ("data/*.parquet", "data/.", "is inside the output directory --output data/. "),
    ("data", "data/", "is inside the output directory --output data/ "),
    ("data/*.parquet", "link", "(resolved: {ws}/data)"),
    ("link/*.parquet", "data", "is inside the output directory --output data "),
    ("data/*.parquet", "~/data", "(resolved: {ws}/data)"),
    ("data/*.parquet", "file://{ws}/data", "(resolved: {ws}/data)"),
    ("data/*.parquet", "data/scored", "lies inside the input glob's base directory"),
    ("data/digits-00000-of-00002.parquet", "data/x", "lies inside the input directory"),
    ("data/*.parquet", ".", "is the current working directory"),
    ("data/*.parquet", "..", "contains the current working directory"),
    ("data/*.parquet", "bundle", "--output bundle (resolved: {ws}/bundle) is the bundle bundle"),
    ("data/*.parquet", "bundle/scores", "lies inside the bundle bundle"),
])
def test_score_overwrite_never_reaches_inputs_bundle_or_cwd(ws, capsys, input_, output, expected):
    ws_real = os.path.realpath(ws)
    refused(capsys, SCORE + ["--input", input_.format(ws=ws_real), "--output",
                             output.format(ws=ws_real)], ws,
            "latentbeam score: error: ", expected.format(ws=ws_real))


def test_decode_generate_stream_and_train_refuse_the_same_overlaps(ws, capsys):
    refused(capsys, ["decode", "--bundle", "bundle", "--input", "data/*.parquet", "--output",
                     "data/.", "--overwrite"], ws, "is inside the output directory")
    refused(capsys, ["generate", "--bundle", "bundle", "--num-samples", "3", "--output",
                     "bundle/.", "--overwrite"], ws, "is the bundle bundle")
    refused(capsys, ["generate", "--bundle", "bundle", "--num-samples", "3", "--output", "."],
            ws, "is the current working directory")
    # A stream must not watch its own output.
    refused(capsys, ["stream", "--bundle", "bundle", "--watch", "data/*.parquet", "--output",
                     "data/scored", "--stop-after-seconds", "1"], ws,
            "lies inside the watched glob's base directory")
    refused(capsys, ["stream", "--bundle", "bundle", "--watch", "link", "--output", "data",
                     "--stop-after-seconds", "1"], ws, "is inside the output directory --output data")
    config = ws / "train.yaml"
    config.write_text("data:\n  path: data/*.parquet\n")
    refused(capsys, ["train", "--config", str(config), "--output", "link/."], ws,
            "is inside the output directory --output link/.")
    refused(capsys, ["train", "--config", str(config), "--output", "."], ws,
            "is the current working directory")


def test_train_refuses_a_non_bundle_directory_before_training(ws, capsys):
    config = ws / "train.yaml"
    config.write_text("data:\n  path: data/*.parquet\n")
    (ws / "notes").mkdir()
    (ws / "notes" / "todo.txt").write_text("mine")
    err = refused(capsys, ["train", "--config", str(config), "--output", "notes"], ws,
                  "Bundle output notes is a non-empty directory that is not a latentbeam bundle",
                  "todo.txt")
    assert "Choose an empty or new directory." in err
    # A bundle directory with a file the bundle does not list is not replaced either.
    (ws / "bundle" / "README.txt").write_text("how we use it")
    refused(capsys, ["train", "--config", str(config), "--output", "bundle"], ws,
            "Bundle output bundle holds README.txt, which the bundle there does not list.")


def test_a_failed_train_leaves_the_previous_bundle_loadable(ws, monkeypatch, digits_glob):
    from latentbeam.model import bundle_write as bundle_mod
    from latentbeam.model import train
    from tiny import tiny_config

    old = load_bundle_info("bundle")
    before = tree_hashes(str(ws.parent))

    def disk_full():
        raise OSError(28, "No space left on device")

    # Fails while the new bundle is being written, after model.keras exists in staging.
    monkeypatch.setattr(bundle_mod, "library_versions", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        train(tiny_config(digits_glob, "train.seed=7"), "bundle")
    assert tree_hashes(str(ws.parent)) == before  # staging removed, old bundle as it was
    assert load_bundle("bundle").info.model_version == old.model_version

    monkeypatch.undo()
    monkeypatch.chdir(ws)
    new = train(tiny_config(digits_glob, "train.seed=7"), "bundle").info
    assert new.model_version != old.model_version
    assert load_bundle("bundle").info.model_version == new.model_version
    assert sorted(os.listdir(ws)) == ["bundle", "data", "link"]  # no staging sibling left
    assert sorted(os.listdir(ws / "bundle")) == ["bundle.json", "model.keras"]


def test_overwrite_replaces_only_what_a_latentbeam_run_listed(ws, capsys):
    base = ["score", "--bundle", "bundle", "--input", "data/*.parquet", "--output", "out",
            "--key-columns", "id", "--direct_running_mode=in_memory"]
    assert main(base) == 0
    capsys.readouterr()
    first = json.loads((ws / "out" / "_SUCCESS").read_text())
    assert first["writer"] == "latentbeam"
    assert first["files"] == ["part-00000.parquet", "part-00001.parquet"]
    # What a run killed with -9 leaves: staging that is ours, never complete data.
    (ws / "out" / ".tmp-0123456789ab").mkdir()
    (ws / "out" / ".tmp-0123456789ab" / "part-00000.parquet.partial").write_bytes(b"PAR1 half")
    assert main(base + ["--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(os.listdir(ws / "out")) == ["_SUCCESS", "part-00000.parquet",
                                               "part-00001.parquet"]
    # A file no run listed is foreign: the overwrite is refused and the file is kept.
    (ws / "out" / "report.csv").write_text("a,b\n")
    (ws / "out" / "sub").mkdir()
    (ws / "out" / "sub" / "x.parquet").write_bytes(b"keep")
    refused(capsys, base + ["--overwrite"], ws, "--output out holds 2 entries that no latentbeam "
            "run listed as its output: report.csv, sub/x.parquet.")


def test_generate_writes_a_success_marker_and_overwrites_only_its_own_output(ws, capsys):
    argv = ["generate", "--bundle", "bundle", "--num-samples", "4", "--output", "gen"]
    assert main(argv) == 0
    done = json.loads((ws / "gen" / "_SUCCESS").read_text())
    assert (done["job"], done["num_samples"], done["files"]) == (
        "generate", 4, ["generated-00000-of-00001.parquet"])
    refused(capsys, argv, ws, "Output directory gen is not empty", "Pass --overwrite")
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0
    assert pq.read_table(ws / "gen").num_rows == 4
    (ws / "gen" / "keep.txt").write_text("x")
    refused(capsys, argv + ["--overwrite"], ws, "keep.txt")


def test_a_commit_killed_part_way_is_recognised_by_the_next_overwrite(ws, capsys):
    from latentbeam import outputs

    out = ws / "out"
    out.mkdir()
    # _COMMITTING was written, the old _SUCCESS deleted, one new file moved in; then kill -9.
    (out / "_COMMITTING").write_text(json.dumps(
        {"writer": "latentbeam", "files": ["_SUCCESS", "part-00000.parquet",
                                           "part-00001.parquet", "_dead_letter/part-00002.pq"]}))
    pq.write_table(pa.table({"x": [1]}), out / "part-00000.parquet")
    owned = outputs.check_output_dir(str(out), overwrite=True)
    assert owned == ["_COMMITTING", "part-00000.parquet"]
    assert main(["score", "--bundle", "bundle", "--input", "data/*.parquet", "--output", "out",
                 "--overwrite", "--direct_running_mode=in_memory"]) == 0
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]


def test_readers_of_the_output_directory_see_exactly_the_scored_rows(ws, capsys, tmp_path):
    """Dead letters, staging and markers never reach pyarrow.dataset, pandas or DuckDB."""
    table = pq.read_table(ws / "data" / "digits-00000-of-00002.parquet")
    rows = table.to_pylist()[:40]
    rows[3]["pixel_10"] = None
    rows[7]["pixel_11"] = float("nan")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), inputs / "a.parquet")
    (inputs / "b.parquet").write_bytes(b"not parquet")
    assert main(["score", "--bundle", "bundle", "--input", str(inputs), "--output", "out",
                 "--key-columns", "id", "--direct_running_mode=in_memory"]) == 0
    capsys.readouterr()
    out = str(ws / "out")
    assert sorted(os.listdir(os.path.join(out, "_dead_letter"))) == ["part-00000.pq",
                                                                      "part-00001.pq"]
    # Leftovers of a killed run: staged files never end in .parquet.
    os.makedirs(os.path.join(out, ".tmp-dead0000beef", "_dead_letter"))
    for rel in (".tmp-dead0000beef/part-00003.parquet.partial", "_temp/x-1.parquet.partial"):
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        pq.write_table(table.slice(0, 5), os.path.join(out, rel))
    want = sorted(r["id"] for i, r in enumerate(rows) if i not in (3, 7))
    assert sorted(pads.dataset(out).to_table().column("id").to_pylist()) == want
    assert sorted(pq.read_table(out).column("id").to_pylist()) == want
    assert sorted(pd.read_parquet(out)["id"].tolist()) == want
    assert sorted(r[0] for r in duckdb.sql(f"SELECT id FROM read_parquet('{out}')").fetchall()) == want
    assert sorted(r[0] for r in duckdb.sql(
        f"SELECT id FROM read_parquet('{out}/**/*.parquet')").fetchall()) == want
    dead = pd.read_parquet(os.path.join(out, "_dead_letter"))
    assert sorted(zip(dead["row"].fillna(-1).astype(int), dead["reason"])) == [
        (-1, "unreadable_file"), (3, "null_value"), (7, "not_finite")]
