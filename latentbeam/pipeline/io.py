"""Reading Parquet per file (so one bad file is one dead letter) and the per-process bundle cache.

The reader itself is latentbeam.model.sources, shared with training.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, Optional, Sequence

import pyarrow as pa

from latentbeam import fs
from latentbeam.model.sources import UnreadableFile  # noqa: F401  (the readers raise it)
from latentbeam.model.sources import parquet_batches as iter_file_batches  # noqa: F401

log = logging.getLogger(__name__)


def with_partition_keys(batch: pa.RecordBatch, partitions: Dict[str, Optional[str]],
                        key_columns: Sequence[str]) -> pa.RecordBatch:
    """The batch with each key column it lacks taken from the file's Hive partitions.

    A key column the file holds is its own (the path is not consulted); one that is
    neither in the file nor in its path stays missing (a `missing_column` dead letter).
    Partition values are text columns (`fs.hive_partitions`).
    """
    wanted = [k for k in key_columns if k in partitions and k not in batch.schema.names]
    for key in wanted:
        batch = batch.append_column(key, pa.repeat(pa.scalar(partitions[key], pa.string()),
                                                   batch.num_rows))
    return batch


def keyed_file_batches(path: str, *, batch_rows: int, input_head: Optional[str],
                       key_columns: Sequence[str]):
    """(row offset, record batch) of one Parquet file, as `iter_file_batches`, with the key
    columns the file lacks taken from its Hive partitions below `input_head` (the input
    pattern's `fs.pattern_head`; None: no partitions)."""
    partitions = fs.hive_partitions(path, input_head)
    for offset, batch in iter_file_batches(path, batch_rows=batch_rows):
        if partitions:
            batch = with_partition_keys(batch, partitions, key_columns)
        yield offset, batch


_BUNDLES: Dict[str, object] = {}
_BUNDLES_LOCK = threading.Lock()


def shared_bundle(path: str):
    """The bundle at `path`, loaded once per worker process and shared by its threads."""
    bundle = _BUNDLES.get(path)
    if bundle is None:
        with _BUNDLES_LOCK:
            bundle = _BUNDLES.get(path)
            if bundle is None:
                from latentbeam.model import load_bundle

                log.info("Loading bundle %s", path)
                bundle = _BUNDLES[path] = load_bundle(path)
    return bundle


def release_bundle(path: str) -> None:
    """Drops `path` from the per-process cache (e.g. after a hot-swap to a newer bundle).

    Work still holding the Bundle object finishes with it; the memory is freed after.
    """
    with _BUNDLES_LOCK:
        _BUNDLES.pop(path, None)
