"""The scoring core (numpy/TF, no Beam): one forward pass -> latent, reconstruction, errors.

Threshold calibration after training, Beam batch scoring and streaming scoring all call
`score`; nothing else computes reconstruction errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

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

    def __len__(self) -> int:
        return len(self.reconstruction_error)


def score(bundle, x: np.ndarray, *, threshold: Optional[float] = None,
          chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Scores:
    """Scores a float32 matrix with a loaded bundle.

    Args:
      bundle: a `Bundle` from `load_bundle`.
      x: (n, n_inputs) raw features in bundle feature order (input units).
      threshold: overrides the bundle's threshold (e.g. during calibration).
      chunk_rows: rows per model call.

    Returns:
      Scores with arrays of n rows.

    Raises:
      ValueError: x has the wrong width.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != bundle.info.n_inputs:
        raise ValueError(f"score() expects a (rows, {bundle.info.n_inputs}) matrix in the order "
                         f"{bundle.info.feature_names}. Received shape {x.shape}.")
    # Imported here, not at module level: `latentbeam.model` (and so load_bundle_info,
    # used at pipeline construction time) must not pull in Keras/TensorFlow.
    from latentbeam.model.architectures import (OUTPUT_FEATURE_ERRORS, OUTPUT_LATENT,
                                                OUTPUT_LATENT_DISTANCE, OUTPUT_RECONSTRUCTION,
                                                OUTPUT_SCORE)

    forward = bundle.function("forward")
    parts = {}
    for start in range(0, max(len(x), 1), chunk_rows):
        out = forward(x[start:start + chunk_rows])
        for key, value in out.items():
            # np.asarray views the (immutable) tensor's buffer; .numpy() would copy it.
            parts.setdefault(key, []).append(np.asarray(value))
    outs = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}
    ferr = outs[OUTPUT_FEATURE_ERRORS]
    error = ferr.mean(axis=1, dtype=np.float64).astype(np.float32)
    # Models without the score head (bundles of format 1) score the reconstruction error.
    combined = outs.get(OUTPUT_SCORE, error)
    distance = outs.get(OUTPUT_LATENT_DISTANCE, np.zeros_like(error))
    t = np.float32(bundle.info.threshold.threshold if threshold is None else threshold)
    anomaly_score = (combined / t).astype(np.float32)
    return Scores(latent=outs[OUTPUT_LATENT], reconstruction=outs[OUTPUT_RECONSTRUCTION],
                  feature_errors=ferr, reconstruction_error=error, latent_distance=distance,
                  score=combined, anomaly_score=anomaly_score, is_anomaly=anomaly_score > 1.0)


def decode(bundle, z: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Latent codes (n, latent_dim) -> reconstructions (n, n_inputs) in input units."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != bundle.info.latent_dim:
        raise ValueError(f"decode() expects a (rows, {bundle.info.latent_dim}) latent matrix. "
                         f"Received shape {z.shape}.")
    fn = bundle.function("decode")
    parts = [np.asarray(fn(z[s:s + chunk_rows])) for s in range(0, max(len(z), 1), chunk_rows)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def sample_latent(bundle, num_samples: int, seed: int = 0) -> np.ndarray:
    """Latent codes drawn from the model's latent distribution.

    A VAE samples its prior N(0, I); a plain autoencoder samples a Gaussian fitted to
    the latent codes of its calibration rows (stored in bundle.json).
    """
    rng = np.random.default_rng(seed)
    k = bundle.info.latent_dim
    stats = bundle.info.latent_stats
    if bundle.info.variational or not stats:
        return rng.standard_normal((num_samples, k)).astype(np.float32)
    mean = np.asarray(stats["mean"], dtype=np.float64)
    cov = np.asarray(stats["cov"], dtype=np.float64)
    return rng.multivariate_normal(mean, cov, size=num_samples, method="eigh").astype(np.float32)
