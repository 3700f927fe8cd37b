"""Threshold calibration on reconstruction errors of rows the model never trained on."""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from latentbeam.errors import ConfigError, InputError
from latentbeam.model.bundle import Threshold

# Error quantiles stored in bundle.json (and used by reports / drift checks).
QUANTILE_LEVELS = (0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999)
# Scale that makes the MAD a consistent estimator of the standard deviation (normal data).
MAD_SCALE = 1.4826


def fit_threshold(errors: np.ndarray, method: str, value: Optional[float],
                  labels: Optional[np.ndarray] = None) -> Threshold:
    """Chooses the reconstruction-error threshold.

    Args:
      errors: (n,) reconstruction errors of the calibration rows.
      method: quantile (value = level), contamination (value = expected anomaly
        fraction), mad (median + value * MAD), mean_std (mean + value * std) or f1
        (threshold maximizing F1 against `labels`).
      value: the method's parameter.
      labels: (n,) 1 for known anomalies, 0 otherwise; needed by f1.

    Returns:
      A Threshold; `parameters` records the statistics it was derived from.

    Raises:
      InputError: no errors, or f1 labels that are not 0/1 of both classes.
      ConfigError: an unknown method, or f1 without labels.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise InputError("Cannot calibrate a threshold on 0 calibration rows.")
    params: Dict[str, float] = {}
    if method == "quantile":
        t = float(np.quantile(errors, value))
    elif method == "contamination":
        t = float(np.quantile(errors, 1.0 - value))
    elif method == "mad":
        median = float(np.median(errors))
        mad = float(np.median(np.abs(errors - median))) * MAD_SCALE
        params = {"median": median, "mad": mad}
        t = median + value * mad
    elif method == "mean_std":
        mean, std = float(errors.mean()), float(errors.std())
        params = {"mean": mean, "std": std}
        t = mean + value * std
    elif method == "f1":
        t, params = _best_f1(errors, labels)
    else:
        raise ConfigError(f"Unknown threshold method {method!r}; expected quantile, "
                          f"contamination, mad, mean_std or f1.")
    t = usable_threshold(t, f"`threshold.method: {method}` with `threshold.value: {value}`",
                         "Lower `threshold.value`.")
    return Threshold(method=method, value=value, threshold=t, parameters=params)


def usable_threshold(t: float, how: str, fix: str) -> float:
    """`t` raised to float32's smallest normal number, or ConfigError when it is not finite
    or beyond float32's largest.

    Scores are float32 and anomaly_score = score / threshold: a threshold must be > 0 to
    define it, and past 3.4e38 it is inf in float32, so every anomaly_score would be 0.
    `how` names what computed `t` and `fix` says what to change (one sentence each).
    """
    # A threshold must be positive for anomaly_score = score / threshold to be defined.
    t = max(float(t), float(np.finfo(np.float32).tiny))  # NaN stays NaN
    if not t <= float(np.finfo(np.float32).max):
        raise ConfigError(f"{how} gives a threshold of {t:.6g}, beyond float32's range, the "
                          f"scores' type (at most 3.4e38): every anomaly_score would be 0 and "
                          f"no row flagged. {fix}")
    return t


def small_calibration_warning(rows: Optional[int], method: str,
                              value: Optional[float]) -> Optional[str]:
    """Why a quantile-type threshold from `rows` calibration scores estimates nothing, or None.

    The `quantile` level q (or `contamination` c) describes a false-alarm rate of 1 - q
    (c) only with at least 1 / (1 - q) (1 / c) rows; with fewer the threshold is merely
    the largest of them, or an interpolation between the largest. None when `rows` is
    unknown (a bundle that never recorded it).
    """
    if rows is None:
        return None
    if method == "quantile":
        tail = 1.0 - value
    elif method == "contamination":
        tail = value
    else:
        return None
    needed = math.ceil(1.0 / tail - 1e-9)
    if rows >= needed:
        return None
    return (f"The threshold is the {method} {value:g} of only {rows} calibration row(s): "
            f"their largest scores, not an estimate of a {tail:.3g} false-alarm rate, which "
            f"needs at least {needed} rows. Give more rows, raise "
            f"`threshold.calibration_fraction`, or use `threshold.method: mad`.")


def _best_f1(errors: np.ndarray, labels: Optional[np.ndarray]):
    from sklearn.metrics import precision_recall_curve

    if labels is None:
        raise ConfigError("threshold method f1 needs labels (set `data.label`).")
    if not is_binary(labels):
        raise InputError("threshold method f1 needs a 0/1 label column (1 = anomaly); the "
                         f"label has values {np.unique(labels)[:10].tolist()}.")
    y = np.asarray(labels).astype(int)
    if y.min() == y.max():
        raise InputError("threshold method f1 needs both normal and anomalous rows in the "
                         f"calibration split; it has only label {int(y[0])}. Use quantile or "
                         "contamination, or give more labelled anomalies.")
    precision, recall, cuts = precision_recall_curve(y, errors)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    cut = float(cuts[best])
    # precision_recall_curve flags error >= cut; we flag error > threshold, so place the
    # threshold halfway to the next lower error.
    below = errors[errors < cut]
    t = 0.5 * (cut + float(below.max())) if below.size else cut * 0.5
    return t, {"f1": float(f1[best]), "precision": float(precision[best]),
               "recall": float(recall[best])}


def is_binary(labels) -> bool:
    return bool(np.isin(np.unique(np.asarray(labels)), (0, 1)).all())


def calibration_summary(errors: np.ndarray, labels: Optional[np.ndarray],
                        threshold: float) -> dict:
    """Error quantiles of the calibration split (+ label metrics when labels exist)."""
    errors = np.asarray(errors, dtype=np.float64)
    out = {
        "rows": int(errors.size),
        "quantiles": {str(q): float(np.quantile(errors, q)) for q in QUANTILE_LEVELS},
        "mean": float(errors.mean()), "max": float(errors.max()),
        # With mean and the quantiles: what `latentbeam rethreshold` needs for mad / mean_std.
        "std": float(errors.std()),
        "median": float(np.median(errors)),
        "mad": float(np.median(np.abs(errors - np.median(errors)))) * MAD_SCALE,
        "flagged_fraction": float((errors > threshold).mean()),
    }
    if labels is not None and is_binary(labels):
        y = np.asarray(labels).astype(int)
        out["label_positive_fraction"] = float(y.mean())
        if 0 < y.sum() < len(y):
            from sklearn.metrics import average_precision_score, roc_auc_score
            out["roc_auc"] = float(roc_auc_score(y, errors))
            out["average_precision"] = float(average_precision_score(y, errors))
    return out
