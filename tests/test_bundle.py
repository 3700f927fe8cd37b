"""The model bundle: round trips, a stable model_version, and refusing broken bundles."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from latentbeam.model import load_bundle, load_bundle_info, score
from latentbeam.model.bundle import BUNDLE_FILE, FORMAT_VERSION, MODEL_FILE, model_version
from latentbeam.model.bundle_write import save_bundle

COMPUTED = ("format_version", "model_version", "versions", "sha256", "files", "seal")


def meta_of(info) -> dict:
    return {k: v for k, v in info.raw.items() if k not in COMPUTED}


@pytest.fixture
def bundle_copy(tmp_path, tiny_bundle_dir) -> str:
    path = str(tmp_path / "copy")
    shutil.copytree(tiny_bundle_dir, path)
    return path


def rewrite_json(path: str, change, reseal: bool = False) -> None:
    json_path = os.path.join(path, BUNDLE_FILE)
    with open(json_path) as f:
        doc = json.load(f)
    change(doc)
    if reseal:  # a consistent forgery: only the checks past the seal can catch it
        from latentbeam.model.bundle import seal_of
        doc["seal"] = seal_of(doc)
    with open(json_path, "w") as f:
        json.dump(doc, f)


def test_bundle_directory_holds_model_and_metadata(tiny_bundle_dir, tiny_bundle):
    assert sorted(os.listdir(tiny_bundle_dir)) == [BUNDLE_FILE, MODEL_FILE]
    with open(os.path.join(tiny_bundle_dir, BUNDLE_FILE)) as f:
        doc = json.load(f)
    for key in ("format_version", "model_version", "features", "latent_dim", "threshold",
                "calibration", "training", "versions", "sha256"):
        assert key in doc
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["features"][0] == {"name": "pixel_00", "dtype": "float32", "shape": []}
    assert set(doc["threshold"]) == {"method", "value", "threshold", "parameters"}
    assert len(doc["model_version"]) == 16
    import hashlib
    with open(os.path.join(tiny_bundle_dir, MODEL_FILE), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == doc["sha256"]
    assert tiny_bundle.info.model_version == doc["model_version"]


def test_save_and_load_round_trip_gives_the_same_scores_and_version(tmp_path, tiny_bundle,
                                                                    digits_matrix):
    out = str(tmp_path / "again")
    info = save_bundle(tiny_bundle.model, out, meta_of(tiny_bundle.info))
    assert info.model_version == tiny_bundle.info.model_version
    loaded = load_bundle(out)
    assert loaded.info.model_version == tiny_bundle.info.model_version
    assert loaded.info.features == tiny_bundle.info.features
    assert loaded.info.threshold == tiny_bundle.info.threshold
    before = score(tiny_bundle, digits_matrix)
    after = score(loaded, digits_matrix)
    for name in ("latent", "reconstruction", "feature_errors", "reconstruction_error",
                 "anomaly_score"):
        np.testing.assert_allclose(getattr(after, name), getattr(before, name), rtol=1e-6,
                                   atol=1e-6)
    np.testing.assert_array_equal(after.is_anomaly, before.is_anomaly)


def test_model_version_is_stable_and_tracks_content(tmp_path, tiny_bundle):
    meta = meta_of(tiny_bundle.info)
    first = save_bundle(tiny_bundle.model, str(tmp_path / "a"), meta)
    second = save_bundle(tiny_bundle.model, str(tmp_path / "b"), meta)
    # Saving into an existing bundle replaces it.
    third = save_bundle(tiny_bundle.model, str(tmp_path / "a"), meta)
    assert first.model_version == second.model_version == third.model_version
    scoring_meta = {k: meta[k] for k in ("features", "latent_dim", "threshold", "imputation")}
    assert model_version(tiny_bundle.model, scoring_meta) == first.model_version
    # Another threshold or other weights -> another version.
    other = dict(scoring_meta, threshold=dict(scoring_meta["threshold"], threshold=1.0))
    assert model_version(tiny_bundle.model, other) != first.model_version
    import keras
    clone = keras.models.clone_model(tiny_bundle.model)
    clone.set_weights([w + 1e-3 for w in tiny_bundle.model.get_weights()])
    assert model_version(clone, scoring_meta) != first.model_version
    # Training metadata (e.g. seconds taken) does not change the version.
    meta["training"] = dict(meta["training"], seconds=123.0)
    assert save_bundle(tiny_bundle.model, str(tmp_path / "c"), meta).model_version == \
        first.model_version


def test_load_bundle_info_reads_only_the_json(bundle_copy, tiny_bundle):
    os.remove(os.path.join(bundle_copy, MODEL_FILE))
    info = load_bundle_info(bundle_copy)
    assert info.model_version == tiny_bundle.info.model_version
    assert info.n_inputs == 64 and info.latent_dim == 2
    assert info.path == bundle_copy


def test_load_bundle_info_does_not_import_keras_or_tensorflow(tiny_bundle_dir):
    code = ("import sys\n"
            "from latentbeam.model import load_bundle_info\n"
            f"info = load_bundle_info({tiny_bundle_dir!r})\n"
            "print(info.latent_dim, 'keras' in sys.modules, 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["2", "False", "False"]


def test_missing_directory_or_bundle_json(tmp_path, bundle_copy):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError) as e:
        load_bundle(missing)
    assert str(e.value) == (f"No bundle at {missing}: bundle.json is missing. Expected a "
                            f"directory written by `latentbeam train --output {missing}`.")
    os.remove(os.path.join(bundle_copy, BUNDLE_FILE))
    with pytest.raises(ValueError, match="bundle.json is missing"):
        load_bundle_info(bundle_copy)


def test_missing_model_file(bundle_copy):
    os.remove(os.path.join(bundle_copy, MODEL_FILE))
    with pytest.raises(ValueError, match=f"Bundle {bundle_copy} has no model.keras. Copy the whole "
                                         f"bundle directory"):
        load_bundle(bundle_copy)


def test_tampered_model_file_is_refused(bundle_copy):
    path = os.path.join(bundle_copy, MODEL_FILE)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ValueError) as e:
        load_bundle(bundle_copy)
    message = str(e.value)
    assert message.startswith(f"{path} does not match bundle.json: sha256 ")
    assert "modified or partially copied" in message


@pytest.mark.parametrize("version", [4, 0, True, "3"])
def test_unknown_format_version_is_refused(bundle_copy, version):
    rewrite_json(bundle_copy, lambda d: d.update(format_version=version))
    with pytest.raises(ValueError) as e:
        load_bundle(bundle_copy)
    message = str(e.value)
    assert message.startswith("Unknown bundle format_version ")
    assert f" in {bundle_copy}; this latentbeam reads format_version 2 and 3. Use the " \
        f"latentbeam version that wrote it" in message


def test_malformed_json_is_refused(bundle_copy):
    with open(os.path.join(bundle_copy, BUNDLE_FILE), "w") as f:
        f.write('{"format_version": 1, "features": [')
    with pytest.raises(ValueError, match=rf"Malformed bundle.json in {bundle_copy}: not valid JSON "):
        load_bundle_info(bundle_copy)
    with open(os.path.join(bundle_copy, BUNDLE_FILE), "w") as f:
        f.write("[1, 2]")
    with pytest.raises(ValueError, match=r"Malformed bundle.json in .*: expected a JSON object"):
        load_bundle_info(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda d: (d.pop("threshold"), d.pop("sha256")), "missing key(s) threshold, sha256"),
    (lambda d: d.update(latent_dim=0), "`features` is empty or `latent_dim` < 1"),
    (lambda d: d.update(features=[{"name": "x"}]), "invalid features/threshold/latent_dim"),
    (lambda d: d["threshold"].update(threshold=0.0), "threshold must be a positive number, got 0.0"),
    (lambda d: d.update(sha256="abc"), "`sha256` must be the 64-hex-digit hash of model.keras"),
])
def test_invalid_contents_are_refused(bundle_copy, change, message):
    rewrite_json(bundle_copy, change)
    with pytest.raises(ValueError) as e:
        load_bundle(bundle_copy)
    assert str(e.value).startswith(f"Malformed bundle.json in {bundle_copy}: {message}")
    assert str(e.value).endswith(f"Re-create the bundle with `latentbeam train --config CONFIG "
                                 f"--output {bundle_copy}`.")


def test_features_that_do_not_match_the_model_are_refused(bundle_copy):
    # One feature (and its median) fewer: bundle.json is consistent, the model is not.
    rewrite_json(bundle_copy, lambda d: (d["features"].pop(), d["imputation"]["medians"].pop()),
                 reseal=True)
    with pytest.raises(ValueError, match=r"model input width 64 != 63 inputs described by "
                                         r"bundle.json features"):
        load_bundle(bundle_copy)


def test_a_bundle_of_the_calibrated_sum_formula_scores_as_it_did():
    """tests/data/bundle_sum was trained before the score became root_sum_squares (its
    latent distance compares codes and its score is a calibrated sum); with the scores it
    gave then, on 8 training rows and 2 made-up outliers. Loading and scoring it now must
    give the same numbers, also through the masked formula."""
    import json
    import os

    from latentbeam.model import load_bundle, score
    from latentbeam.model.scoring import masked_score, score_weights

    here = os.path.join(os.path.dirname(__file__), "data")
    with open(os.path.join(here, "bundle_sum_scores.json")) as f:
        then = json.load(f)
    bundle = load_bundle(os.path.join(here, "bundle_sum"))
    assert bundle.info.raw["score"]["reconstruction"] == "rms"
    assert "combine" not in bundle.info.raw["score"]
    rows = np.asarray(then["rows"], np.float32)
    now = score(bundle, rows)
    for key in ("score", "anomaly_score", "latent_distance", "reconstruction_error", "latent"):
        np.testing.assert_allclose(getattr(now, key), np.asarray(then[key], np.float32),
                                   rtol=1e-5, atol=1e-6, err_msg=key)
    assert now.is_anomaly.tolist() == [False] * 9 + [True]
    assert bundle.info.format_version == 2
    weights = score_weights(bundle)
    assert weights.combine == "sum" and weights.term_scale.shape == (2,)
    masked = masked_score(weights, now.feature_errors, now.latent_distance,
                          np.ones(rows.shape, bool))
    np.testing.assert_allclose(masked, now.score, rtol=2e-6)


def test_a_rethresholded_calibrated_sum_bundle_stays_format_2(tmp_path):
    """Format 3 marks the models a format-2 reader cannot load; re-sealing an earlier
    bundle with a new threshold keeps it readable by the latentbeam it came from."""
    import os

    from latentbeam.model.rethreshold import rethreshold

    copy = str(tmp_path / "b")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "bundle_sum"), copy)
    old, new = rethreshold(copy, threshold=2.5)
    assert (old.format_version, new.format_version) == (2, 2)
    with open(os.path.join(copy, BUNDLE_FILE)) as f:
        assert json.load(f)["format_version"] == 2
    assert load_bundle(copy).info.threshold.threshold == 2.5
