"""`latentbeam score` / `decode` jobs on the in-process runner: output, faults, commit."""
from __future__ import annotations

import filecmp
import json
import os
import shutil

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentbeam.cli import main
from latentbeam.demo import digits_table, pixel_columns
from latentbeam.model import decode, score
from latentbeam.errors import BundleError
from latentbeam.pipeline.batch import FileJob, run_file_job
from latentbeam.pipeline.records import ScoringOptions

KEYS = ScoringOptions(key_columns=("id", "label"))


def write_faulty_dir(d: str, digits_dir: str) -> str:
    """Inputs sorted as: the 2 digits files, a corrupt file, a file with bad rows, a 0-byte file.

    `d-02-bad-rows.parquet` holds the first 10 digits with pixel_05 of row 2 null,
    pixel_07 of row 5 NaN and pixel_09 of row 7 +inf.
    """
    for i, name in enumerate(sorted(os.listdir(digits_dir))):
        shutil.copy(os.path.join(digits_dir, name), os.path.join(d, f"d-0{i}-{name}"))
    with open(os.path.join(d, "d-02-corrupt.parquet"), "wb") as f:
        f.write(b"PAR1 this is not parquet at all" * 10)
    t = digits_table().slice(0, 10)
    cols = {n: t.column(n).to_pylist() for n in t.schema.names}
    cols["pixel_05"][2] = None
    cols["pixel_07"][5] = float("nan")
    cols["pixel_09"][7] = float("inf")
    pq.write_table(pa.table(cols, schema=t.schema), os.path.join(d, "d-03-bad-rows.parquet"))
    open(os.path.join(d, "d-04-empty.parquet"), "wb").close()
    return d


@pytest.fixture(scope="module")
def faulty_dir(tmp_path_factory, digits_dir) -> str:
    return write_faulty_dir(str(tmp_path_factory.mktemp("faulty")), digits_dir)


def _matrix(table):
    return np.stack([table.column(c).to_numpy() for c in pixel_columns()], axis=1)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_bundle_dir, digits_glob):
    out = str(tmp_path_factory.mktemp("scored") / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, digits_glob, out, opts=ScoringOptions(
        key_columns=("id", "label"), per_feature_errors=True, reconstruction=True,
        latent_distance=True)))
    return out, summary


def test_output_schema_numbers_metadata_and_success_file(scored, tiny_bundle):
    out, summary = scored
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]
    table = pq.read_table([os.path.join(out, f"part-0000{i}.parquet") for i in range(2)])
    f = {fl.name: fl.type for fl in table.schema}
    assert list(f) == ["id", "label", "latent", "reconstruction_error", "anomaly_score",
                       "is_anomaly", "model_version", "feature_errors", "reconstruction",
                       "latent_distance"]
    assert (f["id"], f["latent"], f["reconstruction_error"], f["is_anomaly"]) == (
        pa.int64(), pa.list_(pa.float32()), pa.float32(), pa.bool_())
    digits = digits_table()
    assert table.column("id").to_pylist() == list(range(1797))  # file order kept
    assert table.column("label").to_pylist() == digits.column("label").to_pylist()
    expected = score(tiny_bundle, _matrix(digits))
    np.testing.assert_allclose(table.column("reconstruction_error").to_numpy(),
                               expected.reconstruction_error, rtol=1e-6)
    assert table.column("is_anomaly").to_pylist() == expected.is_anomaly.tolist()
    # Both terms of the score, as the core computes them.
    np.testing.assert_allclose(table.column("latent_distance").to_numpy(),
                               expected.latent_distance, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table.column("anomaly_score").to_numpy(),
                               expected.anomaly_score, rtol=1e-5)
    assert expected.latent_distance.max() > 0
    assert len(table.column("latent")[0]) == tiny_bundle.info.latent_dim
    meta = pq.read_metadata(os.path.join(out, "part-00000.parquet")).metadata
    assert meta[b"latentbeam.model_version"] == tiny_bundle.info.model_version.encode()
    assert float(meta[b"latentbeam.threshold"]) == tiny_bundle.info.threshold.threshold

    done = json.load(open(os.path.join(out, "_SUCCESS")))
    n_anom = int(expected.is_anomaly.sum())
    assert (done["rows_read"], done["rows_scored"], done["rows_dead_lettered"],
            done["files_dead_lettered"], done["anomalies"]) == (1797, 1797, 0, 0, n_anom)
    assert done["files"] == ["part-00000.parquet", "part-00001.parquet"]
    assert done["model_version"] == tiny_bundle.info.model_version
    m = summary.metrics
    assert (m["rows_read"], m["rows_scored"], m["rows_dead_lettered"], m["anomalies"]) == (
        1797, 1797, 0, n_anom)
    assert m["reconstruction_error_micros"].count == 1797
    assert m["reconstruction_error_micros"].max == pytest.approx(
        float(expected.reconstruction_error.max()), rel=1e-5)


def test_pyarrow_pandas_and_duckdb_read_the_same_rows(scored):
    out, _ = scored
    glob = os.path.join(out, "*.parquet")
    cols = ["id", "label", "reconstruction_error", "anomaly_score", "is_anomaly"]
    a = pq.read_table(out, columns=cols).to_pandas()  # a directory: _SUCCESS is skipped
    b = pd.read_parquet(out, columns=cols)
    c = duckdb.sql(f"SELECT {', '.join(cols)} FROM read_parquet('{glob}') ORDER BY id").df()
    latent = duckdb.sql(f"SELECT latent FROM read_parquet('{glob}') ORDER BY id").fetchall()
    for frame in (a, b, c):
        frame.sort_values("id", inplace=True, ignore_index=True)
    assert len(a) == len(b) == len(c) == 1797
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    pd.testing.assert_frame_equal(a, c, check_dtype=False)
    assert latent[0][0] == pytest.approx(pq.read_table(out).sort_by("id").column("latent")[0]
                                         .as_py())


def test_rerun_is_byte_identical_and_output_is_never_mixed(tmp_path, scored, tiny_bundle_dir,
                                                           digits_glob):
    first, _ = scored
    again = str(tmp_path / "again")
    run_file_job(FileJob(tiny_bundle_dir, digits_glob, again, opts=ScoringOptions(
        key_columns=("id", "label"), per_feature_errors=True, reconstruction=True,
        latent_distance=True)))
    for name in ("part-00000.parquet", "part-00001.parquet", "_SUCCESS"):
        assert filecmp.cmp(os.path.join(first, name), os.path.join(again, name), shallow=False)

    with pytest.raises(ValueError, match=r"is not empty \(3 entries.*Pass --overwrite"):
        run_file_job(FileJob(tiny_bundle_dir, digits_glob, again))
    # Files no latentbeam run listed are never deleted: the overwrite is refused, naming them.
    with open(os.path.join(again, "part-00007.parquet"), "wb") as f:
        f.write(b"a file someone put here")
    os.makedirs(os.path.join(again, "_dead_letter"))
    open(os.path.join(again, "_dead_letter", "part-00003.pq"), "wb").close()
    with pytest.raises(ValueError) as e:
        run_file_job(FileJob(tiny_bundle_dir, digits_glob, again, opts=KEYS, overwrite=True))
    assert "holds 2 entries that no latentbeam run listed as its output: " \
           "_dead_letter/part-00003.pq, part-00007.parquet." in str(e.value)
    assert open(os.path.join(again, "part-00007.parquet"), "rb").read() == b"a file someone put here"
    os.remove(os.path.join(again, "part-00007.parquet"))
    os.remove(os.path.join(again, "_dead_letter", "part-00003.pq"))
    summary = run_file_job(FileJob(tiny_bundle_dir, digits_glob, again, opts=KEYS,
                                   overwrite=True))
    assert sorted(os.listdir(again)) == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(again).schema.names[-1] == "model_version"
    assert summary.rows_scored == 1797


def test_corrupt_empty_and_bad_rows(tmp_path, faulty_dir, tiny_bundle_dir, tiny_bundle):
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, os.path.join(faulty_dir, "*.parquet"), out,
                                   opts=KEYS))
    assert sorted(os.listdir(out)) == ["_SUCCESS", "_dead_letter", "part-00000.parquet",
                                       "part-00001.parquet", "part-00003.parquet"]
    assert sorted(os.listdir(os.path.join(out, "_dead_letter"))) == [
        "part-00002.pq", "part-00003.pq", "part-00004.pq"]
    dead = pq.read_table(os.path.join(out, "_dead_letter")).to_pylist()
    by_source = {}
    for d in dead:
        by_source.setdefault(os.path.basename(d["source"]), []).append(d)
    corrupt, = by_source["d-02-corrupt.parquet"]
    empty, = by_source["d-04-empty.parquet"]
    for whole in (corrupt, empty):
        assert (whole["row"], whole["reason"], whole["payload"]) == (None, "unreadable_file", None)
        assert "UnreadableFile" in whole["detail"]
    rows = sorted(by_source["d-03-bad-rows.parquet"], key=lambda d: d["row"])
    assert [(d["row"], d["reason"]) for d in rows] == [
        (2, "null_value"), (5, "not_finite"), (7, "not_finite")]
    assert [json.loads(d["payload"])["id"] for d in rows] == [2, 5, 7]
    assert "pixel_05" in rows[0]["detail"]

    bad_rows = pq.read_table(os.path.join(out, "part-00003.parquet"))
    assert bad_rows.column("id").to_pylist() == [0, 1, 3, 4, 6, 8, 9]
    expected = score(tiny_bundle, _matrix(digits_table().take([0, 1, 3, 4, 6, 8, 9])))
    np.testing.assert_allclose(bad_rows.column("anomaly_score").to_numpy(),
                               expected.anomaly_score, rtol=1e-6)

    # Whole-file faults read 0 rows: read = scored + dead-lettered holds exactly.
    assert (summary.rows_read, summary.rows_scored, summary.rows_dead_lettered,
            summary.files_dead_lettered) == (1807, 1804, 3, 2)
    m = summary.metrics
    assert (m["rows_read"], m["rows_scored"], m["rows_dead_lettered"],
            m["files_dead_lettered"]) == (1807, 1804, 3, 2)
    assert m["rows_read"] == m["rows_scored"] + m["rows_dead_lettered"]
    done = json.load(open(os.path.join(out, "_SUCCESS")))
    assert done["dead_letter_files"] == [f"_dead_letter/part-0000{i}.pq" for i in (2, 3, 4)]


def test_missing_key_column_dead_letters_the_file(tmp_path, tiny_bundle_dir, digits_glob):
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, digits_glob, out,
                                   opts=ScoringOptions(key_columns=("customer",))))
    assert (summary.rows_read, summary.files_dead_lettered, summary.files) == (0, 2, [])
    dead = pq.read_table(os.path.join(out, "_dead_letter")).to_pylist()
    assert [d["reason"] for d in dead] == ["missing_column"] * 2
    assert "'customer'" in dead[0]["detail"]


def test_failed_job_leaves_no_output(tmp_path, tiny_bundle_dir, digits_glob):
    broken = str(tmp_path / "broken")
    shutil.copytree(tiny_bundle_dir, broken)
    with open(os.path.join(broken, "model.keras"), "ab") as f:
        f.write(b"tampered")  # sha256 no longer matches bundle.json
    out = str(tmp_path / "out")
    # Refused before the job starts (workers would refuse to load it): no output directory.
    with pytest.raises(BundleError, match="does not match bundle.json"):
        run_file_job(FileJob(broken, digits_glob, out))
    assert not os.path.exists(out)


def test_tfds_split_input(tmp_path_factory, tmp_path):
    from latentbeam.config import from_dict
    from latentbeam.demo import write_digits_tfds
    from latentbeam.model import load_bundle, train

    data_dir = write_digits_tfds(str(tmp_path_factory.mktemp("tfds")))
    bundle_dir = str(tmp_path / "tfds-bundle")
    train(from_dict({"data": {"source": "tfds", "name": "latentbeam_digits", "split": "train",
                              "data_dir": data_dir, "label": "label"}},
                    ["model.latent_dim=2", "model.hidden_units=[16]", "train.epochs=2",
                     "train.verbose=0"]), bundle_dir)
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(bundle_dir, "tfds:latentbeam_digits/test", out,
                                   data_dir=data_dir,
                                   opts=ScoringOptions(key_columns=("label",))))
    assert (summary.rows_read, summary.rows_scored, summary.files_read) == (297, 297, 1)
    table = pq.read_table(os.path.join(out, "part-00000.parquet"))
    from sklearn.datasets import load_digits
    d = load_digits()
    assert table.column("label").to_pylist() == d.target[1500:].tolist()
    expected = score(load_bundle(bundle_dir), d.images[1500:].reshape(-1, 64).astype(np.float32))
    np.testing.assert_allclose(table.column("reconstruction_error").to_numpy(),
                               expected.reconstruction_error, rtol=1e-6)
    with pytest.raises(ValueError, match="no split 'validation'"):
        run_file_job(FileJob(bundle_dir, "tfds:latentbeam_digits/validation", str(tmp_path / "x"),
                             data_dir=data_dir))


def test_decode_job_reconstructs_features(tmp_path, scored, tiny_bundle_dir, tiny_bundle):
    src, _ = scored
    out = str(tmp_path / "decoded")
    summary = run_file_job(FileJob(tiny_bundle_dir, os.path.join(src, "part-*.parquet"), out,
                                   mode="decode", opts=ScoringOptions(key_columns=("id",))))
    assert (summary.rows_read, summary.rows_scored, summary.rows_dead_lettered) == (1797, 1797, 0)
    table = pq.read_table(out).sort_by("id")
    assert table.schema.names == ["id"] + pixel_columns() + ["model_version"]
    latent = np.array(pq.read_table(src).sort_by("id").column("latent").to_pylist(), np.float32)
    want = decode(tiny_bundle, latent)
    np.testing.assert_allclose(_matrix(table), want, rtol=1e-5, atol=1e-5)


def test_cli_score_prints_the_summary_and_refuses_a_full_directory(tmp_path, capsys,
                                                                    tiny_bundle_dir, digits_glob):
    out = str(tmp_path / "cli")
    args = ["score", "--bundle", tiny_bundle_dir, "--input", digits_glob, "--output", out,
            "--key-columns", "id", "--direct_running_mode=in_memory"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "rows read:            1797" in printed
    assert "rows dead-lettered:   0" in printed
    assert "output files:         2 in" in printed and "part-00001.parquet" in printed
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_cli_score_with_a_damaged_model_file_fails_in_one_line_before_the_job(
        tmp_path, capfd, tiny_bundle_dir, digits_glob, damage):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    model = bundle / "model.keras"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:1000])
    else:
        model.unlink()
    out = tmp_path / "out"
    for command in (["score", "--input", digits_glob], ["stream", "--watch", str(tmp_path / "w")]):
        (tmp_path / "w").mkdir(exist_ok=True)
        assert main([command[0], "--bundle", str(bundle), *command[1:], "--output", str(out)]) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        expected = ("does not match bundle.json: sha256" if damage == "truncate"
                    else f"Bundle {bundle} has no model.keras")
        assert expected in err
        assert not out.exists()


def test_cli_decode_and_input_inside_output_is_refused(tmp_path, capsys, scored,
                                                       tiny_bundle_dir):
    src, _ = scored
    out = str(tmp_path / "decoded")
    assert main(["decode", "--bundle", tiny_bundle_dir, "--input",
                 os.path.join(src, "part-*.parquet"), "--output", out, "--key-columns", "id"]) == 0
    assert "rows decoded:         1797" in capsys.readouterr().out
    assert pq.read_table(out).num_rows == 1797
    with pytest.raises(ValueError, match="inside the output directory"):
        run_file_job(FileJob(tiny_bundle_dir, os.path.join(src, "part-*.parquet"), src,
                             overwrite=True))


def test_a_directory_input_means_its_parquet_files(tmp_path, tiny_bundle_dir, digits_dir):
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, digits_dir, out, opts=KEYS))
    assert (summary.files_read, summary.rows_read, summary.rows_scored,
            summary.files_dead_lettered) == (2, 1797, 1797, 0)


def test_a_hive_partitioned_directory_is_read_at_every_depth_without_hidden_files(
        tmp_path, tiny_bundle_dir, tiny_bundle):
    """A directory means every *.parquet below it, as pyarrow.dataset and Spark read one;
    `_`/`.` names (a writer's `_temporary/`, `_SUCCESS`, `.inprogress`) are not data."""
    lake = tmp_path / "lake"
    digits = digits_table()
    parts = {"day=2024-01-01/part-0.parquet": (0, 40), "day=2024-01-02/part-0.parquet": (40, 30),
             "day=2024-01-02/hour=03/part-1.parquet": (70, 20), "top.parquet": (90, 10)}
    hidden = ["_temporary/0/part-9.parquet", "day=2024-01-01/.part-1.parquet",
              ".staging/part-2.parquet", "_SUCCESS"]
    for name, (start, n) in parts.items():
        os.makedirs(os.path.dirname(lake / name), exist_ok=True)
        pq.write_table(digits.slice(start, n), lake / name)
    for name in hidden:
        os.makedirs(os.path.dirname(lake / name), exist_ok=True)
        pq.write_table(digits.slice(500, 7), lake / name)
    for spelling in (str(lake), str(lake) + "/"):
        out = str(tmp_path / f"out{len(spelling)}")
        summary = run_file_job(FileJob(tiny_bundle_dir, spelling, out, opts=KEYS))
        assert (summary.files_read, summary.rows_read, summary.files_dead_lettered) == (4, 100, 0)
        table = pq.read_table(out)
        # Files in sorted path order: day=2024-01-01, day=2024-01-02/hour=03, day=..02, top.
        assert table.column("id").to_pylist() == [*range(40), *range(70, 90), *range(40, 70),
                                                  *range(90, 100)]
        expected = score(tiny_bundle, _matrix(digits.take(table.column("id"))))
        np.testing.assert_allclose(table.column("anomaly_score").to_numpy(),
                                   expected.anomaly_score, rtol=1e-6)
    # An explicit glob is taken as written below its fixed part, hidden names skipped.
    summary = run_file_job(FileJob(tiny_bundle_dir, str(lake / "day=*" / "*.parquet"),
                                   str(tmp_path / "glob"), opts=KEYS))
    assert (summary.files_read, summary.rows_read) == (2, 70)
    # An output inside the lake, at any depth, is refused before anything runs.
    with pytest.raises(ValueError, match="inside"):
        run_file_job(FileJob(tiny_bundle_dir, str(lake), str(lake / "day=2024-01-02" / "out")))


def test_key_columns_named_twice_or_like_an_output_column_are_refused_up_front(
        tmp_path, tiny_bundle_dir, digits_glob, capsys):
    """A label passed through as `is_anomaly` would sit beside the flag in one file (the
    job died with an internal error on the first batch): refused before anything runs."""
    from latentbeam.cli import main
    from latentbeam.errors import ConfigError
    from latentbeam.pipeline.transforms import Decode, Encode, Score

    out = tmp_path / "out"
    base = ["--bundle", tiny_bundle_dir, "--input", digits_glob, "--output", str(out)]
    assert main(["score", *base, "--key-columns", "id,is_anomaly"]) == 2
    assert ("Key column 'is_anomaly' has the name of a column the output holds (latent, "
            "reconstruction_error, anomaly_score, is_anomaly, model_version)"
            in capsys.readouterr().err)
    assert main(["score", *base, "--key-columns", "id,coverage", "--missing", "mask"]) == 2
    assert "Key column 'coverage'" in capsys.readouterr().err
    assert main(["score", *base, "--key-columns", "id, id"]) == 2
    assert "--key-columns names 'id' twice" in capsys.readouterr().err
    # decode writes the features back under their names
    assert main(["decode", *base, "--key-columns", "id,pixel_03"]) == 2
    assert "Key column 'pixel_03'" in capsys.readouterr().err
    assert main(["stream", "--bundle", tiny_bundle_dir, "--watch", digits_glob, "--output",
                 str(out), "--key-columns", "id,is_anomaly_adaptive", "--adaptive-threshold",
                 "--stop-after-seconds", "1"]) == 2
    assert "Key column 'is_anomaly_adaptive'" in capsys.readouterr().err
    assert not out.exists()
    # The same columns are fine where the output does not hold them.
    assert main(["score", *base, "--key-columns", "id,pixel_03"]) == 0
    for transform, key in ((Score, "anomaly_score"), (Encode, "latent"), (Decode, "pixel_00")):
        with pytest.raises(ConfigError, match=f"Key column '{key}'"):
            transform(tiny_bundle_dir, key_columns=["id", key])


def _tree(root: str) -> dict:
    """Every file under root with its bytes."""
    found = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            found[os.path.relpath(p, root)] = open(p, "rb").read()
    return found


def test_max_dead_letter_fraction_refuses_the_commit_and_says_why(tmp_path, faulty_dir,
                                                                  tiny_bundle_dir, digits_glob):
    """5 files: 2 cannot be read at all (2/5 = 0.4 of the files), 3 of 1807 rows are bad."""
    from latentbeam.errors import InputError

    out = str(tmp_path / "out")
    run_file_job(FileJob(tiny_bundle_dir, digits_glob, out, opts=KEYS))  # an earlier run
    before = _tree(out)
    faulty = os.path.join(faulty_dir, "*.parquet")
    with pytest.raises(InputError) as refused:
        run_file_job(FileJob(tiny_bundle_dir, faulty, out, opts=KEYS, overwrite=True,
                             max_dead_letter_fraction=0.39))
    message = str(refused.value)
    assert "3 of 1807 rows and 2 of 5 input files were dead-lettered" in message
    assert "--max-dead-letter-fraction 0.39" in message
    assert f"unreadable_file x2 (first: {os.path.join(faulty_dir, 'd-02-corrupt.parquet')}: " \
           "UnreadableFile" in message
    bad_rows = os.path.join(faulty_dir, "d-03-bad-rows.parquet")
    assert f"not_finite x2 (first: {bad_rows} row 5: " in message
    assert f"null_value x1 (first: {bad_rows} row 2: " in message and "pixel_05" in message
    assert _tree(out) == before  # the earlier output, byte for byte; no staging left

    # At the limit (2/5 files) the job commits as without it.
    summary = run_file_job(FileJob(tiny_bundle_dir, faulty, out, opts=KEYS, overwrite=True,
                                   max_dead_letter_fraction=0.4))
    assert (summary.rows_scored, summary.rows_dead_lettered, summary.files_dead_lettered) == (
        1804, 3, 2)
    assert len(os.listdir(os.path.join(out, "_dead_letter"))) == 3


def test_the_row_limit_holds_on_its_own_and_zero_allows_no_dead_letter(tmp_path, faulty_dir,
                                                                         tiny_bundle_dir,
                                                                         digits_glob):
    from latentbeam.errors import InputError

    bad_rows = os.path.join(faulty_dir, "d-03-bad-rows.parquet")  # 3 of its 10 rows are bad
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match="3 of 10 rows and 0 of 1 input files"):
        run_file_job(FileJob(tiny_bundle_dir, bad_rows, out, max_dead_letter_fraction=0.29))
    assert os.listdir(out) == []
    summary = run_file_job(FileJob(tiny_bundle_dir, bad_rows, out, max_dead_letter_fraction=0.3))
    assert (summary.rows_read, summary.rows_scored, summary.rows_dead_lettered) == (10, 7, 3)
    clean = run_file_job(FileJob(tiny_bundle_dir, digits_glob, str(tmp_path / "clean"),
                                 max_dead_letter_fraction=0.0))
    assert (clean.rows_scored, clean.rows_dead_lettered) == (1797, 0)


def test_cli_max_dead_letter_fraction(tmp_path, capsys, faulty_dir, scored, tiny_bundle_dir):
    from latentbeam.errors import ConfigError

    bad_rows = os.path.join(faulty_dir, "d-03-bad-rows.parquet")
    out = str(tmp_path / "cli")
    base = ["score", "--bundle", tiny_bundle_dir, "--input", bad_rows, "--output", out]
    assert main(base + ["--max-dead-letter-fraction", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "latentbeam score: error: 3 of 10 rows and 0 of 1 input files were dead-lettered" in err
    assert "nothing was written to" in err and not os.path.exists(os.path.join(out, "_SUCCESS"))
    for bad in ("1.5", "-0.1", "nan"):  # the job's own check, one line, exit 2
        assert main(base + ["--max-dead-letter-fraction", bad]) == 2
        assert "--max-dead-letter-fraction must be a number in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # not a number: argparse's usage error
        main(base + ["--max-dead-letter-fraction", "half"])
    assert usage.value.code == 2 and "invalid float value: 'half'" in capsys.readouterr().err
    assert not os.path.exists(out) or os.listdir(out) == []
    for bad in (1.5, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ConfigError, match=r"--max-dead-letter-fraction must be a number"):
            FileJob(tiny_bundle_dir, bad_rows, out, max_dead_letter_fraction=bad)
    # decode takes the flag too: the scored rows all decode.
    src, _ = scored
    assert main(["decode", "--bundle", tiny_bundle_dir, "--input",
                 os.path.join(src, "part-*.parquet"), "--output", str(tmp_path / "dec"),
                 "--max-dead-letter-fraction", "0"]) == 0
    assert "rows decoded:         1797" in capsys.readouterr().out


def test_hive_partition_values_are_key_columns_the_files_lack(tmp_path, tiny_bundle_dir):
    lake = tmp_path / "lake"
    digits = digits_table()
    files = {"day=2024-01-01/region=eu/a.parquet": digits.slice(0, 5),
             "day=2024%2F01/region=us/b.parquet": digits.slice(5, 5),  # Hive escapes '/'
             "day=__HIVE_DEFAULT_PARTITION__/region=eu/c.parquet": digits.slice(10, 5),
             # A column of the file is its own: the path is not consulted for it.
             "day=2024-01-04/region=eu/d.parquet": digits.slice(15, 5).append_column(
                 "region", pa.array(["file"] * 5)),
             "e.parquet": digits.slice(20, 5)}  # no partitions: `day` is missing
    for name, table in files.items():
        os.makedirs(os.path.dirname(lake / name), exist_ok=True)
        pq.write_table(table, lake / name)
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, str(lake), out, opts=ScoringOptions(
        key_columns=("id", "day", "region"))))
    assert (summary.rows_scored, summary.files_dead_lettered) == (20, 1)
    table = pq.read_table(out)
    assert table.schema.field("day").type == pa.string()
    rows = sorted(zip(table.column("id").to_pylist(), table.column("day").to_pylist(),
                      table.column("region").to_pylist()))
    assert rows[::5] == [(0, "2024-01-01", "eu"), (5, "2024/01", "us"), (10, None, "eu"),
                         (15, "2024-01-04", "file")]
    dead, = pq.read_table(os.path.join(out, "_dead_letter")).to_pylist()
    assert (os.path.basename(dead["source"]), dead["reason"]) == ("e.parquet", "missing_column")
    assert "'day'" in dead["detail"]
