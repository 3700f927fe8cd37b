"""Training configuration: frozen dataclasses loaded from YAML with `--set` overrides.

A config that gives only `data` trains well: every other key has a default chosen
for detection quality. Unknown keys and wrong types are rejected with the list of
valid keys. Hostile files are refused quickly: duplicate keys, NaN / infinite numbers,
files over MAX_CONFIG_BYTES and documents whose aliases expand past MAX_CONFIG_NODES
values ("billion laughs"); echoed values are clipped.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple

import yaml

from latentbeam.errors import ConfigError, ConfigTypeError
from latentbeam.text import clip, echo, first_repeated
from latentbeam.yaml_safe import MAX_CONFIG_BYTES, MAX_CONFIG_NODES, load_yaml  # noqa: F401

DATA_SOURCES = ("parquet", "tfds")
MODEL_KINDS = ("dense", "conv2d")
# How inputs are scaled: `per_feature` gives the elements of a list or image feature one
# shared scale, `per_input` scales every input alone, `auto` shares within images (2-D or
# 3-D features) only: a 1-D list may hold a vector of unrelated quantities. `shared`
# gives every input one scale: all columns are one measurement in one unit (a table of
# pixel columns, a spectrum, an array of like sensors).
NORMALIZATIONS = ("auto", "per_input", "per_feature", "shared")
# A few of the activations Keras knows by name, shown when `model.activation` is not one.
ACTIVATION_EXAMPLES = ("relu", "elu", "gelu", "selu", "silu", "tanh", "sigmoid",
                       "softplus", "leaky_relu", "linear")
THRESHOLD_METHODS = ("quantile", "contamination", "mad", "mean_std", "f1")
# Default `threshold.value` per method (quantile level, anomaly fraction, k for MAD,
# k for the standard deviation; f1 takes no value).
DEFAULT_THRESHOLD_VALUES = {
    "quantile": 0.99,
    "contamination": 0.01,
    "mad": 3.5,
    "mean_std": 3.0,
    "f1": None,
}


# Seeds are numpy's (`np.random.default_rng`, Keras' seeding): integers in [0, 2**32 - 1].
MAX_SEED = 2 ** 32 - 1


def check_seed(seed: int, name: str) -> None:
    """Refuses a seed outside [0, 2**32 - 1]; `name` is how the user gave it."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name} must be an integer in [0, 2**32 - 1]. Received: {seed}")


DEFAULT_BATCH_ROWS = 8192  # rows per Arrow record batch read (training, scoring, streaming)


@dataclass(frozen=True)
class DataConfig:
    source: str = "parquet"  # parquet | tfds
    path: Optional[str] = None  # parquet: glob, local or any Beam filesystem
    name: Optional[str] = None  # tfds: dataset name
    split: str = "train"  # tfds: split, sub-splits allowed (train[:80%])
    data_dir: Optional[str] = None  # tfds: prepared data directory; never downloads
    features: Optional[Tuple[str, ...]] = None  # default: every numeric column
    label: Optional[str] = None  # calibration/evaluation only, never trained on
    key_columns: Tuple[str, ...] = ()  # identifiers, never trained on
    batch_rows: int = DEFAULT_BATCH_ROWS  # Arrow record batch size when streaming Parquet


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "dense"  # dense | conv2d (conv2d needs one image-shaped feature)
    latent_dim: Optional[int] = None  # default: min(8, max(2, n_inputs // 2))
    hidden_units: Tuple[int, ...] = (64, 32)  # dense encoder widths; decoder mirrors
    conv_filters: Tuple[int, ...] = (16, 32)  # conv2d encoder filters (stride 2 each)
    activation: str = "relu"
    dropout: float = 0.0  # dropout rate after each hidden layer
    l2: float = 0.0  # L2 kernel regularization factor
    batch_norm: bool = False  # batch normalization after each hidden layer
    variational: bool = False  # VAE: Gaussian latent, KL term, sampling in training
    kl_weight: float = 1.0  # weight of the KL term relative to the reconstruction loss
    noise_stddev: float = 0.0  # denoising AE: Gaussian input noise (normalized units)
    normalization: str = "auto"  # auto | per_input | per_feature | shared: which inputs share a scale


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam
    validation_fraction: float = 0.1  # rows held out for early stopping
    patience: int = 10  # early stopping patience in epochs; best weights restored
    seed: int = 0  # same seed -> identical weights on CPU
    shuffle_buffer: int = 16384  # rows; bounds memory when streaming Parquet
    cache_mb: int = 256  # decoded rows kept in memory and replayed each epoch, up to this size
    disk_cache: bool = True  # rows past cache_mb: decoded once into a temp file and replayed
    tensorboard_dir: Optional[str] = None
    verbose: int = 1  # 0 silent, 1 one bar over the epochs (a line per epoch if not a TTY), 2 a line per epoch
    trim_fraction: float = 0.0  # share of each batch's largest row errors left out of the loss
    # Training rows per epoch: a full pass, at most this many rows of the ongoing shuffled
    # stream, so epochs (and early stopping) bound the cost on any data size; null: full passes.
    epoch_rows: Optional[int] = 50_000
    # Whole passes per epoch when a pass is fewer batches than this (a table of a few
    # hundred rows), so an epoch, and the patience counted in epochs, is a number of
    # updates that does not shrink with the data; 1: one pass per epoch.
    min_epoch_batches: int = 16


@dataclass(frozen=True)
class ThresholdConfig:
    method: str = "quantile"  # quantile | contamination | mad | mean_std | f1
    value: Optional[float] = None  # default per method, see DEFAULT_THRESHOLD_VALUES
    calibration_fraction: float = 0.1  # rows never trained on, used to set the threshold


@dataclass(frozen=True)
class ScoreConfig:
    latent_neighbors: int = 1  # k nearest references per group; 0 scores reconstruction only
    reference_rows: int = 512  # decoded training codes kept in the model for the latent distance
    reference_groups: int = 32  # disjoint groups the references are split into
    local_scale: bool = True  # near references denser than average: distances in units of their spacing
    reconstruction_weight: float = 1.0  # weight of the squared reconstruction error in the score


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    def threshold_value(self) -> Optional[float]:
        if self.threshold.value is not None:
            return self.threshold.value
        return DEFAULT_THRESHOLD_VALUES[self.threshold.method]


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the annotation `tp`, converting lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin in (tuple, Tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigTypeError(f"`{where}` expects a list, received: {echo(value)}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigTypeError(f"`{where}` expects true or false, received: {echo(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigTypeError(f"`{where}` expects an integer, received: {echo(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigTypeError(f"`{where}` expects a number, received: {echo(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"`{where}` expects a finite number, received: {echo(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigTypeError(f"`{where}` expects a string, received: {echo(value)}")
        return value
    raise ConfigTypeError(f"unsupported config type {tp} at `{where}`")


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigTypeError(f"`{prefix or 'config'}` expects a mapping, received: {echo(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        where = f"in `{prefix}`" if prefix else "at the top level"
        valid = ", ".join(f"{prefix}.{n}" if prefix else n for n in names)
        shown = ", ".join(clip(k, 40) for k in map(str, unknown[:5]))
        more = f", ... ({len(unknown)} in all)" if len(unknown) > 5 else ""
        raise ConfigError(
             f"Unknown config key(s) {where}: {shown}{more}. Valid keys: {valid}.")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name] or {}, key)
        else:
            kwargs[name] = _coerce(raw[name], tp, key)
    return cls(**kwargs)


def _check_choice(value: Any, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(
             f"Received an invalid value for `{key}`, expected one of {', '.join(choices)}. "
             f"Received: {key}={echo(value)}")


def validate(config: Config) -> Config:
    """Checks cross-field rules; returns the config unchanged or raises ConfigError."""
    _validate_data(config.data)
    _validate_model(config.model)
    _validate_train(config.train, config.threshold)
    _validate_score(config.score)
    _validate_threshold(config)
    return config


def _validate_data(d: DataConfig) -> None:
    _check_choice(d.source, DATA_SOURCES, "data.source")
    if d.source == "parquet" and not d.path:
        raise ConfigError("`data.source: parquet` needs `data.path`, a glob of Parquet files "
                          "(e.g. data/*.parquet or gs://bucket/table/*.parquet).")
    if d.source == "tfds" and not d.name:
        raise ConfigError("`data.source: tfds` needs `data.name`, the TFDS dataset name.")
    # A key of the other source would be ignored without a word: refused instead.
    other = {"parquet": (("data.name", d.name is not None), ("data.split", d.split != "train"),
                         ("data.data_dir", d.data_dir is not None)),
             "tfds": (("data.path", d.path is not None),)}[d.source]
    for key, given in other:
        if given:
            raise ConfigError(f"`{key}` does not apply to `data.source: {d.source}` (it is "
                              f"read with `data.source: "
                              f"{'tfds' if d.source == 'parquet' else 'parquet'}`). Remove it, "
                              f"or set the source it belongs to.")
    for key, names in (("data.features", d.features or ()), ("data.key_columns", d.key_columns)):
        twice = first_repeated(names)
        if twice is not None:
            raise ConfigError(f"`{key}` names {echo(twice)} twice. Name each column once.")
    # The label and the keys are never trained on (the label would be learned, not detected).
    for key, names in (("data.label", [d.label] if d.label else []),
                       ("data.key_columns", d.key_columns)):
        both = [n for n in names if n in set(d.features or ())]
        if both:
            raise ConfigError(f"`{key}` {echo(both[0])} is also in `data.features`: the label "
                              f"and the key columns are never trained on. Remove it from one "
                              f"of the two.")


def _validate_model(m: ModelConfig) -> None:
    _check_choice(m.kind, MODEL_KINDS, "model.kind")
    _check_choice(m.normalization, NORMALIZATIONS, "model.normalization")
    _check_activation(m.activation)
    if m.latent_dim is not None and m.latent_dim < 1:
        raise ConfigError(f"Received an invalid value for `model.latent_dim`, expected a "
                          f"positive integer. Received: model.latent_dim={m.latent_dim}")
    for key, units in (("model.hidden_units", m.hidden_units),
                       ("model.conv_filters", m.conv_filters)):
        if any(u < 1 for u in units):
            raise ConfigError(f"Received an invalid value for `{key}`, expected positive "
                              f"integers. Received: {key}={list(units)}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"`model.dropout` must be in [0, 1). Received: {m.dropout}")
    for key, v in (("model.l2", m.l2), ("model.noise_stddev", m.noise_stddev),
                   ("model.kl_weight", m.kl_weight)):
        if v < 0:
            raise ConfigError(f"`{key}` must be >= 0. Received: {v}")


def _check_activation(name: str) -> None:
    """Refuses an activation Keras does not know, before training builds the model."""
    import keras  # here, not at import: reading a config needs no TensorFlow otherwise

    try:
        # Applied once: some names need arguments (threshold) or change a layer's width (glu).
        if tuple(keras.activations.get(name)(keras.ops.zeros((1, 4))).shape) != (1, 4):
            raise ValueError("changes the width of a layer")
    except (ValueError, TypeError) as e:
        raise ConfigError(
             f"Received an invalid value for `model.activation`, expected the name of a Keras "
             f"activation such as {', '.join(ACTIVATION_EXAMPLES)}. "
             f"Received: model.activation={echo(name)}") from e


def _validate_train(t: TrainConfig, th: ThresholdConfig) -> None:
    if t.epochs < 1 or t.batch_size < 1 or t.patience < 0 or t.learning_rate <= 0 \
            or t.cache_mb < 0:
        raise ConfigError("`train.epochs` and `train.batch_size` must be >= 1, "
                          "`train.patience` and `train.cache_mb` >= 0 and "
                          "`train.learning_rate` > 0.")
    for key, v in (("train.validation_fraction", t.validation_fraction),
                   ("threshold.calibration_fraction", th.calibration_fraction)):
        if not 0.0 < v < 0.5:
            raise ConfigError(f"`{key}` must be in (0, 0.5). Received: {v}")
    if not 0.0 <= t.trim_fraction < 0.5:
        raise ConfigError(f"`train.trim_fraction` must be in [0, 0.5). Received: {t.trim_fraction}")
    if t.epoch_rows is not None and t.epoch_rows < 1:
        raise ConfigError(f"`train.epoch_rows` must be >= 1, or null for a full pass per epoch. "
                          f"Received: {t.epoch_rows}")
    if t.min_epoch_batches < 1:
        raise ConfigError(f"`train.min_epoch_batches` must be >= 1 (1: one pass per epoch). "
                          f"Received: {t.min_epoch_batches}")
    if t.shuffle_buffer < 0:
        raise ConfigError(f"`train.shuffle_buffer` must be >= 0 (0: rows are shuffled within "
                          f"each record batch read). Received: {t.shuffle_buffer}")
    check_seed(t.seed, "`train.seed`")


def _validate_score(sc: ScoreConfig) -> None:
    if sc.latent_neighbors < 0 or sc.reference_rows < 1:
        raise ConfigError("`score.latent_neighbors` must be >= 0 and `score.reference_rows` >= 1. "
                         f"Received: {sc.latent_neighbors}, {sc.reference_rows}")
    if not (sc.reconstruction_weight >= 0 and math.isfinite(sc.reconstruction_weight)):
        raise ConfigError("`score.reconstruction_weight` must be a finite number >= 0. "
                         f"Received: {sc.reconstruction_weight}")
    if not 1 <= sc.reference_groups <= sc.reference_rows:
        raise ConfigError(f"`score.reference_groups` must be in [1, score.reference_rows="
                         f"{sc.reference_rows}]. Received: {sc.reference_groups}")
    if sc.latent_neighbors > sc.reference_rows // sc.reference_groups:
        raise ConfigError(f"`score.latent_neighbors` ({sc.latent_neighbors}) cannot exceed the "
                         f"codes per reference group, `score.reference_rows` // "
                         f"`score.reference_groups` ({sc.reference_rows // sc.reference_groups}).")


def _validate_threshold(config: Config) -> None:
    th = config.threshold
    _check_choice(th.method, THRESHOLD_METHODS, "threshold.method")
    value = config.threshold_value()
    if th.method in ("quantile",) and not 0.0 < value < 1.0:
        raise ConfigError(f"`threshold.value` for quantile is a level in (0, 1). Received: {value}")
    if th.method == "contamination" and not 0.0 < value < 0.5:
        raise ConfigError("`threshold.value` for contamination is the expected anomaly "
                          f"fraction in (0, 0.5). Received: {value}")
    if th.method in ("mad", "mean_std") and value <= 0:
        raise ConfigError(f"`threshold.value` for {th.method} is k > 0. Received: {value}")
    if th.method == "f1" and not config.data.label:
        raise ConfigError("`threshold.method: f1` needs `data.label`, the column that marks "
                          "known anomalies in the calibration rows.")


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turns ["model.latent_dim=2", ...] into a nested dict (values parsed as YAML)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. model.latent_dim=2). Received: "
                              f"{echo(item)}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {clip(key)}: `{clip(part)}` is not a section")
        try:
            node[parts[-1]] = load_yaml(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {clip(key)}: the value is not valid YAML "
                              f"({clip(getattr(e, 'problem', None) or e, 200)}). Received: "
                              f"{echo(text)}") from e
    return nested


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def merge_overrides(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict:
    """The raw config with `--set` overrides applied (not validated: see `from_dict`)."""
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigTypeError(f"The config expects a mapping of sections (data, model, train, "
                              f"threshold), received: {echo(raw)}")
    return _merge(dict(raw or {}), parse_overrides(overrides))


def from_dict(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    return validate(_build(Config, merge_overrides(raw, overrides), ""))


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Loads a YAML config file (local or Beam filesystem) and applies `--set` overrides.

    Raises:
      ConfigError: unknown keys, invalid values or unreadable YAML, naming the file.
    """
    from latentbeam import fs

    if not fs.exists(path):
        raise ConfigError(f"Config file {path} does not exist. Pass --config with a YAML file "
                          f"such as configs/tabular_parquet.yaml.")
    data = fs.read_bytes(path)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file {path} has {len(data)} bytes; a config is at most "
                          f"{MAX_CONFIG_BYTES}. Pass the YAML training config, not a data file.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file {path} is not UTF-8 text ({e.reason} at byte "
                          f"{e.start}). Pass a YAML file.") from e
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as e:
        # One line: PyYAML's message spans several (and quotes the offending line).
        raise ConfigError(f"Config file {path} is not valid YAML: "
                          f"{clip(' '.join(str(e).split()), 600)}") from e
    except ConfigError as e:
        raise ConfigError(f"Config file {path}: {e}") from e
    try:
        return from_dict(raw, overrides)
    except ConfigTypeError as e:
        raise ConfigTypeError(f"{path}: {e}") from e
    except ValueError as e:  # the `score` section's checks still raise plain ValueError
        raise ConfigError(f"{path}: {e}") from e
