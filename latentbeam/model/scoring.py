"""The scoring core (numpy/TF, no Beam): one forward pass -> latent, reconstruction, errors.

Threshold calibration after training, Beam batch scoring and streaming scoring all call
`score`; nothing else computes reconstruction errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from latentbeam.errors import BundleError, ConfigError, InputError
from latentbeam.model.features import input_names

# Rows per model call: bounds TF memory for large inputs while keeping calls efficient.
DEFAULT_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Scores:
    latent: np.ndarray  # (n, latent_dim) float32, the code Z
    reconstruction: np.ndarray  # (n, n_inputs) float32, X-hat in input units
    feature_errors: np.ndarray  # (n, n_inputs) float32, squared error in normalized space
    reconstruction_error: np.ndarray  # (n,) float32, mean of feature_errors
    latent_distance: np.ndarray  # (n,) float32, code's distance to training codes (0: term off)
    score: np.ndarray  # (n,) float32, the combined score the threshold applies to
    anomaly_score: np.ndarray  # (n,) float32, score / threshold
    is_anomaly: np.ndarray  # (n,) bool, anomaly_score > 1
    coverage: Optional[np.ndarray] = None  # (n,) float32, share of inputs observed (masked only)

    def __len__(self) -> int:
        return len(self.reconstruction_error)


# How rows with missing (null or NaN) feature values are treated; see `score`.
MISSING_REJECT = "reject"  # dead-lettered (null_value / not_finite)
MISSING_IMPUTE = "impute"  # missing values replaced by the training medians
MISSING_MASK = "mask"  # medians for the forward pass, score over the observed inputs only
MISSING_MODES = (MISSING_REJECT, MISSING_IMPUTE, MISSING_MASK)


def check_missing_mode(info, missing: str) -> None:
    """Refuses an unknown mode, or impute/mask with a bundle that has no medians.

    Raises:
      ValueError: naming the bundle and the fix.
    """
    if missing not in MISSING_MODES:
        raise ConfigError(f"Received an invalid value for `missing`, expected one of "
                         f"{', '.join(MISSING_MODES)}. Received: missing={missing!r}")
    if missing != MISSING_REJECT and info.medians is None:
        raise BundleError(
            f"Bundle {info.path or '(in memory)'} has no training medians (bundle.json "
            f"`imputation`), which `missing={missing}` fills missing values with; it was "
            f"trained by an older latentbeam. Re-train it with `latentbeam train`, or score "
            f"with `--missing reject`.")


def impute(info, x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """x with every unobserved value replaced by its input's training median.

    Args:
      info: the bundle's BundleInfo (with medians).
      x: (n, n_inputs) float32; unobserved values may be anything (NaN).
      observed: (n, n_inputs) bool, True where x holds a real value.

    Returns:
      (n, n_inputs) float32.

    Raises:
      ValueError: the bundle has no medians.
    """
    check_missing_mode(info, MISSING_IMPUTE)
    medians = np.asarray(info.medians, dtype=np.float32)
    return np.where(observed, np.asarray(x, dtype=np.float32), medians[None, :])


# How the AnomalyScore layer adds its terms (see architectures.AnomalyScore).
COMBINE_RSS = "root_sum_squares"  # sqrt(w * mean(e) + d^2): what training builds
COMBINE_SUM = "sum"  # calibrated sum: bundles trained before root_sum_squares


@dataclass(frozen=True)
class ScoreWeights:
    """The AnomalyScore layer's recipe and (for `sum`) its calibrated scales, as numpy."""
    combine: str  # COMBINE_RSS or COMBINE_SUM
    reconstruction_weight: float  # w
    with_distance: bool  # the latent-distance term is on
    rms: bool  # `sum` only: the reconstruction term is the root of the mean
    feature_scale: Optional[np.ndarray] = None  # `sum` only: (n_inputs,) s_j
    term_scale: Optional[np.ndarray] = None  # `sum` only: (2,) s_rec, s_dist


def score_weights(bundle) -> ScoreWeights:
    """The AnomalyScore layer's recipe (the plain mean error for models without it)."""
    from latentbeam.model.architectures import OUTPUT_SCORE

    try:
        layer = bundle.model.get_layer(OUTPUT_SCORE)
    except ValueError:
        n = bundle.info.n_inputs
        return ScoreWeights(COMBINE_SUM, 1.0, False, False, np.ones(n, np.float32),
                            np.ones(2, np.float32))
    if layer.combine == COMBINE_RSS:
        return ScoreWeights(COMBINE_RSS, float(layer.reconstruction_weight),
                            bool(layer.with_distance), True)
    return ScoreWeights(COMBINE_SUM, float(layer.reconstruction_weight),
                        bool(layer.with_distance), layer.rms,
                        np.asarray(layer.feature_scale), np.asarray(layer.term_scale))


def _observed_mean(values: np.ndarray, observed: Optional[np.ndarray]) -> np.ndarray:
    """Row means of `values` over the observed entries (all of them without a mask)."""
    values = np.asarray(values, dtype=np.float64)
    if observed is None:
        return values.mean(axis=1)
    m = np.asarray(observed, dtype=np.float64)
    return (values * m).sum(axis=1) / m.sum(axis=1)


def masked_score(weights: ScoreWeights, feature_errors: np.ndarray,
                 latent_distance: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """The anomaly score with the reconstruction error over the observed inputs only.

        score = sqrt(w * (sum_j m_j e_j) / (sum_j m_j) + d^2)   (root_sum_squares)

    and for `sum` bundles their formula, w * sqrt(mean_j m_j e_j / s_j) / s_rec + d / s_dist.
    The latent distance d is the model's (the forward pass saw the imputed row).
    With every m_j = 1 this is the AnomalyScore layer's formula (same numbers up to
    float32 rounding); rows must have at least one observed input.

    Args:
      weights: from `score_weights`.
      feature_errors: (n, n_inputs) squared errors in normalized space.
      latent_distance: (n,) the latent-distance term (ignored when it is off).
      observed: (n, n_inputs) bool mask m.

    Returns:
      (n,) float32 scores.
    """
    distance = np.asarray(latent_distance, np.float64)
    if weights.combine == COMBINE_RSS:
        error = _observed_mean(feature_errors, observed)
        if not weights.with_distance:
            return np.sqrt(error).astype(np.float32)
        return np.sqrt(weights.reconstruction_weight * error
                       + np.square(distance)).astype(np.float32)
    term = _observed_mean(np.asarray(feature_errors, np.float64) / weights.feature_scale,
                          observed)
    if weights.rms:
        term = np.sqrt(term)
    term = term / float(weights.term_scale[0])
    if weights.with_distance:
        term = weights.reconstruction_weight * term + distance / float(weights.term_scale[1])
    return term.astype(np.float32)


def score(bundle, x: np.ndarray, *, observed: Optional[np.ndarray] = None,
          threshold: Optional[float] = None, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Scores:
    """Scores a float32 matrix with a loaded bundle.

    With `observed` (the `--missing mask` mode) the unobserved values are filled with
    the training medians for the forward pass and the reconstruction term is taken over
    the observed inputs only (`masked_score`); `reconstruction_error` is then the mean
    over the observed inputs, `feature_errors` is NaN at unobserved inputs and
    `coverage` the share of inputs observed. Rows with every input observed get exactly
    the unmasked numbers.

    Args:
      bundle: a `Bundle` from `load_bundle`.
      x: (n, n_inputs) raw features in bundle feature order (input units).
      observed: optional (n, n_inputs) bool, True where x holds a real value; each row
        needs at least one observed value, and the bundle its medians.
      threshold: overrides the bundle's threshold (e.g. during calibration).
      chunk_rows: rows per model call.

    Returns:
      Scores with arrays of n rows.

    Raises:
      ValueError: x or observed has the wrong shape, x holds NaN or an infinity (where
        observed, with `observed`), or observed is given and the bundle has no medians.
    """
    x, observed = _checked(bundle, x, observed)
    # Imported here, not at module level: `latentbeam.model` (and so load_bundle_info,
    # used at pipeline construction time) must not pull in Keras/TensorFlow.
    from latentbeam.model.architectures import (OUTPUT_FEATURE_ERRORS, OUTPUT_LATENT,
                                                OUTPUT_LATENT_DISTANCE, OUTPUT_RECONSTRUCTION,
                                                OUTPUT_SCORE)

    outs = _forward(bundle, x, chunk_rows)
    ferr = outs[OUTPUT_FEATURE_ERRORS]
    error = ferr.mean(axis=1, dtype=np.float64).astype(np.float32)
    # Models without the score head (bundles of format 1) score the reconstruction error.
    combined = outs.get(OUTPUT_SCORE, error)
    distance = outs.get(OUTPUT_LATENT_DISTANCE, np.zeros_like(error))
    coverage = None
    if observed is not None:
        ferr, error, combined, coverage = _masked(bundle, observed, ferr, error, combined,
                                                  distance)
    t = np.float32(bundle.info.threshold.threshold if threshold is None else threshold)
    anomaly_score = (combined / t).astype(np.float32)
    return Scores(latent=outs[OUTPUT_LATENT], reconstruction=outs[OUTPUT_RECONSTRUCTION],
                  feature_errors=ferr, reconstruction_error=error, latent_distance=distance,
                  score=combined, anomaly_score=anomaly_score, is_anomaly=anomaly_score > 1.0,
                  coverage=coverage)


def _checked(bundle, x: np.ndarray, observed: Optional[np.ndarray]):
    """(x as float32, observed as bool) after the shape checks; x imputed where unobserved."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != bundle.info.n_inputs:
        raise InputError(f"score() expects a (rows, {bundle.info.n_inputs}) matrix in the order "
                         f"{bundle.info.feature_names}. Received shape {x.shape}.")
    if observed is not None:
        observed = np.asarray(observed, dtype=bool)
        if observed.shape != x.shape:
            raise InputError(f"score() expects `observed` of the shape of x, {x.shape}. "
                             f"Received shape {observed.shape}.")
        x = impute(bundle.info, x, observed)
    finite = np.isfinite(x)
    if not finite.all():
        # A NaN score compares False with the threshold: the row would read as normal.
        row, col = (int(i[0]) for i in np.nonzero(~finite))
        marked = " (marked observed)" if observed is not None else ""
        raise InputError(
            f"score() received {x[row, col]} at row {row}, input "
            f"{input_names(bundle.info.features)[col]!r}{marked}: a score of such a row is "
            f"NaN and would read as normal. Drop or fix such "
            f"rows, or pass observed=np.isfinite(x) to score only the observed inputs "
            f"(the `--missing mask` mode).")
    return x, observed


def _forward(bundle, x: np.ndarray, chunk_rows: int) -> dict:
    """The forward function's outputs over `x`, one model call per chunk of rows."""
    forward = bundle.function("forward")
    parts = {}
    for start in range(0, max(len(x), 1), chunk_rows):
        out = forward(x[start:start + chunk_rows])
        for key, value in out.items():
            # np.asarray views the (immutable) tensor's buffer; .numpy() would copy it.
            parts.setdefault(key, []).append(np.asarray(value))
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}


def _masked(bundle, observed: np.ndarray, ferr: np.ndarray, error: np.ndarray,
            combined: np.ndarray, distance: np.ndarray):
    """(feature errors, reconstruction error, score, coverage) over the observed inputs.

    Rows with every input observed keep the unmasked numbers.
    """
    counts = observed.sum(axis=1)
    coverage = (counts / observed.shape[1]).astype(np.float32)
    partial = np.flatnonzero(counts < observed.shape[1])
    if not len(partial):
        return ferr, error, combined, coverage
    mask = observed[partial]
    combined = combined.copy()
    combined[partial] = masked_score(score_weights(bundle), ferr[partial], distance[partial], mask)
    error = error.copy()
    error[partial] = _observed_mean(ferr[partial], mask).astype(np.float32)
    return np.where(observed, ferr, np.float32(np.nan)), error, combined, coverage


def decode(bundle, z: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Latent codes (n, latent_dim) -> reconstructions (n, n_inputs) in input units."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != bundle.info.latent_dim:
        raise InputError(f"decode() expects a (rows, {bundle.info.latent_dim}) latent matrix. "
                         f"Received shape {z.shape}.")
    fn = bundle.function("decode")
    parts = [np.asarray(fn(z[s:s + chunk_rows])) for s in range(0, max(len(z), 1), chunk_rows)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def latent_sampler(bundle, seed: int = 0) -> Callable[[int], np.ndarray]:
    """draw(n): the next n latent codes of one seeded stream (float32, (n, latent_dim)).

    A VAE samples its prior N(0, I); a plain autoencoder samples a Gaussian fitted to
    the latent codes of its calibration rows (stored in bundle.json). Draws of n1 then
    n2 codes equal one draw of n1 + n2, so codes can be drawn a chunk at a time.
    """
    rng = np.random.default_rng(seed)
    k = bundle.info.latent_dim
    stats = bundle.info.latent_stats
    if bundle.info.variational or not stats:
        return lambda n: rng.standard_normal((n, k)).astype(np.float32)
    mean = np.asarray(stats["mean"], dtype=np.float64)
    cov = np.asarray(stats["cov"], dtype=np.float64)
    return lambda n: rng.multivariate_normal(mean, cov, size=n, method="eigh").astype(np.float32)


def sample_latent(bundle, num_samples: int, seed: int = 0) -> np.ndarray:
    """`num_samples` latent codes drawn from the model's latent distribution
    (`latent_sampler`)."""
    return latent_sampler(bundle, seed)(num_samples)
