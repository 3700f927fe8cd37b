"""Reading Parquet per file (so one bad file is one dead letter) and the per-process bundle cache.

The reader itself is latentbeam.model.sources, shared with training.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict

from latentbeam.model.sources import UnreadableFile  # noqa: F401  (the readers raise it)
from latentbeam.model.sources import parquet_batches as iter_file_batches  # noqa: F401

log = logging.getLogger(__name__)


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
