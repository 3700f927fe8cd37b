"""Names and defaults of what the pipeline jobs write, each defined once.

The directory layout itself (dead-letter directory, staging, manifest, commit marker)
is `latentbeam.outputs`; this module adds the file names the Beam jobs give their
outputs and the defaults they share.
"""
from __future__ import annotations

import hashlib
import uuid

from latentbeam.config import DEFAULT_BATCH_ROWS  # rows per record batch read and per model call
from latentbeam.outputs import (DEAD_LETTER_DIR, DEAD_LETTER_SUFFIX, MANIFEST_DIR,
                                PARTIAL_SUFFIX, STAGING_PREFIX, SUCCESS_FILE, TEMP_DIR,
                                dead_letter_name)

STATS_DIR = "_stats"  # batch job: one JSON record per input file, inside the staging dir
# Parquet footer keys of stream outputs (report/scored.py reads the second by value).
META_SOURCES = b"latentbeam.sources"  # JSON {source: rows in this file}
META_MODEL_VERSIONS = b"latentbeam.model_versions"  # JSON list of model versions


def basename(path: str) -> str:
    """The last component of a local or remote path."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def part_name(index: int) -> str:
    """Output file name of the input file at `index` of the sorted match."""
    return f"part-{index:05d}.parquet"


def dead_letter_part_name(index: int) -> str:
    """Dead-letter file name of the input file at `index` (under OUT/_dead_letter/)."""
    return dead_letter_name(f"part-{index:05d}")


def source_tag(source: str) -> str:
    """A short stable name for a source path (stream output names end with it)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def manifest_name(source: str) -> str:
    """File name of a source's manifest entry (under OUT/_manifest/)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:32] + ".json"


def staging_name(tag: str) -> str:
    """A fresh staging file name for a Parquet file of source `tag` (under OUT/_temp/)."""
    return f"{tag}-{uuid.uuid4().hex}.parquet{PARTIAL_SUFFIX}"


def window_file_name(span: str, tag: str) -> str:
    """A watched-files stream output: `scored-START-END-TAG.parquet`."""
    return f"scored-{span}-{tag}.parquet"


def window_dead_letter_name(span: str, tag: str) -> str:
    """A watched-files stream dead-letter file (under OUT/_dead_letter/)."""
    return dead_letter_name(f"dead_letter-{span}-{tag}")


__all__ = ["DEAD_LETTER_DIR", "DEAD_LETTER_SUFFIX", "DEFAULT_BATCH_ROWS", "MANIFEST_DIR",
           "META_MODEL_VERSIONS", "META_SOURCES", "PARTIAL_SUFFIX", "STAGING_PREFIX",
           "STATS_DIR", "SUCCESS_FILE", "TEMP_DIR", "dead_letter_part_name", "manifest_name",
           "part_name", "source_tag", "staging_name", "window_dead_letter_name",
           "window_file_name"]
