"""The bundle's own data: its calibration rows, read again and scored by the scoring core.

bundle.json records the training config, so the calibration split (rows the model never
trained on; the same rows, by the same deterministic row -> split rule, that set the
threshold) can be read again wherever the training data is reachable. When it is not
(the bundle was copied elsewhere, a relative path), the report says why and falls back
to what bundle.json stores.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationRows:
    """Calibration rows of the training data, scored."""
    x: np.ndarray  # (n, n_inputs) float32 features in bundle order
    labels: Optional[np.ndarray]  # (n,) float32 `data.label`, or None
    scores: object  # latentbeam.model.Scores for x
    complete: bool  # every calibration row was read (False: the first `max_rows`)
    source: str  # where the rows came from


def read_calibration_rows(bundle, max_rows: int) -> "CalibrationRows | str":
    """Reads up to `max_rows` calibration rows and scores them.

    Returns:
      CalibrationRows, or a one-sentence reason why the training data is unavailable.
    """
    from latentbeam.config import from_dict
    from latentbeam.model import data as data_mod
    from latentbeam.model.scoring import score

    raw = bundle.info.training.get("config")
    if not raw:
        return "bundle.json records no training config"
    try:
        config = from_dict(raw)
        source = data_mod.make_source(config.data)
    except (ValueError, TypeError, OSError) as e:
        log.warning("Training data of %s is not readable here: %s", bundle.info.path, e)
        return f"the training data is not readable from here ({e})"
    if [f.name for f in source.features] != bundle.info.feature_names:
        return (f"the training data at {source.describe()} now has features "
                f"{[f.name for f in source.features]}, not the bundle's")
    xs, labels, n = [], [], 0
    complete = True
    for matrix, lab in data_mod.split_chunks(source, data_mod.SPLIT_CALIBRATION,
                                             config.train.validation_fraction,
                                             config.threshold.calibration_fraction):
        take = min(len(matrix), max_rows - n)
        xs.append(matrix[:take])
        if lab is not None:
            labels.append(lab[:take])
        n += take
        if n >= max_rows:
            complete = False
            break
    if not n:
        return f"no calibration rows in {source.describe()}"
    x = np.concatenate(xs)
    return CalibrationRows(x=x, labels=np.concatenate(labels) if labels else None,
                           scores=score(bundle, x), complete=complete,
                           source=source.describe())


__all__ = ["CalibrationRows", "read_calibration_rows"]
