"""The model bundle: `model.keras` + `bundle.json`, the contract between training and scoring.

`bundle.json` is written last and is sealed: `files` maps every other file of the
bundle to its sha256 (`sha256` repeats the one of model.keras), and `seal` is the
sha256 of the canonical JSON of the whole document without `seal`. `model_version`
is a hash of what changes scores (architecture, weights including the normalization
layer, features in order, latent_dim, threshold).
`load_bundle_info` reads only the JSON and checks the seal (cheap: use it at pipeline
construction time); `load_bundle` also checks every file's hash, loads the Keras
model and re-derives `model_version` from it (on workers, in `setup()`). An edited or
partially copied bundle is refused, so scores never carry a stale model_version.
The seal detects edits and partial copies; it is not a signature (anyone can re-seal
with `latentbeam rethreshold`).

Writing bundles is in `latentbeam.model.bundle_write`.
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
from latentbeam.errors import BundleError
from latentbeam.model.features import Feature, n_inputs
from latentbeam.model.scoring import COMBINE_RSS
from latentbeam.text import echo

# 2: `files` and `seal` (format 1 had neither; `latentbeam rethreshold` re-seals one).
# 3: the model's score is `root_sum_squares` (score.combine) over a latent distance between
#    decoded codes: layer options that a reader of format 2 cannot load, so such bundles
#    say so and an older latentbeam refuses them by their format, not by a Keras error.
#    Bundles of the calibrated sum are still written as format 2.
FORMAT_VERSION = 3
SEALED_FORMAT_VERSIONS = (2, 3)
UNSEALED_FORMAT_VERSION = 1
_READ = " and ".join(str(v) for v in SEALED_FORMAT_VERSIONS)
MODEL_FILE = "model.keras"
BUNDLE_FILE = "bundle.json"
_REQUIRED_V1 = ("format_version", "model_version", "features", "latent_dim", "threshold",
                "calibration", "training", "versions", "sha256")
_REQUIRED = _REQUIRED_V1 + ("files", "seal")
# bundle.json keys that model_version covers (with the model's architecture and weights).
SCORING_KEYS = ("features", "latent_dim", "threshold")
# Covered too when present (bundles written before it have none and keep their version):
# the training medians that fill missing values with `--missing impute|mask`.
OPTIONAL_SCORING_KEYS = ("imputation",)
# bundle.json keys computed when a bundle is written (never taken from `meta`).
COMPUTED_KEYS = ("format_version", "model_version", "versions", "sha256", "files", "seal")


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
    calibration: Dict[str, Any]  # score quantiles (and label metrics) of the calibration split
    training: Dict[str, Any]  # rows, epochs, losses, seed, data fingerprint, config
    versions: Dict[str, str]
    sha256: str  # of model.keras
    variational: bool = False
    latent_stats: Optional[Dict[str, Any]] = None  # latent mean/cov of calibration rows
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    files: Dict[str, str] = field(default_factory=dict)  # bundle file -> sha256 (not bundle.json)
    medians: Optional[List[float]] = None  # (n_inputs,) training medians; None: not recorded

    @property
    def n_inputs(self) -> int:
        return n_inputs(self.features)

    @property
    def feature_names(self) -> List[str]:
        return [f.name for f in self.features]


def _bad(path: str, what: str) -> BundleError:
    return BundleError(f"Malformed bundle.json in {path}: {what}. Re-create the bundle with "
                       f"`latentbeam train --config CONFIG --output {path}`.")


def canonical_json(doc: Dict[str, Any]) -> bytes:
    """The bytes the seal hashes: sorted keys, no whitespace, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=json_default).encode("utf-8")


def seal_of(doc: Dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `doc` without its `seal` key."""
    return hashlib.sha256(canonical_json({k: v for k, v in doc.items() if k != "seal"})
                          ).hexdigest()


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and \
        all(c in "0123456789abcdef" for c in value)


def safe_name(name: Any) -> bool:
    """A relative path inside the bundle (no absolute path, no `..`, not bundle.json)."""
    if not isinstance(name, str) or not name or name == BUNDLE_FILE:
        return False
    parts = name.split("/")
    return not name.startswith("/") and "\\" not in name and ":" not in name and \
        all(p not in ("", ".", "..") for p in parts)


def parse_bundle_json(path: str, text: str | bytes, *, allow_unsealed: bool = False) -> BundleInfo:
    """Parses and validates bundle.json text; checks the seal.

    Args:
      path: the bundle directory (for messages).
      text: the content of bundle.json.
      allow_unsealed: also accept format_version 1 (no seal); only for re-sealing.

    Raises:
      BundleError: not valid JSON, an unknown or unsealed format, a missing or invalid
        field, or a seal that does not match (names the file and the fix).
    """
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _bad(path, f"not valid JSON ({echo(str(e))})") from e
    if not isinstance(raw, dict):
        raise _bad(path, "expected a JSON object")
    version = _check_format(path, raw, allow_unsealed)
    features, threshold, latent_dim = _scoring_fields(path, raw)
    medians = _medians(path, raw.get("imputation"), n_inputs(features))
    files = _files(path, raw)
    # Last: a malformed document gets the more specific message above.
    if version in SEALED_FORMAT_VERSIONS:
        _check_seal(path, raw)
    return BundleInfo(
        path=path, format_version=version, model_version=str(raw["model_version"]),
        features=features, latent_dim=latent_dim, threshold=threshold,
        calibration=dict(raw["calibration"]), training=dict(raw["training"]),
        versions=dict(raw["versions"]), sha256=raw["sha256"],
        variational=bool(raw.get("variational", False)),
        latent_stats=raw.get("latent_stats"), raw=raw, files=dict(files), medians=medians)


def _check_format(path: str, raw: Dict[str, Any], allow_unsealed: bool) -> int:
    """The document's format_version, once it is one this latentbeam reads with its keys."""
    version = raw.get("format_version")
    if isinstance(version, bool):  # JSON true is not format 1
        version = echo(version)
    if version == UNSEALED_FORMAT_VERSION and not allow_unsealed:
        th = raw.get("threshold") if isinstance(raw.get("threshold"), dict) else {}
        raise BundleError(
            f"Bundle {path} has format_version 1, which has no seal: edits to its "
            f"{BUNDLE_FILE} cannot be detected. This latentbeam reads format_version "
            f"{_READ}. Check its threshold and re-seal it with `latentbeam rethreshold "
            f"--bundle {path} --threshold {echo(th.get('threshold', 'T'))}`, or re-train it.")
    if version not in SEALED_FORMAT_VERSIONS + (UNSEALED_FORMAT_VERSION,):
        raise BundleError(
            f"Unknown bundle format_version {echo(version)} in {path}; this latentbeam reads "
            f"format_version {_READ}. Use the latentbeam version that wrote it, or "
            f"re-train the bundle.")
    missing = [k for k in (_REQUIRED if version in SEALED_FORMAT_VERSIONS else _REQUIRED_V1)
               if k not in raw]
    if missing:
        raise _bad(path, f"missing key(s) {', '.join(missing)}")
    return version


def _scoring_fields(path: str, raw: Dict[str, Any]):
    """(features, threshold, latent_dim) of the document, validated."""
    try:
        features = [Feature.from_json(f) for f in raw["features"]]
        th = raw["threshold"]
        threshold = Threshold(method=str(th["method"]),
                              value=None if th.get("value") is None else float(th["value"]),
                              threshold=float(th["threshold"]),
                              parameters={k: float(v) for k, v in th.get("parameters", {}).items()})
        latent_dim = int(raw["latent_dim"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise _bad(path, f"invalid features/threshold/latent_dim ({echo(e)})") from e
    if not features or latent_dim < 1:
        raise _bad(path, "`features` is empty or `latent_dim` < 1")
    if not (np.isfinite(threshold.threshold) and threshold.threshold > 0):
        raise _bad(path, f"threshold must be a positive number, got {threshold.threshold}")
    return features, threshold, latent_dim


def _files(path: str, raw: Dict[str, Any]) -> Dict[str, str]:
    """`files` of the document (format 1: model.keras only), with `sha256` checked."""
    if not _is_hex64(raw["sha256"]):
        raise _bad(path, "`sha256` must be the 64-hex-digit hash of model.keras")
    files = raw.get("files", {MODEL_FILE: raw["sha256"]})
    if not isinstance(files, dict) or not all(safe_name(k) and _is_hex64(v)
                                              for k, v in files.items()):
        raise _bad(path, "`files` must map relative file names in the bundle to 64-hex-digit "
                         "sha256 values")
    if files.get(MODEL_FILE) != raw["sha256"]:
        raise _bad(path, f"`files` must list {MODEL_FILE} with the hash in `sha256`")
    return files


def _check_seal(path: str, raw: Dict[str, Any]) -> None:
    if not _is_hex64(raw["seal"]):
        raise _bad(path, "`seal` must be a 64-hex-digit sha256")
    expected = seal_of(raw)
    if raw["seal"] != expected:
        raise BundleError(
            f"{fs.join(path, BUNDLE_FILE)} was changed after it was written: its seal "
            f"{raw['seal'][:16]}... does not match its content ({expected[:16]}...). "
            f"Every field can change scores or describe them (threshold, feature order, "
            f"model_version), so an edited bundle is refused. To change the threshold run "
            f"`latentbeam rethreshold --bundle {path} --threshold T` (or --method M "
            f"--value V); otherwise copy the bundle again from its source or re-train it.")


def _medians(path: str, imputation: Any, width: int) -> Optional[List[float]]:
    """`imputation.medians` of bundle.json as floats (None when the bundle has none)."""
    if imputation is None:
        return None
    values = imputation.get("medians") if isinstance(imputation, dict) else None
    try:
        medians = [float(v) for v in values] if isinstance(values, list) else None
    except (TypeError, ValueError, OverflowError):
        medians = None
    if medians is None or len(medians) != width or not np.isfinite(medians).all():
        raise _bad(path, f"`imputation.medians` must be a list of {width} finite numbers "
                         f"(one per input)")
    return medians


def load_bundle_info(path: str, *, allow_unsealed: bool = False,
                     verify_files: bool = False) -> BundleInfo:
    """Reads and validates `path/bundle.json` (local or remote) and checks its seal.

    No model loading; `allow_unsealed` (format_version 1) is for re-sealing only.
    `verify_files` also checks every listed file against its sha256 (`read_verified_files`):
    what the `score`, `decode` and `stream` jobs do before they start, so that a truncated
    model.keras is refused once, in one line, not in every worker's setup. (The transforms
    read bundle.json alone when a pipeline is built, and check the files where they load.)
    """
    json_path = fs.join(path, BUNDLE_FILE)
    if not fs.exists(json_path):
        raise BundleError(f"No bundle at {path}: {BUNDLE_FILE} is missing. Expected a directory "
                          f"written by `latentbeam train --output {path}`.")
    info = parse_bundle_json(path, fs.read_bytes(json_path), allow_unsealed=allow_unsealed)
    if verify_files:
        read_verified_files(info)
    return info


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


def read_verified_files(info: BundleInfo) -> Dict[str, bytes]:
    """The bytes of every file bundle.json lists, each checked against its sha256.

    Raises:
      BundleError: a listed file is missing or its content does not match (names the file).
    """
    out = {}
    for name, expected in sorted(info.files.items()):
        file_path = fs.join(info.path, name)
        if not fs.exists(file_path):
            raise BundleError(f"Bundle {info.path} has no {name}. Copy the whole bundle directory, "
                              f"or re-create it with `latentbeam train`.")
        data = fs.read_bytes(file_path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            raise BundleError(
                 f"{file_path} does not match bundle.json: sha256 {digest} != recorded "
                 f"{expected}. The file was modified or partially copied; copy the bundle "
                 f"again or re-train it.")
        out[name] = data
    return out


def load_bundle(path: str, *, allow_unsealed: bool = False) -> Bundle:
    """Loads a bundle from a local or remote directory.

    Args:
      path: the bundle directory.
      allow_unsealed: also load format_version 1 (no seal); only for re-sealing.

    Raises:
      BundleError: bundle.json missing, malformed, edited (seal mismatch) or of an unknown
        format version; a listed file missing or not matching its sha256 (tampered or
        partially copied); model_version not matching the model and bundle.json.
    """
    import keras

    import latentbeam.model.architectures  # noqa: F401  registers the custom layers

    info = load_bundle_info(path, allow_unsealed=allow_unsealed)
    data = read_verified_files(info)[MODEL_FILE]
    with tempfile.TemporaryDirectory(prefix="latentbeam-bundle-") as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        with open(local, "wb") as f:
            f.write(data)
        model = keras.saving.load_model(local, compile=False, safe_mode=True)
    width = int(model.inputs[0].shape[-1])
    if width != info.n_inputs:
        raise BundleError(f"Bundle {path}: model input width {width} != {info.n_inputs} "
                          f"inputs described by bundle.json features.")
    derived = model_version(model, scoring_meta(info.raw))
    if derived != info.model_version:
        raise BundleError(
             f"Bundle {path}: model_version {info.model_version!r} in bundle.json does not match "
             f"its model and scoring fields, which give {derived!r}. Scores would carry a stale "
             f"model_version; re-seal the bundle with `latentbeam rethreshold --bundle {path} "
             f"--threshold T` or re-train it.")
    return Bundle(info, model)


def format_version_of(doc: Dict[str, Any]) -> int:
    """The format a bundle.json document is written in: the oldest that can load its model."""
    score = doc.get("score") if isinstance(doc.get("score"), dict) else {}
    return FORMAT_VERSION if score.get("combine") == COMBINE_RSS else 2


def scoring_meta(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The bundle.json fields model_version covers, besides the model itself."""
    return {k: doc[k] for k in SCORING_KEYS + OPTIONAL_SCORING_KEYS if k in doc}


def model_version(model, meta: Dict[str, Any]) -> str:
    """Content hash of architecture config, weights and the scoring-relevant metadata."""
    h = hashlib.sha256()
    h.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj)}")
