"""`top_features`: the inputs with the largest share of a row's reconstruction error."""
import numpy as np
import pyarrow as pa
import pytest

from latentbeam.demo import digit_images_table, digits_table, pixel_columns
from latentbeam.model import score
from latentbeam.model.features import Feature, input_names
from latentbeam.pipeline.records import (TOP_FEATURE_TYPE, ScoringOptions, score_record_batch,
                                         top_features, top_features_array)


def test_shares_are_error_fractions_largest_first_ties_by_input_order():
    ferr = np.array([[1.0, 2.0, 7.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0],
                     [3.0, 3.0, 1.0, 3.0]])
    idx, shares = top_features(ferr, 2)
    assert idx.tolist() == [[2, 1], [0, 1], [0, 1]]
    np.testing.assert_allclose(shares, [[0.7, 0.2], [0.0, 0.0], [0.3, 0.3]], rtol=1e-6)
    # k larger than the number of inputs: every input, still sorted.
    idx, shares = top_features(ferr[:1], 10)
    assert idx.tolist() == [[2, 1, 0, 3]]
    np.testing.assert_allclose(shares, [[0.7, 0.2, 0.1, 0.0]], rtol=1e-6)

    column = top_features_array(ferr, pa.array(["a", "b", "c", "d"]), 2)
    assert column.type == pa.list_(TOP_FEATURE_TYPE)
    assert column.to_pylist()[0] == [{"name": "c", "share": pytest.approx(0.7)},
                                     {"name": "b", "share": pytest.approx(0.2)}]


def test_input_names_index_list_and_image_elements_row_major():
    features = [Feature("a", "float64"), Feature("pixels", "float32", (3,)),
                Feature("image", "float32", (2, 3))]
    assert input_names(features) == [
        "a", "pixels[0]", "pixels[1]", "pixels[2]",
        "image[0,0]", "image[0,1]", "image[0,2]", "image[1,0]", "image[1,1]", "image[1,2]"]


def test_top_features_option_is_validated():
    with pytest.raises(ValueError, match=r"top_features \(--top-features\) must be a "
                                         r"non-negative integer .* Received: top_features=-1"):
        ScoringOptions(top_features=-1)


def _normalized_errors(bundle, x, recon):
    """Per-input squared error recomputed from X-hat and the model's normalization variance."""
    var = np.asarray(bundle.model.get_layer("normalize").variance).reshape(-1)
    std = np.maximum(np.sqrt(var), 1e-7)
    return ((x - recon) / std) ** 2


def test_a_perturbed_pixel_comes_first_with_its_share_of_the_error(tiny_bundle):
    table = digits_table().slice(0, 40)
    x = np.stack([table.column(c).to_numpy() for c in pixel_columns()], axis=1).astype(np.float32)
    # Pixel 27 (image row 3, column 3) of row 5 pushed far outside its 0..16 range.
    cols = {n: table.column(n).to_pylist() for n in table.schema.names}
    cols["pixel_27"][5] += 80.0
    x[5, 27] += 80.0
    out, letters = score_record_batch(tiny_bundle, pa.RecordBatch.from_pydict(cols),
                                      opts=ScoringOptions(key_columns=("id",), top_features=3))
    assert letters == []
    top = out.column("top_features").to_pylist()
    assert [len(t) for t in top] == [3] * 40

    s = score(tiny_bundle, x)
    e = _normalized_errors(tiny_bundle, x, s.reconstruction)
    expected = e[5, 27] / e[5].sum()
    assert top[5][0]["name"] == "pixel_27"
    assert top[5][0]["share"] == pytest.approx(expected, rel=1e-3)
    # An 80-unit jump carries most of the error; the rest is spread over the other 63
    # inputs (the jump also moves the code, so their reconstructions get worse too).
    assert top[5][0]["share"] > 0.75
    assert top[5][1]["share"] < 0.1
    assert sum(t["share"] for t in top[5]) <= 1.0 + 1e-6
    # Every row: names of the 3 largest recomputed errors, shares in decreasing order.
    for i in range(40):
        order = np.argsort(-e[i], kind="stable")[:3]
        assert [t["name"] for t in top[i]] == [f"pixel_{j:02d}" for j in order]
        shares = [t["share"] for t in top[i]]
        assert shares == sorted(shares, reverse=True)
        np.testing.assert_allclose(shares, e[i, order] / e[i].sum(), rtol=1e-3, atol=1e-6)


def test_image_inputs_are_named_by_row_and_column(tiny_image_bundle_dir):
    from latentbeam.model import load_bundle

    bundle = load_bundle(tiny_image_bundle_dir)
    table = digit_images_table().slice(0, 10)
    images = np.asarray(table.column("image").to_pylist(), dtype=np.float32)
    images[2, 3, 5] += 80.0  # image[3,5] of row 2
    batch = pa.RecordBatch.from_pydict({
        "id": table.column("id").combine_chunks(),
        "image": pa.array(images.tolist(), pa.list_(pa.list_(pa.float32())))})
    out, _ = score_record_batch(bundle, batch, opts=ScoringOptions(top_features=2))
    top = out.column("top_features").to_pylist()
    assert top[2][0]["name"] == "image[3,5]"
    # More than all 63 other pixels together (pixels are scaled by their quartiles, so a
    # few sparse ones reconstruct less exactly than they would at their std).
    assert top[2][0]["share"] > 0.5
    assert all(t["name"].startswith("image[") for row in top for t in row)


def test_unobserved_inputs_rank_last_with_no_share():
    """`--missing mask` leaves NaN errors for unobserved inputs: never a NaN share."""
    ferr = np.array([[1.0, np.nan, 3.0, 0.0], [np.nan, np.nan, np.nan, 2.0]])
    idx, shares = top_features(ferr, 3)
    assert idx.tolist() == [[2, 0, 3], [3, 0, 1]]
    np.testing.assert_allclose(shares, [[0.75, 0.25, 0.0], [1.0, 0.0, 0.0]])


def test_masked_rows_get_top_features_over_their_observed_pixels(tiny_bundle):
    table = digits_table().slice(0, 5)
    cols = {n: table.column(n).to_pylist() for n in table.schema.names}
    cols["pixel_27"][1] = None
    cols["pixel_28"][1] += 80.0
    out, letters = score_record_batch(tiny_bundle, pa.RecordBatch.from_pydict(cols),
                                      opts=ScoringOptions(top_features=64, missing="mask"))
    assert letters == [] and out.num_rows == 5
    top = out.column("top_features").to_pylist()[1]
    shares = [t["share"] for t in top]
    assert not np.isnan(shares).any() and sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert top[0]["name"] == "pixel_28" and top[-1] == {"name": "pixel_27", "share": 0.0}
