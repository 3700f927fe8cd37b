"""Hostile config files are refused quickly, with messages that do not grow with the input."""
import time

import pytest

from latentbeam.cli import main
from latentbeam.config import MAX_CONFIG_NODES, from_dict, load_config


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_a_key_given_twice_is_an_error(tmp_path):
    path = write(tmp_path, "data:\n  path: a/*.parquet\nmodel:\n  latent_dim: 2\n"
                           "  latent_dim: 8\n")
    with pytest.raises(ValueError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"Config file {path} is not valid YAML: while constructing a "
                              f"mapping")
    assert "\n" not in message
    assert "found duplicate key 'latent_dim' (first given on line 4)" in message
    top = write(tmp_path, "data:\n  path: a\ndata:\n  path: b\n")
    with pytest.raises(ValueError, match="found duplicate key 'data' \\(first given on line 1\\)"):
        load_config(top)


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = write(tmp_path, "base: &b\n  latent_dim: 2\n  hidden_units: [8]\n"
                           "data:\n  path: a/*.parquet\nmodel:\n  <<: *b\n  latent_dim: 3\n")
    with pytest.raises(ValueError, match="Unknown config key\\(s\\) at the top level: base"):
        load_config(path)  # `base` is not a section, but the merge itself parsed
    ok = write(tmp_path, "data:\n  path: a/*.parquet\nmodel: &m {latent_dim: 3}\n")
    assert load_config(ok).model.latent_dim == 3


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e999", "10" * 200])
def test_non_finite_numbers_are_refused(tmp_path, value):
    path = write(tmp_path, f"data:\n  path: a/*.parquet\ntrain:\n  learning_rate: {value}\n")
    with pytest.raises(ValueError) as e:
        load_config(path)
    assert "`train.learning_rate` expects a finite number, received: " in str(e.value)
    assert len(str(e.value)) < 300
    with pytest.raises(ValueError, match="`model.dropout` expects a finite number"):
        from_dict({"data": {"path": "x"}}, [f"model.dropout={value}"])


def test_billion_laughs_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("data:\n  path: x\n  features: *a9")
    path = write(tmp_path, "\n".join(lines) + "\n")
    start = time.time()
    with pytest.raises(ValueError) as e:
        load_config(path)
    assert time.time() - start < 2.0
    assert f"expands to more than {MAX_CONFIG_NODES} values" in str(e.value)
    # A self-referencing alias is refused the same way.
    with pytest.raises(ValueError, match="expands to more than"):
        load_config(write(tmp_path, "data: &d\n  path: x\n  features: *d\n"))


def test_deep_nesting_huge_files_and_binary_are_refused(tmp_path):
    start = time.time()
    with pytest.raises(ValueError, match="nested more than 64 levels deep"):
        load_config(write(tmp_path, "data: " + "[" * 20000 + "]" * 20000 + "\n"))
    with pytest.raises(ValueError, match="nested more than 64 levels deep"):
        load_config(write(tmp_path, "".join(" " * (2 * i) + f"k{i}:\n" for i in range(200))))
    assert time.time() - start < 1.0
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ValueError, match=r"has \d+ bytes; a config is at most 1048576"):
        load_config(str(big))
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00data")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_config(str(binary))


def test_echoed_values_are_clipped(tmp_path, capsys):
    long_key = "k" * 1000  # YAML's longest plain key
    long_value = "v" * 5000
    path = write(tmp_path, f"data:\n  path: x\n  {long_key}: 1\n  source: {long_value}\n")
    assert main(["train", "--config", path, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Unknown config key(s) in `data`: kkkk" in err and "(1000 chars)" in err
    assert len(err) < 1000 and len(err.strip().splitlines()) == 1
    path = write(tmp_path, f"data:\n  path: x\n  {'k' * 5000}: 1\n")
    assert main(["train", "--config", path, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and len(err) < 1000 and len(err.strip().splitlines()) == 1
    many = "\n".join(f"  x{i}: 1" for i in range(500))
    path = write(tmp_path, f"data:\n  path: x\n{many}\n")
    with pytest.raises(ValueError, match=r"x0, x1, x10, x100, x101, \.\.\. \(500 in all\)"):
        load_config(path)
    with pytest.raises(ValueError) as e:
        from_dict({"data": {"path": "x", "source": long_value}})
    assert len(str(e.value)) < 300
    with pytest.raises(ValueError) as e:
        from_dict({}, ["x" * 5000])
    assert len(str(e.value)) < 300
    with pytest.raises(ValueError, match=r"--set model.hidden_units: the value is not valid "
                                         r"YAML"):
        from_dict({"data": {"path": "x"}}, ["model.hidden_units=[1,"])


@pytest.mark.parametrize("flag, value, message", [
    ("--window-seconds", "nan", "--window-seconds must be a finite number of seconds. Received: nan"),
    ("--allowed-lateness-seconds", "inf", "--allowed-lateness-seconds must be a finite number"),
    ("--stop-after-seconds", "inf", "--stop-after-seconds must be a finite number"),
    ("--window-seconds", "1e12", "--window-seconds must be at most 3.15576e+08 (10 years)"),
])
def test_stream_time_flags_must_be_finite(tmp_path, capsys, tiny_bundle_dir, flag, value, message):
    assert main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), flag, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--early-firing-seconds", "-1", "--early-firing-seconds must be > 0; leave it out for no "
                                     "early firings. Received: -1.0"),
    ("--early-firing-seconds", "0", "--early-firing-seconds must be > 0; leave it out for no "
                                    "early firings. Received: 0.0"),
    ("--early-firing-seconds", "inf", "--early-firing-seconds must be a finite number of "
                                      "seconds. Received: inf"),
    ("--bundle-poll-seconds", "0", "--bundle-poll-seconds must be > 0; leave it out for a "
                                   "re-check every --poll-seconds. Received: 0.0"),
    ("--bundle-poll-seconds", "-2", "--bundle-poll-seconds must be > 0; leave it out for a "
                                    "re-check every --poll-seconds. Received: -2.0"),
    ("--bundle-poll-seconds", "nan", "--bundle-poll-seconds must be a finite number of "
                                     "seconds. Received: nan"),
])
def test_stream_firing_and_bundle_poll_intervals_must_be_positive(tmp_path, capsys,
                                                                  tiny_bundle_dir, flag, value,
                                                                  message):
    assert main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), flag, value]) == 2
    assert capsys.readouterr().err == f"latentbeam stream: error: {message}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["score", "decode", "stream"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_progress_seconds_must_be_a_positive_finite_interval(tmp_path, capsys, tiny_bundle_dir,
                                                             digits_glob, command, value):
    # 0 used to print a progress line on every poll: tens of thousands of lines.
    source = ["--watch", digits_glob] if command == "stream" else ["--input", digits_glob]
    assert main([command, "--bundle", tiny_bundle_dir, *source, "--output",
                 str(tmp_path / "out"), "--progress-seconds", value]) == 2
    assert capsys.readouterr().err == (
        f"latentbeam {command}: error: --progress-seconds must be a finite number of seconds "
        f"> 0 (default 10). Received: {float(value)}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    # The warm-up was left at its default: only the window is named.
    (["--adaptive-window-rows", "0"], "--adaptive-window-rows must be >= 1. Received: 0"),
    (["--adaptive-window-rows", "-5", "--adaptive-warmup-rows", "0"],
     "--adaptive-window-rows must be >= 1. Received: -5; --adaptive-warmup-rows must be >= 1. "
     "Received: 0"),
    (["--adaptive-warmup-rows", "0"], "--adaptive-warmup-rows must be >= 1. Received: 0"),
    (["--adaptive-quantile", "1.5"], "--adaptive-quantile must be a level in (0, 1). "
                                     "Received: 1.5"),
])
def test_adaptive_flags_at_fault_are_named_as_typed(tmp_path, capsys, tiny_bundle_dir, flags,
                                                    message):
    assert main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), "--adaptive-threshold", *flags]) == 2
    assert capsys.readouterr().err == f"latentbeam stream: error: {message}\n"
    assert not (tmp_path / "out").exists()
