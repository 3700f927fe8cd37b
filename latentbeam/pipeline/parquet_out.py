"""Every Parquet file the pipeline writes goes through here.

`ParquetOutput` is one file written batch by batch: opened at the first batch (a job
that writes nothing leaves no file), its schema the first batch's, later batches
conformed to it. With `track_sources` its footer records how many rows of each source
it holds and every model_version in it (stream outputs: the manifest and the report
read them). `discard` deletes what was written and returns the paths it could not
remove (logged), so a caller never loses a failure silently.

Users: the batch job (one staged file per input file, published by `outputs.commit`),
the watched-files stream (`StagedFiles`: one staged file per window, renamed to its
final name once the source is done) and the Pub/Sub stream (`ParquetChunkSink`, a
`fileio.FileSink`: fileio publishes the file).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from latentbeam import fs
from latentbeam.errors import InputError
from latentbeam.pipeline.layout import META_MODEL_VERSIONS, META_SOURCES, TEMP_DIR, staging_name
from latentbeam.pipeline.records import COL_MODEL_VERSION

log = logging.getLogger(__name__)

# What closing or deleting a half-written file can raise; reported, never raised again.
_CLEANUP_ERRORS = (OSError, pa.ArrowException)


def _measured(t: pa.DataType) -> bool:
    """A float column, or lists of floats (latent codes, errors, images)."""
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return pa.types.is_floating(t)


def dictionary_columns(schema: pa.Schema) -> List[str]:
    """The columns worth dictionary encoding: the top-level columns that are not measured
    (float) ones; nested non-float columns (a list of tags) are written plain too.

    Scores, errors, codes and reconstructions hardly repeat a value; a dictionary of a
    row group's values only adds index bits to them (written in batches of 65,536 rows,
    generated rows of 100 floats took 1.47x the bytes of plain encoding).
    """
    return [f.name for f in schema if not _measured(f.type)]


class ParquetOutput:
    """One Parquet file, opened at the first batch written.

    Args:
      path: where to create it (any Beam filesystem); or
      handle: an open binary file object to write to instead (not closed here).
      schema: the file's schema (default: the first batch's).
      track_sources: record rows per source and the model versions in the footer.
    """

    def __init__(self, path: Optional[str] = None, *, handle=None,
                 schema: Optional[pa.Schema] = None, track_sources: bool = False):
        if (path is None) == (handle is None):
            raise ValueError("ParquetOutput needs exactly one of path or handle.")
        self.path = path
        self._handle = handle
        self._schema = schema
        self._track = track_sources
        self._file = None
        self._writer: Optional[pq.ParquetWriter] = None
        self.sources: Counter = Counter()
        self._versions: set = set()

    @property
    def opened(self) -> bool:
        return self._writer is not None

    @property
    def rows(self) -> int:
        """Rows written (counted with `track_sources`)."""
        return sum(self.sources.values())

    def write(self, batch: pa.RecordBatch, source: str = "") -> None:
        if self._writer is None:
            self._open(self._schema or batch.schema)
        if batch.schema != self._writer.schema:
            batch = conform(batch, self._writer.schema, source)
        self._writer.write_batch(batch)
        if self._track:
            self.sources[source] += batch.num_rows
            if COL_MODEL_VERSION in batch.schema.names:
                self._versions.update(pc.unique(batch.column(COL_MODEL_VERSION)).to_pylist())

    def _open(self, schema: pa.Schema) -> None:
        options = {"use_dictionary": dictionary_columns(schema)}
        if self._handle is not None:
            self._writer = pq.ParquetWriter(self._handle, schema, **options)
            return
        if fs.is_local(self.path):
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = FileSystems.create(self.path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._writer = pq.ParquetWriter(self._file, schema, **options)

    def close(self) -> None:
        if self._writer is None:
            return
        if self._track:
            self._writer.add_key_value_metadata({
                META_SOURCES: json.dumps(dict(self.sources)).encode(),
                META_MODEL_VERSIONS: json.dumps(sorted(self._versions)).encode()})
        self._writer.close()
        if self._file is not None:
            self._file.close()
        self._writer = self._file = None

    def discard(self) -> List[str]:
        """Closes and deletes what was written; returns the paths that could not be removed.

        The output can be written again afterwards (from an empty file).
        """
        opened = self.opened
        try:
            self.close()
        except _CLEANUP_ERRORS as e:
            log.warning("Closing %s to discard it failed: %s", self.path or "a stream file", e)
            self._writer = self._file = None
        self.sources = Counter()
        self._versions = set()
        if not opened or self.path is None:
            return []
        return delete_files([self.path])


def delete_files(paths: Sequence[str]) -> List[str]:
    """Deletes the files that exist; logs and returns those it could not remove."""
    left = []
    for path in paths:
        try:
            if FileSystems.exists(path):
                FileSystems.delete([path])
        except _CLEANUP_ERRORS as e:
            left.append(path)
            log.warning("Could not remove %s: %s", path, e)
    return left


def conform(batch: pa.RecordBatch, schema: pa.Schema, source: str) -> pa.RecordBatch:
    """`batch` with the file's `schema` (same columns; types cast), or ValueError."""
    if batch.schema.names != schema.names:
        raise InputError(
            f"Rows from {source} have columns {batch.schema.names}, but the window's file was "
            f"started with {schema.names}. Streams must keep one input schema per output "
            f"directory (same --key-columns types).")
    return batch.cast(schema) if not batch.schema.equals(schema, check_metadata=False) else \
        pa.RecordBatch.from_arrays(batch.columns, schema=schema)


def parquet_bytes(batches: Sequence[pa.RecordBatch], source: str) -> bytes:
    """A whole Parquet file (with the source footer) in memory, for an atomic write."""
    sink = pa.BufferOutputStream()
    out = ParquetOutput(handle=sink, track_sources=True)
    for b in batches:
        out.write(b, source)
    out.close()
    return sink.getvalue().to_pybytes()


class StagedFiles:
    """Parquet files of one source, one per key, staged under OUT/_temp/ until `publish`.

    Each key's rows stream into their own staging file (memory stays at about one
    record batch however large the source is); `publish` closes them and renames them
    to their final names, `discard` deletes them.

    Args:
      output: OUT.
      tag: names the source in staging names (`layout.source_tag`).
      source: the source path recorded in each file's footer.
    """

    def __init__(self, output: str, tag: str, source: str):
        self._output, self._tag, self._source = output, tag, source
        self._open: Dict[Hashable, ParquetOutput] = {}

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self._open.values())

    def write(self, key: Hashable, batch: pa.RecordBatch) -> None:
        if key not in self._open:
            self._open[key] = ParquetOutput(
                fs.join(self._output, TEMP_DIR, staging_name(self._tag)), track_sources=True)
        self._open[key].write(batch, self._source)

    def publish(self, final_path: Callable[[Any], str]) -> List[str]:
        """Closes the staging files and moves each to `final_path(key)`, in key order."""
        for f in self._open.values():
            f.close()
        keys = sorted(self._open)
        dst = [final_path(k) for k in keys]
        if keys:
            FileSystems.rename([self._open[k].path for k in keys], dst)
        self._open = {}
        return dst

    def discard(self) -> List[str]:
        """Deletes the staging files; returns (and logs) those it could not remove."""
        left = [p for f in self._open.values() for p in f.discard()]
        self._open = {}
        return left


class ParquetChunkSink(fileio.FileSink):
    """fileio sink writing Chunks' record batches to one Parquet file.

    The file's schema is the first chunk's (later chunks are cast to it). The footer
    records how many rows of each source the file holds (for the manifest) and every
    model_version in it.
    """

    def __init__(self, schema: Optional[pa.Schema] = None):
        self._schema = schema
        self._out: Optional[ParquetOutput] = None

    def open(self, fh):
        self._out = ParquetOutput(handle=_NoClose(fh), schema=self._schema, track_sources=True)

    def write(self, chunk):
        self._out.write(chunk.batch, chunk.source)

    def flush(self):
        if self._out is not None:
            self._out.close()


class _NoClose:
    """File object wrapper: Beam closes the file handle after flush(), not pyarrow."""

    def __init__(self, fh):
        self._fh = fh
        self.closed = False

    def write(self, data):
        return self._fh.write(data)

    def flush(self):
        return self._fh.flush()

    def close(self):
        self.closed = True

    def tell(self):
        return self._fh.tell()

    def writable(self):
        return True


__all__ = ["ParquetChunkSink", "ParquetOutput", "StagedFiles", "conform", "delete_files",
           "dictionary_columns",
           "parquet_bytes"]
