"""The report page: its sections and figures, shared cell and figure helpers, and writing.

Everything here renders; the numbers come from the section builders
(`bundle_views`, `scored_views`).
"""
from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from latentbeam import fs
from latentbeam.model.scoring import COMBINE_RSS
from latentbeam.report import plots

INDEX = "index.html"


REPORT_JSON = "report.json"


TOP_FEATURES_SHOWN = 5  # inputs listed per anomaly in the tables


IMAGES_SHOWN = 10  # columns of the original/reconstruction panels


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


class Page:
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


def esc(v: Any) -> str:
    return html.escape(str(v))


def table(header: Optional[Sequence[str]], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text with esc)."""
    head = ("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def features_cell(entries: Sequence[Tuple[str, float]]) -> str:
    if not entries:
        return '<span class="muted">—</span>'
    return ", ".join(f"<code>{esc(n)}</code>&nbsp;{s:.0%}" for n, s in entries)


def top_entries(ferr_rows: np.ndarray, names: Sequence[str], k: int
                 ) -> List[List[Tuple[str, float]]]:
    """(input name, share) of the k largest shares per row: records.top_features, named."""
    from latentbeam.pipeline.records import top_features

    if not len(ferr_rows):
        return []
    idx, shares = top_features(np.asarray(ferr_rows, dtype=np.float32), k)
    return [[(names[j], float(s)) for j, s in zip(i_row, s_row)]
            for i_row, s_row in zip(idx, shares)]


def thresholded(scores) -> np.ndarray:
    """The per-row value the threshold applies to (Scores.score; the reconstruction error
    for scoring cores without a combined score)."""
    value = getattr(scores, "score", None)
    return np.asarray(scores.reconstruction_error if value is None else value, np.float64)


def image_panel(page: Page, name: str, image: ImageFeature, x, recon, ferr, titles,
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


def share_heatmap(page: Page, name: str, ferr: np.ndarray, row_labels, names, title) -> str:
    if not len(ferr):
        return ""
    ferr = np.nan_to_num(np.asarray(ferr, dtype=np.float64))  # NaN: unobserved (--missing mask)
    shares = ferr / np.maximum(ferr.sum(axis=1, keepdims=True), 1e-300)
    cols = np.argsort(-shares.max(axis=0), kind="stable")[:min(20, shares.shape[1])]
    cols = np.sort(cols)
    png = plots.share_heatmap(shares[:, cols], row_labels, [names[j] for j in cols], title=title)
    return page.figure(name, png, title, title + " (the inputs with the largest shares).")


def score_label(info) -> str:
    """What the threshold applies to, for axis labels (bundle.json `score`, when present)."""
    desc = info.raw.get("score") or {}
    terms = desc.get("terms") or ["reconstruction"]
    if not desc:
        return "reconstruction error (mean squared error, normalized space)"
    if desc.get("combine") == COMBINE_RSS:
        if terms == ["reconstruction"]:
            return "score (root mean squared reconstruction error, normalized space)"
        return "score (root of squared reconstruction error + squared latent distance)"
    if terms == ["reconstruction"]:
        return "score (reconstruction error, calibrated per input)"
    return "score (" + " + ".join(t.replace("_", " ") for t in terms) + ")"


def score_sentence(info) -> str:
    """One sentence on what is thresholded, for the page."""
    if not info.raw.get("score"):
        return ("The threshold applies to the reconstruction error; anomaly_score = "
                "reconstruction_error / threshold.")
    terms = " + ".join(t.replace("_", " ") for t in info.raw["score"].get("terms", []))
    return (f"The threshold applies to the bundle's score ({esc(terms)} terms, see "
            f"<code>score</code> in bundle.json), not to reconstruction_error alone; "
            f"anomaly_score = score / threshold. The histograms show the score.")


def map_title(latent_dim: int, text: str) -> str:
    if latent_dim == 2:
        return f"{text}: the 2-number code itself"
    if latent_dim == 1:
        return f"{text}: the 1-number code"
    return f"{text}: PCA projection of the {latent_dim}-number code"


def label_name(info) -> Optional[str]:
    return (info.training.get("config") or {}).get("data", {}).get("label")


# ------------------------------------------------------------------------------ writing

CSS = """
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


def page_html(page: Page, report: Dict[str, Any]) -> str:
    b = report["bundle"]
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in page.sections)
    sections = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{body}</section>'
                       for a, t, body in page.sections)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>latentbeam report {esc(b['model_version'])}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>latentbeam report</h1><p>bundle <code>{esc(b['path'])}</code> · "
        f"model_version <code>{esc(b['model_version'])}</code> · threshold "
        f"{b['threshold']:.6g} · generated {generated}</p></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n")


def write_report(page: Page, report: Dict[str, Any]) -> None:
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
                   json.dumps(report, indent=1, default=json_default).encode())
    # Written last: a report directory with an index.html is whole.
    fs.write_bytes(fs.join(output, INDEX), page_html(page, report).encode("utf-8"))


def json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
