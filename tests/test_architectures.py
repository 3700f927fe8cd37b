"""Autoencoder architectures: output shapes, serialization, deterministic inference."""
import json

import keras
import numpy as np
import pytest

from latentbeam.config import ModelConfig
from latentbeam.model.architectures import (OUTPUT_FEATURE_ERRORS, OUTPUT_LATENT,
                                            OUTPUT_LATENT_DISTANCE, OUTPUT_RECONSTRUCTION,
                                            OUTPUT_SCORE, AnomalyScore, LatentDistance,
                                            local_weights,
                                            Sampling, SquaredError, build_autoencoder,
                                            default_latent_dim, image_shape, output_basis)


def build(n_inputs, seed=0, image=None, latent_neighbors=0, reference_rows=1, reference_groups=1,
          **model):
    rng = np.random.default_rng(1)
    mean = rng.normal(size=n_inputs).astype(np.float32)
    variance = rng.uniform(0.5, 2.0, size=n_inputs).astype(np.float32)
    keras.utils.set_random_seed(seed)
    return build_autoencoder(ModelConfig(**model), n_inputs=n_inputs, mean=mean,
                             variance=variance, image_feature_shape=image, seed=seed,
                             latent_neighbors=latent_neighbors, reference_rows=reference_rows,
                             reference_groups=reference_groups)


def inputs(n_rows, n_inputs):
    return np.random.default_rng(2).normal(size=(n_rows, n_inputs)).astype(np.float32)


def predict(model, x, training=False):
    return {k: np.asarray(v) for k, v in model(x, training=training).items()}


@pytest.mark.parametrize("n_inputs, image, model, latent_dim", [
    (10, None, dict(latent_dim=3, hidden_units=(8, 4)), 3),
    (64, (8, 8), dict(kind="conv2d", latent_dim=4, conv_filters=(4, 8)), 4),
    (35, (7, 5), dict(kind="conv2d", latent_dim=2, conv_filters=(4, 8)), 2),
    (24, (2, 4, 3), dict(kind="conv2d", conv_filters=(4,)), 8),
    (12, None, dict(variational=True, hidden_units=(8,)), 6),
    (12, None, dict(noise_stddev=0.1, hidden_units=(8,)), 6),
    (12, None, dict(dropout=0.2, l2=1e-3, batch_norm=True, hidden_units=(8, 6)), 6),
])
def test_outputs_have_the_contract_shapes(n_inputs, image, model, latent_dim):
    m = build(n_inputs, image=image, **model)
    assert m.name == "autoencoder"
    out = predict(m, inputs(5, n_inputs))
    assert set(out) == {OUTPUT_LATENT, OUTPUT_RECONSTRUCTION, OUTPUT_FEATURE_ERRORS,
                        OUTPUT_SCORE}
    assert out[OUTPUT_SCORE].shape == (5,)
    assert out[OUTPUT_LATENT].shape == (5, latent_dim)
    assert out[OUTPUT_RECONSTRUCTION].shape == (5, n_inputs)
    assert out[OUTPUT_FEATURE_ERRORS].shape == (5, n_inputs)
    assert m.get_layer("decoder").inputs[0].shape[-1] == latent_dim
    assert all(np.isfinite(v).all() for v in out.values())


def test_feature_errors_are_squared_errors_in_normalized_space():
    m = build(6, hidden_units=(4,), latent_dim=2)
    x = inputs(4, 6)
    out = predict(m, x)
    norm = m.get_layer("normalize")
    mean, var = np.asarray(norm.mean).ravel(), np.asarray(norm.variance).ravel()
    expected = ((x - out[OUTPUT_RECONSTRUCTION]) / np.sqrt(var)) ** 2
    np.testing.assert_allclose(out[OUTPUT_FEATURE_ERRORS], expected, rtol=1e-4, atol=1e-5)
    # The model's loss is the mean of those very errors.
    m.compile(optimizer="adam")
    loss = m.compute_loss(x=x, y=None, y_pred=m(x), training=False)
    assert float(loss) == pytest.approx(float(out[OUTPUT_FEATURE_ERRORS].mean()), rel=1e-5)
    assert mean.shape == (6,)


def test_regularization_and_layers_follow_the_config():
    m = build(12, dropout=0.2, l2=1e-3, batch_norm=True, noise_stddev=0.1, hidden_units=(8, 6))
    encoder = m.get_layer("encoder")
    names = [layer.name for layer in encoder.layers]
    assert names == ["normalized", "input_noise", "enc_0", "enc_0_bn", "enc_0_act",
                     "enc_0_dropout", "enc_1", "enc_1_bn", "enc_1_act", "enc_1_dropout", "z"]
    assert encoder.get_layer("enc_0").kernel_regularizer.l2 == pytest.approx(1e-3)
    assert encoder.get_layer("input_noise").stddev == 0.1
    # The reconstruction loss plus one L2 penalty per hidden layer (2 encoder, 2 decoder).
    m(inputs(2, 12))
    assert len(m.losses) == 5
    plain = build(12, hidden_units=(8, 6))
    plain(inputs(2, 12))
    assert len(plain.losses) == 1
    assert [layer.name for layer in plain.get_layer("encoder").layers] == [
        "normalized", "enc_0", "enc_0_act", "enc_1", "enc_1_act", "z"]


def test_denoising_and_dropout_only_act_in_training():
    x = inputs(8, 12)
    for model in (dict(noise_stddev=0.5), dict(dropout=0.5)):
        m = build(12, hidden_units=(8,), **model)
        a, b = predict(m, x), predict(m, x)
        np.testing.assert_array_equal(a[OUTPUT_LATENT], b[OUTPUT_LATENT])
        t = predict(m, x, training=True)
        assert not np.allclose(t[OUTPUT_LATENT], a[OUTPUT_LATENT])


def test_vae_is_deterministic_at_inference_and_returns_the_mean():
    m = build(12, variational=True, hidden_units=(8,), latent_dim=3)
    x = inputs(16, 12)
    a, b = predict(m, x), predict(m, x)
    np.testing.assert_array_equal(a[OUTPUT_LATENT], b[OUTPUT_LATENT])
    np.testing.assert_array_equal(a[OUTPUT_FEATURE_ERRORS], b[OUTPUT_FEATURE_ERRORS])
    encoder = m.get_layer("encoder")
    z_mean = keras.Model(encoder.inputs[0], encoder.get_layer("z_mean").output)
    normalized = np.asarray(m.get_layer("normalize")(x))
    np.testing.assert_allclose(a[OUTPUT_LATENT], np.asarray(z_mean(normalized)), rtol=1e-6,
                               atol=1e-6)
    # Training samples around the mean.
    t = predict(m, x, training=True)
    assert not np.allclose(t[OUTPUT_LATENT], a[OUTPUT_LATENT])


def test_vae_adds_a_kl_loss():
    m = build(12, variational=True, hidden_units=(8,), kl_weight=0.5)
    x = inputs(4, 12)
    m(x)
    assert len(m.losses) == 2  # reconstruction + KL
    m.compile(optimizer="adam")
    total = float(m.compute_loss(x=x, y=None, y_pred=m(x), training=False))
    recon = float(predict(m, x)[OUTPUT_FEATURE_ERRORS].mean())
    assert total > recon


def test_custom_layers_round_trip_their_config():
    s = Sampling(kl_weight=0.25, seed=7, name="sampling")
    config = s.get_config()
    assert config["kl_weight"] == 0.25 and config["seed"] == 7 and config["name"] == "sampling"
    assert Sampling.from_config(config).get_config() == config
    e = SquaredError(loss_weight=2.0, name="feature_errors")
    config = e.get_config()
    assert config["loss_weight"] == 2.0
    assert SquaredError.from_config(config).get_config() == config
    assert keras.saving.get_registered_object("latentbeam>Sampling") is Sampling
    assert keras.saving.get_registered_object("latentbeam>SquaredError") is SquaredError


@pytest.mark.parametrize("n_inputs, image, model", [
    (10, None, dict(latent_dim=3, hidden_units=(8, 4), batch_norm=True, dropout=0.1, l2=1e-4)),
    (35, (7, 5), dict(kind="conv2d", latent_dim=2, conv_filters=(4, 8))),
    (12, None, dict(variational=True, hidden_units=(8,), noise_stddev=0.1)),
])
def test_saved_keras_file_loads_in_safe_mode_with_identical_outputs(tmp_path, n_inputs, image,
                                                                     model):
    m = build(n_inputs, image=image, **model)
    x = inputs(9, n_inputs)
    before = predict(m, x)
    path = str(tmp_path / "model.keras")
    m.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    after = predict(loaded, x)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6, atol=1e-6)
    # Same architecture (tuples may come back as lists, hence the JSON comparison).
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(m.get_config(),
                                                                          sort_keys=True)


def test_invalid_shapes_are_explained():
    with pytest.raises(ValueError, match=r"needs one image feature of shape \(h, w\) or \(h, w, c\). "
                                         r"Received shape: \[64\]"):
        image_shape((64,))
    with pytest.raises(ValueError, match=r"`model.kind: conv2d` needs exactly one image-shaped"):
        build(64, kind="conv2d")
    with pytest.raises(ValueError, match=r"expected a positive integer. Received: n_inputs=0"):
        build(0)


def test_default_latent_dim():
    # About half the inputs for small tables, at most 8.
    assert [default_latent_dim(n) for n in (1, 5, 6, 9, 12, 21, 64, 784)] == [2, 2, 3, 4, 6, 8, 8, 8]


def test_latent_distance_is_the_mean_distance_to_the_k_nearest_reference_codes():
    ref = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], np.float32)
    z = np.array([[0.0, 1.0], [3.0, 4.0], [-3.0, -4.0]], np.float32)
    one = LatentDistance(3, 2, k=1)
    one.reference.assign(ref)
    np.testing.assert_allclose(np.asarray(one(z)), [1.0, 0.0, 5.0], atol=1e-3)
    two = LatentDistance(3, 2, k=2)
    two.reference.assign(ref)
    # [0, 1]: 1 and sqrt(9 + 9); [3, 4]: 0 and 5; [-3, -4]: 5 and 10.
    np.testing.assert_allclose(np.asarray(two(z)), [(1 + 18 ** 0.5) / 2, 2.5, 7.5], atol=1e-3)
    with pytest.raises(ValueError, match=r"expected 1 <= k <= num_reference / groups=3. "
                                         r"Received: k=4"):
        LatentDistance(3, 2, k=4)


def test_grouped_latent_distance_averages_the_nearest_code_of_each_group():
    # Groups [r0, r1] and [r2, r3].
    ref = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [0.0, 10.0]], np.float32)
    z = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 9.0]], np.float32)
    grouped = LatentDistance(4, 2, k=1, groups=2)
    grouped.reference.assign(ref)
    # [0, 0]: 0 in group 1, 10 (r2 and r3 both) in group 2 -> 5. [3, 4]: 0 and 5 -> 2.5.
    # [0, 9]: sqrt(9 + 25) in group 1, 1 in group 2.
    np.testing.assert_allclose(np.asarray(grouped(z)), [5.0, 2.5, (34 ** 0.5 + 1) / 2],
                               atol=1e-3)
    # A row that is itself a reference code scores 0 against one group, not overall.
    assert float(np.asarray(LatentDistance(4, 2, groups=1)(z))[0]) == 0.0
    pairs = LatentDistance(4, 2, k=2, groups=2)
    pairs.reference.assign(ref)
    # [0, 0]: (0 + 5) / 2 and (10 + 10) / 2 -> mean 6.25.
    np.testing.assert_allclose(float(np.asarray(pairs(z[:1]))[0]), 6.25, atol=1e-3)
    with pytest.raises(ValueError, match=r"expected a positive divisor of num_reference=4. "
                                         r"Received: groups=3"):
        LatentDistance(4, 2, groups=3)
    with pytest.raises(ValueError, match=r"num_reference / groups=2. Received: k=3"):
        LatentDistance(4, 2, k=3, groups=2)


def test_latent_distance_is_exact_far_from_the_origin_and_the_same_in_any_batch():
    """Codes offset far from 0 (as a code can be), rows that are reference codes (scoring
    the training data) and rows near them: the distances match numpy's from the
    differences, whatever rows share the batch."""
    rng = np.random.default_rng(0)
    ref = (500.0 + rng.normal(size=(512, 8))).astype(np.float32)
    z = np.concatenate([ref[:64], ref[64:128] + 0.05 * rng.normal(size=(64, 8)),
                        500.0 + rng.normal(size=(1872, 8))]).astype(np.float32)
    layer = LatentDistance(512, 8, k=1, groups=32)
    layer.reference.assign(ref)
    exact = np.sqrt(((z[:, None, :].astype(np.float64) - ref[None]) ** 2).sum(-1))
    exact = exact.reshape(len(z), 32, 16).min(axis=2).mean(axis=1)
    whole = np.asarray(layer(z))
    np.testing.assert_allclose(whole, exact, rtol=1e-5)
    # A reference code is at distance 0 from itself: the expanded form's rounding
    # (~1e-7 of the codes' squared spread, batch-dependent) is snapped to 0.
    own = np.sqrt(((z[:64, None, :].astype(np.float64) - ref[None]) ** 2).sum(-1))
    own = own.reshape(64, 32, 16).min(axis=2)
    assert np.all(own[np.arange(64), np.arange(64) // 16] == 0)
    # Row by row over the first 200 rows (the reference codes, the rows near them and some
    # others: 2,000 single-row calls would take 20 s), then all rows in batches of 7, 1000.
    for size, n in ((1, 200), (7, 2000), (1000, 2000)):
        parts = [np.asarray(layer(z[i:min(i + size, n)])) for i in range(0, n, size)]
        # Without the snap, a reference row's own-group term would be the square root of
        # that rounding: its distance 4e-5 apart between these batchings instead of 2e-7.
        np.testing.assert_allclose(np.concatenate(parts), whole[:n], rtol=1e-6)


def test_local_weights_are_the_squared_ratio_of_mean_to_own_spacing_at_least_1():
    # On a line: 0, 1, 3, 3 (a repeated row), 10. Nearest distinct other point: 1, 1, 2,
    # 2, 7 (the repeat does not count); mean spacing 2.6; weights (2.6 / s)^2, and 1 for
    # the sparse point 10 ((2.6 / 7)^2 = 0.14 would make its surroundings look dense).
    points = np.array([[0.0], [1.0], [3.0], [3.0], [10.0]], np.float32)
    np.testing.assert_allclose(local_weights(points), [6.76, 6.76, 1.69, 1.69, 1.0], rtol=1e-5)
    # Far from the origin (as decoded codes can be) the same.
    np.testing.assert_allclose(local_weights(points + 1000.0), [6.76, 6.76, 1.69, 1.69, 1.0],
                               rtol=1e-4)
    # All points one point: nothing to weigh.
    np.testing.assert_array_equal(local_weights(np.ones((4, 3), np.float32)), np.ones(4))


def test_local_latent_distance_counts_in_units_of_the_nearest_reference_spacing():
    # Group 1: a tight pair (spacing 0.1) at the origin; group 2: a loose pair (spacing 1)
    # at x = 10. Mean spacing 0.55: weights (0.55 / 0.1)^2 and 1 (not (0.55 / 1)^2).
    ref = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [11.0, 0.0]], np.float32)
    layer = LatentDistance(4, 2, groups=2, local=True)
    layer.set_reference(ref)
    np.testing.assert_allclose(np.asarray(layer.reference_weight), [30.25, 30.25, 1.0, 1.0],
                               rtol=1e-5)
    # [0.1, 0.2]: 0.2 from r1 (x 5.5 = 1.1) and hypot(9.9, 0.2) from r2; [12, 0]: 1 from
    # r3 and 11.9 from r1 (x 5.5 = 65.45); [10, 0]: r2 itself, and 9.9 from r1 (x 5.5).
    z = np.array([[0.1, 0.2], [12.0, 0.0], [10.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(layer(z)),
                               [(1.1 + np.hypot(9.9, 0.2)) / 2, (1.0 + 65.45) / 2,
                                (54.45 + 0.0) / 2], rtol=5e-4)  # less the floor: see below
    # A row 2 tight spacings (0.2) out of the tight pair scores as a row 2 mean spacings
    # (1.1) out of the loose pair.
    near = LatentDistance(4, 2, groups=1, local=True)
    near.set_reference(ref)
    out = np.asarray(near(np.array([[0.0, 0.2], [10.0, 1.1]], np.float32)))
    # (The floor, 2^-19 x (|p|^2 + max |r|^2) = 1.2e-4 about the centre x = 5.275, is
    # 0.3% of the first row's square 0.04: 0.15% of its distance.)
    np.testing.assert_allclose(out, [1.1, 1.1], rtol=2e-3)
    # Without `local` the same layer measures plain distances (0.2 and 1.1), and the flag
    # is left out of its config, so earlier bundles' configs (and model_version) are
    # unchanged.
    plain = LatentDistance(4, 2, groups=1)
    plain.set_reference(ref)
    np.testing.assert_allclose(np.asarray(plain(np.array([[0.0, 0.2], [10.0, 1.1]],
                                                         np.float32))), [0.2, 1.1], rtol=1e-4)
    assert "local" not in plain.get_config()
    assert LatentDistance.from_config(near.get_config()).local is True


def test_local_latent_distance_is_zero_for_a_reference_and_the_same_in_any_batch():
    rng = np.random.default_rng(0)
    ref = (500.0 + rng.normal(size=(512, 8)) * rng.uniform(0.1, 2.0, size=(512, 1)))
    z = np.concatenate([ref[:64], 500.0 + rng.normal(size=(936, 8))]).astype(np.float32)
    layer = LatentDistance(512, 8, k=1, groups=32, local=True)
    layer.set_reference(ref.astype(np.float32))
    w = local_weights(ref.astype(np.float32)).astype(np.float64)
    r = ref.astype(np.float32).astype(np.float64)
    squared = ((z[:, None, :].astype(np.float64) - r[None]) ** 2).sum(-1)
    # Each square less the plain path's rounding floor, SNAP (|p|^2 + max |r|^2) about the
    # references' centre, and at least 0 (2^-19 of the codes' squared spread).
    centre = r.mean(axis=0)
    floor = 2.0 ** -19 * (((z - centre) ** 2).sum(-1)[:, None]
                          + ((r - centre) ** 2).sum(-1).max())
    exact = np.sqrt(np.maximum(squared - floor, 0) * w[None]).reshape(len(z), 32, 16)
    exact = exact.min(axis=2)
    assert np.all(exact[np.arange(64), np.arange(64) // 16] == 0)
    whole = np.asarray(layer(z))
    np.testing.assert_allclose(whole, exact.mean(axis=1), rtol=1e-5)
    # The floor moves a distance by ~1e-4 of itself here, the rounding's own size.
    plain = np.sqrt(squared * w[None]).reshape(len(z), 32, 16).min(axis=2).mean(axis=1)
    np.testing.assert_allclose(whole, plain, rtol=5e-4)
    parts = [np.asarray(layer(z[i:i + 7])) for i in range(0, len(z), 7)]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-6)


def test_anomaly_score_adds_mean_squared_error_and_distance_as_squares():
    layer = AnomalyScore(3, reconstruction_weight=0.5, combine="root_sum_squares")
    errors = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 12.0], [4.0, 8.0, 12.0]], np.float32)
    distance = np.array([2.0, 0.0, 1.0], np.float32)
    # row 0: sqrt(0.5 * 2 + 4) = sqrt(5); row 1: sqrt(0.5 * 4) = sqrt(2); row 2: sqrt(4 + 1).
    np.testing.assert_allclose(np.asarray(layer([errors, distance])),
                               [5 ** 0.5, 2 ** 0.5, 5 ** 0.5], rtol=1e-6)
    assert not hasattr(layer, "feature_scale")  # nothing to calibrate
    # Without the distance: the root mean squared error (the weight does not apply).
    alone = AnomalyScore(3, with_distance=False, combine="root_sum_squares")
    np.testing.assert_allclose(np.asarray(alone(errors)), [2 ** 0.5, 2.0, 8 ** 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match=r"expected 'sum' or 'root_sum_squares'. "
                                         r"Received: 'max'"):
        AnomalyScore(3, combine="max")


def test_anomaly_score_of_earlier_bundles_keeps_their_calibrated_sum():
    """Bundles trained before root_sum_squares have no `combine` in their layer config and
    load as the calibrated sum they were trained with."""
    config = {"name": "score", "n_inputs": 3, "with_distance": True,
              "reconstruction_weight": 0.5, "rms": True}
    layer = AnomalyScore.from_config(config)
    layer.build(None)
    assert layer.combine == "sum"
    layer.feature_scale.assign(np.array([1.0, 2.0, 4.0], np.float32))
    layer.term_scale.assign(np.array([0.5, 2.0], np.float32))
    errors = np.array([[1.0, 2.0, 4.0], [0.0, 0.0, 12.0], [4.0, 8.0, 16.0]], np.float32)
    distance = np.array([2.0, 0.0, 1.0], np.float32)
    # row 0: sqrt(mean(1, 1, 1)) / 0.5 = 2 -> 0.5 * 2 + 2 / 2 = 2;
    # row 1: sqrt(mean(0, 0, 3)) / 0.5 = 2 -> 1; row 2: sqrt(mean(4, 4, 4)) / 0.5 = 4 -> 2.5.
    np.testing.assert_allclose(np.asarray(layer([errors, distance])), [2.0, 1.0, 2.5], rtol=1e-6)
    # Older still (before the root): the plain mean, row 2 -> 4 / 0.5 = 8.
    legacy = AnomalyScore.from_config({k: v for k, v in config.items() if k != "rms"})
    legacy.build(None)
    legacy.feature_scale.assign(np.array([1.0, 2.0, 4.0], np.float32))
    legacy.term_scale.assign(np.array([0.5, 2.0], np.float32))
    assert legacy.rms is False
    np.testing.assert_allclose(np.asarray(legacy([errors, distance])), [2.0, 1.0, 4.5], rtol=1e-6)


def test_latent_distance_per_input_is_divided_by_the_root_of_the_dimension():
    ref = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]], np.float32)
    layer = LatentDistance(2, 4, per_input=True)
    layer.reference.assign(ref)
    # [1, 1, 1, 1]: distance 2 to both -> 2 / sqrt(4); [3, 3, 3, 3]: 2 to r1 -> 1.
    points = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    np.testing.assert_allclose(np.asarray(layer(points)), [1.0, 1.0], rtol=1e-6)
    assert LatentDistance.from_config(LatentDistance(2, 4).get_config()).per_input is False


@pytest.mark.parametrize("hidden, basis_dim", [((8,), 0), ((4,), 4), ((), 2)])
def test_the_model_measures_the_latent_distance_between_decoded_codes(hidden, basis_dim):
    """Between decoder outputs in the full width (6), or projected on the basis of the
    last layer's row space when that layer's input (4 units, or the 2-number code) is
    narrower: the same distances either way."""
    m = build(6, hidden_units=hidden, latent_dim=2, latent_neighbors=1, reference_rows=4,
              reference_groups=2)
    layer = m.get_layer(OUTPUT_LATENT_DISTANCE)
    assert (layer.dim, layer.per_input, layer.basis_dim) == (6, True, basis_dim)
    decoder = m.get_layer("decoder")
    codes = np.random.default_rng(3).normal(size=(4, 2)).astype(np.float32)
    ref = np.asarray(decoder(codes), np.float64)
    layer.set_reference(ref, output_basis(decoder) if basis_dim else None)
    assert np.asarray(layer.reference).shape == (4, basis_dim or 6)
    out = predict(m, inputs(5, 6))
    x_hat = np.asarray(decoder(out[OUTPUT_LATENT]), np.float64)
    d = np.sqrt(((x_hat[:, None] - ref[None]) ** 2).sum(-1)).reshape(5, 2, 2).min(2).mean(1)
    np.testing.assert_allclose(out[OUTPUT_LATENT_DISTANCE], d / 6 ** 0.5, rtol=1e-4)
    np.testing.assert_allclose(
        out[OUTPUT_SCORE], np.sqrt(out[OUTPUT_FEATURE_ERRORS].mean(1) + (d / 6 ** 0.5) ** 2),
        rtol=1e-4)


def test_trimmed_loss_leaves_out_the_worst_rows_in_training_only():
    layer = SquaredError(trim_fraction=0.25)
    x = np.zeros((4, 2), np.float32)
    x_hat = np.array([[1, 1], [2, 2], [3, 3], [10, 10]], np.float32)  # row errors 1, 4, 9, 100
    layer([x, x_hat], training=True)
    assert float(layer.losses[-1]) == pytest.approx((1 + 4 + 9) / 3)
    layer([x, x_hat], training=False)
    assert float(layer.losses[-1]) == pytest.approx((1 + 4 + 9 + 100) / 4)


def test_a_model_with_a_latent_distance_round_trips_through_a_keras_file(tmp_path):
    m = build(6, hidden_units=(4,), latent_dim=2, latent_neighbors=2, reference_rows=6,
              reference_groups=3)
    m.get_layer(OUTPUT_LATENT_DISTANCE).set_reference(
        np.random.default_rng(0).normal(size=(6, 6)), output_basis(m.get_layer("decoder")))
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    x = inputs(7, 6)
    before, after = predict(m, x), predict(loaded, x)
    assert set(before) == {OUTPUT_LATENT, OUTPUT_RECONSTRUCTION, OUTPUT_FEATURE_ERRORS,
                           OUTPUT_LATENT_DISTANCE, OUTPUT_SCORE}
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6, atol=1e-6)
    assert loaded.get_layer(OUTPUT_LATENT_DISTANCE).k == 2
    assert loaded.get_layer(OUTPUT_LATENT_DISTANCE).groups == 3
    assert loaded.get_layer(OUTPUT_LATENT_DISTANCE).per_input is True
    assert loaded.get_layer(OUTPUT_LATENT_DISTANCE).basis_dim == 4
    assert loaded.get_layer(OUTPUT_SCORE).combine == "root_sum_squares"


def test_local_weights_in_blocks_equal_the_whole_matrix():
    # 2500 points: three blocks of the distance matrix, the same spacings as at once.
    rng = np.random.default_rng(3)
    points = (rng.normal(size=(2500, 5)) * rng.uniform(0.2, 3.0, size=(2500, 1))).astype(np.float32)
    p = points.astype(np.float64)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    spacing = np.sqrt(d2.min(axis=1))
    np.testing.assert_allclose(local_weights(points),
                               np.maximum(1.0, (spacing.mean() / spacing) ** 2), rtol=1e-4)
