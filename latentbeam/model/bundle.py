"""The model bundle: `model.keras` + `bundle.json`, the contract between training and scoring.

`bundle.json` is written last and holds the sha256 of `model.keras`, so a directory
with a bundle.json whose hash matches is a whole bundle; anything else is refused.
`load_bundle_info` reads only the JSON (cheap: use it at pipeline construction time);
`load_bundle` also verifies and loads the Keras model (on workers, in `setup()`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from latentbeam import fs
from latentbeam.model.features import Feature, n_inputs

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
BUNDLE_FILE = "bundle.json"
_REQUIRED = ("format_version", "model_version", "features", "latent_dim", "threshold",
             "calibration", "training", "versions", "sha256")


@dataclass(frozen=True)
class Threshold:
    method: str  # quantile | contamination | mad | mean_std | f1
    value: Optional[float]  # the method's parameter (level, fraction, k), None for f1
    threshold: float  # reconstruction error above which a row is anomalous
    parameters: Dict[str, float] = field(default_factory=dict)  # e.g. median, mad, f1

    def to_json(self) -> dict:
        return {"method": self.method, "value": self.value, "threshold": self.threshold,
                "parameters": dict(self.parameters)}


@dataclass(frozen=True)
class BundleInfo:
    """Parsed and validated bundle.json (no TensorFlow needed)."""
    path: str  # bundle directory
    format_version: int
    model_version: str  # content hash of architecture, weights and threshold
    features: List[Feature]  # ordered model inputs
    latent_dim: int
    threshold: Threshold
    calibration: Dict[str, Any]  # error quantiles (and label metrics) of the calibration split
    training: Dict[str, Any]  # rows, epochs, losses, seed, data fingerprint, config
    versions: Dict[str, str]
    sha256: str  # of model.keras
    variational: bool = False
    latent_stats: Optional[Dict[str, Any]] = None  # latent mean/cov of calibration rows
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_inputs(self) -> int:
        return n_inputs(self.features)

    @property
    def feature_names(self) -> List[str]:
        return [f.name for f in self.features]


def _bad(path: str, what: str) -> ValueError:
    return ValueError(f"Malformed bundle.json in {path}: {what}. Re-create the bundle with "
                      f"`latentbeam train --config CONFIG --output {path}`.")


def parse_bundle_json(path: str, text: str | bytes) -> BundleInfo:
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise _bad(path, "expected a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"Unknown bundle format_version {version!r} in {path}; this latentbeam reads "
            f"format_version {FORMAT_VERSION}. Use the latentbeam version that wrote it, or "
            f"re-train the bundle.")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise _bad(path, f"missing key(s) {', '.join(missing)}")
    try:
        features = [Feature.from_json(f) for f in raw["features"]]
        th = raw["threshold"]
        threshold = Threshold(method=str(th["method"]),
                              value=None if th.get("value") is None else float(th["value"]),
                              threshold=float(th["threshold"]),
                              parameters={k: float(v) for k, v in th.get("parameters", {}).items()})
        latent_dim = int(raw["latent_dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(path, f"invalid features/threshold/latent_dim ({e!r})") from e
    if not features or latent_dim < 1:
        raise _bad(path, "`features` is empty or `latent_dim` < 1")
    if not (np.isfinite(threshold.threshold) and threshold.threshold > 0):
        raise _bad(path, f"threshold must be a positive number, got {threshold.threshold}")
    if not (isinstance(raw["sha256"], str) and len(raw["sha256"]) == 64):
        raise _bad(path, "`sha256` must be the 64-hex-digit hash of model.keras")
    return BundleInfo(
        path=path, format_version=version, model_version=str(raw["model_version"]),
        features=features, latent_dim=latent_dim, threshold=threshold,
        calibration=dict(raw["calibration"]), training=dict(raw["training"]),
        versions=dict(raw["versions"]), sha256=raw["sha256"],
        variational=bool(raw.get("variational", False)),
        latent_stats=raw.get("latent_stats"), raw=raw)


def load_bundle_info(path: str) -> BundleInfo:
    """Reads and validates `path/bundle.json` (local or remote); no model loading."""
    json_path = fs.join(path, BUNDLE_FILE)
    if not fs.exists(json_path):
        raise ValueError(f"No bundle at {path}: {BUNDLE_FILE} is missing. Expected a directory "
                         f"written by `latentbeam train --output {path}`.")
    return parse_bundle_json(path, fs.read_bytes(json_path))


class Bundle:
    """A loaded bundle: validated metadata (`info`) plus the Keras model (`model`)."""

    def __init__(self, info: BundleInfo, model):
        self.info = info
        self.model = model
        self._lock = threading.Lock()
        self._fns: Dict[str, Any] = {}

    def function(self, name: str):
        """Compiled tf.functions (built once, thread-safe): "forward" and "decode"."""
        fn = self._fns.get(name)
        if fn is None:
            with self._lock:
                fn = self._fns.get(name)
                if fn is None:
                    fn = self._fns[name] = _build_function(self.model, name)
        return fn


def _build_function(model, name: str):
    import tensorflow as tf

    if name == "forward":
        spec = tf.TensorSpec((None, model.inputs[0].shape[-1]), tf.float32)

        @tf.function(input_signature=[spec])
        def forward(x):
            return model(x, training=False)
        # The concrete function skips tf.function's per-call argument binding (about a
        # third of the Python overhead of a call on an 8192-row batch).
        return forward.get_concrete_function()
    if name == "decode":
        decoder = model.get_layer("decoder")
        denorm = model.get_layer("denormalize")
        spec = tf.TensorSpec((None, decoder.inputs[0].shape[-1]), tf.float32)

        @tf.function(input_signature=[spec])
        def decode(z):
            return denorm(decoder(z, training=False))
        return decode.get_concrete_function()
    raise KeyError(name)


def load_bundle(path: str) -> Bundle:
    """Loads a bundle from a local or remote directory.

    Raises:
      ValueError: bundle.json missing, malformed or of an unknown format version;
        model.keras missing or not matching the recorded sha256 (tampered or
        partially copied).
    """
    import keras

    import latentbeam.model.architectures  # noqa: F401  registers the custom layers

    info = load_bundle_info(path)
    model_path = fs.join(path, MODEL_FILE)
    if not fs.exists(model_path):
        raise ValueError(f"Bundle {path} has no {MODEL_FILE}. Copy the whole bundle directory, "
                         f"or re-create it with `latentbeam train`.")
    data = fs.read_bytes(model_path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise ValueError(
            f"{model_path} does not match bundle.json: sha256 {digest} != recorded "
            f"{info.sha256}. The model file was modified or partially copied; copy the "
            f"bundle again or re-train it.")
    with tempfile.TemporaryDirectory(prefix="latentbeam-bundle-") as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        with open(local, "wb") as f:
            f.write(data)
        model = keras.saving.load_model(local, compile=False, safe_mode=True)
    width = int(model.inputs[0].shape[-1])
    if width != info.n_inputs:
        raise ValueError(f"Bundle {path}: model input width {width} != {info.n_inputs} "
                         f"inputs described by bundle.json features.")
    return Bundle(info, model)


def model_version(model, meta: Dict[str, Any]) -> str:
    """Content hash of architecture config, weights and the scoring-relevant metadata."""
    h = hashlib.sha256()
    h.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def library_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("latentbeam", "tensorflow", "keras", "apache-beam", "pyarrow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def save_bundle(model, path: str, meta: Dict[str, Any]) -> BundleInfo:
    """Writes model.keras, then bundle.json (the commit marker) to a local or remote dir.

    `meta` holds every bundle.json key except format_version, model_version, versions
    and sha256, which are computed here.
    """
    fs.makedirs(path)
    json_path = fs.join(path, BUNDLE_FILE)
    if fs.exists(json_path):
        # Remove the old commit marker first: a failure below must not leave a bundle.json
        # that describes a model file it no longer matches.
        from apache_beam.io.filesystems import FileSystems
        FileSystems.delete([json_path])
    with tempfile.TemporaryDirectory(prefix="latentbeam-save-") as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        model.save(local)
        with open(local, "rb") as f:
            data = f.read()
    fs.write_bytes(fs.join(path, MODEL_FILE), data)
    doc = _document(model, meta, hashlib.sha256(data).hexdigest())
    text = json.dumps(doc, indent=2, sort_keys=False, default=_json_default)
    fs.write_bytes(json_path, text.encode("utf-8"))
    return parse_bundle_json(path, text)


def in_memory_info(model, meta: Dict[str, Any]) -> BundleInfo:
    """The BundleInfo `save_bundle` would write, for a model kept in memory only.

    `path` is empty and `sha256` all zeros: there is no model file to hash.
    """
    doc = _document(model, meta, "0" * 64)
    return parse_bundle_json("", json.dumps(doc, default=_json_default))


def _document(model, meta: Dict[str, Any], sha256: str) -> Dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model_version": model_version(
            model, {k: meta[k] for k in ("features", "latent_dim", "threshold")}),
        **meta,
        "versions": library_versions(),
        "sha256": sha256,
    }


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj)}")
