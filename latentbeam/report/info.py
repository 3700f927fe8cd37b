"""`latentbeam info BUNDLE`: what a bundle holds and whether it is whole, without TensorFlow.

Reads bundle.json and hashes model.keras (streamed, never loaded), so it answers in
about a second for any bundle size and on any Beam filesystem.
"""
from __future__ import annotations

import hashlib
import textwrap
from typing import Any, Dict, List, Optional

from latentbeam import fs
from latentbeam.model.bundle import BUNDLE_FILE, MODEL_FILE, BundleInfo, load_bundle_info
from latentbeam.model.scoring import COMBINE_RSS

_HASH_CHUNK = 8 * 2 ** 20


def integrity(info: BundleInfo) -> Dict[str, Any]:
    """Whether every file bundle.json lists (model.keras, ...) has its recorded sha256.

    bundle.json itself is checked by its seal when it is read (load_bundle_info refuses an
    edited one), so a summary exists only for a sealed, unedited bundle.json.

    Returns:
      {"ok": bool, "files": {name: {"recorded", "actual" (None: missing), "ok"}},
       "detail": one sentence}.
    """
    files: Dict[str, Any] = {}
    problems: List[str] = []
    listed = dict(info.files) or {MODEL_FILE: info.sha256}
    for name, recorded in sorted(listed.items()):
        path = fs.join(info.path, name)
        entry = {"recorded": recorded, "actual": None, "ok": False}
        if fs.exists(path):
            digest = hashlib.sha256()
            with fs.open_read(path) as f:
                for block in iter(lambda: f.read(_HASH_CHUNK), b""):
                    digest.update(block)
            entry["actual"] = digest.hexdigest()
            entry["ok"] = entry["actual"] == recorded
            if not entry["ok"]:
                problems.append(f"sha256 of {path} is {entry['actual']}, {BUNDLE_FILE} records "
                                f"{recorded}: the file was modified or partially copied")
        else:
            problems.append(f"{path} is missing")
        files[name] = entry
    names = ", ".join(sorted(files))
    sealed = info.format_version >= 2
    if problems:
        detail = "; ".join(problems) + ". Copy the bundle again from its source or re-train it"
    else:
        detail = (f"{'the seal of ' + BUNDLE_FILE + ' and ' if sealed else ''}the sha256 of "
                  f"{len(files)} file(s) ({names}) match")
    return {"ok": not problems, "sealed": sealed, "files": files, "detail": detail}


def architecture(info: BundleInfo) -> Dict[str, Any]:
    """The network shape from the training config recorded in the bundle."""
    model = dict(info.training.get("config", {}).get("model", {}))
    kind = model.get("kind", "dense")
    out: Dict[str, Any] = {"kind": kind, "n_inputs": info.n_inputs, "latent_dim": info.latent_dim}
    if kind == "conv2d":
        filters = list(model.get("conv_filters", []))
        out["conv_filters"] = filters
        image = next((f.shape for f in info.features if len(f.shape) >= 2), ())
        out["layers"] = (f"{'x'.join(map(str, image))} image -> conv {filters} -> "
                         f"{info.latent_dim} -> transposed conv {filters[::-1]} -> "
                         f"{'x'.join(map(str, image))}")
    else:
        hidden = [int(u) for u in model.get("hidden_units", [])]
        widths = [info.n_inputs, *hidden, info.latent_dim, *hidden[::-1], info.n_inputs]
        out["hidden_units"] = hidden
        out["layers"] = " -> ".join(map(str, widths))
    for key in ("activation", "variational", "kl_weight", "dropout", "l2", "batch_norm",
                "noise_stddev"):
        if key in model:
            out[key] = model[key]
    return out


def bundle_summary(path: str) -> Dict[str, Any]:
    """Everything `latentbeam info` shows, as plain JSON-able values.

    Raises:
      BundleError: no bundle.json at `path`, or it is malformed (names the file and the fix).
    """
    info = load_bundle_info(path)
    t = dict(info.training)
    losses = t.pop("losses", {}) or {}
    config = t.pop("config", {})
    history: Dict[str, Any] = {"epochs": t.get("epochs"), "best_epoch": t.get("best_epoch"),
                               "rows_per_epoch": t.get("rows_per_epoch"), "losses": losses}
    if losses.get("loss"):
        history["final_loss"] = losses["loss"][-1]
    if losses.get("val_loss"):
        history["best_val_loss"] = min(losses["val_loss"])
    return {
        "path": info.path,
        "integrity": integrity(info),
        "format_version": info.format_version,
        "model_version": info.model_version,
        "features": [f.to_json() for f in info.features],
        "n_inputs": info.n_inputs,
        "latent_dim": info.latent_dim,
        "architecture": architecture(info),
        "threshold": info.threshold.to_json(),
        "score": info.raw.get("score"),
        "calibration": info.calibration,
        "training": {**{k: v for k, v in t.items()}, "history": history,
                     "data": config.get("data", {}), "config": config},
        "latent_stats": info.latent_stats,
        "versions": info.versions,
    }


def _features_text(features: List[dict], limit: int = 8) -> List[str]:
    def one(f):
        shape = f"({', '.join(map(str, f['shape']))})" if f["shape"] else "scalar"
        return f"{f['name']} {f['dtype']} {shape}"
    lines = [one(f) for f in features[:limit]]
    if len(features) > limit:
        more_names = ", ".join(f["name"] for f in features[limit:limit + 3])
        lines.append(f"... and {len(features) - limit} more ({more_names}, ...)")
    return lines


class _Lines:
    """`label:  value` lines with aligned values; `more` continues the last fact."""

    width = 16

    def __init__(self):
        self.lines: List[str] = []

    def add(self, label, value) -> None:
        self.lines.append(f"{label + ':':<{self.width}} {value}")

    def more(self, value) -> None:
        self.lines.append(" " * (self.width + 1) + str(value))


def format_info(s: Dict[str, Any]) -> str:
    """The text form of `bundle_summary` (one fact per line, for people)."""
    out = _Lines()
    out.add("bundle", s["path"])
    integ = s["integrity"]
    out.add("integrity", ("ok, " if integ["ok"] else "FAILED, ") + integ["detail"])
    out.add("model_version", f"{s['model_version']} (format_version {s['format_version']})")
    feats = _features_text(s["features"])
    out.add("features", f"{len(s['features'])} ({s['n_inputs']} inputs): {feats[0]}")
    for line in feats[1:]:
        out.more(line)
    _model_lines(out, s)
    _calibration_lines(out, s)
    _training_lines(out, s)
    out.add("versions", ", ".join(f"{k} {v}" for k, v in s["versions"].items()))
    return "\n".join(out.lines)


def _model_lines(out: _Lines, s: Dict[str, Any]) -> None:
    """Architecture, score and threshold."""
    a = s["architecture"]
    extras = [f"{k}={a[k]}" for k in ("activation", "dropout", "l2", "batch_norm", "noise_stddev")
              if k in a and a[k] not in (0, 0.0, False, None)]
    if a.get("variational"):
        extras.insert(0, f"variational (kl_weight={a.get('kl_weight')})")
    out.add("architecture", f"{a['kind']} {a['layers']}" + (f"; {', '.join(extras)}" if extras else ""))
    normalization = normalization_text(s)
    if normalization:
        out.add("normalization", normalization)
    sc = s.get("score")
    if sc:
        terms = " + ".join(sc.get("terms", []))
        if sc.get("combine") == COMBINE_RSS:
            terms = "sqrt(" + " + ".join(f"{t}^2" for t in sc.get("terms", [])) + ")"
        detail = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in sc.items() if k not in ("terms", "combine") and v is not None]
        out.add("score", terms)
        for line in textwrap.wrap(", ".join(detail), width=80):
            out.more(line)
    else:
        out.add("score", "reconstruction error (mean squared error, normalized space)")
    th = s["threshold"]
    params = ", ".join(f"{k}={v:.4g}" for k, v in th.get("parameters", {}).items())
    out.add("threshold", f"{th['threshold']:.6g} ({th['method']}, value={th['value']}"
            + (f"; {params}" if params else "") + ")")


def normalization_text(s: Dict[str, Any]) -> str:
    """`model.normalization`, the features sharing a scale and the inputs scaled by quartiles
    ("" for bundles that recorded none of it)."""
    t = s["training"]
    parts = []
    mode = (t.get("config", {}).get("model") or {}).get("normalization")
    if mode:
        parts.append(mode)
    shared = t.get("shared_scale_features")
    one_unit = t.get("one_unit_range")
    if one_unit:
        parts.append(f"one scale for all {s['n_inputs']} inputs (integer values within "
                     f"{one_unit[0]:g} to {one_unit[1]:g})")
    elif mode == "shared" and shared:
        parts.append(f"one scale for all {s['n_inputs']} inputs")
    elif shared:
        names = ", ".join(shared[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
        parts.append(f"one scale within {'each of ' if len(shared) > 1 else ''}{names}")
    elif shared is not None:
        parts.append("every input scaled alone")
    if t.get("robust_scaled_inputs") is not None:
        parts.append(f"{t['robust_scaled_inputs']} of {s['n_inputs']} inputs by median and "
                     f"quartiles")
    if t.get("constant_inputs"):
        parts.append(f"{t['constant_inputs']} constant")
    stretched = t.get("stretched_inputs")
    if stretched:
        names = ", ".join(stretched[:3]) + (f" and {len(stretched) - 3} more"
                                            if len(stretched) > 3 else "")
        parts.append(f"stretched by extreme values: {names}")
    return "; ".join(parts)


def _calibration_lines(out: _Lines, s: Dict[str, Any]) -> None:
    cal = s["calibration"]
    if cal.get("quantiles"):
        q = cal["quantiles"]
        what = "score" if s.get("score") else "error"
        out.add("calibration", f"{cal['rows']} rows; {what} p50 {q['0.5']:.4g}, p90 "
                f"{q['0.9']:.4g}, p99 {q['0.99']:.4g}, max {cal['max']:.4g}; flagged "
                f"{cal['flagged_fraction']:.2%}")
    if "roc_auc" in cal:
        out.more(f"label: ROC-AUC {cal['roc_auc']:.4f}, average precision "
                 f"{cal['average_precision']:.4f}, positives {cal['label_positive_fraction']:.2%}")


def epoch_span(rows_per_epoch: Optional[int], n_train: int) -> str:
    """What an epoch covered when not one pass: " of 50,000 rows" (`train.epoch_rows`
    cut the passes) or " of 8 passes" (`train.min_epoch_batches` repeated them)."""
    if rows_per_epoch is None or not n_train or rows_per_epoch == n_train:
        return ""
    if rows_per_epoch < n_train:
        return f" of {rows_per_epoch:,} rows"
    return f" of {rows_per_epoch // n_train} passes"


def _training_lines(out: _Lines, s: Dict[str, Any]) -> None:
    t = s["training"]
    h = t["history"]
    out.add("training", f"{t.get('rows')} rows {t.get('rows_by_split')}, "
            f"skipped {t.get('rows_skipped')}"
            + (f" {t.get('rows_skipped_by_reason')}" if t.get("rows_skipped") else ""))
    hist = f"epochs {h['epochs']} (best {h['best_epoch']})" + epoch_span(
        h.get("rows_per_epoch"), (t.get("rows_by_split") or {}).get("train", 0))
    if "final_loss" in h:
        hist += f", loss {h['losses']['loss'][0]:.5g} -> {h['final_loss']:.5g}"
    if "best_val_loss" in h:
        hist += f", best val_loss {h['best_val_loss']:.5g}"
    out.more(hist)
    out.more(f"seed {t.get('seed')}, {t.get('seconds')} s; data {t.get('source')}")
    out.more(f"data fingerprint {t.get('data_fingerprint')}")


__all__ = ["architecture", "bundle_summary", "format_info", "integrity"]
