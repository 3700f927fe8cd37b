"""Keras 3 autoencoders: dense and conv2d hourglass networks, variational and denoising.

Every model built here has the same interface, which the scoring core relies on:

    input  "features"        (batch, n_inputs) raw float32 features in bundle order
    output "latent"          (batch, latent_dim) the code Z (the mean for a VAE)
    output "reconstruction"  (batch, n_inputs) X-hat in input units
    output "feature_errors"  (batch, n_inputs) squared error in normalized space
    output "latent_distance" (batch,) distance of the code to the training codes, measured
                             where the decoder maps them (only when the term is on)
    output "score"           (batch,) the anomaly score (see `AnomalyScore`)

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
from latentbeam.errors import ConfigError
from latentbeam.model.scoring import COMBINE_RSS, COMBINE_SUM

PACKAGE = "latentbeam"
OUTPUT_LATENT = "latent"
OUTPUT_RECONSTRUCTION = "reconstruction"
OUTPUT_FEATURE_ERRORS = "feature_errors"
OUTPUT_LATENT_DISTANCE = "latent_distance"
OUTPUT_SCORE = "score"


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
    """Per-feature squared error (x - x_hat)^2; adds its mean as the reconstruction loss.

    With `trim_fraction` > 0 the training loss leaves out that share of each batch's rows
    with the largest errors (a trimmed mean): anomalies hidden in the training data then
    do not pull the model towards reconstructing them. Evaluation (validation loss,
    scoring) always uses every row.
    """

    def __init__(self, loss_weight: float = 1.0, trim_fraction: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.loss_weight = float(loss_weight)
        self.trim_fraction = float(trim_fraction)

    def call(self, inputs, training=None):
        x, x_hat = inputs
        err = ops.square(x - x_hat)
        if training and self.trim_fraction > 0:
            rows = ops.mean(err, axis=-1)
            n = ops.cast(ops.shape(rows)[0], "float32")
            keep = ops.maximum(1.0, ops.floor((1.0 - self.trim_fraction) * n))
            rank = ops.cast(ops.argsort(ops.argsort(rows)), "float32")
            mask = ops.cast(rank < keep, err.dtype)
            self.add_loss(self.loss_weight * ops.sum(rows * mask) / ops.sum(mask))
        else:
            self.add_loss(self.loss_weight * ops.mean(err))
        return err

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "loss_weight": self.loss_weight,
                "trim_fraction": self.trim_fraction}


# Squared distances below this share of |code|^2 + max |reference|^2 (about the references'
# centre) count as 0: 16x float32's rounding of the expanded form.
SNAP = 2.0 ** -19


@keras.saving.register_keras_serializable(package=PACKAGE)
class LatentDistance(layers.Layer):
    """Distance from each point to reference points, averaged over disjoint reference groups.

    The model feeds it the decoder's output, X-hat in normalized units, and the
    references are the decoded codes of a seeded, shuffled sample of training rows (set
    after training): the distance between two codes as the decoder maps them, i.e.
    measured in the input's own units rather than along the code's arbitrary axes.
    (Bundles trained before that feed it the codes themselves.) The references are a
    non-trainable weight, so the distance is part of the saved model's forward pass.
    They are split into `groups` disjoint groups of equal size; the term is the mean over
    the groups of the mean distance to the `k` nearest references of each group (an
    ensemble of nearest-neighbour distances over subsamples). It is a density term:
    large when the row's code lies where no training row's code does, even when the
    decoder reconstructs the row well (a smooth decoder fills the empty regions between
    training codes with plausible rows). With `per_input` the distance is divided by
    sqrt(dim): a root mean square per input, in the units of the reconstruction error.

    With `basis_dim`, inputs and references are first projected on an orthonormal
    (dim, basis_dim) basis. A dense decoder's output is `h @ W + b` with W of shape
    (width of h, dim), so the difference of two outputs lies in W's row space: projected
    on a basis of it, their distance is unchanged and costs basis_dim, not dim, per
    reference (784-pixel images: 64 instead of 784).

    Why many small groups rather than one nearest code: a row whose own code (or a
    near-duplicate's) is among the references would score 0 against a single nearest
    neighbour, and so would a tight cluster of anomalies in contaminated training data;
    against G groups such a match moves one of G terms, and a small group rarely holds
    more than one member of such a cluster (the subsampling that makes an isolation
    forest robust to dirty training data). It costs the same one matmul as `groups=1`.
    """

    def __init__(self, num_reference: int, dim: int, k: int = 1, groups: int = 1,
                 per_input: bool = False, basis_dim: int = 0, local: bool = False, **kwargs):
        super().__init__(**kwargs)
        if groups < 1 or num_reference % groups:
            raise ConfigError(f"Received an invalid value for `groups`, expected a positive "
                             f"divisor of num_reference={num_reference}. Received: "
                             f"groups={groups}")
        if not 1 <= k <= num_reference // groups:
            raise ConfigError(f"Received an invalid value for `k`, expected 1 <= k <= "
                             f"num_reference / groups={num_reference // groups}. Received: k={k}")
        self.num_reference = int(num_reference)
        self.dim = int(dim)
        self.k = int(k)
        self.groups = int(groups)
        self.per_input = bool(per_input)
        self.basis_dim = int(basis_dim)
        if self.basis_dim:
            self.basis = self.add_weight(shape=(self.dim, self.basis_dim), initializer="zeros",
                                         trainable=False, name="basis")
        self.reference = self.add_weight(shape=(self.num_reference, self.basis_dim or self.dim),
                                         initializer="zeros", trainable=False, name="reference")
        self.local = bool(local)
        if self.local:
            self.reference_weight = self.add_weight(shape=(self.num_reference,),
                                                    initializer="ones", trainable=False,
                                                    name="reference_weight")

    def set_reference(self, points: np.ndarray, basis: Optional[np.ndarray] = None) -> None:
        """Stores (num_reference, dim) reference points, and with `basis_dim` the
        (dim, basis_dim) orthonormal basis they and every input are projected on."""
        points = np.asarray(points, np.float32)
        if self.basis_dim:
            basis = np.asarray(basis, np.float32)
            self.basis.assign(basis)
            points = points @ basis
        self.reference.assign(points)
        if self.local:
            self.reference_weight.assign(local_weights(points))

    def call(self, points):
        if self.basis_dim:
            points = ops.matmul(points, self.basis)
        ref = ops.convert_to_tensor(self.reference)
        size = self.num_reference // self.groups
        # Distances taken about the references' centre: the expansion below then cancels
        # only at the scale of the codes' spread, not of their offset from 0.
        centre = ops.mean(ref, axis=0, keepdims=True)
        ref = ref - centre
        points = points - centre
        if self.local:
            return self._local_distance(points, ref, size)
        # |p - r_i|^2 = |p|^2 + (|r_i|^2 - 2 p.r_i): one matmul of [p, 1] with
        # [-2 r_i, |r_i|^2] gives the second part for every reference, and a min (or the
        # k smallest) per group needs neither an argmin nor a gather, which cost 3x the
        # matmul on 8192-row batches.
        partial = ops.matmul(
            ops.concatenate([points, ops.ones_like(points[:, :1])], axis=-1),
            ops.transpose(ops.concatenate(
                [-2.0 * ref, ops.sum(ops.square(ref), axis=-1, keepdims=True)], axis=-1)))
        partial = ops.reshape(partial, (-1, self.groups, size))
        if self.k == 1:
            nearest = ops.min(partial, axis=-1, keepdims=True)
        else:
            nearest = -ops.top_k(-partial, self.k, sorted=False)[0]
        length = ops.sum(ops.square(points), axis=-1)[:, None, None]
        squared = length + nearest
        # The expansion's float32 rounding (~1e-7 of |p|^2 + |r|^2, and it depends on the
        # batch's size) is all that separates a code that is a reference from it: below
        # SNAP of that scale the distance is 0, so such a row scores the same in any batch.
        floor = SNAP * (length + ops.max(ops.sum(ops.square(ref), axis=-1)))
        squared = ops.where(squared < floor, 0.0, squared)
        distance = ops.mean(ops.sqrt(squared), axis=(1, 2))
        return distance / math.sqrt(self.dim) if self.per_input else distance

    def _local_distance(self, points, ref, size):
        """`call` with each reference's squared distances weighed (`local_weights`).

        The weight has to apply before each group's minimum, so the whole square comes
        from the one matmul: [p, 1, |p|^2] against [-2 w r, w (|r|^2 - SNAP m),
        w (1 - SNAP)] gives w (|p - r|^2 - SNAP (|p|^2 + m)), m the largest |r|^2, i.e.
        the weighted square less the rounding floor of the plain path; below 0 it is 0 (a
        row that is a reference). Every square loses that floor, about 2e-6 of the codes'
        squared spread: nothing for a distance of the spread's order, 0.15% of a distance
        of 3% of it (which the plain path computes only to the same precision). No pass
        over the (rows, references) matrix beyond the minimum.
        """
        w = ops.convert_to_tensor(self.reference_weight)[:, None]
        ref_sq = ops.sum(ops.square(ref), axis=-1, keepdims=True)
        top = ops.max(ref_sq)
        right = ops.concatenate([-2.0 * w * ref, w * (ref_sq - SNAP * top),
                                 w * (1.0 - SNAP)], axis=-1)
        ones = ops.ones_like(points[:, :1])
        left = ops.concatenate(
            [points, ones, ops.sum(ops.square(points), axis=-1, keepdims=True)], axis=-1)
        squared = ops.reshape(ops.matmul(left, ops.transpose(right)), (-1, self.groups, size))
        if self.k == 1:
            nearest = ops.min(squared, axis=-1, keepdims=True)
        else:
            nearest = -ops.top_k(-squared, self.k, sorted=False)[0]
        distance = ops.mean(ops.sqrt(ops.maximum(nearest, 0.0)), axis=(1, 2))
        return distance / math.sqrt(self.dim) if self.per_input else distance

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = {**super().get_config(), "num_reference": self.num_reference, "dim": self.dim,
                  "k": self.k, "groups": self.groups}
        # Only when set: the config of an earlier bundle's layer must stay what it was, as
        # the bundle's model_version hashes it.
        if self.per_input:
            config["per_input"] = True
        if self.basis_dim:
            config["basis_dim"] = self.basis_dim
        if self.local:
            config["local"] = True
        return config


def local_weights(points: np.ndarray) -> np.ndarray:
    """(n,) weights of n reference points' squared distances: max(1, (s / s_i)^2), s_i
    the distance from point i to its nearest distinct other point and s the mean of s_i.

    A reference's nearest-neighbour spacing measures how densely training rows lie
    around it. Where they lie more densely than on average, its distances count in units
    of its own spacing (the ratio the local outlier factor takes), scaled by the mean
    spacing s to stay in the input's units: a row just outside a tight cluster is as far
    out as a row that far outside the loosest. A sparse reference keeps plain distances
    (weight 1): in dirty training data the sparsest references are the anomalies
    themselves, and their isolation must not make their surroundings look normal. Points
    closer than a thousandth of the median distance between points count as one point
    (a table of integers repeats rows), so a repeat does not make its spacing 0. Memory:
    1024 rows of the distance matrix at a time.
    """
    p = np.asarray(points, np.float64)
    p = p - p.mean(axis=0)
    sq = np.sum(p * p, axis=1)

    def squared_block(start):  # (rows start.., all points), a point to itself at inf
        block = sq[start:start + 1024, None] + sq[None, :] - 2.0 * (p[start:start + 1024] @ p.T)
        block = np.maximum(block, 0.0)
        block[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        return block

    # The references are a shuffled sample: the first block's pairs show their spacing.
    first = squared_block(0)
    positive = first[np.isfinite(first) & (first > 0)]
    if positive.size == 0:
        return np.ones(len(p), np.float32)
    tiny = 1e-6 * np.median(positive)  # (1e-3 of the median distance)^2
    nearest = [np.min(np.where(first > tiny, first, np.inf), axis=1)]
    for start in range(1024, len(p), 1024):
        block = squared_block(start)
        nearest.append(np.min(np.where(block > tiny, block, np.inf), axis=1))
    spacing = np.sqrt(np.concatenate(nearest))
    finite = np.isfinite(spacing)
    if not finite.any():
        return np.ones(len(p), np.float32)
    spacing = np.where(finite, spacing, spacing[finite].max())
    return np.maximum(1.0, np.square(np.mean(spacing) / spacing)).astype(np.float32)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AnomalyScore(layers.Layer):
    """The anomaly score from the per-feature errors and the latent distance.

    `combine="root_sum_squares"` (what training builds):

        score = sqrt(w * mean_j(e_j) + d^2)

    e_j are the per-feature squared errors in normalized space and d the latent distance
    per input (`LatentDistance` with `per_input`, on decoded codes), so both parts are in
    the normalized input's units: the row's distance to the training rows split into
    the part off the decoder's surface (the reconstruction residual) and the part along
    it (how far the row's code lies from training codes, as the decoder maps them). They
    add as squares, like the two sides of a right angle; nothing is calibrated.
    w (`reconstruction_weight`) weighs the residual. Without the distance term:
    sqrt(mean_j(e_j)), the root mean squared error (w is not used).

    `combine="sum"` is the formula of bundles trained before, which load with it and
    score as they did:

        score = w * sqrt(mean_j(e_j / s_j)) / s_error  [+ latent_distance / s_distance]

    with per-feature scales s_j and term spreads s_error, s_distance set from calibration
    rows (non-trainable weights); `rms=False` drops the root (older still).
    """

    def __init__(self, n_inputs: int, with_distance: bool = True,
                 reconstruction_weight: float = 1.0, rms: bool = False,
                 combine: str = COMBINE_SUM, **kwargs):
        super().__init__(**kwargs)
        if combine not in (COMBINE_SUM, COMBINE_RSS):
            raise ConfigError(f"Received an invalid value for `combine`, expected "
                              f"{COMBINE_SUM!r} or {COMBINE_RSS!r}. Received: {combine!r}")
        self.n_inputs = int(n_inputs)
        self.with_distance = bool(with_distance)
        self.rms = bool(rms)
        self.combine = combine
        self.reconstruction_weight = float(reconstruction_weight)
        if combine == COMBINE_SUM:
            self.feature_scale = self.add_weight(shape=(self.n_inputs,), initializer="ones",
                                                 trainable=False, name="feature_scale")
            self.term_scale = self.add_weight(shape=(2,), initializer="ones",
                                              trainable=False, name="term_scale")

    def call(self, inputs):
        errors = inputs[0] if self.with_distance else inputs
        if self.combine == COMBINE_RSS:
            if not self.with_distance:
                return ops.sqrt(ops.mean(errors, axis=-1))
            return ops.sqrt(self.reconstruction_weight * ops.mean(errors, axis=-1)
                            + ops.square(inputs[1]))
        scale = ops.convert_to_tensor(self.term_scale)
        score = ops.mean(errors / self.feature_scale, axis=-1)
        if self.rms:
            score = ops.sqrt(score)
        score = score / scale[0]
        if self.with_distance:
            score = self.reconstruction_weight * score + inputs[1] / scale[1]
        return score

    def compute_output_shape(self, input_shape):
        first = input_shape[0] if self.with_distance else input_shape
        return (first[0],)

    def get_config(self):
        config = {**super().get_config(), "n_inputs": self.n_inputs,
                  "with_distance": self.with_distance,
                  "reconstruction_weight": self.reconstruction_weight, "rms": self.rms}
        # Only when not the default of earlier bundles, whose model_version hashes the config.
        return config if self.combine == COMBINE_SUM else {**config, "combine": self.combine}


def default_latent_dim(n_inputs: int) -> int:
    return int(min(8, max(2, n_inputs // 2)))


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
    raise ConfigError(
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
                      seed: Optional[int] = None, trim_fraction: float = 0.0,
                      latent_neighbors: int = 0, reference_rows: int = 1,
                      reference_groups: int = 1, local_scale: bool = False,
                      reconstruction_weight: float = 1.0) -> keras.Model:
    """Builds the full scoring/training model (see the module docstring for its outputs).

    Args:
      cfg: model options.
      n_inputs: width of the flat input (sum of feature sizes).
      mean, variance: (n_inputs,) the normalization's centre and squared scale per input
        (see data.robust_scaling); variances must be positive.
      image_feature_shape: the feature's shape for `kind: conv2d`.
      seed: seeds sampling and input noise.
      trim_fraction: share of each training batch's worst rows left out of the loss.
      latent_neighbors: k nearest references per group (0: no latent-distance term).
      reference_rows: number of decoded training codes the latent distance compares
        against (set after training).
      reference_groups: disjoint groups the references are split into (a divisor of
        reference_rows).
      local_scale: weigh each reference's distances by its local spacing
        (`local_weights`).
      reconstruction_weight: weight of the squared reconstruction error in the score.

    Returns:
      An uncompiled keras.Model named "autoencoder".
    """
    if n_inputs < 1:
        raise ConfigError(f"Received an invalid value for `n_inputs`, expected a positive "
                         f"integer. Received: n_inputs={n_inputs}")
    latent_dim = cfg.latent_dim or default_latent_dim(n_inputs)
    encoder, decoder = _encoder_decoder(cfg, n_inputs, latent_dim, image_feature_shape, seed)
    mean = np.asarray(mean, dtype=np.float32).reshape(n_inputs)
    variance = np.asarray(variance, dtype=np.float32).reshape(n_inputs)
    x = keras.Input((n_inputs,), name="features")
    x_norm = layers.Normalization(mean=mean, variance=variance, name="normalize")(x)
    z = encoder(x_norm)
    x_hat_norm = decoder(z)
    recon = layers.Normalization(mean=mean, variance=variance, invert=True,
                                 name="denormalize")(x_hat_norm)
    errors = SquaredError(trim_fraction=trim_fraction,
                          name=OUTPUT_FEATURE_ERRORS)([x_norm, x_hat_norm])
    z_out = layers.Identity(name=OUTPUT_LATENT)(z)
    recon = layers.Identity(name=OUTPUT_RECONSTRUCTION)(recon)
    outputs = {OUTPUT_LATENT: z_out, OUTPUT_RECONSTRUCTION: recon, OUTPUT_FEATURE_ERRORS: errors}
    if latent_neighbors:
        distance = LatentDistance(reference_rows, n_inputs, k=latent_neighbors,
                                  groups=reference_groups, per_input=True,
                                  basis_dim=_output_basis_dim(cfg, n_inputs, latent_dim),
                                  local=local_scale, name=OUTPUT_LATENT_DISTANCE)(x_hat_norm)
        outputs[OUTPUT_LATENT_DISTANCE] = distance
        outputs[OUTPUT_SCORE] = AnomalyScore(
            n_inputs, reconstruction_weight=reconstruction_weight, combine=COMBINE_RSS,
            name=OUTPUT_SCORE)([errors, distance])
    else:
        outputs[OUTPUT_SCORE] = AnomalyScore(n_inputs, with_distance=False,
                                             combine=COMBINE_RSS, name=OUTPUT_SCORE)(errors)
    return keras.Model(x, outputs, name="autoencoder")


def _output_basis_dim(cfg: ModelConfig, n_inputs: int, latent_dim: int) -> int:
    """Width of the dense decoder's last hidden layer when it is below the output's
    (its outputs then span that many dimensions: see LatentDistance.basis_dim); else 0."""
    if cfg.kind == "conv2d":
        return 0
    width = cfg.hidden_units[0] if cfg.hidden_units else latent_dim
    return width if width < n_inputs else 0


def output_basis(decoder) -> np.ndarray:
    """(n_inputs, width) orthonormal basis of a dense decoder's output differences: the
    right singular vectors of its last layer's kernel."""
    kernel = np.asarray(decoder.get_layer("x_hat").kernel, np.float64)  # (width, n_inputs)
    _, _, vt = np.linalg.svd(kernel, full_matrices=False)
    return vt.T.astype(np.float32)


def _encoder_decoder(cfg: ModelConfig, n_inputs: int, latent_dim: int,
                     image_feature_shape: Optional[Sequence[int]], seed: Optional[int]):
    if cfg.kind != "conv2d":
        return _dense_encoder_decoder(n_inputs, latent_dim, cfg, seed)
    if image_feature_shape is None:
        raise ConfigError("`model.kind: conv2d` needs exactly one image-shaped feature "
                         "(a list column of shape (h, w) or (h, w, c)).")
    return _conv_encoder_decoder(image_feature_shape, latent_dim, cfg, seed)

