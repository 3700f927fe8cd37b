"""A new threshold for an existing bundle: same model, new threshold, new model_version, sealed.

The threshold is explicit (`threshold=T`), or computed from the calibration summary
stored in bundle.json where it holds what the method needs:

| method | needs | available for |
|---|---|---|
| quantile V | the score quantile at level V | V a stored level (calibration.QUANTILE_LEVELS) |
| contamination V | the quantile at 1 - V | 1 - V a stored level |
| mad V | median and MAD of the errors | bundles written since they are stored |
| mean_std V | mean and standard deviation | bundles written since they are stored |
| f1 | the labelled calibration rows | never (not stored): pass an explicit threshold |
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from latentbeam import paths
from latentbeam.errors import BundleError, ConfigError
from latentbeam.model.bundle import (COMPUTED_KEYS, BundleInfo, Threshold,
                                     load_bundle, model_version, read_verified_files,
                                     scoring_meta)
from latentbeam.model.bundle_write import write_bundle
from latentbeam.model.calibration import small_calibration_warning, usable_threshold

log = logging.getLogger(__name__)

METHOD_FIXED = "fixed"  # an explicit threshold, not derived from calibration errors


def threshold_from_calibration(info: BundleInfo, method: str, value: Optional[float]
                               ) -> Threshold:
    """The threshold `method` at `value` would give, from the stored calibration summary.

    Raises:
      BundleError: the method needs data the bundle does not store (names what is
        missing and what to pass instead).
    """
    cal = info.calibration
    quantiles = {float(k): float(v) for k, v in (cal.get("quantiles") or {}).items()}

    def quantile(level: float, what: str) -> float:
        for stored, q in quantiles.items():
            if math.isclose(stored, level, abs_tol=1e-9):
                return q
        raise BundleError(
             f"The bundle stores calibration score quantiles at levels "
             f"{', '.join(f'{q:g}' for q in sorted(quantiles)) or '(none)'}; {what} needs level "
             f"{level:g}. Use one of those, or pass an explicit --threshold.")

    if method in ("quantile", "contamination"):
        if value is None or not 0.0 < value < 1.0:
            raise ConfigError(f"--value for {method} must be in (0, 1). Received: {value}")
        level = value if method == "quantile" else 1.0 - value
        t = quantile(level, f"{method} {value:g}")
        return Threshold(method, value, _usable(method, value, t), {})
    if method in ("mad", "mean_std"):
        if value is None or not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--value for {method} is k > 0. Received: {value}")
        params = dict(info.threshold.parameters) if info.threshold.method == method else {}
        keys = ("median", "mad") if method == "mad" else ("mean", "std")
        for k in keys:
            if k not in params and isinstance(cal.get(k), (int, float)):
                params[k] = float(cal[k])
        missing = [k for k in keys if k not in params]
        if missing:
            raise BundleError(
                 f"The bundle's calibration summary has no {', '.join(missing)} of the errors "
                 f"(bundles trained before they were stored); {method} needs them. Pass an "
                 f"explicit --threshold, or re-train the bundle.")
        center, spread = params[keys[0]], params[keys[1]]
        return Threshold(method, value, _usable(method, value, center + value * spread),
                         {keys[0]: center, keys[1]: spread})
    if method == "f1":
        raise BundleError("The f1 threshold needs the labelled calibration rows, which a bundle "
                          "does not store. Pass an explicit --threshold, or re-train with "
                          "`threshold.method: f1`.")
    raise ConfigError(f"Unknown threshold method {method!r}; expected quantile, contamination, "
                      f"mad, mean_std (or an explicit --threshold).")


def _usable(method: str, value: float, t: float) -> float:
    """The computed threshold, checked as an explicit --threshold is (float32's range)."""
    return usable_threshold(t, f"--method {method} --value {value:g}",
                            "Pass a smaller --value, or an explicit --threshold.")


def estimated_flagged_fraction(calibration: Dict[str, Any], threshold: float) -> float:
    """Fraction of calibration rows above `threshold`, interpolated from the stored quantiles.

    Exact at the stored levels and 0 at or above the largest error; linear in between;
    at most 0.5 below the median (the summary stores nothing lower).
    """
    q = sorted((float(v), 1.0 - float(k)) for k, v in (calibration.get("quantiles") or {}).items())
    top = calibration.get("max")
    if isinstance(top, (int, float)):
        q.append((float(top), 0.0))
    if not q:
        return float("nan")
    errors = np.array([e for e, _ in q])
    above = np.array([f for _, f in q])
    if threshold >= errors[-1]:
        return 0.0
    return float(np.interp(threshold, errors, above))


def rethreshold(bundle_path: str, *, threshold: Optional[float] = None,
                method: Optional[str] = None, value: Optional[float] = None,
                output: Optional[str] = None) -> Tuple[BundleInfo, BundleInfo]:
    """Writes the bundle at `bundle_path` with a new threshold to `output` (default: in place).

    Args:
      bundle_path: an existing bundle (format_version 1 bundles are re-sealed).
      threshold: an explicit threshold (> 0); or
      method, value: a threshold method computed from the stored calibration summary.
      output: where to write; the same directory is replaced through a staging swap.

    A threshold equal to the current one only re-seals the bundle (format 1 -> 2) and
    keeps its model_version.

    Returns:
      (old info, new info); the new model_version differs when the threshold does.

    Raises:
      ConfigError: bad arguments.
      BundleError: a broken bundle, or a method the bundle cannot serve.
    """
    if (threshold is None) == (method is None):
        raise ConfigError("Expected exactly one of --threshold T or --method M [--value V]. "
                          f"Received: threshold={threshold!r}, method={method!r}")
    if threshold is not None and value is not None:
        # It would be ignored: the threshold is used as given.
        raise ConfigError(f"--value is the parameter of --method; --threshold takes none. "
                          f"Received: --threshold {threshold!r} --value {value!r}. Drop --value, "
                          f"or pass --method M --value V instead of --threshold.")
    f32 = np.finfo(np.float32)
    if threshold is not None and not float(f32.tiny) <= threshold <= float(f32.max):
        # Scores are divided by the threshold in float32: 1e40 would flag nothing, 1e-40
        # everything (as inf); the comparison is also False for NaN.
        raise ConfigError(f"--threshold must be a finite number > 0 within float32's normal "
                          f"range, the scores' type (1.2e-38 to 3.4e38). Received: "
                          f"{threshold!r}")
    output = output or bundle_path
    if paths.normalize(output) != paths.normalize(bundle_path):
        paths.check_output(output, [("bundle", bundle_path)])
    bundle = load_bundle(bundle_path, allow_unsealed=True)
    old = bundle.info
    files = read_verified_files(old)
    meta = {k: v for k, v in old.raw.items() if k not in COMPUTED_KEYS}
    if threshold is not None and float(threshold) == old.threshold.threshold:
        # The same threshold: only re-seal (e.g. a format 1 bundle); model_version stays.
        new = old.threshold
    else:
        new = Threshold(METHOD_FIXED, None, float(threshold), {}) if threshold is not None \
            else threshold_from_calibration(old, method, value)
        warning = small_calibration_warning(old.calibration.get("rows"), new.method, new.value)
        if warning:
            log.warning(warning)
        meta["threshold"] = new.to_json()
        calibration = dict(old.calibration)
        calibration["flagged_fraction"] = estimated_flagged_fraction(calibration, new.threshold)
        calibration["flagged_fraction_estimated"] = True
        meta["calibration"] = calibration
        meta["rethresholded_from"] = {"model_version": old.model_version,
                                      "threshold": old.threshold.to_json()}
    version = model_version(bundle.model, scoring_meta(meta))
    info = write_bundle(output, files, meta, version)
    log.info("Re-thresholded %s: %.6g (%s) -> %.6g (%s), model_version %s -> %s, written to %s",
             bundle_path, old.threshold.threshold, old.threshold.method, new.threshold,
             new.method, old.model_version, info.model_version, output)
    return old, info


__all__ = ["METHOD_FIXED", "estimated_flagged_fraction", "rethreshold",
           "threshold_from_calibration"]
