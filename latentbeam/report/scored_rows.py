"""Reading chosen rows of scored files: the top and typical rows, and the latent-map sample.

Files are opened only while they are read: a long stream leaves thousands of files,
more than a process may hold open.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentbeam import fs
from latentbeam.errors import InputError
from latentbeam.pipeline.records import COL_ERROR, COL_FLAG, COL_LATENT, COL_SCORE

# The sample is drawn uniformly from at most this many rows per sampled row: above it,
# whole row groups are chosen at random first, so the latent column of 10M rows is
# never decoded for a 20k-row picture.
ROWS_READ_PER_SAMPLED_ROW = 50


@dataclass
class ScoredFile:
    """A scored file's footer facts (the file itself is opened only while it is read:
    a long stream leaves thousands of files, more than a process may hold open)."""
    path: str
    metadata: Any  # pq.FileMetaData
    names: List[str]  # Arrow column names
    window: Optional[Tuple[dt.datetime, dt.datetime]]
    versions: List[str]


@contextlib.contextmanager
def open_parquet(path: str):
    """An open pq.ParquetFile on any Beam filesystem, closed on exit."""
    with fs.open_read(path) as handle:
        try:
            pf = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"Cannot read scored file {path}: {e}. Remove it or point "
                             f"--scored at the scored files only.") from e
        yield pf


def read_rows(files: List[ScoredFile], positions: List[Tuple[int, int, int]],
              columns: List[str]) -> Dict[str, list]:
    """The given (file index, row group, row) rows, in order, as column -> list of values.

    Each row group is read once and released before the next one.
    """
    found: Dict[int, dict] = {}
    by_group: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
    for i, (fi, g, r) in enumerate(positions):
        by_group.setdefault((fi, g), []).append((i, r))
    by_file: Dict[int, List[int]] = {}
    for fi, g in sorted(by_group):
        by_file.setdefault(fi, []).append(g)
    for fi, group_list in by_file.items():
        f = files[fi]
        with open_parquet(f.path) as pf:
            for g in group_list:
                wanted = by_group[(fi, g)]
                t = pf.read_row_group(g, columns=[c for c in columns if c in f.names])
                picked = t.take(pa.array([r for _, r in wanted])).to_pylist()
                for (i, _), row in zip(wanted, picked):
                    found[i] = dict(row, _source=f.path)
    out: Dict[str, list] = {c: [] for c in list(columns) + ["_source"]}
    for i in range(len(positions)):
        for c in out:
            out[c].append(found[i].get(c))
    return out


def draw_sample(files, groups, rows: int, sample_rows: int, seed: int, label_column: Optional[str]
            ) -> Tuple[Dict[str, np.ndarray], np.ndarray, int]:
    """A uniform sample of rows (from randomly chosen row groups when the data is large).

    Returns (column -> values, (s, 3) positions (file, row group, row), rows drawn from).
    """
    rng = np.random.default_rng(seed)
    budget = max(sample_rows, 1) * ROWS_READ_PER_SAMPLED_ROW
    chosen = list(range(len(groups)))
    if rows > budget:
        order = rng.permutation(len(groups))
        chosen, covered = [], 0
        for i in order:
            chosen.append(int(i))
            covered += groups[i][2]
            if covered >= budget:
                break
        chosen.sort()
    pool = sum(groups[i][2] for i in chosen)
    k = min(sample_rows, pool)
    picks = np.sort(rng.choice(pool, size=k, replace=False)) if k < pool else np.arange(pool)
    base = [COL_LATENT, COL_ERROR, COL_SCORE, COL_FLAG]
    # A label may be one of them (is_anomaly): read once, kept under both names.
    cols = base + ([label_column] if label_column and label_column not in base else [])
    parts: Dict[str, list] = {c: [] for c in cols}
    positions: List[np.ndarray] = []
    start = 0
    reader = contextlib.ExitStack()
    open_file, pf = -1, None
    for i in chosen:
        fi, g, n = groups[i]
        lo, hi = np.searchsorted(picks, [start, start + n])
        local = picks[lo:hi] - start
        start += n
        if not len(local):
            continue
        if fi != open_file:  # `chosen` is sorted: each file is opened once
            reader.close()
            pf = reader.enter_context(open_parquet(files[fi].path))
            open_file = fi
        t = pf.read_row_group(g, columns=cols).take(pa.array(local))
        positions.append(np.stack([np.full(len(local), fi), np.full(len(local), g), local], axis=1))
        for c in cols:
            parts[c].append(t.column(c))
    reader.close()
    sample: Dict[str, np.ndarray] = {}
    for c in cols:
        col = pa.chunked_array(parts[c]).combine_chunks() if parts[c] else None
        if c == COL_LATENT:
            sample[c] = (np.asarray(col.flatten().to_numpy(zero_copy_only=False),
                                    dtype=np.float32).reshape(len(col), -1)
                         if col is not None and len(col) else np.zeros((0, 0), np.float32))
        elif col is None:
            sample[c] = np.zeros(0)
        else:
            sample[c] = col.to_numpy(zero_copy_only=False)
    if label_column:
        sample["label"] = sample[label_column] if label_column in base \
            else sample.pop(label_column)
    pos = np.concatenate(positions).astype(np.int64) if positions else np.zeros((0, 3), np.int64)
    return sample, pos, pool
