"""Which bundle scores the next file: a fixed bundle, or the newest of a watched location.

Hot-swap is resolved inside the scoring DoFn (rate-limited polling) rather than with a
side input: on the local DirectRunner a main input blocks on a global-window side
input until that side input's watermark reaches the end of time, i.e. until the
watcher stops, so a side-input swap would hold back every file until the job ends.
Polling from the DoFn behaves the same on every runner. Each file is scored entirely
by the bundle current when it is picked up, so a swap never splits, loses or repeats
a file's rows, and every output row's `model_version` is the bundle that scored it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from latentbeam import fs
from latentbeam.errors import BundleError
from latentbeam.fs import GLOB_CHARS
from latentbeam.model.bundle import BUNDLE_FILE
from latentbeam.pipeline.io import release_bundle, shared_bundle

log = logging.getLogger(__name__)



def is_watched(spec: str) -> bool:
    """True when `spec` names a location of bundle versions rather than one bundle."""
    if any(c in spec for c in GLOB_CHARS):
        return True
    return not fs.exists(fs.join(spec, BUNDLE_FILE))


def bundle_json_pattern(spec: str) -> str:
    """`models/` -> `models/*/bundle.json`; `models/v*` -> `models/v*/bundle.json`."""
    if spec.endswith(BUNDLE_FILE):
        return spec
    if any(c in spec for c in GLOB_CHARS):
        return fs.join(spec.rstrip("/"), BUNDLE_FILE)
    return fs.join(spec.rstrip("/"), "*", BUNDLE_FILE)


def newest_bundle_dir(spec: str) -> Optional[str]:
    """Directory of the newest complete bundle under `spec` (by bundle.json mtime, then name).

    bundle.json is written last by `latentbeam train`, so its presence marks a whole
    bundle; its modification time orders versions.
    """
    pattern = bundle_json_pattern(spec)
    # Hidden directories are bundles being written or swapped (`.NAME.staging-*`); object
    # store globs match them too.
    found = [m for m in FileSystems.match([pattern])[0].metadata_list
             if not m.path[: -len(BUNDLE_FILE)].rstrip("/").rsplit("/", 1)[-1].startswith(".")]
    if not found:
        return None
    newest = max(found, key=lambda m: (m.last_updated_in_seconds or 0.0, m.path))
    return newest.path[: -len(BUNDLE_FILE)].rstrip("/")


class BundleResolver:
    """Gives the bundle to score with; for a watched location, re-checks every `poll_seconds`.

    A newer bundle that fails to load (still being copied, hash mismatch) is logged and
    retried at the next check; the previous one keeps scoring meanwhile.
    """

    def __init__(self, spec: str, poll_seconds: float):
        self._spec = spec
        self._poll = float(poll_seconds)
        self._watched = is_watched(spec)
        self._lock = threading.Lock()
        self._path: Optional[str] = None if self._watched else spec
        self._checked = float("-inf")
        self._bad: set = set()

    def current(self):
        if not self._watched:
            return shared_bundle(self._spec)
        with self._lock:
            now = time.monotonic()
            if self._path is None or now - self._checked >= self._poll:
                self._checked = now
                self._refresh()
            if self._path is None:
                raise BundleError(f"No bundle found at {bundle_json_pattern(self._spec)}. Expected "
                                 f"directories written by `latentbeam train`.")
            return shared_bundle(self._path)

    def _refresh(self) -> None:
        newest = newest_bundle_dir(self._spec)
        if newest is None or newest == self._path:
            return
        try:
            shared_bundle(newest)
        except ValueError as e:
            if newest not in self._bad:
                self._bad.add(newest)
                log.warning("Not swapping to bundle %s yet: %s", newest, e)
            return
        log.info("Scoring with bundle %s (was %s)", newest, self._path)
        previous, self._path = self._path, newest
        if previous is not None:
            release_bundle(previous)  # a long-running stream must not keep every version
