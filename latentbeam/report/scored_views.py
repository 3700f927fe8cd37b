"""The report's views of scored output: facts, histogram, latent map, top rows, windows."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from latentbeam.pipeline.records import SCORING_COLUMNS
from latentbeam.report import plots
from latentbeam.report.calibration import CalibrationRows
from latentbeam.report.page import (IMAGES_SHOWN, TOP_FEATURES_SHOWN, ImageFeature, Page, esc,
                                    features_cell, image_panel, map_title, score_label,
                                    share_heatmap, table, thresholded, top_entries)
from latentbeam.report.scored import (COL_FEATURE_ERRORS, COL_MODEL_VERSION, COL_RECONSTRUCTION,
                                      COL_TOP_FEATURES, ScoredSummary, make_edges)


def scored_section(page: Page, bundle, s: ScoredSummary, cal, basis, names,
                   image: Optional[ImageFeature], report: Dict[str, Any]) -> None:
    info = bundle.info
    threshold = info.threshold.threshold
    sampled = (f"{s.sample_rows:,} rows drawn uniformly at random (seed {s.seed}) from "
               + (f"all {s.rows:,} rows" if s.sample_from_rows >= s.rows else
                  f"{s.sample_from_rows:,} rows of randomly chosen row groups"))
    body = _facts(info, s, sampled)
    q = s.quantiles((0.5, 0.9, 0.99))
    report["scored"] = {
        "location": s.location, "files": len(s.files), "rows": s.rows, "anomalies": s.anomalies,
        "anomaly_fraction": s.anomaly_fraction, "model_versions": s.model_versions,
        "score_quantiles": {"0.5": q[0], "0.9": q[1], "0.99": q[2]},
        "sample_rows": s.sample_rows, "sample_from_rows": s.sample_from_rows, "seed": s.seed,
        "label_column": s.label_column,
        "histogram": {"edges": s.edges.tolist(), "counts": s.hist.tolist()},
    }
    body += _histogram(page, info, s, cal, q)
    body += _latent_map(page, s, basis, sampled)
    body += _top_rows(page, bundle, s, names, image, report)
    if s.windows:
        body += _stream_views(page, s, threshold, score_label(info), report)
    page.section("scored", "Scored data", body)


def _facts(info, s: ScoredSummary, sampled: str) -> str:
    """The table of what was read: location, files, rows, anomalies, model versions."""
    other = [v for v in s.model_versions if v != info.model_version]
    facts = [
        ("location", f"<code>{esc(s.location)}</code>"),
        ("files", f"{len(s.files):,}" + (" (streaming windows)" if s.windows else "")),
        ("rows", f"{s.rows:,} (every count, histogram and the top table use all of them)"),
        ("anomalies", f"{s.anomalies:,} ({s.anomaly_fraction:.2%})"),
        ("model versions", ", ".join(f"<code>{esc(v)}</code>" +
                                      (" (this bundle)" if v == info.model_version else "")
                                      for v in s.model_versions) or "unknown"),
        ("latent map sample", esc(sampled)),
    ]
    body = table(None, [[f"<b>{esc(k)}</b>", v] for k, v in facts], "facts")
    if other:
        body += (f'<p class="note">Some rows were scored by other model versions '
                 f"({esc(', '.join(other))}); the threshold line is this bundle's.</p>")
    return body


def _histogram(page: Page, info, s: ScoredSummary, cal, q) -> str:
    """Every scored row's score, the calibration rows outlined for comparison."""
    overlay = None
    if isinstance(cal, CalibrationRows):
        e = thresholded(cal.scores)
        ce = make_edges(float(e.min()), float(e.max()), 200)
        cc, _ = np.histogram(np.clip(e, ce[0], ce[-1]), bins=ce)
        overlay = (ce, cc, "calibration rows")
    return page.figure("scored_errors.png", plots.error_histogram(
        s.edges, s.hist, threshold=info.threshold.threshold, flagged=s.anomalies, total=s.rows,
        title=(f"Anomaly scores of {s.rows:,} scored rows" if info.raw.get("score") else
               f"Reconstruction errors of {s.rows:,} scored rows"), overlay=overlay,
        note=f"p50 {q[0]:.4g}, p90 {q[1]:.4g}, p99 {q[2]:.4g}", xlabel=score_label(info)),
        "histogram of scored rows",
        "All scored rows, as anomaly_score × this bundle's threshold, so the dashed line "
        "separates exactly the rows the scoring job flagged (is_anomaly), whatever model "
        "version scored them."
        + (" The outline is the calibration rows, for comparison (drift shows as a shift)."
           if overlay else ""))


def _latent_map(page: Page, s: ScoredSummary, basis, sampled: str) -> str:
    latent = s.sample["latent"]
    if not latent.size:
        return ""
    points, axes, _ = plots.project_2d(latent, basis)
    title = map_title(latent.shape[1], f"Latent map of {s.sample_rows:,} sampled scored rows")
    if basis is not None:
        title += " (axes of the calibration map)"
    labels = s.sample.get("label") if s.label_column else None
    if labels is not None:
        labels = np.array([np.nan if v is None else float(v) for v in labels.tolist()])
    return page.figure("latent_scored.png", plots.latent_map(
        points, axes, s.sample["is_anomaly"], labels, title=title,
        label_name=s.label_column or "label"), "latent map of scored rows", sampled)


def _top_rows(page: Page, bundle, s: ScoredSummary, names, image: Optional[ImageFeature],
              report: Dict[str, Any]) -> str:
    """The top scored rows: a table, then images or a heat map of their error shares."""
    top = s.top
    n_top = len(top.get("anomaly_score", []))
    # Key columns shown in the table: scalars (a passed-through image is drawn instead).
    keys = [c for c in s.columns if c not in SCORING_COLUMNS
            and not any(isinstance(v, (list, dict)) for v in top.get(c, []))]
    entries, ferr_top = _scored_top_features(top, n_top, names)
    rows = []
    for i in range(n_top):
        rows.append([i + 1] + [esc(top[k][i]) for k in keys] + [
            f"{top['anomaly_score'][i]:.3f}", f"{top['reconstruction_error'][i]:.4g}",
            "yes" if top["is_anomaly"][i] else "no",
            f"<code>{esc(str(top.get(COL_MODEL_VERSION, [''] * n_top)[i])[:8])}</code>",
            features_cell(entries[i]) if entries else
            '<span class="muted">score with --top-features K</span>'])
    body = f"<h3>Top {n_top} scored rows by anomaly_score</h3>" + table(
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
        body += _image_panels(page, bundle, s, names, image, ferr_top)
    elif ferr_top is not None and n_top:
        body += share_heatmap(page, "top_features_scored.png", ferr_top,
                              [f"#{i + 1}" for i in range(n_top)], names,
                              "Share of each top scored anomaly's error per input")
    return body


def _image_panels(page: Page, bundle, s: ScoredSummary, names, image: ImageFeature,
                  ferr_top: Optional[np.ndarray]) -> str:
    """Most anomalous and typical scored rows as images (originals when passed through)."""
    top = s.top
    n_top = len(top.get("anomaly_score", []))
    shown = list(range(min(n_top, IMAGES_SHOWN)))
    recon = _scored_reconstructions(bundle, top, shown)
    ferr = ferr_top[shown] if ferr_top is not None else None
    body = image_panel(page, "anomalies_scored.png", image,
                       _scored_originals(top, image, shown), recon, ferr,
                       [f"{top['anomaly_score'][i]:.2f}" for i in shown],
                       "Most anomalous scored rows (anomaly_score above each)")
    typ = s.typical
    n_typ = len(typ.get("anomaly_score", []))
    if n_typ:
        shown_t = list(range(min(n_typ, IMAGES_SHOWN)))
        _, ferr_typ = _scored_top_features(typ, n_typ, names)
        body += image_panel(page, "typical_scored.png", image,
                            _scored_originals(typ, image, shown_t),
                            _scored_reconstructions(bundle, typ, shown_t),
                            ferr_typ[shown_t] if ferr_typ is not None else None,
                            [f"{typ['anomaly_score'][i]:.2f}" for i in shown_t],
                            "Typical scored rows (scores nearest the sample median)")
    if _scored_originals(top, image, shown) is None:
        body += (f'<p class="note">The scored files do not carry the input column '
                 f"<code>{esc(image.name)}</code>, so the panels show reconstructions "
                 f"(the <code>reconstruction</code> column, or the row's "
                 f"<code>latent</code> decoded by this bundle) without originals. Score "
                 f"with <code>--key-columns ...,{esc(image.name)}</code> to pass the "
                 f"input through and see originals beside reconstructions.</p>")
    return body


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
        entries = top_entries(ferr, names, TOP_FEATURES_SHOWN)
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


def _stream_views(page: Page, s: ScoredSummary, threshold: float, ylabel: str,
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
    body += "<p>Windows with the highest anomaly rate:</p>" + table(
        ["window start (UTC)", "end", "rows", "anomalies", "rate", "p50", "p99", "model versions"],
        [[esc(wins[i]["start"]), esc(wins[i]["end"]), f"{wins[i]['rows']:,}",
          f"{wins[i]['anomalies']:,}", f"{wins[i]['anomaly_rate']:.2%}",
          f"{wins[i]['score_quantiles']['0.5']:.4g}", f"{wins[i]['score_quantiles']['0.99']:.4g}",
          ", ".join(f"<code>{esc(v[:8])}</code>" for v in wins[i]["model_versions"])]
         for i in worst])
    return body
