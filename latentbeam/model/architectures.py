"""Keras 3 autoencoders: dense and conv2d hourglass networks, variational and denoising.

Every model built here has the same interface, which the scoring core relies on:

    input  "features"        (batch, n_inputs) raw float32 features in bundle order
    output "latent"          (batch, latent_dim) the code Z (the mean for a VAE)
    output "reconstruction"  (batch, n_inputs) X-hat in input units
    output "feature_errors"  (batch, n_inputs) squared error in normalized space

The normalization (adapted on training rows) is a layer of the model, so scoring takes
raw features. The training loss is added by the `SquaredError` layer itself: it is, by
construction, the mean of the very `feature_errors` that scoring reports. Nested models
named "encoder" and "decoder" are reachable with `model.get_layer(...)`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import keras
import numpy as np
from keras import layers, ops

from latentbeam.config import ModelConfig

PACKAGE = "latentbeam"
OUTPUT_LATENT = "latent"
OUTPUT_RECONSTRUCTION = "reconstruction"
OUTPUT_FEATURE_ERRORS = "feature_errors"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(layers.Layer):
    """VAE latent: draws z ~ N(mean, exp(log_var)) in training, returns the mean otherwise.

    Adds `kl_weight * KL(q(z|x) || N(0, I))` (mean over the batch) as a layer loss.
    """

    def __init__(self, kl_weight: float = 1.0, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        z_mean, z_log_var = inputs
        kl = -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        self.add_loss(self.kl_weight * ops.mean(kl))
        if not training:
            return z_mean
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "kl_weight": self.kl_weight, "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SquaredError(layers.Layer):
    """Per-feature squared error (x - x_hat)^2; adds its mean as the reconstruction loss."""

    def __init__(self, loss_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.loss_weight = float(loss_weight)

    def call(self, inputs):
        x, x_hat = inputs
        err = ops.square(x - x_hat)
        self.add_loss(self.loss_weight * ops.mean(err))
        return err

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "loss_weight": self.loss_weight}


def default_latent_dim(n_inputs: int) -> int:
    return int(min(8, max(2, n_inputs // 4)))


def _hidden(x, units: int, cfg: ModelConfig, name: str):
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = layers.Dense(units, kernel_regularizer=reg, name=name)(x)
    if cfg.batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.Activation(cfg.activation, name=f"{name}_act")(x)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name=f"{name}_dropout")(x)
    return x


def _latent_head(h, latent_dim: int, cfg: ModelConfig, seed: Optional[int]):
    if not cfg.variational:
        return layers.Dense(latent_dim, name="z")(h)
    z_mean = layers.Dense(latent_dim, name="z_mean")(h)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(h)
    return Sampling(kl_weight=cfg.kl_weight, seed=seed, name="sampling")([z_mean, z_log_var])


def _dense_encoder_decoder(n_inputs: int, latent_dim: int, cfg: ModelConfig, seed):
    x_in = keras.Input((n_inputs,), name="normalized")
    h = x_in
    if cfg.noise_stddev > 0:
        h = layers.GaussianNoise(cfg.noise_stddev, seed=seed, name="input_noise")(h)
    for i, units in enumerate(cfg.hidden_units):
        h = _hidden(h, units, cfg, f"enc_{i}")
    encoder = keras.Model(x_in, _latent_head(h, latent_dim, cfg, seed), name="encoder")

    z_in = keras.Input((latent_dim,), name="z")
    h = z_in
    for i, units in enumerate(reversed(cfg.hidden_units)):
        h = _hidden(h, units, cfg, f"dec_{i}")
    out = layers.Dense(n_inputs, name="x_hat")(h)
    decoder = keras.Model(z_in, out, name="decoder")
    return encoder, decoder


def image_shape(shape: Sequence[int]) -> Tuple[int, int, int]:
    """(h, w, c) for a 2-D or 3-D feature shape; raises ValueError otherwise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3:
        return shape
    raise ValueError(
        f"`model.kind: conv2d` needs one image feature of shape (h, w) or (h, w, c). "
        f"Received shape: {list(shape)}. Use `model.kind: dense` for tabular data.")


def _conv_encoder_decoder(shape, latent_dim: int, cfg: ModelConfig, seed):
    h_, w_, c_ = image_shape(shape)
    n_inputs = h_ * w_ * c_
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x_in = keras.Input((n_inputs,), name="normalized")
    h = x_in
    if cfg.noise_stddev > 0:
        h = layers.GaussianNoise(cfg.noise_stddev, seed=seed, name="input_noise")(h)
    h = layers.Reshape((h_, w_, c_), name="to_image")(h)
    for i, filters in enumerate(cfg.conv_filters):
        h = layers.Conv2D(filters, 3, strides=2, padding="same", kernel_regularizer=reg,
                          name=f"enc_conv_{i}")(h)
        if cfg.batch_norm:
            h = layers.BatchNormalization(name=f"enc_conv_{i}_bn")(h)
        h = layers.Activation(cfg.activation, name=f"enc_conv_{i}_act")(h)
    h = layers.Flatten(name="flatten")(h)
    encoder = keras.Model(x_in, _latent_head(h, latent_dim, cfg, seed), name="encoder")

    k = len(cfg.conv_filters)
    sh, sw = math.ceil(h_ / 2 ** k), math.ceil(w_ / 2 ** k)
    top = cfg.conv_filters[-1] if cfg.conv_filters else c_
    z_in = keras.Input((latent_dim,), name="z")
    h = layers.Dense(sh * sw * top, activation=cfg.activation, name="dec_dense")(z_in)
    h = layers.Reshape((sh, sw, top), name="dec_reshape")(h)
    for i, filters in enumerate(reversed(cfg.conv_filters)):
        h = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", kernel_regularizer=reg,
                                   name=f"dec_conv_{i}")(h)
        if cfg.batch_norm:
            h = layers.BatchNormalization(name=f"dec_conv_{i}_bn")(h)
        h = layers.Activation(cfg.activation, name=f"dec_conv_{i}_act")(h)
    h = layers.Conv2D(c_, 3, padding="same", name="dec_out")(h)
    extra_h, extra_w = sh * 2 ** k - h_, sw * 2 ** k - w_
    if extra_h or extra_w:
        h = layers.Cropping2D(((0, extra_h), (0, extra_w)), name="crop")(h)
    out = layers.Flatten(name="x_hat")(h)
    decoder = keras.Model(z_in, out, name="decoder")
    return encoder, decoder


def build_autoencoder(cfg: ModelConfig, *, n_inputs: int, mean: np.ndarray, variance: np.ndarray,
                      image_feature_shape: Optional[Sequence[int]] = None,
                      seed: Optional[int] = None) -> keras.Model:
    """Builds the full scoring/training model (see the module docstring for its outputs).

    Args:
      cfg: model options.
      n_inputs: width of the flat input (sum of feature sizes).
      mean, variance: (n_inputs,) per-input normalization statistics of training rows;
        zero variances must already be replaced (see training.normalization_stats).
      image_feature_shape: the feature's shape for `kind: conv2d`.
      seed: seeds sampling and input noise.

    Returns:
      An uncompiled keras.Model named "autoencoder".
    """
    if n_inputs < 1:
        raise ValueError(f"Received an invalid value for `n_inputs`, expected a positive "
                         f"integer. Received: n_inputs={n_inputs}")
    latent_dim = cfg.latent_dim or default_latent_dim(n_inputs)
    if cfg.kind == "conv2d":
        if image_feature_shape is None:
            raise ValueError("`model.kind: conv2d` needs exactly one image-shaped feature "
                             "(a list column of shape (h, w) or (h, w, c)).")
        encoder, decoder = _conv_encoder_decoder(image_feature_shape, latent_dim, cfg, seed)
    else:
        encoder, decoder = _dense_encoder_decoder(n_inputs, latent_dim, cfg, seed)

    mean = np.asarray(mean, dtype=np.float32).reshape(n_inputs)
    variance = np.asarray(variance, dtype=np.float32).reshape(n_inputs)
    x = keras.Input((n_inputs,), name="features")
    x_norm = layers.Normalization(mean=mean, variance=variance, name="normalize")(x)
    z = encoder(x_norm)
    x_hat_norm = decoder(z)
    recon = layers.Normalization(mean=mean, variance=variance, invert=True,
                                 name="denormalize")(x_hat_norm)
    errors = SquaredError(name=OUTPUT_FEATURE_ERRORS)([x_norm, x_hat_norm])
    z_out = layers.Identity(name=OUTPUT_LATENT)(z)
    recon = layers.Identity(name=OUTPUT_RECONSTRUCTION)(recon)
    return keras.Model(
        x, {OUTPUT_LATENT: z_out, OUTPUT_RECONSTRUCTION: recon, OUTPUT_FEATURE_ERRORS: errors},
        name="autoencoder")

