"""Everything Beam: transforms, the RunInference handler, and the batch and stream jobs.

    transforms   Score, Encode, Decode: PTransforms over a model bundle
    handler      BundleModelHandler (RunInference), detector: bundle_detector
    records      the scoring core applied to one Arrow record batch; dead_letters
    parquet_out  every Parquet file written; layout: output names and defaults
    jobs         job configs (ScoreJob, DecodeJob, StreamJob) and their summaries
    batch        run_file_job: `latentbeam score` / `decode`
    streaming/   run_stream: `latentbeam stream` (ScoreLandingFiles, ScorePubSub)

The names below are imported on first use, so `import latentbeam.pipeline.layout`
(the CLI's parser) does not load the transforms, the jobs or TensorFlow.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Score": "transforms", "Encode": "transforms", "Decode": "transforms",
    "BundleModelHandler": "handler", "RowScore": "handler", "bundle_detector": "detector",
    "ScoringOptions": "records", "AdaptiveConfig": "adaptive",
    "FileJob": "jobs", "ScoreJob": "jobs", "DecodeJob": "jobs", "StreamJob": "jobs",
    "JobSummary": "jobs", "StreamSummary": "jobs",
    "run_file_job": "batch",
    "ScoreLandingFiles": "streaming", "ScorePubSub": "streaming", "build_stream": "streaming",
    "run_stream": "streaming",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
