"""Config: YAML files, --set overrides, and the errors users see for bad configs."""
import glob
import os

import pytest
import yaml

from latentbeam.config import (Config, DataConfig, ModelConfig, from_dict, load_config,
                               parse_overrides)
from latentbeam.demo import DEMO_CONFIG

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"data": {"path": "data/*.parquet"}}


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_with_only_data_gets_the_documented_defaults(tmp_path):
    path = write_yaml(tmp_path, "data:\n  path: t/*.parquet\n  label: y\n  key_columns: [id]\n")
    config = load_config(path)
    assert config.data == DataConfig(path="t/*.parquet", label="y", key_columns=("id",))
    assert config.model == ModelConfig()
    assert config.model.hidden_units == (64, 32)
    assert config.train.epochs == 100 and config.train.patience == 10
    assert config.threshold.method == "quantile"
    assert config.threshold_value() == 0.99
    assert (config.score.latent_neighbors, config.score.reference_rows,
            config.score.reference_groups) == (1, 512, 32)
    assert config.model.normalization == "auto"


def test_set_overrides_nested_keys_with_yaml_typed_values(tmp_path):
    path = write_yaml(tmp_path, "data:\n  path: t/*.parquet\nmodel:\n  latent_dim: 4\n")
    config = load_config(path, ["model.latent_dim=2", "model.hidden_units=[8, 4]",
                                "train.learning_rate=1e-2", "model.batch_norm=true",
                                "data.features=[a, b]", "threshold.method=mad",
                                "threshold.value=2.5", "data.label=y"])
    assert config.model.latent_dim == 2
    assert config.model.hidden_units == (8, 4)
    assert config.train.learning_rate == 0.01
    assert isinstance(config.train.learning_rate, float)
    assert config.model.batch_norm is True
    assert config.data.features == ("a", "b")
    assert config.data.label == "y"
    assert (config.threshold.method, config.threshold_value()) == ("mad", 2.5)
    # Keys the overrides do not touch keep the file's values.
    assert config.data.path == "t/*.parquet"


def test_exponent_floats_in_a_yaml_file_are_numbers(tmp_path):
    path = write_yaml(tmp_path, "data:\n  path: x\ntrain:\n  learning_rate: 5e-4\n")
    assert load_config(path).train.learning_rate == 5e-4


def test_yes_no_on_off_are_strings_and_only_true_false_are_booleans(tmp_path):
    path = write_yaml(tmp_path, "data:\n  path: x\n  label: yes\n  features: [on, off, no]\n"
                                "model:\n  batch_norm: true\n")
    config = load_config(path, ["data.key_columns=[n, y]"])
    assert config.data.label == "yes"
    assert config.data.features == ("on", "off", "no")
    assert config.data.key_columns == ("n", "y")
    assert config.model.batch_norm is True
    assert from_dict(DATA, ["model.variational=false"]).model.variational is False


def test_parse_overrides_builds_a_nested_dict():
    assert parse_overrides(["a.b.c=1", "a.b.d=[1, 2]", "a.e=x", "f="]) == {
        "a": {"b": {"c": 1, "d": [1, 2]}, "e": "x"}, "f": None}
    with pytest.raises(ValueError, match=r"--set expects key=value .*Received: 'model'"):
        parse_overrides(["model"])


@pytest.mark.parametrize("overrides, message", [
    (["model.latnet_dim=2"],
     "Unknown config key(s) in `model`: latnet_dim. Valid keys: model.kind, model.latent_dim, "
     "model.hidden_units, model.conv_filters, model.activation, model.dropout, model.l2, "
     "model.batch_norm, model.variational, model.kl_weight, model.noise_stddev, model.normalization."),
    (["modle.latent_dim=2"],
     "Unknown config key(s) at the top level: modle. Valid keys: data, model, train, threshold, score."),
])
def test_unknown_keys_are_rejected_with_the_valid_keys(overrides, message):
    with pytest.raises(ValueError) as e:
        from_dict(DATA, overrides)
    assert str(e.value) == message


@pytest.mark.parametrize("override, message", [
    ("train.epochs=2.5", "`train.epochs` expects an integer, received: 2.5"),
    ("model.latent_dim=abc", "`model.latent_dim` expects an integer, received: 'abc'"),
    ("model.batch_norm=1", "`model.batch_norm` expects true or false, received: 1"),
    ("train.learning_rate=fast", "`train.learning_rate` expects a number, received: 'fast'"),
    ("data.label=[a, b]", "`data.label` expects a string, received: ['a', 'b']"),
    ("model.hidden_units={a: 1}", "`model.hidden_units` expects a list, received: {'a': 1}"),
    ("model.hidden_units=[8, x]", "`model.hidden_units[1]` expects an integer, received: 'x'"),
])
def test_wrong_types_are_rejected(override, message):
    with pytest.raises(TypeError) as e:
        from_dict(DATA, [override])
    assert str(e.value) == message


def test_a_non_mapping_section_or_file_is_rejected():
    with pytest.raises(TypeError, match=r"`data` expects a mapping, received: 'x'"):
        from_dict({"data": "x"})
    with pytest.raises(TypeError, match=r"config expects a mapping"):
        from_dict(["data", "model"])


@pytest.mark.parametrize("raw, overrides, message", [
    ({}, [], "`data.source: parquet` needs `data.path`"),
    ({"data": {"source": "tfds"}}, [], "`data.source: tfds` needs `data.name`"),
    (DATA, ["threshold.method=f1"], "`threshold.method: f1` needs `data.label`"),
    (DATA, ["threshold.method=iqr"],
     "Received an invalid value for `threshold.method`, expected one of quantile, contamination, "
     "mad, mean_std, f1. Received: threshold.method='iqr'"),
    (DATA, ["data.source=csv"], "expected one of parquet, tfds. Received: data.source='csv'"),
    (DATA, ["data.split=test"], "`data.split` does not apply to `data.source: parquet` (it is "
                                "read with `data.source: tfds`). Remove it, or set the source "
                                "it belongs to."),
    (DATA, ["data.data_dir=/tfds"], "`data.data_dir` does not apply to `data.source: parquet`"),
    (DATA, ["data.name=mnist"], "`data.name` does not apply to `data.source: parquet`"),
    ({"data": {"source": "tfds", "name": "mnist", "path": "x/*.parquet"}}, [],
     "`data.path` does not apply to `data.source: tfds` (it is read with `data.source: "
     "parquet`)"),
    (DATA, ["model.kind=lstm"], "expected one of dense, conv2d. Received: model.kind='lstm'"),
    (DATA, ["model.latent_dim=0"], "expected a positive integer. Received: model.latent_dim=0"),
    (DATA, ["model.hidden_units=[8, 0]"], "Received: model.hidden_units=[8, 0]"),
    (DATA, ["model.activation=relux"],
     "Received an invalid value for `model.activation`, expected the name of a Keras activation "
     "such as relu, elu, gelu, selu, silu, tanh, sigmoid, softplus, leaky_relu, linear. "
     "Received: model.activation='relux'"),
    (DATA, ["model.activation=''"], "Received: model.activation=''"),
    (DATA, ["model.activation=threshold"], "Received: model.activation='threshold'"),
    (DATA, ["model.activation=glu"], "Received: model.activation='glu'"),
    (DATA, ["model.dropout=1.0"], "`model.dropout` must be in [0, 1). Received: 1.0"),
    (DATA, ["train.cache_mb=-1"], "`train.patience` and `train.cache_mb` >= 0"),
    (DATA, ["train.validation_fraction=0.5"],
     "`train.validation_fraction` must be in (0, 0.5). Received: 0.5"),
    (DATA, ["train.epoch_rows=0"],
     "`train.epoch_rows` must be >= 1, or null for a full pass per epoch. Received: 0"),
    (DATA, ["train.min_epoch_batches=0"],
     "`train.min_epoch_batches` must be >= 1 (1: one pass per epoch). Received: 0"),
    (DATA, ["train.shuffle_buffer=-5"], "`train.shuffle_buffer` must be >= 0 (0: rows are "
                                        "shuffled within each record batch read). Received: -5"),
    (DATA, ["train.seed=-1"], "`train.seed` must be an integer in [0, 2**32 - 1]. Received: -1"),
    (DATA, ["train.seed=4294967296"], "Received: 4294967296"),
    (DATA, ["threshold.value=1.5"], "level in (0, 1). Received: 1.5"),
    (DATA, ["threshold.method=contamination", "threshold.value=0.6"],
     "expected anomaly fraction in (0, 0.5). Received: 0.6"),
    (DATA, ["threshold.method=mad", "threshold.value=0"], "for mad is k > 0. Received: 0"),
    (DATA, ["score.reference_groups=0"],
     "`score.reference_groups` must be in [1, score.reference_rows=512]. Received: 0"),
    (DATA, ["score.reference_rows=16", "score.reference_groups=8", "score.latent_neighbors=3"],
     "`score.latent_neighbors` (3) cannot exceed the codes per reference group"),
])
def test_cross_field_rules(raw, overrides, message):
    with pytest.raises(ValueError) as e:
        from_dict(raw, overrides)
    assert message in str(e.value)


def test_f1_with_a_label_is_valid():
    config = from_dict({"data": {"path": "x", "label": "y"}}, ["threshold.method=f1"])
    assert config.threshold_value() is None


def test_file_errors_name_the_file(tmp_path):
    path = write_yaml(tmp_path, "data:\n  path: x\nmodel:\n  latent_dims: 2\n")
    with pytest.raises(ValueError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: Unknown config key(s) in `model`: latent_dims.")
    bad = write_yaml(tmp_path, "data: [unclosed\n")
    with pytest.raises(ValueError, match=f"Config file {bad} is not valid YAML"):
        load_config(bad)


def test_every_example_config_loads():
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
    assert [os.path.basename(p) for p in paths] == [
        "demo.yaml", "tabular_parquet.yaml", "tfds_images.yaml"]
    configs = {os.path.basename(p): load_config(p) for p in paths}
    assert configs["tfds_images.yaml"].model.kind == "conv2d"
    assert configs["tfds_images.yaml"].data.split == "train[:90%]"
    assert configs["tabular_parquet.yaml"].data.label == "is_fraud"
    # The tabular example says every key but `data` shows its default.
    assert configs["tabular_parquet.yaml"].model == ModelConfig()
    assert configs["tabular_parquet.yaml"].train.epochs == Config().train.epochs


def test_demo_yaml_equals_the_embedded_demo_config():
    path = os.path.join(REPO, "configs", "demo.yaml")
    with open(path) as f:
        assert yaml.safe_load(f) == DEMO_CONFIG
    assert load_config(path) == from_dict(DEMO_CONFIG)


def test_to_dict_round_trips():
    config = from_dict(DEMO_CONFIG, ["model.hidden_units=[8]"])
    plain = config.to_dict()
    assert plain["model"]["hidden_units"] == [8]
    assert from_dict(plain) == config


def test_a_key_given_twice_on_one_line_is_refused():
    with pytest.raises(ValueError, match=r"found duplicate key 'epochs'"):
        from_dict(DATA, ["train={epochs: 1, epochs: 5}"])


@pytest.mark.parametrize("data, message", [
    ({"features": ["a", "a", "b"]}, "`data.features` names 'a' twice"),
    ({"key_columns": ["id", "id"]}, "`data.key_columns` names 'id' twice"),
    # the label would be learned, not detected
    ({"features": ["a", "y"], "label": "y"}, "`data.label` 'y' is also in `data.features`"),
    ({"features": ["a", "id"], "key_columns": ["id"]},
     "`data.key_columns` 'id' is also in `data.features`"),
])
def test_features_named_twice_or_also_label_or_key_are_refused(data, message):
    from latentbeam.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        from_dict({"data": {"path": "x/*.parquet", **data}})
    assert message in str(e.value)
    # Apart, the same names are fine.
    from_dict({"data": {"path": "x/*.parquet", "features": ["a", "b"], "label": "y",
                        "key_columns": ["id"]}})
