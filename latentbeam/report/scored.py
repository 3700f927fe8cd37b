"""Scored output (batch or stream) summarised in one bounded-memory pass over its footers
and the few columns a report needs.

The histograms are of the score the threshold applies to, in the units of a given
threshold: anomaly_score × threshold (anomaly_score = score / the scoring bundle's
threshold). So `value > threshold` is exactly `is_anomaly`, for rows of every model
version; for rows scored by the bundle whose threshold is given it is their score (the
reconstruction error when that is what the bundle scores).

Exact over every row: row count, anomalies, the score histogram (fine log-spaced bins,
from which quantiles are read to within one bin), per-window rate and quantiles for
streaming output, and the top-N rows by anomaly_score. Sampled: the rows drawn on the
latent map (`sample_rows`, a fixed seed). Memory holds one row group of three scalar
columns, the histograms and the sample; nothing grows with the number of rows.
"""
from __future__ import annotations

import datetime as dt
import heapq
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from latentbeam import fs
from latentbeam.errors import InputError
from latentbeam.outputs import DEAD_LETTER_DIR, success_record
from latentbeam.pipeline.layout import META_MODEL_VERSIONS  # the stream writer's footer key
from latentbeam.pipeline.records import (COL_ERROR, COL_FEATURE_ERRORS, COL_FLAG,
                                         COL_MODEL_VERSION, COL_RECONSTRUCTION, COL_SCORE,
                                         COL_TOP_FEATURES, META_MODEL_VERSION)
from latentbeam.report.scored_rows import ScoredFile, draw_sample, open_parquet, read_rows

log = logging.getLogger(__name__)

REQUIRED = (COL_ERROR, COL_SCORE, COL_FLAG)
# `scored-START-END-...parquet` (both streaming paths): the window is in the name.
_WINDOW_NAME = re.compile(r"^scored-(\d{8}T\d{6}(?:\d{6})?)-(\d{8}T\d{6}(?:\d{6})?)-")
FINE_BINS = 4096  # error histogram resolution (quantiles are read to within one bin)
WINDOW_BINS = 256  # per-window histogram resolution


def _parse_stamp(text: str) -> dt.datetime:
    base = dt.datetime.strptime(text[:15], "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
    return base + dt.timedelta(microseconds=int(text[15:] or 0))


def window_of(path: str) -> Optional[Tuple[dt.datetime, dt.datetime]]:
    """(start, end) UTC of a streaming output file, from its name; None for batch files."""
    m = _WINDOW_NAME.match(os.path.basename(path))
    return (_parse_stamp(m.group(1)), _parse_stamp(m.group(2))) if m else None


def scored_files(location: str) -> List[str]:
    """The scored Parquet files of an output directory (batch or stream) or a glob.

    A directory means its `*.parquet` files at any depth; names starting with `_` or `.`
    are skipped, as every Parquet reader does (so are `_dead_letter/` and `_manifest/`).

    Raises:
      InputError: nothing matches (names the pattern and what was expected).
    """
    pattern = fs.parquet_pattern(location)
    files = [p for p, size in fs.match_parquet(pattern) if size > 0]
    if not files:
        raise InputError(f"No scored Parquet files match {pattern!r}.{_why_empty(location)} "
                         f"Pass --scored the output directory of `latentbeam score` or "
                         f"`latentbeam stream`, or a glob of its *.parquet files.")
    return files


def _why_empty(location: str) -> str:
    """What the `_SUCCESS` of a batch output with no part file says about its run, if any."""
    done = success_record(location) or {}
    counts = [done.get(k) for k in ("rows_read", "rows_dead_lettered", "files_dead_lettered")]
    if not all(isinstance(c, int) for c in counts):
        return ""  # no marker, or not a batch job's
    read, dead, files = counts
    return (f" {location} is the output of a run that scored no rows: {read} row(s) read, "
            f"{dead} row(s) and {files} whole file(s) dead-lettered (their reasons are in "
            f"{fs.join(location, DEAD_LETTER_DIR)}).")


@dataclass
class Window:
    start: dt.datetime
    end: dt.datetime
    rows: int = 0
    anomalies: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(WINDOW_BINS, np.int64))
    versions: set = field(default_factory=set)

    def to_json(self, edges: np.ndarray) -> dict:
        q = quantiles_from_hist(self.hist, edges, (0.5, 0.9, 0.99))
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "rows": self.rows,
                "anomalies": self.anomalies,
                "anomaly_rate": self.anomalies / self.rows if self.rows else 0.0,
                "score_quantiles": {"0.5": q[0], "0.9": q[1], "0.99": q[2]},
                "model_versions": sorted(self.versions)}


@dataclass
class ScoredSummary:
    """What the report shows about scored output."""
    location: str
    files: List[str]
    rows: int
    anomalies: int
    columns: List[str]  # schema of the first file
    model_versions: List[str]  # every model_version in the footers
    threshold: float  # histogram units: anomaly_score × threshold
    edges: np.ndarray  # (FINE_BINS + 1,) bin edges (log-spaced when all values are > 0)
    hist: np.ndarray  # (FINE_BINS,) rows per bin of anomaly_score × threshold
    windows: List[Window]  # streaming output: one per window, in time order; else empty
    window_edges: Optional[np.ndarray]  # (WINDOW_BINS + 1,) bin edges of Window.hist
    top: Dict[str, list]  # top-N rows by anomaly_score: column -> values (see read_rows)
    typical: Dict[str, list]  # up to N sampled rows with anomaly_score nearest the median
    # The sample: latent (s, d), is_anomaly, anomaly_score, reconstruction_error, label.
    sample: Dict[str, np.ndarray]
    sample_rows: int
    sample_from_rows: int  # rows the sample was drawn from (all rows, or the chosen row groups)
    seed: int
    label_column: Optional[str]

    @property
    def anomaly_fraction(self) -> float:
        return self.anomalies / self.rows if self.rows else 0.0

    def quantiles(self, levels: Sequence[float]) -> List[float]:
        return quantiles_from_hist(self.hist, self.edges, levels)


def quantiles_from_hist(hist: np.ndarray, edges: np.ndarray, levels: Sequence[float]
                        ) -> List[float]:
    """Quantiles of binned data, defined as numpy's default (linear between order statistics).

    The k-th smallest value is placed inside its bin by rank (geometrically for
    log-spaced edges), so a quantile is exact to within one bin.
    """
    total = int(hist.sum())
    if total == 0:
        return [float("nan")] * len(levels)
    cum = np.cumsum(hist)
    log = edges[0] > 0
    e = np.log(edges) if log else np.asarray(edges, dtype=np.float64)

    def value(k: int) -> float:  # k-th smallest (0-based)
        i = int(np.searchsorted(cum, k, side="right"))
        before = cum[i - 1] if i else 0
        frac = (k - before + 0.5) / hist[i]
        v = e[i] + frac * (e[i + 1] - e[i])
        return float(np.exp(v) if log else v)

    out = []
    for q in levels:
        r = q * (total - 1)
        k = int(np.floor(r))
        lo = value(k)
        hi = value(min(k + 1, total - 1))
        out.append(lo + (r - k) * (hi - lo))
    return out


def _inspect(path: str) -> ScoredFile:
    with open_parquet(path) as pf:
        metadata, schema = pf.metadata, pf.schema_arrow
    names = schema.names
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(f"{path} is not scored output: column(s) {', '.join(missing)} missing "
                         f"(columns present: {', '.join(names)}). Pass --scored the output of "
                         f"`latentbeam score` or `latentbeam stream`.")
    meta = schema.metadata or {}
    kv = metadata.metadata or {}
    if META_MODEL_VERSIONS in kv:
        versions = json.loads(kv[META_MODEL_VERSIONS])
    elif META_MODEL_VERSION in meta:
        versions = [meta[META_MODEL_VERSION].decode()]
    else:
        versions = []
    return ScoredFile(path, metadata, names, window_of(path), versions)


def _score_range(files: List[ScoredFile]) -> Tuple[float, float]:
    """Min and max anomaly_score from the row-group statistics (a scan without them)."""
    lo, hi = np.inf, -np.inf
    for f in files:
        md = f.metadata
        # The Parquet leaf column (nested columns such as `latent` shift leaf positions).
        leaf = next(i for i in range(md.num_columns) if md.schema.column(i).path == COL_SCORE)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            if rg.num_rows == 0:
                continue
            stats = rg.column(leaf).statistics
            if stats is not None and stats.has_min_max:
                lo, hi = min(lo, float(stats.min)), max(hi, float(stats.max))
            else:
                with open_parquet(f.path) as pf:
                    err = pf.read_row_group(g, columns=[COL_SCORE]).column(0).to_numpy()
                if len(err):
                    lo, hi = min(lo, float(np.nanmin(err))), max(hi, float(np.nanmax(err)))
    if not np.isfinite(lo):
        return 0.0, 1.0
    return lo, hi


def make_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """Bin edges covering [lo, hi]: log-spaced when all values are > 0."""
    if lo > 0:
        hi = max(hi, lo * 1.0001)
        return np.geomspace(lo, hi * (1 + 1e-6), bins + 1)
    hi = max(hi, lo + 1e-12)
    return np.linspace(lo, hi + (hi - lo) * 1e-6, bins + 1)


def _bin_index(err: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fine-bin index per value (vectorised; equal-width in log or linear space)."""
    bins = len(edges) - 1
    if edges[0] > 0:
        x, a, b = np.log(np.maximum(err, edges[0])), np.log(edges[0]), np.log(edges[-1])
    else:
        x, a, b = err, edges[0], edges[-1]
    idx = ((x - a) / (b - a) * bins).astype(np.int64)
    return np.clip(idx, 0, bins - 1)


def summarize_scored(location: str, *, threshold: float = 1.0, top_n: int = 20,
                     sample_rows: int = 20000, seed: int = 0,
                     label_column: Optional[str] = None) -> ScoredSummary:
    """One pass over scored output; see the module docstring for what is exact and sampled.

    Args:
      location: output directory of `latentbeam score` / `stream`, or a glob.
      threshold: units of the histograms (anomaly_score × threshold); 1.0 histograms
        anomaly_score itself.
      top_n: rows kept for the top-anomalies table (highest anomaly_score).
      sample_rows: rows drawn for the latent map.
      seed: seed of the sample (same seed, same rows).
      label_column: a column to colour the latent map by (None: no label).

    Raises:
      InputError: no files, an unreadable file, or a file without the scored columns.
    """
    paths = scored_files(location)
    files = [_inspect(p) for p in paths]
    return _summarize(location, files, float(threshold), top_n, sample_rows, seed, label_column)


def _summarize(location, files: List[ScoredFile], threshold, top_n, sample_rows, seed, label_column):
    columns = files[0].names
    if label_column is not None and label_column not in columns:
        raise InputError(f"Label column {label_column!r} is not in {files[0].path} (columns: "
                         f"{', '.join(columns)}). Pass --label-column one of them, or none.")
    if label_column is not None:
        kind = files[0].metadata.schema.to_arrow_schema().field(label_column).type
        if pa.types.is_nested(kind):
            raise InputError(f"Label column {label_column!r} of {files[0].path} holds {kind} "
                             f"values; the latent map is coloured by one value per row. Pass "
                             f"--label-column a column of numbers or text, or none.")
    lo, hi = _score_range(files)
    edges = make_edges(lo * threshold, hi * threshold, FINE_BINS)
    hist = np.zeros(FINE_BINS, np.int64)
    stride = FINE_BINS // WINDOW_BINS
    windows: Dict[Tuple, Window] = {}
    rows = anomalies = 0
    heap: List[Tuple[float, int, int, int, int]] = []  # (score, -file, -group, -row) min-heap
    groups: List[Tuple[int, int, int]] = []  # (file index, row group, rows)
    versions: set = set()

    for fi, f in enumerate(files):
        versions.update(f.versions)
        win = None
        if f.window is not None:
            win = windows.setdefault(f.window, Window(*f.window))
            win.versions.update(f.versions)
        with open_parquet(f.path) as pf:
            for g in range(f.metadata.num_row_groups):
                n = f.metadata.row_group(g).num_rows
                if not n:
                    continue
                groups.append((fi, g, n))
                t = pf.read_row_group(g, columns=[COL_SCORE, COL_FLAG])
                score = t.column(COL_SCORE).to_numpy()
                flag = t.column(COL_FLAG).to_numpy(zero_copy_only=False)
                counts = np.bincount(_bin_index(score.astype(np.float64) * threshold, edges),
                                     minlength=FINE_BINS)
                hist += counts
                rows += n
                k = int(flag.sum())
                anomalies += k
                if win is not None:
                    win.rows += n
                    win.anomalies += k
                    win.hist += counts.reshape(WINDOW_BINS, stride).sum(axis=1)
                _keep_top(heap, score, top_n, fi, g)

    # Highest score first; ties by file, row group, row (deterministic).
    winners = sorted(heap, key=lambda it: (-it[0], -it[1], -it[2], -it[3]))
    top = read_rows(files, [(-fi, -g, -r) for _, fi, g, r in winners], columns)
    sample, positions, drawn_from = draw_sample(files, groups, rows, sample_rows, seed, label_column)
    typical = _typical(files, sample, positions, top_n, columns)
    window_list = [windows[k] for k in sorted(windows)]
    return ScoredSummary(
        location=location, files=[f.path for f in files], rows=rows, anomalies=anomalies,
        columns=columns, model_versions=sorted(versions), threshold=threshold, edges=edges,
        hist=hist,
        windows=window_list, window_edges=edges[::stride] if window_list else None, top=top,
        typical=typical, sample=sample, sample_rows=len(sample[COL_ERROR]),
        sample_from_rows=drawn_from,
        seed=seed, label_column=label_column)


def _keep_top(heap: list, score: np.ndarray, top_n: int, fi: int, g: int) -> None:
    """Keeps the top_n (score, -file, -group, -row) of all row groups in the min-heap."""
    if top_n <= 0:
        return
    n = len(score)
    cand = np.argpartition(-score, top_n - 1)[:top_n] if n > top_n else np.arange(n)
    for r in cand:
        item = (float(score[r]), -fi, -g, -int(r))
        if len(heap) < top_n:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)


def _typical(files, sample, positions, top_n: int, columns) -> Dict[str, list]:
    """Typical rows: the sampled rows whose error is closest to the sample's median."""
    if not len(positions):
        return {}
    v = sample[COL_SCORE]
    near = np.argsort(np.abs(v - np.median(v)), kind="stable")[:top_n]
    return read_rows(files, [tuple(int(v) for v in positions[i]) for i in near], columns)


__all__ = ["COL_FEATURE_ERRORS", "COL_MODEL_VERSION", "COL_RECONSTRUCTION", "COL_TOP_FEATURES",
           "ScoredSummary", "Window", "make_edges", "quantiles_from_hist", "scored_files",
           "summarize_scored", "window_of"]
