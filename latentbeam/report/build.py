"""`latentbeam report`: a static HTML page of PNG plots about a bundle and its scored output.

The page (`DIR/index.html`) has no JavaScript and loads nothing from the network: it
opens from disk. Beside it: one PNG per figure and `report.json` with the numbers the
page shows.

From the bundle alone: the training history, the calibration rows (read again from
the training data recorded in bundle.json and scored by the scoring core; the stored
quantiles when that data is not reachable), the latent map, the top anomalies with
their largest per-input errors, originals beside reconstructions for image features,
and the decoder used as a generator. With `--scored`: the same views of scored output
(batch or stream; summarised in one bounded-memory pass, see `scored.py`) and, for
streaming output, anomaly rate and error quantiles per window with model versions.
"""
from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from latentbeam import fs
from latentbeam.errors import ConfigError
from latentbeam.model.features import input_names
from latentbeam.pipeline.records import SCORING_COLUMNS
from latentbeam.report import plots
from latentbeam.report.calibration import CalibrationRows, read_calibration_rows
from latentbeam.report.info import bundle_summary, format_info
from latentbeam.report.scored import (COL_FEATURE_ERRORS, COL_MODEL_VERSION, COL_RECONSTRUCTION,
                                      COL_TOP_FEATURES, ScoredSummary, make_edges,
                                      summarize_scored)

log = logging.getLogger(__name__)

INDEX = "index.html"
REPORT_JSON = "report.json"
TOP_FEATURES_SHOWN = 5  # inputs listed per anomaly in the tables
IMAGES_SHOWN = 10  # columns of the original/reconstruction panels
GENERATED = 64  # samples in the generator grid
PLANE_STEPS = 15  # the decoded latent plane is PLANE_STEPS x PLANE_STEPS (latent_dim 2)


@dataclass(frozen=True)
class ImageFeature:
    """The image feature drawn as pictures: a list feature with a 2-D shape (or h, w, 1|3)."""
    name: str
    shape: Tuple[int, ...]
    offset: int  # first column of the feature in the model input matrix

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def images(self, matrix: np.ndarray) -> List[np.ndarray]:
        block = np.asarray(matrix)[:, self.offset:self.offset + self.size]
        return [row.reshape(self.shape) for row in block]


def image_feature(features) -> Optional[ImageFeature]:
    """The first feature with an image shape, or None (tabular and 1-D list features)."""
    offset = 0
    for f in features:
        if len(f.shape) == 2 or (len(f.shape) == 3 and f.shape[2] in (1, 3)):
            return ImageFeature(f.name, tuple(f.shape), offset)
        offset += f.size
    return None


@dataclass(frozen=True)
class ReportResult:
    index: str  # path of index.html
    files: List[str]  # every file written (names inside the report directory)
    summary: Dict[str, Any]  # the numbers the page shows (also in report.json)
    seconds: float


class _Page:
    """Collects sections and figures; writes them at the end."""

    def __init__(self, output: str):
        self.output = output
        self.files: Dict[str, bytes] = {}
        self.sections: List[Tuple[str, str, str]] = []  # (id, title, html)

    def figure(self, name: str, png: bytes, alt: str, caption: str = "") -> str:
        self.files[name] = png
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(alt)}">'
                f"{cap}</figure>")

    def section(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _table(header: Optional[Sequence[str]], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text with _esc)."""
    head = ("<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _features_cell(entries: Sequence[Tuple[str, float]]) -> str:
    if not entries:
        return '<span class="muted">—</span>'
    return ", ".join(f"<code>{_esc(n)}</code>&nbsp;{s:.0%}" for n, s in entries)


def _top_entries(ferr_rows: np.ndarray, names: Sequence[str], k: int
                 ) -> List[List[Tuple[str, float]]]:
    """(input name, share) of the k largest shares per row: records.top_features, named."""
    from latentbeam.pipeline.records import top_features

    if not len(ferr_rows):
        return []
    idx, shares = top_features(np.asarray(ferr_rows, dtype=np.float32), k)
    return [[(names[j], float(s)) for j, s in zip(i_row, s_row)]
            for i_row, s_row in zip(idx, shares)]


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
    from latentbeam.model import load_bundle, load_bundle_info

    if top_n < 1 or sample_rows < 1:
        raise ConfigError(f"--top and --sample-rows must be >= 1. Received: top={top_n}, "
                          f"sample_rows={sample_rows}")
    t0 = time.time()
    _check_output(output, bundle_path, scored)
    summary_info = bundle_summary(bundle_path)
    s = None
    if scored:
        # Scored output first: its errors (wrong path, not scored files) come before the
        # model is loaded, and the pass over it needs only bundle.json.
        t = time.time()
        label = label_column if label_column is not None else _default_label(
            load_bundle_info(bundle_path), scored)
        s = summarize_scored(scored, threshold=load_bundle_info(bundle_path).threshold.threshold,
                             top_n=top_n, sample_rows=sample_rows, seed=seed, label_column=label)
        log.info("Scored output summarised in %.2f s (%d rows, %d files)", time.time() - t,
                 s.rows, len(s.files))
    bundle = load_bundle(bundle_path)
    info = bundle.info
    page = _Page(output)
    names = input_names(info.features)
    image = image_feature(info.features)
    report: Dict[str, Any] = {
        "bundle": {"path": info.path, "model_version": info.model_version,
                   "threshold": info.threshold.threshold, "latent_dim": info.latent_dim,
                   "n_inputs": info.n_inputs, "integrity_ok": summary_info["integrity"]["ok"],
                   "image_feature": image.name if image else None},
        "seed": seed,
    }

    _model_section(page, info, summary_info)
    t = time.time()
    cal = read_calibration_rows(bundle, sample_rows)
    basis = _calibration_section(page, bundle, cal, names, image, top_n, report)
    log.info("Calibration views in %.2f s", time.time() - t)
    t = time.time()
    _generator_section(page, bundle, image, seed, report)
    log.info("Generator views in %.2f s", time.time() - t)
    if s is not None:
        t = time.time()
        _scored_section(page, bundle, s, cal, basis, names, image, report)
        log.info("Scored views in %.2f s", time.time() - t)

    seconds = time.time() - t0
    report["seconds"] = round(seconds, 3)
    report["files"] = sorted(page.files) + [INDEX, REPORT_JSON]
    _write(page, report)
    index = fs.join(output, INDEX)
    log.info("Report written to %s in %.2f s", index, time.time() - t0)
    return ReportResult(index=index, files=report["files"], summary=report, seconds=seconds)


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


# ------------------------------------------------------------------------------ sections

def _model_section(page: _Page, info, summary_info: Dict[str, Any]) -> None:
    t = info.training
    body = f"<pre>{_esc(format_info(summary_info))}</pre>"
    losses = t.get("losses") or {}
    if losses.get("loss"):
        body += page.figure("loss.png", plots.loss_curves(losses, t.get("best_epoch")),
                            "training and validation loss per epoch",
                            f"Loss per epoch; early stopping restored the weights of epoch "
                            f"{t.get('best_epoch')} (lowest validation loss).")
    page.section("model", "Model", body)


def _calibration_section(page: _Page, bundle, cal, names, image: Optional[ImageFeature],
                         top_n: int, report: Dict[str, Any]):
    info = bundle.info
    stored = info.calibration
    threshold = info.threshold.threshold
    if not isinstance(cal, CalibrationRows):
        body = (f'<p class="note">The calibration rows are not shown: {_esc(cal)}. The '
                f"figure shows the error quantiles stored in bundle.json. Pass "
                f"<code>--scored</code> to see scored data.</p>")
        if stored.get("quantiles"):
            body += page.figure("calibration_errors.png", plots.stored_quantiles(
                stored["quantiles"], threshold, stored.get("rows", 0),
                stored.get("flagged_fraction", 0.0), xlabel=score_label(info)),
                "stored calibration quantiles")
        report["calibration"] = {"available": False, "reason": str(cal)}
        page.section("calibration", "Calibration rows", body)
        return None

    s = cal.scores
    err = _thresholded(s)
    n = len(err)
    complete = cal.complete or n == stored.get("rows")
    flagged = int(s.is_anomaly.sum())
    report["calibration"] = {
        "available": True, "rows": n, "complete": bool(complete), "flagged": flagged,
        "flagged_fraction": flagged / n, "stored_rows": stored.get("rows"),
        "stored_flagged_fraction": stored.get("flagged_fraction"), "source": cal.source}
    what = (f"all {n:,} calibration rows" if complete else
            f"the first {n:,} of {stored.get('rows') or '?'} calibration rows")
    edges = make_edges(float(err.min()), float(err.max()), 400)
    counts, _ = np.histogram(np.clip(err, edges[0], edges[-1]), bins=edges)
    report["calibration"]["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    body = (f"<p>The rows the threshold was calibrated on (never trained on), read again from "
            f"<code>{_esc(cal.source)}</code>: {what}, scored with this bundle. At training "
            f"{stored.get('flagged_fraction', 0):.2%} of {stored.get('rows', 0):,} were flagged "
            f"(threshold method <code>{_esc(info.threshold.method)}</code>). "
            f"{_score_sentence(info)}</p>")
    body += page.figure("calibration_errors.png", plots.error_histogram(
        edges, counts, threshold=threshold, flagged=flagged, total=n,
        title=f"Anomaly scores of {what}" if info.raw.get("score") else
        f"Reconstruction errors of {what}", xlabel=score_label(info)),
        "histogram of calibration rows", "Histogram with the threshold (dashed) and the "
        "fraction above it.")

    points, axes, basis = plots.project_2d(s.latent)
    title = _map_title(info.latent_dim, f"Latent map of {what}")
    body += page.figure("latent_calibration.png", plots.latent_map(
        points, axes, s.is_anomaly, cal.labels, title=title,
        label_name=_label_name(info) or "label"), "latent map of calibration rows", title)

    order = np.argsort(-s.anomaly_score, kind="stable")[:top_n]
    entries = _top_entries(s.feature_errors[order], names, TOP_FEATURES_SHOWN)
    rows = []
    for rank, (i, top) in enumerate(zip(order, entries), 1):
        label = [f"{cal.labels[i]:g}"] if cal.labels is not None else []
        rows.append([rank, f"#{int(i)}"] + label
                    + [f"{s.anomaly_score[i]:.3f}", f"{s.reconstruction_error[i]:.4g}",
                       "yes" if s.is_anomaly[i] else "no", _features_cell(top)])
    header = ["rank", "calibration row"] + (["label"] if cal.labels is not None else []) + [
        "anomaly_score", "reconstruction_error", "is_anomaly",
        f"largest shares of the error (top {TOP_FEATURES_SHOWN})"]
    body += f"<h3>Top {len(order)} calibration rows by anomaly_score</h3>" + _table(header, rows)
    report["calibration"]["top"] = [
        {"row": int(i), "anomaly_score": float(s.anomaly_score[i]),
         "top_features": [{"name": nm, "share": sh} for nm, sh in top]}
        for i, top in zip(order, entries)]

    if image is not None:
        shown = order[:IMAGES_SHOWN]
        body += _image_panel(page, "anomalies_calibration.png", image, cal.x[shown],
                             s.reconstruction[shown], s.feature_errors[shown],
                             [f"{s.anomaly_score[i]:.2f}" for i in shown],
                             "Most anomalous calibration rows (anomaly_score above each)")
        typical = np.argsort(np.abs(err - np.median(err)), kind="stable")[:IMAGES_SHOWN]
        body += _image_panel(page, "typical_calibration.png", image, cal.x[typical],
                             s.reconstruction[typical], s.feature_errors[typical],
                             [f"{s.anomaly_score[i]:.2f}" for i in typical],
                             "Typical calibration rows (scores nearest the median)")
    else:
        body += _share_heatmap(page, "top_features_calibration.png", s.feature_errors[order],
                               [f"#{int(i)}" for i in order], names,
                               "Share of each top anomaly's error per input")
    page.section("calibration", "Calibration rows", body)
    return basis


def _thresholded(scores) -> np.ndarray:
    """The per-row value the threshold applies to (Scores.score; the reconstruction error
    for scoring cores without a combined score)."""
    value = getattr(scores, "score", None)
    return np.asarray(scores.reconstruction_error if value is None else value, np.float64)


def _image_panel(page: _Page, name: str, image: ImageFeature, x, recon, ferr, titles,
                 title: str) -> str:
    rows = []
    if x is not None:
        rows.append(("original", image.images(x)))
    if recon is not None:
        rows.append(("reconstruction", image.images(recon)))
    if ferr is not None:
        rows.append(("squared error", image.images(ferr)))
    if not rows:
        return ""
    cmaps = ["gray_r" if label != "squared error" else "magma_r" for label, _ in rows]
    shared = [label != "squared error" for label, _ in rows]
    png = plots.image_rows(rows, titles=titles, title=title, cmaps=cmaps, shared_scale=shared)
    return page.figure(name, png, title, f"{title}. Rows: " + ", ".join(r[0] for r in rows) + ".")


def _share_heatmap(page: _Page, name: str, ferr: np.ndarray, row_labels, names, title) -> str:
    if not len(ferr):
        return ""
    ferr = np.nan_to_num(np.asarray(ferr, dtype=np.float64))  # NaN: unobserved (--missing mask)
    shares = ferr / np.maximum(ferr.sum(axis=1, keepdims=True), 1e-300)
    cols = np.argsort(-shares.max(axis=0), kind="stable")[:min(20, shares.shape[1])]
    cols = np.sort(cols)
    png = plots.share_heatmap(shares[:, cols], row_labels, [names[j] for j in cols], title=title)
    return page.figure(name, png, title, title + " (the inputs with the largest shares).")


def _generator_section(page: _Page, bundle, image: Optional[ImageFeature], seed: int,
                       report: Dict[str, Any]) -> None:
    from latentbeam.model import decode, sample_latent

    info = bundle.info
    z = sample_latent(bundle, GENERATED, seed)
    x = decode(bundle, z)
    prior = "N(0, I), the VAE prior" if info.variational or not info.latent_stats else \
        "a Gaussian fitted to the calibration rows' codes"
    body = (f"<p>The decoder as a generator: {GENERATED} codes drawn from {prior} (seed {seed}) "
            f"and decoded, as <code>latentbeam generate</code> does.</p>")
    report["generated"] = {"samples": GENERATED, "seed": seed}
    if image is not None:
        body += page.figure("generated.png", plots.image_grid(
            image.images(x), 8, title=f"{GENERATED} generated {image.name}s"),
            "grid of generated samples", "Samples from the decoder.")
        if info.latent_dim == 2:
            body += _latent_plane(page, bundle, image)
    else:
        names = info.feature_names[:10]
        cols = []
        offset = 0
        for f in info.features:
            if f.name in names:
                cols.append((f.name, offset))
            offset += f.size
        rows = [[i] + [f"{x[i, off]:.4g}" for _, off in cols] for i in range(5)]
        body += "<h3>First 5 generated rows</h3>" + _table(["sample"] + [c for c, _ in cols], rows)
    page.section("generator", "Generator", body)


def _latent_plane(page: _Page, bundle, image: ImageFeature) -> str:
    """Decodes a regular grid over the 2-D latent plane (mean ± 2 std of the codes)."""
    from latentbeam.model import decode

    stats = bundle.info.latent_stats or {}
    if bundle.info.variational or not stats:
        mean, std = np.zeros(2), np.ones(2)
    else:
        mean = np.asarray(stats["mean"], dtype=np.float64)
        std = np.sqrt(np.maximum(np.diag(np.asarray(stats["cov"], dtype=np.float64)), 1e-12))
    a = np.linspace(mean[0] - 2 * std[0], mean[0] + 2 * std[0], PLANE_STEPS)
    b = np.linspace(mean[1] + 2 * std[1], mean[1] - 2 * std[1], PLANE_STEPS)  # top row: high z[1]
    grid = np.array([[u, v] for v in b for u in a], dtype=np.float32)
    x = decode(bundle, grid)
    return page.figure("latent_plane.png", plots.image_grid(
        image.images(x), PLANE_STEPS,
        title="The latent plane decoded: z[0] left to right, z[1] top to bottom "
              "(mean ± 2 std of the codes)"),
        "the 2-D latent plane decoded on a grid",
        "Each cell decodes one point of a regular grid over the 2-number code: neighbouring "
        "codes decode to similar images.")


def score_label(info) -> str:
    """What the threshold applies to, for axis labels (bundle.json `score`, when present)."""
    desc = info.raw.get("score") or {}
    terms = desc.get("terms") or ["reconstruction"]
    if not desc:
        return "reconstruction error (mean squared error, normalized space)"
    if terms == ["reconstruction"]:
        return "score (reconstruction error, calibrated per input)"
    return "score (" + " + ".join(t.replace("_", " ") for t in terms) + ")"


def _score_sentence(info) -> str:
    """One sentence on what is thresholded, for the page."""
    if not info.raw.get("score"):
        return ("The threshold applies to the reconstruction error; anomaly_score = "
                "reconstruction_error / threshold.")
    terms = " + ".join(t.replace("_", " ") for t in info.raw["score"].get("terms", []))
    return (f"The threshold applies to the bundle's score ({_esc(terms)} terms, see "
            f"<code>score</code> in bundle.json), not to reconstruction_error alone; "
            f"anomaly_score = score / threshold. The histograms show the score.")


def _map_title(latent_dim: int, text: str) -> str:
    if latent_dim == 2:
        return f"{text}: the 2-number code itself"
    if latent_dim == 1:
        return f"{text}: the 1-number code"
    return f"{text}: PCA projection of the {latent_dim}-number code"


def _label_name(info) -> Optional[str]:
    return (info.training.get("config") or {}).get("data", {}).get("label")


def _scored_section(page: _Page, bundle, s: ScoredSummary, cal, basis, names,
                    image: Optional[ImageFeature], report: Dict[str, Any]) -> None:
    info = bundle.info
    threshold = info.threshold.threshold
    sampled = (f"{s.sample_rows:,} rows drawn uniformly at random (seed {s.seed}) from "
               + (f"all {s.rows:,} rows" if s.sample_from_rows >= s.rows else
                  f"{s.sample_from_rows:,} rows of randomly chosen row groups"))
    other = [v for v in s.model_versions if v != info.model_version]
    facts = [
        ("location", f"<code>{_esc(s.location)}</code>"),
        ("files", f"{len(s.files):,}" + (" (streaming windows)" if s.windows else "")),
        ("rows", f"{s.rows:,} (every count, histogram and the top table use all of them)"),
        ("anomalies", f"{s.anomalies:,} ({s.anomaly_fraction:.2%})"),
        ("model versions", ", ".join(f"<code>{_esc(v)}</code>" +
                                      (" (this bundle)" if v == info.model_version else "")
                                      for v in s.model_versions) or "unknown"),
        ("latent map sample", _esc(sampled)),
    ]
    body = _table(None, [[f"<b>{_esc(k)}</b>", v] for k, v in facts], "facts")
    if other:
        body += (f'<p class="note">Some rows were scored by other model versions '
                 f"({_esc(', '.join(other))}); the threshold line is this bundle's.</p>")
    q = s.quantiles((0.5, 0.9, 0.99))
    report["scored"] = {
        "location": s.location, "files": len(s.files), "rows": s.rows, "anomalies": s.anomalies,
        "anomaly_fraction": s.anomaly_fraction, "model_versions": s.model_versions,
        "score_quantiles": {"0.5": q[0], "0.9": q[1], "0.99": q[2]},
        "sample_rows": s.sample_rows, "sample_from_rows": s.sample_from_rows, "seed": s.seed,
        "label_column": s.label_column,
        "histogram": {"edges": s.edges.tolist(), "counts": s.hist.tolist()},
    }
    overlay = None
    if isinstance(cal, CalibrationRows):
        e = _thresholded(cal.scores)
        ce = make_edges(float(e.min()), float(e.max()), 200)
        cc, _ = np.histogram(np.clip(e, ce[0], ce[-1]), bins=ce)
        overlay = (ce, cc, "calibration rows")
    body += page.figure("scored_errors.png", plots.error_histogram(
        s.edges, s.hist, threshold=threshold, flagged=s.anomalies, total=s.rows,
        title=(f"Anomaly scores of {s.rows:,} scored rows" if info.raw.get("score") else
               f"Reconstruction errors of {s.rows:,} scored rows"), overlay=overlay,
        note=f"p50 {q[0]:.4g}, p90 {q[1]:.4g}, p99 {q[2]:.4g}", xlabel=score_label(info)),
        "histogram of scored rows",
        "All scored rows, as anomaly_score × this bundle's threshold, so the dashed line "
        "separates exactly the rows the scoring job flagged (is_anomaly), whatever model "
        "version scored them."
        + (" The outline is the calibration rows, for comparison (drift shows as a shift)."
           if overlay else ""))

    latent = s.sample["latent"]
    if latent.size:
        points, axes, _ = plots.project_2d(latent, basis)
        title = _map_title(latent.shape[1], f"Latent map of {s.sample_rows:,} sampled scored rows")
        if basis is not None:
            title += " (axes of the calibration map)"
        labels = s.sample.get("label") if s.label_column else None
        if labels is not None:
            labels = np.array([np.nan if v is None else float(v) for v in labels.tolist()])
        body += page.figure("latent_scored.png", plots.latent_map(
            points, axes, s.sample["is_anomaly"], labels, title=title,
            label_name=s.label_column or "label"), "latent map of scored rows", sampled)

    top = s.top
    n_top = len(top.get("anomaly_score", []))
    # Key columns shown in the table: scalars (a passed-through image is drawn instead).
    keys = [c for c in s.columns if c not in SCORING_COLUMNS
            and not any(isinstance(v, (list, dict)) for v in top.get(c, []))]
    entries, ferr_top = _scored_top_features(top, n_top, names)
    rows = []
    for i in range(n_top):
        rows.append([i + 1] + [_esc(top[k][i]) for k in keys] + [
            f"{top['anomaly_score'][i]:.3f}", f"{top['reconstruction_error'][i]:.4g}",
            "yes" if top["is_anomaly"][i] else "no",
            f"<code>{_esc(str(top.get(COL_MODEL_VERSION, [''] * n_top)[i])[:8])}</code>",
            _features_cell(entries[i]) if entries else
            '<span class="muted">score with --top-features K</span>'])
    body += f"<h3>Top {n_top} scored rows by anomaly_score</h3>" + _table(
        ["rank"] + keys + ["anomaly_score", "reconstruction_error", "is_anomaly", "model",
                           "largest shares of the error"], rows)
    if not entries:
        body += ('<p class="note">The scored files have neither <code>top_features</code> nor '
                 "<code>feature_errors</code>: score with <code>--top-features K</code> (or "
                 "<code>--per-feature-errors</code>) to see which inputs made each row "
                 "anomalous.</p>")
    report["scored"]["top"] = [
        {**{k: top[k][i] for k in keys}, "anomaly_score": top["anomaly_score"][i],
         "top_features": [{"name": nm, "share": sh} for nm, sh in (entries[i] if entries else [])]}
        for i in range(n_top)]

    if image is not None and n_top:
        shown = list(range(min(n_top, IMAGES_SHOWN)))
        recon = _scored_reconstructions(bundle, top, shown)
        ferr = ferr_top[shown] if ferr_top is not None else None
        body += _image_panel(page, "anomalies_scored.png", image,
                             _scored_originals(top, image, shown), recon, ferr,
                             [f"{top['anomaly_score'][i]:.2f}" for i in shown],
                             "Most anomalous scored rows (anomaly_score above each)")
        typ = s.typical
        n_typ = len(typ.get("anomaly_score", []))
        if n_typ:
            shown_t = list(range(min(n_typ, IMAGES_SHOWN)))
            _, ferr_typ = _scored_top_features(typ, n_typ, names)
            body += _image_panel(page, "typical_scored.png", image,
                                 _scored_originals(typ, image, shown_t),
                                 _scored_reconstructions(bundle, typ, shown_t),
                                 ferr_typ[shown_t] if ferr_typ is not None else None,
                                 [f"{typ['anomaly_score'][i]:.2f}" for i in shown_t],
                                 "Typical scored rows (scores nearest the sample median)")
        if _scored_originals(top, image, shown) is None:
            body += (f'<p class="note">The scored files do not carry the input column '
                     f"<code>{_esc(image.name)}</code>, so the panels show reconstructions "
                     f"(the <code>reconstruction</code> column, or the row's "
                     f"<code>latent</code> decoded by this bundle) without originals. Score "
                     f"with <code>--key-columns ...,{_esc(image.name)}</code> to pass the "
                     f"input through and see originals beside reconstructions.</p>")
    elif ferr_top is not None and n_top:
        body += _share_heatmap(page, "top_features_scored.png", ferr_top,
                               [f"#{i + 1}" for i in range(n_top)], names,
                               "Share of each top scored anomaly's error per input")

    if s.windows:
        body += _stream_views(page, s, threshold, score_label(info), report)
    page.section("scored", "Scored data", body)


def _scored_top_features(rows: Dict[str, list], n: int, names
                         ) -> Tuple[List[List[Tuple[str, float]]], Optional[np.ndarray]]:
    """(top-feature entries per row, per-input errors (n, n_inputs) or None)."""
    ferr = None
    if rows.get(COL_FEATURE_ERRORS) and all(v is not None for v in rows[COL_FEATURE_ERRORS]):
        ferr = np.asarray(rows[COL_FEATURE_ERRORS], dtype=np.float32)
        if ferr.shape[1] != len(names):
            ferr = None
    if rows.get(COL_TOP_FEATURES):
        entries = [[(d["name"], float(d["share"])) for d in (v or [])][:TOP_FEATURES_SHOWN]
                   for v in rows[COL_TOP_FEATURES]]
    elif ferr is not None:
        entries = _top_entries(ferr, names, TOP_FEATURES_SHOWN)
    else:
        entries = []
    return entries, ferr


def _scored_originals(rows: Dict[str, list], image: ImageFeature, shown: List[int]):
    """The rows' input image, when the scored files pass the feature column through as a key."""
    values = rows.get(image.name)
    if not values:
        return None
    flat = []
    for i in shown:
        v = np.asarray(values[i] if values[i] is not None else [], dtype=np.float32).reshape(-1)
        if v.size != image.size:
            return None
        flat.append(v)
    # Laid out as the model input matrix, so ImageFeature.images (offset 0) reads it.
    matrix = np.zeros((len(flat), image.offset + image.size), np.float32)
    matrix[:, image.offset:] = flat
    return matrix


def _scored_reconstructions(bundle, rows: Dict[str, list], shown: List[int]):
    """X-hat of the rows: the `reconstruction` column, else their latent decoded (same model)."""
    from latentbeam.model import decode

    n_inputs = bundle.info.n_inputs
    recon = rows.get(COL_RECONSTRUCTION)
    if recon and all(recon[i] is not None and len(recon[i]) == n_inputs for i in shown):
        return np.asarray([recon[i] for i in shown], dtype=np.float32)
    versions = rows.get(COL_MODEL_VERSION) or []
    latent = rows.get("latent") or []
    if (latent and all(latent[i] is not None and len(latent[i]) == bundle.info.latent_dim
                       for i in shown)
            and all(versions[i] == bundle.info.model_version for i in shown)):
        return decode(bundle, np.asarray([latent[i] for i in shown], dtype=np.float32))
    return None


def _stream_views(page: _Page, s: ScoredSummary, threshold: float, ylabel: str,
                  report: Dict[str, Any]) -> str:
    wins = [w.to_json(s.window_edges) for w in s.windows]
    report["scored"]["windows"] = wins
    starts = [w.start for w in s.windows]
    rates = np.array([w["anomaly_rate"] for w in wins])
    quant = np.array([[w["score_quantiles"][k] for k in ("0.5", "0.9", "0.99")] for w in wins])
    rows = np.array([w["rows"] for w in wins])
    changes, seen = [], set()
    for w in s.windows:
        for v in sorted(w.versions):
            if v not in seen:
                seen.add(v)
                changes.append((w.start, v))
    body = "<h3>Streaming windows</h3>"
    body += page.figure("stream_windows.png", plots.stream_timeline(
        starts, rates, quant, rows, threshold, changes, ylabel=ylabel),
        "anomaly rate and score quantiles per window",
        "Per window: the anomaly rate and the p50/p90/p99 of the score (read from a per-window "
        "histogram of all its rows); dotted lines mark where a model version first scored.")
    worst = sorted(range(len(wins)), key=lambda i: (-wins[i]["anomaly_rate"], i))[:10]
    body += "<p>Windows with the highest anomaly rate:</p>" + _table(
        ["window start (UTC)", "end", "rows", "anomalies", "rate", "p50", "p99", "model versions"],
        [[_esc(wins[i]["start"]), _esc(wins[i]["end"]), f"{wins[i]['rows']:,}",
          f"{wins[i]['anomalies']:,}", f"{wins[i]['anomaly_rate']:.2%}",
          f"{wins[i]['score_quantiles']['0.5']:.4g}", f"{wins[i]['score_quantiles']['0.99']:.4g}",
          ", ".join(f"<code>{_esc(v[:8])}</code>" for v in wins[i]["model_versions"])]
         for i in worst])
    return body


# ------------------------------------------------------------------------------ writing

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2730;
       background: #f6f7f9; }
header { background: #1d2730; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; color: #c6d0d9; font-size: 13px; }
nav { padding: 8px 32px; background: #e8ecf0; font-size: 14px; }
nav a { margin-right: 18px; color: #1f5f99; text-decoration: none; }
main { padding: 8px 32px 40px 32px; max-width: 1320px; }
section { background: #fff; border-radius: 6px; padding: 8px 20px 16px 20px; margin: 18px 0;
          box-shadow: 0 1px 2px rgba(0,0,0,0.08); }
h2 { border-bottom: 1px solid #dde3e8; padding-bottom: 6px; }
figure { margin: 14px 0; }
figure img { max-width: 100%; border: 1px solid #e3e7eb; }
figcaption { font-size: 13px; color: #55626e; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #dde3e8; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; }
table.facts td:first-child { white-space: nowrap; }
pre { background: #f3f5f7; padding: 10px; overflow-x: auto; font-size: 12.5px; }
code { font-size: 12.5px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; font-size: 14px; }
.muted { color: #8a96a3; }
"""


def _html(page: _Page, report: Dict[str, Any]) -> str:
    b = report["bundle"]
    nav = "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t, _ in page.sections)
    sections = "".join(f'<section id="{a}"><h2>{_esc(t)}</h2>{body}</section>'
                       for a, t, body in page.sections)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>latentbeam report {_esc(b['model_version'])}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>latentbeam report</h1><p>bundle <code>{_esc(b['path'])}</code> · "
        f"model_version <code>{_esc(b['model_version'])}</code> · threshold "
        f"{b['threshold']:.6g} · generated {generated}</p></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n")


def _write(page: _Page, report: Dict[str, Any]) -> None:
    output = page.output
    fs.makedirs(output)
    old = fs.join(output, REPORT_JSON)
    if fs.exists(old):
        # Figures of an earlier report that this one does not draw would be left unlinked.
        try:
            stale = [f for f in json.loads(fs.read_bytes(old)).get("files", [])
                     if f not in report["files"] and "/" not in f]
        except (ValueError, AttributeError):
            stale = []
        paths = [fs.join(output, f) for f in stale if fs.exists(fs.join(output, f))]
        if paths:
            fs.FileSystems.delete(paths)
    for name, data in page.files.items():
        fs.write_bytes(fs.join(output, name), data)
    fs.write_bytes(fs.join(output, REPORT_JSON),
                   json.dumps(report, indent=1, default=_json_default).encode())
    # Written last: a report directory with an index.html is whole.
    fs.write_bytes(fs.join(output, INDEX), _html(page, report).encode("utf-8"))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


__all__ = ["ImageFeature", "ReportResult", "build_report", "image_feature"]
