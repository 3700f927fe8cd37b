"""Passes over training data: shuffled and ordered batches, tf.data datasets, the pass cache."""
from __future__ import annotations

import os
import tempfile
from typing import Iterator, List, Optional

import numpy as np


def shuffled_blocks(chunks: Iterator, batch_size: int, buffer_rows: int,
                     rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Rows of a chunk stream shuffled with bounded memory, as blocks of whole batches.

    Rows are shuffled within windows of about `buffer_rows` rows; only the last block
    may end in a partial batch.
    """
    pending = []
    held = 0
    for matrix, _ in chunks:
        pending.append(matrix)
        held += len(matrix)
        if held < buffer_rows:
            continue
        block = np.concatenate(pending)
        block = block[rng.permutation(len(block))]
        cut = (len(block) // batch_size) * batch_size
        yield block[:cut]
        pending, held = [block[cut:]], len(block) - cut
    if held:
        block = np.concatenate(pending)
        yield block[rng.permutation(len(block))]


def stacked_batches(blocks: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Blocks as (k, batch_size, width) stacks of whole batches; a partial one as (1, r, width).

    tf.data splits the stacks in C++ (`unbatch`): one Python call per block instead of
    one per batch, which otherwise costs about a third of the training throughput.
    """
    for block in blocks:
        cut = (len(block) // batch_size) * batch_size
        if cut:
            yield block[:cut].reshape(-1, batch_size, block.shape[1])
        if cut < len(block):
            yield block[None, cut:]


def ordered_batches(chunks: Iterator, batch_size: int) -> Iterator[np.ndarray]:
    """Fixed-size batches from a chunk stream, in order."""
    pending, held = [], 0
    for matrix, _ in chunks:
        pending.append(matrix)
        held += len(matrix)
        if held >= batch_size:
            block = np.concatenate(pending)
            cut = (len(block) // batch_size) * batch_size
            for s in range(0, cut, batch_size):
                yield block[s:s + batch_size]
            pending, held = [block[cut:]], len(block) - cut
    if held:
        yield np.concatenate(pending)


def make_dataset(generator_fn, width: int, *, stacked: bool = False, repeat: bool = False):
    """A tf.data.Dataset over a Python batch generator (re-invoked at each iteration).

    Args:
      generator_fn: returns an iterator of (rows, width) float32 batches, or of
        (k, rows, width) stacks of batches when `stacked`.
      width: number of inputs.
      stacked: split stacks into batches inside tf.data.
      repeat: repeat the passes; prefetching then runs on across pass boundaries.
    """
    import tensorflow as tf

    shape = (None, None, width) if stacked else (None, width)
    ds = tf.data.Dataset.from_generator(
        generator_fn, output_signature=tf.TensorSpec(shape, tf.float32))
    if stacked:
        ds = ds.unbatch()
    if repeat:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


class CachedSource:
    """Decodes a source once; later passes replay the decoded float32 chunks.

    Chunks are kept in memory while one whole pass fits `max_bytes`. Past that, with a
    `spill_dir`, every chunk is appended to raw float32 files there and later passes
    replay them through a memory map: no Parquet decoding or validation after the first
    pass, and memory stays bounded (the OS page cache does the rest). Without a
    spill_dir, data larger than `max_bytes` is read from the source on every pass.
    The replay is the very same chunk stream (same boundaries), so split assignment,
    shuffling and the trained weights are identical to reading the source every pass.
    """

    def __init__(self, source, max_bytes: int, spill_dir: Optional[str] = None):
        self.source = source
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        self.features = source.features
        self._chunks: Optional[list] = None
        self._spill: Optional["_Spill"] = None

    @property
    def skipped(self):
        return self.source.skipped  # counted during the one pass that read the source

    @property
    def cached(self) -> bool:
        return self._chunks is not None or self._spill is not None

    @property
    def spilled(self) -> bool:
        return self._spill is not None

    def describe(self) -> str:
        return self.source.describe()

    def chunks(self) -> Iterator:
        if self._chunks is not None:
            yield from self._chunks
            return
        if self._spill is not None:
            yield from self._spill.replay()
            return
        kept, size, spill = [], 0, None
        for matrix, labels in self.source.chunks():
            if kept is not None:
                size += matrix.nbytes + (labels.nbytes if labels is not None else 0)
                if size <= self.max_bytes:
                    kept.append((matrix, labels))
                else:
                    if self.spill_dir:
                        spill = _Spill(self.spill_dir, matrix.shape[1])
                        for m, lab in kept:
                            spill.append(m, lab)
                    kept = None
            if spill is not None:
                spill.append(matrix, labels)
            yield matrix, labels
        # Only a complete pass is kept (a consumer may stop early).
        if kept is not None:
            self._chunks = kept
        elif spill is not None:
            spill.close()
            self._spill = spill


class _Spill:
    """Append-only raw float32 chunk files with a memory-mapped replay."""

    def __init__(self, directory: str, width: int):
        fd, self.path = tempfile.mkstemp(prefix="rows-", suffix=".f32", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self._labels_file = None
        self.labels_path = self.path[:-4] + "-labels.f32"
        self.width = width
        self.sizes: List[int] = []
        self.has_labels = False

    def append(self, matrix: np.ndarray, labels: Optional[np.ndarray]) -> None:
        self._file.write(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
        if labels is not None:
            if self._labels_file is None:
                self._labels_file = open(self.labels_path, "wb")
                self.has_labels = True
            self._labels_file.write(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
        self.sizes.append(len(matrix))

    def close(self) -> None:
        self._file.close()
        if self._labels_file is not None:
            self._labels_file.close()

    def replay(self) -> Iterator:
        rows = np.memmap(self.path, dtype=np.float32, mode="r").reshape(-1, self.width) \
            if sum(self.sizes) else np.zeros((0, self.width), np.float32)
        labels = np.memmap(self.labels_path, dtype=np.float32, mode="r") \
            if self.has_labels else None
        start = 0
        for n in self.sizes:
            yield (np.asarray(rows[start:start + n]),
                   np.asarray(labels[start:start + n]) if labels is not None else None)
            start += n
