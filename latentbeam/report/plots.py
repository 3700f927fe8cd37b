"""The report's figures, as PNG bytes (matplotlib's object API on the Agg canvas).

No pyplot: figures are built with `matplotlib.figure.Figure`, which needs no display,
keeps no global state and is safe to use from any thread.
"""
from __future__ import annotations

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

NORMAL_COLOR = "#9aa5b1"
ANOMALY_COLOR = "#d62728"
THRESHOLD_COLOR = "#d62728"
DPI = 100


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def loss_curves(losses: Dict[str, List[float]], best_epoch: Optional[int]) -> bytes:
    """Training and validation loss per epoch, the restored (best) epoch marked."""
    fig = _figure(8, 3.6)
    ax = fig.subplots()
    for key, style in (("loss", "-"), ("val_loss", "-")):
        values = losses.get(key)
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, style, marker="o", markersize=2.5,
                    label="training" if key == "loss" else "validation")
    if best_epoch and losses.get("val_loss") and best_epoch <= len(losses["val_loss"]):
        best = losses["val_loss"][best_epoch - 1]
        ax.axvline(best_epoch, color="#2ca02c", linestyle="--", linewidth=1)
        ax.plot([best_epoch], [best], marker="*", markersize=14, color="#2ca02c",
                label=f"best epoch {best_epoch} (val_loss {best:.4g}, weights restored)")
    all_values = [v for k in ("loss", "val_loss") for v in losses.get(k, []) if v > 0]
    if all_values and max(all_values) / min(all_values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean squared error, normalized)")
    ax.set_title("Training history")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    return _png(fig)


def _rebin(edges: np.ndarray, counts: np.ndarray, bins: int) -> Tuple[np.ndarray, np.ndarray]:
    """Merges fine bins into about `bins` display bins over the occupied range."""
    nz = np.flatnonzero(counts)
    if not len(nz):
        return edges[[0, -1]], np.zeros(1)
    lo, hi = nz[0], nz[-1] + 1
    edges, counts = edges[lo:hi + 1], counts[lo:hi]
    step = max(1, int(np.ceil(len(counts) / bins)))
    pad = (-len(counts)) % step
    counts = np.concatenate([counts, np.zeros(pad, counts.dtype)]).reshape(-1, step).sum(axis=1)
    idx = np.minimum(np.arange(0, len(edges) - 1 + pad + 1, step), len(edges) - 1)
    return edges[idx], counts


def error_histogram(edges: np.ndarray, counts: np.ndarray, *, threshold: float, flagged: int,
                    total: int, title: str,
                    overlay: Optional[Tuple[np.ndarray, np.ndarray, str]] = None,
                    note: str = "",
                    xlabel: str = "reconstruction error (mean squared error, normalized space)"
                    ) -> bytes:
    """Histogram of the thresholded score with the threshold line and the flagged fraction.

    Args:
      edges, counts: binned errors (fine bins are merged for display).
      overlay: (edges, counts, label) drawn as a density outline for comparison.
    """
    fig = _figure(8, 3.8)
    ax = fig.subplots()
    e, c = _rebin(np.asarray(edges, float), np.asarray(counts), 70)
    log_x = e[0] > 0 and e[-1] / e[0] > 30
    widths = np.diff(e)
    density = c / max(c.sum(), 1) / widths
    ax.bar(e[:-1], density, width=widths, align="edge", color="#1f77b4", alpha=0.75,
           label=f"{total:,} rows")
    if overlay is not None:
        oe, oc, label = overlay
        oe, oc = _rebin(np.asarray(oe, float), np.asarray(oc), 50)
        od = oc / max(oc.sum(), 1) / np.diff(oe)
        ax.stairs(od, oe, color="#ff7f0e", linewidth=1.6, label=label)
    ax.axvline(threshold, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.5,
               label=f"threshold {threshold:.4g}")
    frac = flagged / total if total else 0.0
    ax.text(0.99, 0.70, f"flagged: {flagged:,} of {total:,} ({frac:.2%})",
            transform=ax.transAxes, ha="right", va="top", fontsize=10,
            bbox={"facecolor": "white", "edgecolor": THRESHOLD_COLOR, "alpha": 0.9})
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel + (", log scale" if log_x else ""))
    ax.set_ylabel("density")
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    return _png(fig)


def stored_quantiles(quantiles: Dict[str, float], threshold: float, rows: int,
                     flagged_fraction: float, xlabel: str = "reconstruction error") -> bytes:
    """The calibration score quantiles stored in bundle.json (when the rows are unavailable)."""
    fig = _figure(8, 3.6)
    ax = fig.subplots()
    levels = sorted(quantiles, key=float)
    x = [quantiles[q] for q in levels]
    y = [float(q) for q in levels]
    ax.plot(x, y, marker="o", label="calibration score quantiles (bundle.json)")
    ax.axvline(threshold, color=THRESHOLD_COLOR, linestyle="--",
               label=f"threshold {threshold:.4g}")
    ax.text(0.99, 0.05, f"flagged at calibration: {flagged_fraction:.2%} of {rows:,} rows",
            transform=ax.transAxes, ha="right", fontsize=10)
    if min(x) > 0 and max(x) / min(x) > 30:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("quantile level")
    ax.set_title("Calibration rows (stored quantiles; the rows themselves are not available)",
                 fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=9)
    return _png(fig)


Basis = Tuple[np.ndarray, np.ndarray, np.ndarray]  # PCA: mean, components (2, d), variance ratio


def project_2d(z: np.ndarray, basis: Optional[Basis] = None
               ) -> Tuple[np.ndarray, List[str], Optional[Basis]]:
    """2-D coordinates of latent codes: the code itself when it has 2 numbers, else PCA.

    Returns (points (n, 2), axis labels, PCA basis (mean, components (2, d), explained
    ratio (2,)) or None). A given basis is reused, so maps of two data sets compare.
    """
    z = np.asarray(z, dtype=np.float64)
    d = z.shape[1] if z.ndim == 2 else 0
    if d == 2:
        return z, ["z[0]", "z[1]"], None
    if d == 1:
        return np.column_stack([z[:, 0], np.zeros(len(z))]), ["z[0]", "(1-D code)"], None
    if basis is None:
        mean = z.mean(axis=0)
        _, sv, vt = np.linalg.svd(z - mean, full_matrices=False)
        var = sv ** 2
        basis = (mean, vt[:2], var[:2] / max(var.sum(), 1e-300))
    mean, comps, ratio = basis
    p = (z - mean) @ comps.T
    return p, [f"PC{i + 1} ({ratio[i]:.0%} of variance)" for i in range(2)], basis


def _clip_to_view(points: np.ndarray) -> Tuple[np.ndarray, int]:
    """Points clipped to a view around the bulk (1st-99th percentile, padded), and how many
    lay outside: a few far-out codes would otherwise squeeze every cluster into a corner."""
    if len(points) < 20:
        return points, 0
    lo = np.nanpercentile(points, 1, axis=0)
    hi = np.nanpercentile(points, 99, axis=0)
    pad = (hi - lo) * 0.35 + 1e-9
    lo, hi = lo - pad, hi + pad
    outside = int(np.any((points < lo) | (points > hi), axis=1).sum())
    return np.clip(points, lo, hi), outside


def latent_map(points: np.ndarray, axis_labels: Sequence[str], is_anomaly: np.ndarray,
               labels: Optional[np.ndarray], *, title: str, label_name: str = "label") -> bytes:
    """The latent map: one panel coloured by is_anomaly, one by label when there is one."""
    panels = 2 if labels is not None else 1
    fig = _figure(6.2 * panels, 5.4)
    axes = np.atleast_1d(fig.subplots(1, panels))
    flag = np.asarray(is_anomaly, dtype=bool)
    points, outside = _clip_to_view(np.asarray(points, dtype=np.float64))
    if outside:
        title += f"\n{outside:,} far-out points are drawn on the edge of the view"
    size = 14 if len(points) <= 3000 else 5
    ax = axes[0]
    ax.scatter(points[~flag, 0], points[~flag, 1], s=size, c=NORMAL_COLOR, alpha=0.6,
               linewidths=0, label=f"normal ({int((~flag).sum()):,})")
    ax.scatter(points[flag, 0], points[flag, 1], s=size * 3 + 10, c=ANOMALY_COLOR, marker="X",
               edgecolors="black", linewidths=0.4, label=f"is_anomaly ({int(flag.sum()):,})")
    ax.set_title("coloured by is_anomaly")
    ax.legend(loc="best", fontsize=9)
    if labels is not None:
        ax = axes[1]
        lab = np.asarray(labels, dtype=np.float64)
        finite = np.isfinite(lab)
        values = np.unique(lab[finite])
        discrete = len(values) <= 20 and np.all(values == np.round(values))
        if discrete:
            cmap = "tab10" if len(values) <= 10 else "tab20"
            import matplotlib
            colors = matplotlib.colormaps[cmap]
            for i, v in enumerate(values):
                m = finite & (lab == v)
                ax.scatter(points[m, 0], points[m, 1], s=size, color=colors(i % colors.N),
                           alpha=0.75, linewidths=0, label=f"{v:g}")
                centre = np.median(points[m], axis=0)
                ax.text(centre[0], centre[1], f"{v:g}", fontsize=13, weight="bold",
                        ha="center", va="center", color="black",
                        bbox={"facecolor": "white", "alpha": 0.6, "edgecolor": "none",
                              "pad": 1})
            ax.legend(loc="best", fontsize=8, title=label_name, markerscale=2,
                      ncol=2 if len(values) > 5 else 1)
        else:
            sc = ax.scatter(points[finite, 0], points[finite, 1], s=size, c=lab[finite],
                            cmap="viridis", alpha=0.8, linewidths=0)
            fig.colorbar(sc, ax=ax, label=label_name)
        ax.scatter(points[flag, 0], points[flag, 1], s=size * 3 + 10, facecolors="none",
                   edgecolors=ANOMALY_COLOR, linewidths=0.8)
        ax.set_title(f"coloured by {label_name} (anomalies circled)")
    for ax in axes:
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.grid(alpha=0.25)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def image_rows(rows: Sequence[Tuple[str, Sequence[np.ndarray]]], *, titles: Sequence[str] = (),
               title: str = "", cmaps: Optional[Sequence[str]] = None,
               shared_scale: Sequence[bool] = ()) -> bytes:
    """Rows of small images, one column per sample (e.g. originals over reconstructions).

    Args:
      rows: (label, list of (h, w) or (h, w, c) arrays); all rows have the same length.
      titles: one caption per column (e.g. the anomaly score).
      cmaps: colormap per row (default gray_r).
      shared_scale: per row, True to draw it with the value range of row 0 (so originals
        and reconstructions use the same grey levels); other rows use their own range.
    """
    import matplotlib

    n_cols = max(len(images) for _, images in rows)
    h, w = np.asarray(rows[0][1][0]).shape[:2]
    cell = 0.95
    fig = _figure(cell * n_cols * max(w / h, 0.5) + 1.4,
                  cell * len(rows) + (0.75 if title else 0.35))
    axes = np.atleast_1d(fig.subplots(len(rows), 1))
    first = np.asarray([np.asarray(i, dtype=np.float64) for i in rows[0][1]])
    lo, hi = float(np.nanmin(first)), float(np.nanmax(first))
    for r, (label, images) in enumerate(rows):
        ax = axes[r]
        grid = mosaic(images, n_cols)
        cmap = matplotlib.colormaps[cmaps[r] if cmaps else "gray_r"].with_extremes(bad="white")
        kwargs = {}
        if r < len(shared_scale) and shared_scale[r]:
            kwargs.update(vmin=lo, vmax=hi)
        ax.imshow(grid, cmap=cmap, interpolation="nearest", **kwargs)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
        if r == 0:
            for c, text in enumerate(titles[:n_cols]):
                ax.text(c * (w + 1) + (w - 1) / 2, -0.8, text, ha="center", va="bottom",
                        fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _png(fig)


def _unit_rgb(img: np.ndarray) -> np.ndarray:
    span = img.max() - img.min()
    return (img - img.min()) / (span if span > 0 else 1.0)


def mosaic(images: Sequence[np.ndarray], columns: int, gap: int = 1,
           per_tile: bool = False) -> np.ndarray:
    """Images tiled into one array, `gap` pixels of NaN between them (drawn as background).

    Single-channel images keep their values (one colour scale for all tiles) unless
    `per_tile`, which scales each tile to 0..1; colour images are scaled to 0..1 each.
    """
    first = np.asarray(images[0], dtype=np.float64)
    h, w = first.shape[:2]
    colour = first.ndim == 3 and first.shape[2] == 3
    rows = int(np.ceil(len(images) / columns))
    shape = (rows * (h + gap) - gap, columns * (w + gap) - gap) + ((3,) if colour else ())
    out = np.full(shape, np.nan)
    for i, img in enumerate(images):
        img = np.asarray(img, dtype=np.float64)
        img = _unit_rgb(img) if colour or per_tile else img
        img = img if colour else img.reshape(h, w)
        r, c = divmod(i, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
    if colour:
        out = np.where(np.isnan(out), 1.0, out)
    return out


def image_grid(images: Sequence[np.ndarray], columns: int, *, title: str,
               cell_inches: float = 0.7) -> bytes:
    """Images in a grid drawn as one picture (generated samples, the decoded latent plane).

    Each tile is scaled to its own range: decoded images have no natural grey levels.
    """
    grid = mosaic(images, columns, per_tile=True)
    rows = int(np.ceil(len(images) / columns))
    fig = _figure(cell_inches * columns + 0.4, cell_inches * rows + 0.55)
    ax = fig.subplots()
    import matplotlib
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    ax.imshow(grid, cmap=cmap, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=11)
    return _png(fig)


def share_heatmap(shares: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                  *, title: str) -> bytes:
    """Share of each row's error per input (rows: top anomalies; columns: inputs)."""
    n, k = shares.shape
    fig = _figure(max(6.0, 0.45 * k + 2.5), max(2.5, 0.32 * n + 1.6))
    ax = fig.subplots()
    im = ax.imshow(shares, aspect="auto", cmap="Reds", vmin=0, vmax=max(float(shares.max()), 1e-9))
    ax.set_xticks(np.arange(k), labels=column_labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(n), labels=row_labels, fontsize=8)
    for i in range(n):
        for j in range(k):
            if shares[i, j] >= 0.05:
                ax.text(j, i, f"{shares[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of the row's error")
    ax.set_title(title, fontsize=11)
    return _png(fig)


def stream_timeline(starts: Sequence, rates: np.ndarray, quantiles: np.ndarray, rows: np.ndarray,
                    threshold: float, version_changes: Sequence[Tuple[object, str]],
                    ylabel: str = "reconstruction error") -> bytes:
    """Per window: anomaly rate, score quantiles (p50, p90, p99); model versions marked.

    Args:
      starts: window start times (datetime).
      rates: (w,) anomaly fraction per window.
      quantiles: (w, 3) p50, p90, p99 per window of the thresholded score.
      rows: (w,) rows per window.
      version_changes: (window start, model_version) where a version first appears.
    """
    fig = _figure(9, 5.6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(starts, 100 * np.asarray(rates), marker="o", markersize=3, color=ANOMALY_COLOR)
    ax1.set_ylabel("anomaly rate (%)")
    ax1.set_title(f"Streaming output: {len(starts)} windows, {int(np.sum(rows)):,} rows",
                  fontsize=11)
    q = np.asarray(quantiles)
    for i, (name, color) in enumerate((("p50", "#1f77b4"), ("p90", "#ff7f0e"),
                                       ("p99", "#9467bd"))):
        ax2.plot(starts, q[:, i], marker="o", markersize=3, color=color, label=name)
    ax2.axhline(threshold, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.2,
                label=f"threshold {threshold:.4g}")
    positive = q[np.isfinite(q) & (q > 0)]
    if len(positive) and positive.max() / positive.min() > 30:
        ax2.set_yscale("log")
    ax2.set_ylabel(ylabel)
    ax2.set_xlabel("window start (UTC)")
    ax2.legend(loc="best", fontsize=8, ncol=4)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        for when, version in version_changes:
            ax.axvline(when, color="#2ca02c", linestyle=":", linewidth=1.5)
    for when, version in version_changes:
        ax1.annotate(f"model {version[:8]}", (when, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(3, -12), textcoords="offset points", fontsize=8, color="#2ca02c")
    fig.autofmt_xdate()
    return _png(fig)


__all__ = ["error_histogram", "image_grid", "image_rows", "latent_map", "loss_curves",
           "project_2d", "share_heatmap", "stored_quantiles", "stream_timeline"]
