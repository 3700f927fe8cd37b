"""The watched-files stream's record of what it scored: OUT/_manifest/<hash of path>.json.

An entry is written for a source file after all its output and dead-letter files
are written. A restarted stream skips sources with an entry; a source scored again
after a crash (between its outputs and its entry) rewrites its files under the same
names and removes any other files the crashed run left for it before the entry is
written, so each source's rows appear exactly once in OUT.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Dict

from latentbeam import fs
from latentbeam import outputs
from latentbeam.pipeline.layout import MANIFEST_DIR, manifest_name

log = logging.getLogger(__name__)


def manifest_path(output: str, source: str) -> str:
    return fs.join(output, MANIFEST_DIR, manifest_name(source))


def read_manifest(output: str) -> Dict[str, dict]:
    """{source path: manifest entry} of every source already scored into `output`."""
    entries = {}
    for path in fs.match(fs.join(output, MANIFEST_DIR, "*.json")):
        try:
            entry = json.loads(fs.read_bytes(path))
            entries[entry["source"]] = entry
        except (ValueError, KeyError) as e:
            log.warning("Ignoring unreadable manifest entry %s: %s", path, e)
    return entries


def write_entry(output: str, entry: dict) -> None:
    """Records `entry["source"]` as scored (atomically: readers see no half entry)."""
    outputs.write_atomically(manifest_path(output, entry["source"]), json.dumps(entry).encode())


def clean_staging(output: str) -> int:
    """Deletes the staging a crashed run left in `output` (its `_temp/` and `*.partial` files).

    One stream per output directory: a second stream writing to the same OUT would lose
    its staging here. Returns the number of files removed.
    """
    stale = [rel for rel in outputs.list_tree(output)
             if outputs.is_staging(rel) and not rel.endswith("/")]
    if stale:
        log.warning("Removing %d staging file(s) of an earlier, interrupted run in %s",
                    len(stale), output)
        outputs.delete_files(output, stale)
    return len(stale)


_SEEN: Dict[str, set] = {}
_SEEN_LOCK = threading.Lock()


def first_sighting(output: str, path: str) -> bool:
    """True the first time this process sees `path` for `output` and it is not in the manifest.

    Deduplication by path: later polls of the same file, and files a previous run
    already recorded in OUT/_manifest/, are skipped.
    """
    with _SEEN_LOCK:
        seen = _SEEN.setdefault(output, set())
        if path in seen:
            return False
        seen.add(path)
    if fs.exists(manifest_path(output, path)):
        log.info("Skipping %s: already in the manifest of %s", path, output)
        return False
    return True


__all__ = ["clean_staging", "first_sighting", "manifest_path", "read_manifest", "write_entry"]
