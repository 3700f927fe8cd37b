"""The sealed bundle: every file and every field covered; edits refused; rethreshold re-seals."""
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from latentbeam.cli import main
from latentbeam.demo import digits_table, pixel_columns
from latentbeam.model import load_bundle, load_bundle_info, score
from latentbeam.model.bundle import BUNDLE_FILE, MODEL_FILE, model_version, scoring_meta, seal_of
from latentbeam.model.bundle_write import save_bundle
from latentbeam.model.rethreshold import estimated_flagged_fraction, rethreshold


@pytest.fixture
def copy(tmp_path, tiny_bundle_dir) -> str:
    path = str(tmp_path / "b")
    shutil.copytree(tiny_bundle_dir, path)
    return path


def edit(path, change, reseal=False):
    json_path = os.path.join(path, BUNDLE_FILE)
    with open(json_path) as f:
        doc = json.load(f)
    change(doc)
    if reseal:
        doc["seal"] = seal_of(doc)
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=2)


def test_bundle_json_lists_every_file_and_seals_itself(tiny_bundle_dir):
    with open(os.path.join(tiny_bundle_dir, BUNDLE_FILE)) as f:
        doc = json.load(f)
    with open(os.path.join(tiny_bundle_dir, MODEL_FILE), "rb") as f:
        model_hash = hashlib.sha256(f.read()).hexdigest()
    # 3: the score is root_sum_squares, which a reader of format 2 cannot load.
    assert doc["format_version"] == 3 and doc["score"]["combine"] == "root_sum_squares"
    assert doc["files"] == {MODEL_FILE: model_hash}
    assert doc["sha256"] == model_hash
    assert doc["seal"] == seal_of(doc) and len(doc["seal"]) == 64
    assert set(doc["calibration"]) >= {"median", "mad", "std", "mean", "quantiles"}


def seal_message(path):
    return (f"{path}/bundle.json was changed after it was written: its seal ")


@pytest.mark.parametrize("change", [
    pytest.param(lambda d: d["threshold"].update(threshold=d["threshold"]["threshold"] * 2),
                 id="threshold"),
    pytest.param(lambda d: d["features"].reverse(), id="feature order"),
    pytest.param(lambda d: d.update(model_version="0123456789abcdef"), id="model_version"),
    pytest.param(lambda d: d["calibration"].update(rows=1), id="calibration"),
    pytest.param(lambda d: d.update(note="hello"), id="an added field"),
    pytest.param(lambda d: d["files"].pop(MODEL_FILE), id="files"),
])
def test_any_edit_of_bundle_json_is_refused_without_loading_keras(copy, change):
    edit(copy, change)
    with pytest.raises(ValueError) as e:
        load_bundle_info(copy)
    message = str(e.value)
    assert message.startswith(seal_message(copy)) or "Malformed bundle.json" in message
    if message.startswith(seal_message(copy)):
        assert f"`latentbeam rethreshold --bundle {copy} --threshold T`" in message


def test_an_untouched_copy_loads_and_scores_like_the_original(copy, tiny_bundle, digits_matrix):
    loaded = load_bundle(copy)
    assert loaded.info.model_version == tiny_bundle.info.model_version
    np.testing.assert_array_equal(score(loaded, digits_matrix[:50]).reconstruction_error,
                                  score(tiny_bundle, digits_matrix[:50]).reconstruction_error)
    # A file nothing reads does not change scores: the bundle still loads.
    with open(os.path.join(copy, "NOTES.txt"), "w") as f:
        f.write("trained on digits")
    assert load_bundle(copy).info.model_version == tiny_bundle.info.model_version


def test_an_edited_model_file_is_refused_by_name(copy):
    path = os.path.join(copy, MODEL_FILE)
    with open(path, "ab") as f:
        f.write(b"\0")
    load_bundle_info(copy)  # the JSON alone is intact
    with pytest.raises(ValueError, match=f"^{path} does not match bundle.json: sha256 "):
        load_bundle(copy)


def test_a_resealed_edit_still_cannot_carry_a_stale_model_version(copy, tiny_bundle):
    edit(copy, lambda d: d["threshold"].update(threshold=123.0), reseal=True)
    info = load_bundle_info(copy)  # the seal is consistent
    assert info.threshold.threshold == 123.0
    with pytest.raises(ValueError) as e:
        load_bundle(copy)
    assert str(e.value).startswith(
        f"Bundle {copy}: model_version {tiny_bundle.info.model_version!r} in bundle.json does "
        f"not match its model and scoring fields, which give ")


def test_extra_bundle_files_are_covered_by_construction(tmp_path, tiny_bundle):
    meta = {k: v for k, v in tiny_bundle.info.raw.items()}
    out = str(tmp_path / "extra")
    info = save_bundle(tiny_bundle.model, out, meta,
                       extra_files={"drift/reference.json": b'{"p50": 1.0}'})
    assert sorted(info.files) == ["drift/reference.json", MODEL_FILE]
    assert info.files["drift/reference.json"] == hashlib.sha256(b'{"p50": 1.0}').hexdigest()
    assert load_bundle(out).info.model_version == tiny_bundle.info.model_version
    with open(os.path.join(out, "drift", "reference.json"), "w") as f:
        f.write('{"p50": 2.0}')
    with pytest.raises(ValueError, match=r"drift/reference.json does not match bundle.json"):
        load_bundle(out)
    os.remove(os.path.join(out, "drift", "reference.json"))
    with pytest.raises(ValueError, match=r"has no drift/reference.json. Copy the whole bundle"):
        load_bundle(out)
    with pytest.raises(ValueError, match=r"must be a relative path inside the bundle"):
        save_bundle(tiny_bundle.model, str(tmp_path / "x"), meta,
                    extra_files={"../escape.txt": b"x"})
    assert not os.path.exists(tmp_path / "escape.txt")


def test_files_outside_the_bundle_cannot_be_listed(copy):
    edit(copy, lambda d: d["files"].update({"../../etc/passwd": "0" * 64}), reseal=True)
    with pytest.raises(ValueError, match="`files` must map relative file names"):
        load_bundle_info(copy)


def test_format_1_bundles_are_refused_with_the_way_to_reseal_them(copy, tiny_bundle):
    def to_v1(d):
        for k in ("files", "seal"):
            d.pop(k)
        d["format_version"] = 1
    edit(copy, to_v1)
    t = tiny_bundle.info.threshold.threshold
    with pytest.raises(ValueError) as e:
        load_bundle_info(copy)
    assert str(e.value) == (
        f"Bundle {copy} has format_version 1, which has no seal: edits to its bundle.json "
        f"cannot be detected. This latentbeam reads format_version 2 and 3. Check its "
        f"threshold and "
        f"re-seal it with `latentbeam rethreshold --bundle {copy} --threshold {t!r}`, or "
        f"re-train it.")
    old, new = rethreshold(copy, threshold=t)
    assert new.format_version == 3
    # The same threshold only re-seals: same threshold record, same model_version.
    loaded = load_bundle(copy)
    assert loaded.info.threshold == tiny_bundle.info.threshold
    assert loaded.info.model_version == old.model_version == tiny_bundle.info.model_version
    assert "rethresholded_from" not in loaded.info.raw


def test_rethreshold_with_an_explicit_threshold(copy, tiny_bundle, digits_matrix):
    errors = score(tiny_bundle, digits_matrix).score  # what the threshold applies to
    new_t = float(np.quantile(errors, 0.5))
    old, new = rethreshold(copy, threshold=new_t)
    assert old.model_version == tiny_bundle.info.model_version != new.model_version
    loaded = load_bundle(copy)
    assert loaded.info.model_version == new.model_version
    assert (loaded.info.threshold.method, loaded.info.threshold.value,
            loaded.info.threshold.threshold) == ("fixed", None, new_t)
    assert loaded.info.raw["rethresholded_from"]["model_version"] == old.model_version
    assert loaded.info.files == tiny_bundle.info.files  # the very same model.keras
    s = score(loaded, digits_matrix)
    np.testing.assert_array_equal(s.score, errors)
    assert int(s.is_anomaly.sum()) == int((errors / np.float32(new_t) > 1).sum())
    assert 850 <= int(s.is_anomaly.sum()) <= 900  # about half of 1797
    assert sorted(os.listdir(os.path.dirname(copy))) == ["b"]  # no staging left


def test_rethreshold_from_the_stored_calibration(copy, tiny_bundle):
    cal = tiny_bundle.info.calibration
    _, q = rethreshold(copy, method="quantile", value=0.95, output=copy + "-q95")
    assert q.threshold.threshold == cal["quantiles"]["0.95"]
    assert q.calibration["flagged_fraction"] == pytest.approx(0.05)
    _, c = rethreshold(copy, method="contamination", value=0.01, output=copy + "-c01")
    assert c.threshold.threshold == cal["quantiles"]["0.99"]
    _, m = rethreshold(copy, method="mad", value=2.0, output=copy + "-mad")
    assert m.threshold.threshold == pytest.approx(cal["median"] + 2.0 * cal["mad"])
    assert m.threshold.parameters == {"median": cal["median"], "mad": cal["mad"]}
    _, s = rethreshold(copy, method="mean_std", value=3.0, output=copy + "-ms")
    assert s.threshold.threshold == pytest.approx(cal["mean"] + 3.0 * cal["std"])
    versions = {q.model_version, c.model_version, m.model_version, s.model_version,
                tiny_bundle.info.model_version}
    assert len(versions) == 5
    for out in ("-q95", "-c01", "-mad", "-ms"):
        assert load_bundle(copy + out).info.threshold.method != "fixed"
    with pytest.raises(ValueError, match=r"levels 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999; "
                                         r"quantile 0.97 needs level 0.97"):
        rethreshold(copy, method="quantile", value=0.97)
    with pytest.raises(ValueError, match="f1 threshold needs the labelled calibration rows"):
        rethreshold(copy, method="f1")
    with pytest.raises(ValueError, match=r"--threshold must be a finite number > 0 .*"
                                         r"Received: nan"):
        rethreshold(copy, threshold=float("nan"))
    for beyond in (1e40, 1e-40):  # float32 scores / threshold: nothing or everything flagged
        with pytest.raises(ValueError, match=r"within float32's normal range.*"
                                             rf"Received: {re.escape(repr(beyond))}"):
            rethreshold(copy, threshold=beyond)
    with pytest.raises(ValueError, match="lies inside the bundle"):
        rethreshold(copy, threshold=1.0, output=copy + "/v2")
    assert load_bundle_info(copy).model_version == tiny_bundle.info.model_version


@pytest.mark.parametrize("method, keys", [("mad", ("median", "mad")),
                                          ("mean_std", ("mean", "std"))])
def test_rethreshold_refuses_a_computed_threshold_beyond_float32(copy, tmp_path, capsys,
                                                                 tiny_bundle, method, keys):
    # Sealed, it would be inf in float32 at scoring time: every anomaly_score 0.
    cal = tiny_bundle.info.calibration
    computed = cal[keys[0]] + 1e308 * cal[keys[1]]
    with open(os.path.join(copy, BUNDLE_FILE), "rb") as f:
        before = f.read()
    out = str(tmp_path / "big")
    assert main(["rethreshold", "--bundle", copy, "--method", method, "--value", "1e308",
                 "--output", out]) == 2
    assert capsys.readouterr().err == (
        f"latentbeam rethreshold: error: --method {method} --value 1e+308 gives a threshold of "
        f"{computed:.6g}, beyond float32's range, the scores' type (at most 3.4e38): every "
        f"anomaly_score would be 0 and no row flagged. Pass a smaller --value, or an explicit "
        f"--threshold.\n")
    assert not os.path.exists(out)
    with pytest.raises(ValueError, match=r"--method .* gives a threshold of"):
        rethreshold(copy, method=method, value=1e308)  # in place: refused too
    with open(os.path.join(copy, BUNDLE_FILE), "rb") as f:
        assert f.read() == before
    # Within float32's range it is sealed as before.
    _, big = rethreshold(copy, method=method, value=1e30, output=out)
    assert big.threshold.threshold == pytest.approx(cal[keys[0]] + 1e30 * cal[keys[1]])


def test_rethreshold_refuses_a_value_beside_an_explicit_threshold(copy, capsys, tiny_bundle):
    # --value would be dropped silently: the threshold is used as given.
    with open(os.path.join(copy, BUNDLE_FILE), "rb") as f:
        before = f.read()
    assert main(["rethreshold", "--bundle", copy, "--threshold", "1", "--value", "3"]) == 2
    assert capsys.readouterr().err == (
        "latentbeam rethreshold: error: --value is the parameter of --method; --threshold "
        "takes none. Received: --threshold 1.0 --value 3.0. Drop --value, or pass --method M "
        "--value V instead of --threshold.\n")
    with open(os.path.join(copy, BUNDLE_FILE), "rb") as f:
        assert f.read() == before
    assert sorted(os.listdir(os.path.dirname(copy))) == ["b"]  # no staging left


def test_estimated_flagged_fraction_interpolates_the_stored_quantiles():
    cal = {"quantiles": {"0.5": 1.0, "0.9": 2.0, "0.99": 4.0}, "max": 8.0}
    assert estimated_flagged_fraction(cal, 2.0) == pytest.approx(0.1)
    assert estimated_flagged_fraction(cal, 3.0) == pytest.approx(0.055)
    assert estimated_flagged_fraction(cal, 8.0) == 0.0
    assert estimated_flagged_fraction(cal, 0.1) == pytest.approx(0.5)


def test_cli_rethreshold_then_score_carries_the_new_version(copy, tmp_path, capsys,
                                                            digits_glob, tiny_bundle):
    assert main(["rethreshold", "--bundle", copy, "--method", "quantile", "--value", "0.5"]) == 0
    printed = capsys.readouterr().out
    new = load_bundle_info(copy)
    assert f"model_version:   {tiny_bundle.info.model_version} -> {new.model_version}" in printed
    assert "flagged:         50.00% of the calibration rows" in printed
    out = str(tmp_path / "scored")
    assert main(["score", "--bundle", copy, "--input", digits_glob, "--output", out,
                 "--direct_running_mode=in_memory"]) == 0
    table = pq.read_table(out)
    assert set(table.column("model_version").to_pylist()) == {new.model_version}
    # The new threshold applies to the same score: anomaly_score moves by the ratio.
    expected = score(tiny_bundle, np.stack([digits_table().column(c).to_numpy()
                                            for c in pixel_columns()], axis=1)).score
    flags = np.array(table.column("is_anomaly").to_pylist())
    np.testing.assert_allclose(table.column("anomaly_score").to_numpy(),
                               expected / np.float32(new.threshold.threshold), rtol=1e-5)
    np.testing.assert_array_equal(flags, expected / np.float32(new.threshold.threshold) > 1)
    # Half the held-out calibration rows are above the new threshold; the rows the model
    # trained on (80% of these) score lower, their codes being among the reference codes.
    assert 0.2 < flags.mean() < 0.5
    with pytest.raises(SystemExit):  # --threshold and --method exclude each other
        main(["rethreshold", "--bundle", copy, "--threshold", "1", "--method", "mad"])


def test_model_version_covers_exactly_the_scoring_fields(tiny_bundle):
    raw = tiny_bundle.info.raw
    assert model_version(tiny_bundle.model, scoring_meta(raw)) == raw["model_version"]
    assert scoring_meta(raw).keys() == {"features", "latent_dim", "threshold", "imputation"}
    # A bundle written before the medians existed keeps its model_version.
    older = {k: v for k, v in raw.items() if k != "imputation"}
    assert scoring_meta(older).keys() == {"features", "latent_dim", "threshold"}
