"""A RunInference `ModelHandler` for latentbeam bundles (no tensorflow_hub needed).

Example::

    from apache_beam.ml.inference.base import RunInference

    main, failed = (rows
                    | RunInference(BundleModelHandler("gs://models/digits"))
                    .with_exception_handling())
    main | beam.Map(lambda r: (r.example["id"], r.inference.anomaly_score))

Each `PredictionResult.inference` is a `RowScore`. RunInference fails a whole batch
when `run_inference` raises, so one unusable row (null, NaN/inf, non-numeric, wrong
length, missing column) sends its batch to `failed.failed_inferences`; use the
`Score` transform for per-row dead letters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from latentbeam.errors import InputError
from latentbeam.model import load_bundle_info
from latentbeam.model.bundle import BUNDLE_FILE, MODEL_FILE
from latentbeam.model.features import SchemaMismatch
from latentbeam.pipeline import io
from latentbeam.pipeline.layout import DEFAULT_BATCH_ROWS
from latentbeam.pipeline.metrics import NAMESPACE
from latentbeam.pipeline.records import (COL_ERROR, COL_FLAG, COL_LATENT, COL_SCORE,
                                         ScoringOptions, feature_columns, score_record_batch)
from latentbeam.pipeline.rows import as_row_dict, rows_to_record_batch

_MAX_FAULTS_IN_MESSAGE = 3


@dataclass(frozen=True)
class RowScore:
    """The scores of one row (the `inference` of a PredictionResult)."""
    latent: np.ndarray  # (latent_dim,) float32, the code Z
    reconstruction_error: float  # mean squared error, normalized feature space
    anomaly_score: float  # the bundle's score / threshold (> 1 is anomalous)
    is_anomaly: bool  # anomaly_score > 1
    model_version: str  # the bundle's model_version


_EXPECTED_EXAMPLE = "BundleModelHandler expects dicts, beam.Row or 1-D numpy arrays."


class BundleModelHandler(ModelHandler[Any, PredictionResult, Any]):
    """Scores dicts, `beam.Row`s or 1-D numpy arrays with a latentbeam bundle.

    Args:
      bundle_path: bundle directory (local, gs://, s3://).
      min_batch_size: smallest batch RunInference forms (default Beam's).
      max_batch_size: largest batch, i.e. rows per model call (default 8192).
      **kwargs: other `ModelHandler` arguments (e.g. max_batch_duration_secs).

    A numpy example must hold the bundle's inputs in bundle feature order (shape
    (n_inputs,)); dict/Row examples are matched to the features by name.
    """

    def __init__(self, bundle_path: str, *, min_batch_size: Optional[int] = None,
                 max_batch_size: int = DEFAULT_BATCH_ROWS, **kwargs):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, **kwargs)
        self._bundle_path = bundle_path
        self._model_version = load_bundle_info(bundle_path).model_version

    def load_model(self):
        return io.shared_bundle(self._bundle_path)

    def update_model_path(self, model_path: Optional[str] = None):
        """Switches to another bundle (RunInference's side-input model updates).

        Accepts the bundle directory or a file inside it, so
        `RunInference(handler, model_metadata_pcoll=WatchFilePattern(
        "gs://models/*/bundle.json"))` swaps to each new bundle as it lands.
        """
        if model_path:
            path = model_path.rstrip("/")
            for name in (BUNDLE_FILE, MODEL_FILE):
                if path.endswith("/" + name):
                    path = path[: -len(name) - 1]
            self._bundle_path = path
            self._model_version = load_bundle_info(path).model_version

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(e.nbytes if isinstance(e, np.ndarray)
                   else 8 * len(as_row_dict(e, _EXPECTED_EXAMPLE)) for e in batch)

    def run_inference(self, batch: Sequence[Any], model,
                      inference_args: Optional[Dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        """Scores one batch with one model call.

        Raises:
          ValueError: some rows cannot be scored (the message lists the first ones);
            with `RunInference(...).with_exception_handling()` the batch goes to the
            failed output instead of failing the pipeline.
        """
        info = model.info
        if batch and all(isinstance(e, np.ndarray) for e in batch):
            table = _arrays_to_batch(batch, info)
        else:
            table = rows_to_record_batch([as_row_dict(e, _EXPECTED_EXAMPLE) for e in batch])
        try:
            scored, letters = score_record_batch(model, table, source="RunInference",
                                                 opts=ScoringOptions())
        except SchemaMismatch as e:
            raise InputError(f"Cannot score this batch of {len(batch)} rows with bundle "
                             f"{self._bundle_path}: {e}.") from e
        if letters:
            shown = "; ".join(f"row {d['row']}: {d['reason']}: {d['detail']}"
                              for d in letters[:_MAX_FAULTS_IN_MESSAGE])
            raise InputError(f"{len(letters)} of {len(batch)} rows cannot be scored ({shown}). "
                             f"Expected finite numbers for features {info.feature_names}.")
        latent = np.asarray(scored.column(COL_LATENT).flatten().to_numpy(),
                            dtype=np.float32).reshape(len(batch), info.latent_dim)
        error = scored.column(COL_ERROR).to_numpy()
        score = scored.column(COL_SCORE).to_numpy()
        flag = scored.column(COL_FLAG).to_numpy(zero_copy_only=False)
        return [PredictionResult(example, RowScore(latent[i], float(error[i]), float(score[i]),
                                                   bool(flag[i]), info.model_version),
                                 model_id=info.model_version)
                for i, example in enumerate(batch)]


def _arrays_to_batch(batch: Sequence[np.ndarray], info) -> pa.RecordBatch:
    """1-D arrays in bundle input order -> a record batch with the feature columns."""
    widths = {np.asarray(e).shape for e in batch}
    if widths != {(info.n_inputs,)}:
        raise InputError(f"Expected 1-D numpy arrays of {info.n_inputs} values in the order "
                         f"{info.feature_names}. Received shapes {sorted(widths)}.")
    fields, arrays = feature_columns(info.features, np.stack(batch).astype(np.float32, copy=False))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
