"""The scoring step both stream sources share: the current bundle, scores, adaptive inputs."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import pyarrow as pa

from latentbeam.pipeline.adaptive import adaptive_scale
from latentbeam.pipeline.bundles import BundleResolver
from latentbeam.pipeline.jobs import StreamJob
from latentbeam.pipeline.records import score_record_batch


class Chunk(NamedTuple):
    """Rows on their way to a Parquet file: where they came from, and Arrow data."""
    source: str  # input file (or pubsub:SUBSCRIPTION)
    batch: pa.RecordBatch  # scored rows (or dead-letter records)
    adaptive_scale: float = 1.0  # adaptive.adaptive_scale of the scoring bundle
    base_threshold: float = 0.0  # the scoring bundle's threshold


class StreamScoring:
    """Scores record batches with the stream's current bundle (a DoFn member).

    Holds only the job until `setup()` (called from the DoFn's setup), which starts
    watching the bundle location: a new bundle version is picked up between batches.
    """

    def __init__(self, job: StreamJob):
        self._job = job
        self._resolver: Optional[BundleResolver] = None

    def setup(self) -> None:
        self._resolver = BundleResolver(self._job.bundle, self._job.bundle_poll)

    def bundle(self):
        """The bundle to score the next batch with."""
        return self._resolver.current()

    def score(self, bundle, batch: pa.RecordBatch, source: str, row_offset: int = 0
              ) -> Tuple[Optional[pa.RecordBatch], List[dict]]:
        """`records.score_record_batch` with the job's scoring options."""
        return score_record_batch(bundle, batch, source=source, row_offset=row_offset,
                                  opts=self._job.scoring)

    def adaptive_params(self, bundle) -> Tuple[float, float]:
        """(adaptive scale, bundle threshold) of `bundle`; scale 1.0 without --adaptive-threshold."""
        threshold = float(bundle.info.threshold.threshold)
        if self._job.adaptive is None:
            return 1.0, threshold
        return adaptive_scale(bundle.info, self._job.adaptive.quantile), threshold


__all__ = ["Chunk", "StreamScoring"]
