"""Autoencoder architectures: output shapes, serialization, deterministic inference."""
import json

import keras
import numpy as np
import pytest

from latentbeam.config import ModelConfig
from latentbeam.model.architectures import (OUTPUT_FEATURE_ERRORS, OUTPUT_LATENT,
                                            OUTPUT_RECONSTRUCTION, Sampling, SquaredError,
                                            build_autoencoder, default_latent_dim, image_shape)


def build(n_inputs, seed=0, image=None, **model):
    rng = np.random.default_rng(1)
    mean = rng.normal(size=n_inputs).astype(np.float32)
    variance = rng.uniform(0.5, 2.0, size=n_inputs).astype(np.float32)
    keras.utils.set_random_seed(seed)
    return build_autoencoder(ModelConfig(**model), n_inputs=n_inputs, mean=mean,
                             variance=variance, image_feature_shape=image, seed=seed)


def inputs(n_rows, n_inputs):
    return np.random.default_rng(2).normal(size=(n_rows, n_inputs)).astype(np.float32)


def predict(model, x, training=False):
    return {k: np.asarray(v) for k, v in model(x, training=training).items()}


@pytest.mark.parametrize("n_inputs, image, model, latent_dim", [
    (10, None, dict(latent_dim=3, hidden_units=(8, 4)), 3),
    (64, (8, 8), dict(kind="conv2d", latent_dim=4, conv_filters=(4, 8)), 4),
    (35, (7, 5), dict(kind="conv2d", latent_dim=2, conv_filters=(4, 8)), 2),
    (24, (2, 4, 3), dict(kind="conv2d", conv_filters=(4,)), 6),
    (12, None, dict(variational=True, hidden_units=(8,)), 3),
    (12, None, dict(noise_stddev=0.1, hidden_units=(8,)), 3),
    (12, None, dict(dropout=0.2, l2=1e-3, batch_norm=True, hidden_units=(8, 6)), 3),
])
def test_outputs_have_the_contract_shapes(n_inputs, image, model, latent_dim):
    m = build(n_inputs, image=image, **model)
    assert m.name == "autoencoder"
    out = predict(m, inputs(5, n_inputs))
    assert set(out) == {OUTPUT_LATENT, OUTPUT_RECONSTRUCTION, OUTPUT_FEATURE_ERRORS}
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
    assert [default_latent_dim(n) for n in (1, 8, 12, 32, 64, 784)] == [2, 2, 3, 8, 8, 8]
