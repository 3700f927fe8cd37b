"""Missing feature values by choice: reject (dead letter), impute (training medians), mask."""
import json

import numpy as np
import pyarrow as pa
import pytest

from latentbeam.demo import digits_table
from latentbeam.model import score
from latentbeam.model.data import Reservoir, assign_splits
from latentbeam.model.scoring import masked_score, score_weights
from latentbeam.pipeline.records import ScoringOptions, score_record_batch


def _with_holes(n, holes):
    """The first n digits rows with `holes` = {(row, column): value} written over them."""
    table = digits_table().slice(0, n)
    cols = {name: table.column(name).to_pylist() for name in table.schema.names}
    for (row, column), value in holes.items():
        cols[column][row] = value
    return pa.RecordBatch.from_pydict(cols, schema=table.schema)


def _filled(tiny_bundle, digits_matrix, n, holes):
    """The same rows as a matrix, each hole filled by hand with its input's training median."""
    x = digits_matrix[:n].astype(np.float32).copy()
    for row, column in holes:
        j = int(column.split("_")[1])
        x[row, j] = tiny_bundle.info.medians[j]
    return x


def test_bundle_medians_are_the_medians_of_the_training_rows(tiny_bundle, digits_matrix):
    cfg = tiny_bundle.info.training["config"]
    codes = assign_splits(0, len(digits_matrix), cfg["train"]["validation_fraction"],
                          cfg["threshold"]["calibration_fraction"])
    train = digits_matrix[codes == 0]
    imputation = tiny_bundle.info.raw["imputation"]
    # Fewer training rows than the sample holds: every one is kept, the medians are exact.
    assert imputation["rows"] == len(train) == tiny_bundle.info.training["rows_by_split"]["train"]
    assert imputation["exact"] is True and imputation["method"] == "median"
    np.testing.assert_array_equal(tiny_bundle.info.medians, np.median(train, axis=0))


def test_reservoir_is_uniform_seeded_and_independent_of_chunking():
    stream = np.arange(20_000, dtype=np.float32)[:, None]
    one = Reservoir(500, 1, [0, 2])
    one.add(stream)
    many = Reservoir(500, 1, [0, 2])
    for s in range(0, len(stream), 777):
        many.add(stream[s:s + 777])
    np.testing.assert_array_equal(one.sample(), many.sample())
    values = one.sample()[:, 0]
    assert len(np.unique(values)) == 500  # rows of the stream, each at most once
    assert abs(np.median(values) - 10_000) < 1_500  # uniform over the whole stream
    small = Reservoir(500, 1, 0)
    small.add(stream[:300])
    np.testing.assert_array_equal(small.sample(), stream[:300])


def test_impute_gives_the_scores_of_the_rows_with_the_medians_filled_in(tiny_bundle,
                                                                      digits_matrix):
    holes = {(3, "pixel_05"): None, (6, "pixel_07"): float("nan"),
             (8, "pixel_20"): None, (8, "pixel_21"): float("nan")}
    out, letters = score_record_batch(tiny_bundle, _with_holes(10, holes),
                                      opts=ScoringOptions(key_columns=("id",), missing="impute",
                                                          per_feature_errors=True))
    assert letters == []
    assert out.column("id").to_pylist() == list(range(10))
    assert "coverage" not in out.schema.names
    expected = score(tiny_bundle, _filled(tiny_bundle, digits_matrix, 10, holes))
    np.testing.assert_array_equal(out.column("anomaly_score").to_numpy(), expected.anomaly_score)
    np.testing.assert_array_equal(out.column("reconstruction_error").to_numpy(),
                                  expected.reconstruction_error)
    np.testing.assert_array_equal(np.array(out.column("feature_errors").to_pylist(), np.float32),
                                  expected.feature_errors)


def test_mask_scores_the_observed_inputs_by_the_masked_formula(tiny_bundle, digits_matrix):
    holes = {(2, "pixel_10"): None}
    out, letters = score_record_batch(
        tiny_bundle, _with_holes(5, holes),
        opts=ScoringOptions(key_columns=("id",), missing="mask", per_feature_errors=True,
                            latent_distance=True))
    assert letters == []
    assert out.schema.names[-1] == "coverage" and out.schema.field("coverage").type == pa.float32()
    assert out.column("coverage").to_pylist() == [1.0, 1.0, 63 / 64, 1.0, 1.0]

    # By hand: one forward pass on the median-filled rows, then the score's formula with
    # the mean squared error over the 63 observed pixels and the pass's latent distance.
    full = score(tiny_bundle, _filled(tiny_bundle, digits_matrix, 5, holes))
    observed = np.arange(64) != 10
    by_hand = np.sqrt(np.mean(full.feature_errors[2, observed].astype(np.float64))
                      + float(full.latent_distance[2]) ** 2)
    got = out.column("anomaly_score").to_numpy()
    assert got[2] == pytest.approx(by_hand / tiny_bundle.info.threshold.threshold, rel=1e-6)
    assert out.column("reconstruction_error")[2].as_py() == pytest.approx(
        float(np.mean(full.feature_errors[2, observed])), rel=1e-6)
    errors = out.column("feature_errors")[2].as_py()
    assert np.isnan(errors[10]) and not np.isnan(np.delete(errors, 10)).any()
    # Complete rows keep the unmasked numbers exactly.
    np.testing.assert_array_equal(got[[0, 1, 3, 4]], full.anomaly_score[[0, 1, 3, 4]])
    assert got[2] != full.anomaly_score[2]


def test_masked_formula_with_every_input_observed_is_the_layer_score(tiny_bundle,
                                                                     digits_matrix):
    s = score(tiny_bundle, digits_matrix[:400])
    masked = masked_score(score_weights(tiny_bundle), s.feature_errors, s.latent_distance,
                          np.ones(s.feature_errors.shape, dtype=bool))
    np.testing.assert_allclose(masked, s.score, rtol=2e-6)
    # score(observed=all True) is the plain score, coverage 1.
    again = score(tiny_bundle, digits_matrix[:400], observed=np.ones((400, 64), bool))
    np.testing.assert_array_equal(again.score, s.score)
    assert (again.coverage == 1.0).all()


def test_each_mode_keeps_what_it_cannot_score_as_dead_letters(tiny_bundle):
    holes = {(1, "pixel_03"): None, (2, "pixel_04"): float("nan"),
             (3, "pixel_05"): float("inf"), (4, "pixel_06"): float("-inf"),
             (5, "pixel_07"): None, (5, "pixel_08"): float("inf")}
    holes.update({(6, f"pixel_{j:02d}"): (None if j % 2 else float("nan")) for j in range(64)})
    batch = _with_holes(8, holes)
    got = {}
    for mode in ("reject", "impute", "mask"):
        out, letters = score_record_batch(tiny_bundle, batch, source="f", row_offset=10,
                                          opts=ScoringOptions(key_columns=("id",), missing=mode))
        assert out.num_rows + len(letters) == 8  # rows read = scored + dead-lettered
        got[mode] = (out.column("id").to_pylist(), [(d["row"], d["reason"]) for d in letters])
        assert all(json.loads(d["payload"])["id"] == d["row"] - 10 for d in letters)
    assert got["reject"] == ([0, 7], [(11, "null_value"), (12, "not_finite"),
                                      (13, "not_finite"), (14, "not_finite"),
                                      (15, "null_value"), (16, "null_value")])
    # ±inf is never a missing value; a row with nothing observed cannot be scored.
    kept = ([0, 1, 2, 7], [(13, "not_finite"), (14, "not_finite"), (15, "not_finite"),
                           (16, "no_observed_values")])
    assert got["impute"] == kept and got["mask"] == kept


def test_missing_list_elements_and_null_lists():
    """An image feature: a null element is one missing input, a null list all of them."""
    from latentbeam.model.features import Feature, to_matrix

    features = [Feature("img", "float64", (2, 2))]
    batch = pa.table({"img": pa.array([[[1.0, None], [3.0, 4.0]], None, [[1.0, 2.0], [3.0]],
                                       [[float("nan"), 2.0], [3.0, 4.0]]])})
    conv = to_matrix(batch, features, allow_missing=True)
    assert conv.valid.tolist() == [0, 3]
    assert [(r, reason) for r, reason, _ in conv.faults] == [(1, "no_observed_values"),
                                                            (2, "wrong_length")]
    assert conv.observed.tolist() == [[True, False, True, True], [False, True, True, True]]
    strict = to_matrix(batch, features)
    assert [(r, reason) for r, reason, _ in strict.faults] == [
        (0, "null_value"), (1, "null_value"), (2, "wrong_length"), (3, "not_finite")]


def test_a_bundle_without_medians_refuses_impute_and_mask(tmp_path, tiny_bundle, capsys,
                                                          digits_glob):
    from latentbeam import cli
    from latentbeam.model import load_bundle
    from latentbeam.model.bundle import (COMPUTED_KEYS, model_version, parse_bundle_json,
                                         read_verified_files, scoring_meta)
    from latentbeam.model.bundle_write import write_bundle
    from latentbeam.pipeline.transforms import Score

    # A bundle as written before training kept medians: no `imputation` key, sealed.
    meta = {k: v for k, v in tiny_bundle.info.raw.items()
            if k not in COMPUTED_KEYS and k != "imputation"}
    old = str(tmp_path / "old")
    write_bundle(old, read_verified_files(tiny_bundle.info), meta,
                 model_version(tiny_bundle.model, scoring_meta(meta)))
    bundle = load_bundle(old)
    assert bundle.info.medians is None
    batch = _with_holes(3, {(1, "pixel_05"): None})
    out, letters = score_record_batch(bundle, batch)  # reject works as before
    assert out.num_rows == 2 and letters[0]["reason"] == "null_value"
    fix = r"has no training medians .* Re-train it with `latentbeam train`"
    for mode in ("impute", "mask"):
        with pytest.raises(ValueError, match=f"Bundle {old} " + fix):
            score_record_batch(bundle, batch, opts=ScoringOptions(missing=mode))
        with pytest.raises(ValueError, match=fix):
            Score(old, missing=mode)  # at pipeline construction, from bundle.json
    rc = cli.main(["score", "--bundle", old, "--input", digits_glob,
                   "--output", str(tmp_path / "scored"), "--missing", "impute"])
    assert rc == 2
    assert "has no training medians" in capsys.readouterr().err
    assert not (tmp_path / "scored").exists()
    with pytest.raises(ValueError, match="expected one of reject, impute, mask"):
        ScoringOptions(missing="drop")
    # Medians that do not fit the inputs are refused when bundle.json is read.
    raw = dict(tiny_bundle.info.raw, imputation={"method": "median", "medians": [0.0]})
    with pytest.raises(ValueError, match="`imputation.medians` must be a list of 64 finite"):
        parse_bundle_json("b", json.dumps(raw))


def test_the_core_refuses_nan_and_infinite_values_it_would_score_as_normal(tiny_bundle,
                                                                            digits_matrix):
    """A NaN score compares False with the threshold (is_anomaly False): the core names
    the row and input instead; unobserved values under a mask are fine."""
    from latentbeam.errors import InputError

    x = digits_matrix[:5].astype(np.float32)
    x[3, 7] = np.nan
    with pytest.raises(InputError, match=r"received nan at row 3, input 'pixel_07': .* "
                                         r"observed=np.isfinite\(x\)"):
        score(tiny_bundle, x)
    masked = score(tiny_bundle, x, observed=np.isfinite(x))
    assert np.isfinite(masked.anomaly_score).all()
    x[1, 0] = np.inf
    with pytest.raises(InputError, match=r"received inf at row 1, input 'pixel_00' "
                                         r"\(marked observed\)"):
        score(tiny_bundle, x, observed=np.ones(x.shape, bool))
