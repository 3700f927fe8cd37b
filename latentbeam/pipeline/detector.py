"""A latentbeam bundle as a detector for Beam's `AnomalyDetection` transform.

Example::

    from apache_beam.ml.anomaly.transforms import AnomalyDetection

    results = (rows  # beam.Row with the bundle's feature fields (and any others)
               | AnomalyDetection(bundle_detector("gs://models/digits",
                                                  features=feature_names)))
    # AnomalyResult(example=row, predictions=[AnomalyPrediction(
    #     model_id="latentbeam:4f0c...", score=anomaly_score, label=0 or 1, threshold=1.0)])

The prediction's `score` is the bundle's `anomaly_score` and its `label` is the
bundle's `is_anomaly` (1 = outlier), both from the same scoring core as `Score`, so
the flags agree with `Score` row for row. The calibrated threshold is already applied
(label = anomaly_score > 1); pass `threshold_criterion=` only to re-label the scores
with Beam's own threshold functions (Beam's `FixedThreshold(1.0)` labels scores
`>= 1.0` as outliers, a hair different from `> 1`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from apache_beam.ml.anomaly.base import (DEFAULT_NORMAL_LABEL, DEFAULT_OUTLIER_LABEL,
                                         AnomalyPrediction)
from apache_beam.ml.anomaly.detectors.offline import OfflineDetector
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult

from latentbeam.model import load_bundle_info
from latentbeam.pipeline.handler import BundleModelHandler
from latentbeam.pipeline.layout import DEFAULT_BATCH_ROWS

# The anomaly_score above which a row is anomalous (anomaly_score = score / threshold).
SCORE_THRESHOLD = 1.0


def to_anomaly_prediction(keyed: Tuple[Any, PredictionResult]) -> Tuple[Any, AnomalyPrediction]:
    """(key, PredictionResult of BundleModelHandler) -> (key, AnomalyPrediction)."""
    key, result = keyed
    row_score = result.inference
    return key, AnomalyPrediction(
        score=row_score.anomaly_score,
        label=DEFAULT_OUTLIER_LABEL if row_score.is_anomaly else DEFAULT_NORMAL_LABEL,
        threshold=SCORE_THRESHOLD,
        info=f"reconstruction_error={row_score.reconstruction_error!r}")


def bundle_detector(bundle_path: str, *, features: Optional[Sequence[str]] = None,
                    model_id: Optional[str] = None, max_batch_size: int = DEFAULT_BATCH_ROWS,
                    **kwargs) -> OfflineDetector:
    """An `OfflineDetector` that scores `beam.Row`s with a latentbeam bundle.

    Args:
      bundle_path: bundle directory (local, gs://, s3://).
      features: Row fields passed to the model (default: every field; fields that
        are not bundle features are ignored).
      model_id: detector id in the predictions (default "latentbeam:<model_version>").
      max_batch_size: rows per model call.
      **kwargs: other `OfflineDetector` / `AnomalyDetector` arguments
        (e.g. threshold_criterion, run_inference_args).

    Returns:
      A detector for `apache_beam.ml.anomaly.transforms.AnomalyDetection`.
    """
    info = load_bundle_info(bundle_path)
    handler = KeyedModelHandler(BundleModelHandler(bundle_path, max_batch_size=max_batch_size)
                                ).with_postprocess_fn(to_anomaly_prediction)
    return OfflineDetector(handler, model_id=model_id or f"latentbeam:{info.model_version}",
                           features=list(features) if features is not None else None, **kwargs)


__all__ = ["SCORE_THRESHOLD", "bundle_detector", "to_anomaly_prediction"]
