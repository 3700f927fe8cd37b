"""Property-based fuzzing (hypothesis) of Parquet inputs, output paths and config files.

Properties, whatever the input:
  * the job finishes or refuses cleanly (no exception escapes a file's processing, no
    traceback reaches the user of the command line);
  * rows read = rows scored + rows dead-lettered, exactly; every written file reads back;
  * no file outside the output directory changes (the tree is hashed before and after).

`make test` runs a bounded number of examples (well under a minute); set
LATENTBEAM_FUZZ_EXAMPLES=N to run N times as many (e.g. 20 for a long run).
"""
import decimal
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from latentbeam.cli import main
from latentbeam.demo import digits_table, pixel_columns
from latentbeam.pipeline.batch import _FileJobFn
from latentbeam.pipeline.records import MODE_SCORE, ScoringOptions
from safety import tree_hashes

pytestmark = pytest.mark.filterwarnings("ignore")

SCALE = max(1, int(os.environ.get("LATENTBEAM_FUZZ_EXAMPLES", "1")))
REASONS = {"null_value", "not_finite", "non_numeric", "wrong_length", "out_of_range",
           "model_error", "missing_column", "wrong_type", "unreadable_file",
           "conversion_error", "late_row", "bad_timestamp"}


def fuzz_settings(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- columns

INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(),
             pa.uint32(), pa.uint64()]
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(
    ["1e999", "-1e999", "nan", "inf", "-0", "1_000", " 7 ", "0x10", "٣", "", "x" * 5000,
     "9" * 400]))


def _ints(t):
    lo, hi = int(np.iinfo(np.dtype(str(t))).min), int(np.iinfo(np.dtype(str(t))).max)
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0]))


@st.composite
def column(draw, n: int):
    """(array of n values of a random Arrow type) — numbers at the edges, text, nested, ..."""
    kind = draw(st.sampled_from(["int", "float", "float32", "float16", "decimal", "decimal256",
                                 "text", "dict_text", "binary", "bool", "null", "timestamp",
                                 "date", "struct", "list", "list_text", "dict_float"]))
    maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
    if kind == "int":
        t = draw(st.sampled_from(INT_TYPES))
        return pa.array(draw(st.lists(maybe(_ints(t)), min_size=n, max_size=n)), t)
    if kind in ("float", "float32", "float16"):
        width = {"float": 64, "float32": 32, "float16": 16}[kind]
        t = {64: pa.float64(), 32: pa.float32(), 16: pa.float16()}[width]
        values = draw(st.lists(maybe(st.floats(width=width)), min_size=n, max_size=n))
        if width == 16:
            return pa.array(np.array([np.nan if v is None else v for v in values], np.float16),
                            t)
        return pa.array(values, t)
    if kind in ("decimal", "decimal256"):
        digits = 38 if kind == "decimal" else 76
        t = pa.decimal128(38, 0) if kind == "decimal" else pa.decimal256(76, 0)
        ints = draw(st.lists(maybe(st.integers(-10 ** digits + 1, 10 ** digits - 1)),
                             min_size=n, max_size=n))
        return pa.array([None if v is None else decimal.Decimal(v) for v in ints], t)
    if kind in ("text", "dict_text"):
        arr = pa.array(draw(st.lists(maybe(TEXT), min_size=n, max_size=n)), pa.string())
        return arr.dictionary_encode() if kind == "dict_text" else arr
    if kind == "dict_float":
        return pa.array(draw(st.lists(maybe(st.floats()), min_size=n, max_size=n)),
                        pa.float64()).dictionary_encode()
    if kind == "binary":
        return pa.array(draw(st.lists(maybe(st.binary(max_size=8)), min_size=n, max_size=n)))
    if kind == "bool":
        return pa.array(draw(st.lists(maybe(st.booleans()), min_size=n, max_size=n)))
    if kind == "null":
        return pa.nulls(n)
    if kind == "timestamp":
        unit = draw(st.sampled_from(["s", "ms", "us", "ns"]))
        return pa.array(draw(st.lists(maybe(st.integers(-2 ** 63 + 1, 2 ** 63 - 1)),
                                      min_size=n, max_size=n)), pa.timestamp(unit))
    if kind == "date":
        return pa.array(draw(st.lists(maybe(st.integers(-2 ** 31, 2 ** 31 - 1)), min_size=n,
                                      max_size=n)), pa.date32())
    if kind == "struct":
        return pa.array([{"a": v} for v in draw(st.lists(st.floats(), min_size=n, max_size=n))])
    if kind == "list":
        return pa.array(draw(st.lists(maybe(st.lists(maybe(st.floats()), max_size=3)),
                                      min_size=n, max_size=n)), pa.list_(pa.float64()))
    return pa.array(draw(st.lists(maybe(st.lists(TEXT, max_size=2)), min_size=n, max_size=n)),
                    pa.list_(pa.string()))


@st.composite
def parquet_file(draw):
    """(bytes of a Parquet file or of something that is not one, rows in it or None)."""
    shape = draw(st.sampled_from(["table"] * 8 + ["corrupt", "empty", "truncated"]))
    n = draw(st.integers(0, 12))
    table = digits_table().slice(draw(st.integers(0, 1700)), n)
    names = pixel_columns()
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        table = table.set_column(table.schema.get_field_index(name), name, draw(column(n)))
    if draw(st.integers(0, 9)) == 0:
        table = table.drop_columns([draw(st.sampled_from(names))])
    if draw(st.integers(0, 3)) == 0:
        table = table.append_column("extra", draw(column(n)))
    if draw(st.integers(0, 19)) == 0:
        table = table.rename_columns(["ident" if c == "id" else c for c in table.column_names])
    if draw(st.integers(0, 3)) == 0:
        table = table.append_column("ts", draw(column(n)))
    sink = pa.BufferOutputStream()
    try:
        pq.write_table(table, sink, row_group_size=draw(st.sampled_from([4, 1000])))
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        assume(False)  # a table Parquet cannot hold is not an input anyone can land
    data = sink.getvalue().to_pybytes()
    if shape == "corrupt":
        return b"PAR1" + draw(st.binary(max_size=64)) + b"PAR1", None
    if shape == "empty":
        return b"", None
    if shape == "truncated":
        return data[:draw(st.integers(0, len(data) - 1))], None
    return data, n


def _check_letters(letters):
    for d in letters:
        assert d["reason"] in REASONS, d
        assert len(d["detail"]) <= 2100
        if d["payload"] is not None:
            json.loads(d["payload"])  # always JSON
            assert len(d["payload"]) < 17000


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


@fuzz_settings(40)
@given(files=st.lists(parquet_file(), min_size=1, max_size=3))
def test_any_parquet_file_is_scored_or_dead_lettered_exactly(workdir, tiny_bundle_dir, files):
    case = tempfile.mkdtemp(dir=workdir)
    inputs, tmp = os.path.join(case, "in"), os.path.join(case, "out", ".tmp-x")
    os.makedirs(inputs)
    for i, (data, _) in enumerate(files):
        with open(os.path.join(inputs, f"f{i}.parquet"), "wb") as f:
            f.write(data)
    before = tree_hashes(inputs)
    fn = _FileJobFn(tiny_bundle_dir, MODE_SCORE, ScoringOptions(key_columns=("id",)), tmp,
                    batch_rows=5, data_dir=None)
    fn.setup()
    for i, (data, rows) in enumerate(files):
        stats, = list(fn.process((i, os.path.join(inputs, f"f{i}.parquet"))))
        assert stats["rows_read"] == stats["rows_scored"] + stats["rows_dead_lettered"]
        assert stats["rows_read"] in (0, rows if rows is not None else 0)
        if stats["files_dead_lettered"]:
            assert stats["rows_read"] == 0 and stats["rows_scored"] == 0
        if stats["output"]:
            out = pq.read_table(os.path.join(tmp, stats["output"] + ".partial"))
            assert out.num_rows == stats["rows_scored"]
            assert np.isfinite(out.column("reconstruction_error").to_numpy()).all()
        if stats["dead_letter"]:
            dead = pq.read_table(os.path.join(tmp, "_dead_letter",
                                              stats["dead_letter"] + ".partial")).to_pylist()
            assert len(dead) == stats["rows_dead_lettered"] + stats["files_dead_lettered"]
            _check_letters(dead)
    assert tree_hashes(inputs) == before
    shutil.rmtree(case)


@fuzz_settings(25)
@given(data=parquet_file(), event_time=st.booleans())
def test_the_stream_never_crashes_on_a_file(workdir, tiny_bundle_dir, data, event_time):
    from apache_beam.utils.timestamp import Timestamp

    from latentbeam.pipeline.streaming import StreamJob as StreamConfig, _ScoreFileDoFn

    payload, rows = data
    case = tempfile.mkdtemp(dir=workdir)
    inputs, out = os.path.join(case, "in"), os.path.join(case, "out")
    os.makedirs(inputs)
    path = os.path.join(inputs, "f.parquet")
    with open(path, "wb") as f:
        f.write(payload)
    before = tree_hashes(inputs)
    cfg = StreamConfig(bundle=tiny_bundle_dir, output=out, watch=os.path.join(inputs, "*"),
                       window_seconds=3600, batch_rows=5,
                       timestamp_column="ts" if event_time else None,
                       allowed_lateness_seconds=10 ** 9,
                       scoring=ScoringOptions(key_columns=("id",)))
    fn = _ScoreFileDoFn(cfg)
    fn.setup()
    (_, entry), = list(fn.process(path, arrival=Timestamp.now()))
    scored = [pq.read_table(p) for p in entry["outputs"] if not p.endswith(".pq")]
    dead = [d for p in entry["outputs"] if p.endswith(".pq") for d in pq.read_table(p).to_pylist()]
    _check_letters(dead)
    assert sum(t.num_rows for t in scored) == entry["scored"]
    row_letters = [d for d in dead if d["row"] is not None]
    assert entry["rows"] == entry["scored"] + len(row_letters)
    assert entry["rows"] in (0, rows if rows is not None else 0)
    assert tree_hashes(inputs) == before
    assert not os.path.exists(os.path.join(out, "_temp")) or os.listdir(os.path.join(out, "_temp")) == []
    shutil.rmtree(case)


# ----------------------------------------------------------------------------- CLI paths

PLACES = ["data", "bundle", ".", "..", "new", "data/sub", "bundle/sub", "link", "link/sub",
          "data/f0.parquet", "gen"]
SPELLINGS = ["{p}", "{ws}/{p}", "{p}/.", "{p}/", "~/{p}", "file://{ws}/{p}", "data/../{p}",
             "./{p}//"]


@fuzz_settings(12)
@given(command=st.sampled_from(["generate", "generate", "score"]),
       place=st.sampled_from(PLACES), spelling=st.sampled_from(SPELLINGS),
       overwrite=st.booleans(), input_spelling=st.sampled_from(SPELLINGS))
def test_any_output_path_is_written_or_refused_cleanly(workdir, tiny_bundle_dir, capsys,
                                                       monkeypatch, command, place, spelling,
                                                       overwrite, input_spelling):
    ws = os.path.realpath(tempfile.mkdtemp(dir=workdir))
    os.makedirs(os.path.join(ws, "data"))
    pq.write_table(digits_table().slice(0, 6), os.path.join(ws, "data", "f0.parquet"))
    shutil.copytree(tiny_bundle_dir, os.path.join(ws, "bundle"))
    os.symlink(os.path.join(ws, "data"), os.path.join(ws, "link"))
    os.makedirs(os.path.join(ws, "gen"))
    with open(os.path.join(ws, "gen", "mine.txt"), "w") as f:
        f.write("not latentbeam's")
    monkeypatch.chdir(ws)
    monkeypatch.setenv("HOME", ws)
    output = spelling.format(p=place, ws=ws)
    data = input_spelling.format(p="data", ws=ws)
    if command == "generate":
        argv = ["generate", "--bundle", "bundle", "--num-samples", "3", "--output", output]
    else:
        argv = ["score", "--bundle", "bundle", "--input", data, "--output", output,
                "--direct_running_mode=in_memory"]
    argv += ["--overwrite"] if overwrite else []
    before = tree_hashes(ws)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    overlapping = place not in ("new",)
    if command == "generate" and place in ("data/sub", "link/sub"):
        overlapping = False  # generate reads only the bundle
    if rc == 0:
        assert not overlapping, (argv, err)
        written = os.path.realpath(os.path.expanduser(output.replace("file://", "")))
        assert os.path.exists(os.path.join(written, "_SUCCESS"))
        after = {k: v for k, v in tree_hashes(ws, skip=written).items()}
        assert after == {k: v for k, v in before.items()
                         if not os.path.realpath(os.path.join(ws, k)).startswith(written)}
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert tree_hashes(ws) == before


# ----------------------------------------------------------------------------- configs

KEYS = st.sampled_from(["data", "model", "train", "threshold", "path", "source", "features",
                        "latent_dim", "hidden_units", "epochs", "learning_rate", "method",
                        "value", "label", "x", "", "0", "<<"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30), st.floats(),
                    st.text(max_size=20), st.sampled_from(["x" * 3000, ".nan", "*.parquet"]))
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)), max_leaves=20)
MUTATIONS = st.sampled_from(["none", "duplicate", "bomb", "nest", "tab", "binary", "nan"])


@fuzz_settings(60)
@given(doc=DOCS, mutation=MUTATIONS, cut=st.integers(0, 400))
def test_any_config_file_loads_or_is_refused_in_one_bounded_line(workdir, doc, mutation, cut):
    from latentbeam.config import load_config

    text = yaml.safe_dump({"data": {"path": "x/*.parquet"}, "model": doc}, allow_unicode=True)
    if mutation == "duplicate":
        lines = text.splitlines()
        text = "\n".join(lines + [lines[min(cut, len(lines) - 1)]]) + "\n"
    elif mutation == "bomb":
        text += "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 8)}]\n" for i in range(1, 9))
    elif mutation == "nest":
        text += "deep: " + "[" * (cut * 10) + "]" * (cut * 10) + "\n"
    elif mutation == "tab":
        text = text[:cut] + "\t" + text[cut:]
    elif mutation == "binary":
        text = text[:cut] + "\udcff" + text[cut:]
    elif mutation == "nan":
        text = text.replace("null", ".nan", 1)
    path = os.path.join(tempfile.mkdtemp(dir=workdir), "c.yaml")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8", errors="surrogateescape"))
    start = time.time()
    try:
        load_config(path)
    except (ValueError, TypeError) as e:
        message = str(e)
        assert "\n" not in message, message
        assert len(message) < 2500, message[:300]
    assert time.time() - start < 5.0
