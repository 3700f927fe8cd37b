"""The report's views of the bundle alone: model, calibration rows, generator."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from latentbeam.report import plots
from latentbeam.report.calibration import CalibrationRows
from latentbeam.report.info import format_info
from latentbeam.report.page import (IMAGES_SHOWN, TOP_FEATURES_SHOWN, ImageFeature, Page, esc,
                                    features_cell, image_panel, label_name, map_title,
                                    score_label, score_sentence, share_heatmap, table,
                                    thresholded, top_entries)
from latentbeam.report.scored import make_edges

GENERATED = 64  # samples in the generator grid


PLANE_STEPS = 15  # the decoded latent plane is PLANE_STEPS x PLANE_STEPS (latent_dim 2)


def model_section(page: Page, info, summary_info: Dict[str, Any]) -> None:
    t = info.training
    body = f"<pre>{esc(format_info(summary_info))}</pre>"
    losses = t.get("losses") or {}
    if losses.get("loss"):
        body += page.figure("loss.png", plots.loss_curves(losses, t.get("best_epoch")),
                            "training and validation loss per epoch",
                            f"Loss per epoch; early stopping restored the weights of epoch "
                            f"{t.get('best_epoch')} (lowest validation loss).")
    page.section("model", "Model", body)


def calibration_section(page: Page, bundle, cal, names, image: Optional[ImageFeature],
                        top_n: int, report: Dict[str, Any]):
    """The calibration rows read again and scored; returns the latent map's basis (or None)."""
    info = bundle.info
    stored = info.calibration
    threshold = info.threshold.threshold
    if not isinstance(cal, CalibrationRows):
        _stored_calibration(page, info, cal, report)
        return None

    s = cal.scores
    err = thresholded(s)
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
            f"<code>{esc(cal.source)}</code>: {what}, scored with this bundle. At training "
            f"{stored.get('flagged_fraction', 0):.2%} of {stored.get('rows', 0):,} were flagged "
            f"(threshold method <code>{esc(info.threshold.method)}</code>). "
            f"{score_sentence(info)}</p>")
    body += page.figure("calibration_errors.png", plots.error_histogram(
        edges, counts, threshold=threshold, flagged=flagged, total=n,
        title=f"Anomaly scores of {what}" if info.raw.get("score") else
        f"Reconstruction errors of {what}", xlabel=score_label(info)),
        "histogram of calibration rows", "Histogram with the threshold (dashed) and the "
        "fraction above it.")

    points, axes, basis = plots.project_2d(s.latent)
    title = map_title(info.latent_dim, f"Latent map of {what}")
    body += page.figure("latent_calibration.png", plots.latent_map(
        points, axes, s.is_anomaly, cal.labels, title=title,
        label_name=label_name(info) or "label"), "latent map of calibration rows", title)

    order = np.argsort(-s.anomaly_score, kind="stable")[:top_n]
    body += _calibration_top(cal, names, order, report)
    body += _calibration_images(page, cal, names, image, order, err)
    page.section("calibration", "Calibration rows", body)
    return basis


def _stored_calibration(page: Page, info, reason, report: Dict[str, Any]) -> None:
    """The section when the calibration rows cannot be read: the stored quantiles only."""
    stored = info.calibration
    body = (f'<p class="note">The calibration rows are not shown: {esc(reason)}. The '
            f"figure shows the error quantiles stored in bundle.json. Pass "
            f"<code>--scored</code> to see scored data.</p>")
    if stored.get("quantiles"):
        body += page.figure("calibration_errors.png", plots.stored_quantiles(
            stored["quantiles"], info.threshold.threshold, stored.get("rows", 0),
            stored.get("flagged_fraction", 0.0), xlabel=score_label(info)),
            "stored calibration quantiles")
    report["calibration"] = {"available": False, "reason": str(reason)}
    page.section("calibration", "Calibration rows", body)


def _calibration_top(cal, names, order, report: Dict[str, Any]) -> str:
    """The table of the top calibration rows by anomaly_score, with their largest shares."""
    s = cal.scores
    entries = top_entries(s.feature_errors[order], names, TOP_FEATURES_SHOWN)
    rows = []
    for rank, (i, top) in enumerate(zip(order, entries), 1):
        label = [f"{cal.labels[i]:g}"] if cal.labels is not None else []
        rows.append([rank, f"#{int(i)}"] + label
                    + [f"{s.anomaly_score[i]:.3f}", f"{s.reconstruction_error[i]:.4g}",
                       "yes" if s.is_anomaly[i] else "no", features_cell(top)])
    header = ["rank", "calibration row"] + (["label"] if cal.labels is not None else []) + [
        "anomaly_score", "reconstruction_error", "is_anomaly",
        f"largest shares of the error (top {TOP_FEATURES_SHOWN})"]
    report["calibration"]["top"] = [
        {"row": int(i), "anomaly_score": float(s.anomaly_score[i]),
         "top_features": [{"name": nm, "share": sh} for nm, sh in top]}
        for i, top in zip(order, entries)]
    return f"<h3>Top {len(order)} calibration rows by anomaly_score</h3>" + table(header, rows)


def _calibration_images(page: Page, cal, names, image: Optional[ImageFeature], order,
                        err: np.ndarray) -> str:
    """Originals beside reconstructions (image features), else a heat map of error shares."""
    s = cal.scores
    if image is None:
        return share_heatmap(page, "top_features_calibration.png", s.feature_errors[order],
                             [f"#{int(i)}" for i in order], names,
                             "Share of each top anomaly's error per input")
    shown = order[:IMAGES_SHOWN]
    body = image_panel(page, "anomalies_calibration.png", image, cal.x[shown],
                       s.reconstruction[shown], s.feature_errors[shown],
                       [f"{s.anomaly_score[i]:.2f}" for i in shown],
                       "Most anomalous calibration rows (anomaly_score above each)")
    typical = np.argsort(np.abs(err - np.median(err)), kind="stable")[:IMAGES_SHOWN]
    body += image_panel(page, "typical_calibration.png", image, cal.x[typical],
                        s.reconstruction[typical], s.feature_errors[typical],
                        [f"{s.anomaly_score[i]:.2f}" for i in typical],
                        "Typical calibration rows (scores nearest the median)")
    return body


def generator_section(page: Page, bundle, image: Optional[ImageFeature], seed: int,
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
        body += "<h3>First 5 generated rows</h3>" + table(["sample"] + [c for c, _ in cols], rows)
    page.section("generator", "Generator", body)


def _latent_plane(page: Page, bundle, image: ImageFeature) -> str:
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
