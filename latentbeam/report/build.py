"""`latentbeam report`: a static HTML page of PNG plots about a bundle and its scored output.

The page (`DIR/index.html`) has no JavaScript and loads nothing from the network: it
opens from disk. Beside it: one PNG per figure and `report.json` with the numbers the
page shows.

From the bundle alone (`bundle_views`): the training history, the calibration rows
(read again from the training data recorded in bundle.json and scored by the scoring
core; the stored quantiles when that data is not reachable), the latent map, the top
anomalies with their largest per-input errors, originals beside reconstructions for
image features, and the decoder used as a generator. With `--scored` (`scored_views`):
the same views of scored output (batch or stream; summarised in one bounded-memory
pass, see `scored.py`) and, for streaming output, anomaly rate and error quantiles per
window with model versions. `page` renders and writes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from latentbeam import fs
from latentbeam.config import check_seed
from latentbeam.errors import ConfigError
from latentbeam.model.features import input_names
from latentbeam.report.bundle_views import calibration_section, generator_section, model_section
from latentbeam.report.calibration import read_calibration_rows
from latentbeam.report.info import bundle_summary
from latentbeam.report.page import (INDEX, REPORT_JSON, ImageFeature, Page, image_feature,
                                    write_report)
from latentbeam.report.scored import ScoredSummary, summarize_scored
from latentbeam.report.scored_views import scored_section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportResult:
    index: str  # path of index.html
    files: List[str]  # every file written (names inside the report directory)
    summary: Dict[str, Any]  # the numbers the page shows (also in report.json)
    seconds: float


def build_report(bundle_path: str, output: str, *, scored: Optional[str] = None, top_n: int = 20,
                 sample_rows: int = 20000, seed: int = 0,
                 label_column: Optional[str] = None) -> ReportResult:
    """Writes `output/index.html`, its PNG figures and `output/report.json`.

    Args:
      bundle_path: bundle directory (local, gs://, s3://).
      output: report directory (created; files of an earlier report there are replaced).
      scored: output directory of `latentbeam score` / `stream`, or a glob of its files.
      top_n: rows in the top-anomalies tables.
      sample_rows: rows drawn for the latent maps (and calibration rows read at most).
      seed: seed of every sample (same seed, same report).
      label_column: scored column to colour the latent map by (default: the bundle's
        `data.label` when the scored files have it).

    Raises:
      LatentbeamError: unusable bundle, scored files or arguments (the message names the file
        or column and the fix).
    """
    from latentbeam.model import load_bundle

    if top_n < 1 or sample_rows < 1:
        raise ConfigError(f"--top and --sample-rows must be >= 1. Received: top={top_n}, "
                          f"sample_rows={sample_rows}")
    check_seed(seed, "--seed")
    t0 = time.time()
    _check_output(output, bundle_path, scored)
    summary_info = bundle_summary(bundle_path)
    # Scored output first: its errors (wrong path, not scored files) come before the
    # model is loaded, and the pass over it needs only bundle.json.
    s = _summarize(bundle_path, scored, top_n, sample_rows, seed, label_column) \
        if scored else None
    bundle = load_bundle(bundle_path)
    info = bundle.info
    page = Page(output)
    image = image_feature(info.features)
    report: Dict[str, Any] = {
        "bundle": {"path": info.path, "model_version": info.model_version,
                   "threshold": info.threshold.threshold, "latent_dim": info.latent_dim,
                   "n_inputs": info.n_inputs, "integrity_ok": summary_info["integrity"]["ok"],
                   "image_feature": image.name if image else None},
        "seed": seed,
    }
    _sections(page, bundle, summary_info, s, image, top_n, sample_rows, seed, report)

    seconds = time.time() - t0
    report["seconds"] = round(seconds, 3)
    report["files"] = sorted(page.files) + [INDEX, REPORT_JSON]
    write_report(page, report)
    index = fs.join(output, INDEX)
    log.info("Report written to %s in %.2f s", index, time.time() - t0)
    return ReportResult(index=index, files=report["files"], summary=report, seconds=seconds)


def _summarize(bundle_path: str, scored: str, top_n: int, sample_rows: int, seed: int,
               label_column: Optional[str]) -> ScoredSummary:
    """The one pass over the scored output (needs bundle.json only)."""
    from latentbeam.model import load_bundle_info

    t = time.time()
    label = label_column if label_column is not None else _default_label(
        load_bundle_info(bundle_path), scored)
    s = summarize_scored(scored, threshold=load_bundle_info(bundle_path).threshold.threshold,
                         top_n=top_n, sample_rows=sample_rows, seed=seed, label_column=label)
    log.info("Scored output summarised in %.2f s (%d rows, %d files)", time.time() - t,
             s.rows, len(s.files))
    return s


def _sections(page: Page, bundle, summary_info: Dict[str, Any], s: Optional[ScoredSummary],
              image: Optional[ImageFeature], top_n: int, sample_rows: int, seed: int,
              report: Dict[str, Any]) -> None:
    """Adds the page's sections in order: model, calibration, generator, scored."""
    info = bundle.info
    names = input_names(info.features)
    model_section(page, info, summary_info)
    t = time.time()
    cal = read_calibration_rows(bundle, sample_rows)
    basis = calibration_section(page, bundle, cal, names, image, top_n, report)
    log.info("Calibration views in %.2f s", time.time() - t)
    t = time.time()
    generator_section(page, bundle, image, seed, report)
    log.info("Generator views in %.2f s", time.time() - t)
    if s is not None:
        t = time.time()
        scored_section(page, bundle, s, cal, basis, names, image, report)
        log.info("Scored views in %.2f s", time.time() - t)


def _check_output(output: str, bundle_path: str, scored: Optional[str]) -> None:
    """Refuses a report directory that is, contains or lies inside what the report reads."""
    from latentbeam import paths
    from latentbeam.report.scored import scored_files

    reads = [("bundle", bundle_path)]
    if scored:
        reads += paths.input_locations(fs.parquet_pattern(scored), scored_files(scored),
                                       "scored output")
    paths.check_output(output, reads, flag="--output")


def _default_label(info, scored: str) -> Optional[str]:
    """The bundle's `data.label`, when the scored files carry it as a key column."""
    import pyarrow.parquet as pq

    from latentbeam.report.scored import scored_files

    label = (info.training.get("config") or {}).get("data", {}).get("label")
    if not label:
        return None
    with fs.open_read(scored_files(scored)[0]) as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return label if label in names else None


__all__ = ["ImageFeature", "ReportResult", "build_report", "image_feature"]
