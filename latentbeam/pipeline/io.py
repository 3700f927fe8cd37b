"""Reading Parquet per file (so one bad file is one dead letter) and the per-process bundle cache."""
from __future__ import annotations

import logging
import threading
from typing import Dict, Iterator, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from latentbeam import fs
from latentbeam.pipeline.layout import DEFAULT_BATCH_ROWS

log = logging.getLogger(__name__)


class UnreadableFile(ValueError):
    """A whole input file cannot be read (corrupt, truncated, empty, not Parquet)."""


def iter_file_batches(path: str, *, columns: Optional[Sequence[str]] = None,
                      batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Tuple[int, pa.RecordBatch]]:
    """Yields (row offset in file, record batch) for one Parquet file, streaming.

    Memory stays at about one record batch (plus one row group being decoded).

    Raises:
      UnreadableFile: the file is empty, not Parquet, or fails to decode; the message
        names the file. Batches yielded before the failure must be discarded by the
        caller if it needs all-or-nothing per file.
    """
    try:
        with fs.open_read(path) as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                raise UnreadableFile(f"{path}: not a readable Parquet file ({e})") from e
            present = pf.schema_arrow.names
            cols = None if columns is None else [c for c in columns if c in present]
            offset = 0
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
                    yield offset, batch
                    offset += batch.num_rows
            except (pa.ArrowException, OSError) as e:
                raise UnreadableFile(f"{path}: failed to decode after {offset} rows ({e})") from e
    except UnreadableFile:
        raise
    except (OSError, IOError) as e:
        raise UnreadableFile(f"{path}: cannot open ({e})") from e


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
