"""latentbeam.paths: two spellings of one place compare equal; overlaps are refused."""
import os
import re

import pytest

from latentbeam import paths


@pytest.fixture
def ws(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.parquet").write_bytes(b"x")
    os.symlink(tmp_path / "data", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_spellings_of_one_local_directory_normalize_equal(ws):
    real = str(ws / "data")
    spellings = ["data", "./data", "data/", "data/.", "data/./", f"{ws}/data", f"{ws}//data/",
                 f"file://{ws}/data", paths.expand_user("~/data"),
                 paths.expand_user("~/data/."), "link", "link/.", "data/../data", f"{ws}/link/"]
    assert {paths.normalize(s) for s in spellings} == {os.path.realpath(real)}


def test_tilde_is_a_name_unless_the_command_line_expands_it(ws):
    # Every read and write treats `~` literally; the check must see the same place.
    assert paths.normalize("~/data") == os.path.join(os.path.realpath(ws), "~", "data")
    assert paths.expand_user("~/data") == os.path.join(str(ws), "data")
    assert paths.expand_user("gs://b/~x") == "gs://b/~x"


def test_remote_paths_are_normalized_lexically():
    assert paths.normalize("gs://b/x//y/./z/") == "gs://b/x/y/z"
    assert paths.normalize("GS://b/x/../y") == "gs://b/y"
    assert paths.normalize("s3://bucket/") == "s3://bucket"
    assert paths.is_inside("gs://b/x/y", "gs://b/x/")
    assert not paths.is_inside("gs://b/xy", "gs://b/x")
    assert not paths.is_inside("s3://b/x", "gs://b/x")


def test_glob_base_is_the_directory_before_the_first_wildcard(ws):
    assert paths.glob_base("data/*.parquet") == os.path.realpath(ws / "data")
    assert paths.glob_base("data/2024-*/x.parquet") == os.path.realpath(ws / "data")
    assert paths.glob_base("data/[ab].parquet") == os.path.realpath(ws / "data")
    assert paths.glob_base("*.parquet") == os.path.realpath(ws)
    assert paths.glob_base("gs://b/t/*.parquet") == "gs://b/t"
    assert paths.glob_base("gs://b/t/part-*") == "gs://b/t"


def test_input_locations_list_files_then_directories(ws):
    locs = paths.input_locations("data/*.parquet", [str(ws / "data" / "a.parquet")])
    assert [what for what, _ in locs] == ["input file", "input glob's base directory"]
    assert paths.input_locations("data", [])[0] == ("input directory", "data")


@pytest.mark.parametrize("output, message", [
    ("data", "The input file {ws}/data/a.parquet (resolved: {ws}/data/a.parquet) is inside the "
             "output directory --output data (resolved: {ws}/data)."),
    ("{ws}/data/.", "is inside the output directory --output {ws}/data/."),
    ("link", "is inside the output directory --output link (resolved: {ws}/data)"),
    ("file://{ws}/data", "(resolved: {ws}/data)"),
    ("data/out", "--output data/out (resolved: {ws}/data/out) lies inside the input glob's base "
                 "directory {ws}/data"),
    (".", "--output . (resolved: {ws}) is the current working directory {ws}."),
    ("..", "contains the current working directory"),
    ("/", "contains the current working directory"),
    ("out*", "--output 'out*' contains a glob character"),
    ("data/a.parquet", "is an existing file"),
    ("", "--output is empty."),
])
def test_check_output_refuses_overlaps(ws, output, message):
    ws = os.path.realpath(ws)
    reads = paths.input_locations("data/*.parquet", [os.path.join(ws, "data", "a.parquet")])
    with pytest.raises(ValueError) as e:
        paths.check_output(output.format(ws=ws), reads)
    assert message.format(ws=ws) in str(e.value)


def test_check_output_accepts_a_sibling_and_refuses_the_bundle(ws):
    ws = os.path.realpath(ws)
    assert paths.check_output("out", [("bundle", "bundle")]) == os.path.join(ws, "out")
    with pytest.raises(ValueError, match=r"--output bundle/x \(resolved: .*\) lies inside the "
                                         r"bundle bundle"):
        paths.check_output("bundle/x", [("bundle", "bundle")])
    with pytest.raises(ValueError, match=r"The bundle models/v1 .* is inside the output "
                                         r"directory --output models"):
        paths.check_output("models", [("bundle", "models/v1")])


def test_file_urls_are_the_local_paths_they_name_and_unknown_schemes_name_the_extra(tmp_path):
    from latentbeam import fs
    from latentbeam.errors import InputError

    (tmp_path / "a.parquet").write_bytes(b"x")
    assert fs.native(f"file://{tmp_path}/a.parquet") == f"{tmp_path}/a.parquet"
    assert fs.native("file://") == "/"
    assert fs.parquet_pattern(f"file://{tmp_path}") == f"{tmp_path}/**.parquet"
    assert fs.match(f"file://{tmp_path}/*.parquet") == [f"{tmp_path}/a.parquet"]
    assert fs.read_bytes(f"file://{tmp_path}/a.parquet") == b"x"
    with pytest.raises(InputError, match=r"zz://b/x: no Beam filesystem handles zz://.*"
                                         r"apache-beam\[gcp\]"):
        fs.exists("zz://b/x")


def test_cloud_paths_without_their_client_library_name_the_extra(monkeypatch):
    from latentbeam import fs
    from latentbeam.errors import InputError

    # Beam registers gs:// and s3:// without their client libraries, which then fail deep
    # inside a job. Whatever this environment has installed, the clients are missing here.
    importable = []
    monkeypatch.setattr(fs, "_importable", lambda module: importable.append(module) or False)
    for path, client in (("gs://b/x/*.parquet", "google.cloud.storage"), ("s3://b/x", "boto3")):
        with pytest.raises(InputError, match=rf"^{re.escape(path)}: Beam's .*:// filesystem "
                                             rf"needs {client}, which this Python does not "
                                             rf"have\. Install .*apache-beam\[aws\]"):
            fs.native(path)
        assert fs.join(path.rsplit("/", 1)[0], "y") == path.rsplit("/", 1)[0] + "/y"
    assert importable == ["google.cloud.storage", "boto3"]  # joining asked for no client
    monkeypatch.undo()
    assert fs._importable("json") and not fs._importable("no_such_package.client")


@pytest.mark.parametrize("pattern, path, visible", [
    ("data/*.parquet", "data/a.parquet", True),
    ("data/*.parquet", "data/_SUCCESS", False),
    ("data/*.parquet", "data/.a.parquet", False),
    ("lake/**.parquet", "lake/day=1/a.parquet", True),
    ("lake/**.parquet", "lake/_temporary/0/a.parquet", False),
    ("lake/**.parquet", "lake/day=1/.a.parquet.parquet", False),
    ("_staging/x/*.parquet", "_staging/x/a.parquet", True),  # named by the user: kept
    ("gs://b/t/**.parquet", "gs://b/t/d=1/a.parquet", True),
    ("gs://b/t/**.parquet", "gs://b/t/_delta_log/a.parquet", False),
    ("data/_one.parquet", "data/_one.parquet", True),  # a file named outright
])
def test_hidden_names_below_a_glob_are_not_data(pattern, path, visible):
    from latentbeam.fs import Visible

    assert Visible(pattern)(path) is visible


def test_a_directory_means_its_parquet_files_at_any_depth(tmp_path):
    from latentbeam.fs import match_parquet, parquet_pattern

    for name in ("a.parquet", "d=1/b.parquet", "d=1/e=2/c.parquet", "_tmp/x.parquet",
                 "d=1/.y.parquet", "d=1/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    pattern = parquet_pattern(str(tmp_path))
    assert pattern == str(tmp_path / "**.parquet")
    assert [p for p, _ in match_parquet(pattern)] == [
        str(tmp_path / n) for n in ("a.parquet", "d=1/b.parquet", "d=1/e=2/c.parquet")]


def test_hive_partitions_are_the_name_value_directories_below_the_pattern():
    from latentbeam.fs import hive_partitions, pattern_head

    head = pattern_head("lake/**.parquet")
    assert head == "lake/"
    assert hive_partitions("lake/day=1/h=03/x=/p.parquet", head) == {"day": "1", "h": "03",
                                                                    "x": ""}
    assert hive_partitions("lake/a%3Db=c%2Fd/p.parquet", head) == {"a=b": "c/d"}
    assert hive_partitions("lake/day=__HIVE_DEFAULT_PARTITION__/p.parquet", head) == {"day": None}
    assert hive_partitions("lake/plain/=v/p.parquet", head) == {}
    assert hive_partitions("other/day=1/p.parquet", head) == {}
    assert hive_partitions("lake/day=1/p.parquet", pattern_head("lake/day=1/p.parquet")) == {}


def test_reading_a_delta_table_directory_warns_that_removed_files_are_read(tmp_path, caplog):
    from latentbeam.pipeline.batch import resolve_inputs

    table = tmp_path / "events"
    (table / "_delta_log").mkdir(parents=True)
    (table / "_delta_log" / "00000000000000000000.json").write_text("{}")
    (table / "part-0.parquet").write_bytes(b"x")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "part-0.parquet").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="latentbeam.fs"):
        assert resolve_inputs(str(plain)) == [str(plain / "part-0.parquet")]
        assert caplog.records == []
        assert resolve_inputs(str(table)) == [str(table / "part-0.parquet")]
    warning, = caplog.records  # once per job
    assert f"{table}/ is a Delta Lake table" in warning.getMessage()
    assert "rows the table no longer has are read too" in warning.getMessage()


def test_a_directory_of_extensionless_parquet_files_names_the_glob_that_reads_them(tmp_path):
    from latentbeam.errors import InputError
    from latentbeam.pipeline.batch import resolve_inputs

    table = tmp_path / "hive_table"
    (table / "_tmp").mkdir(parents=True)
    (table / "000000_0").write_bytes(b"x")
    (table / "_tmp" / "000001_0").write_bytes(b"x")
    with pytest.raises(InputError, match=r"It holds 1 other file\(s\), none named \*\.parquet "
                                         rf"\(e\.g\. {table}/000000_0\); .* give the glob "
                                         rf"'{table}/\*\*'"):
        resolve_inputs(str(table))
    assert resolve_inputs(str(table / "**")) == [str(table / "000000_0")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        resolve_inputs(str(tmp_path / "empty"))
    assert "other file" not in str(e.value)


def test_files_a_directory_input_does_not_read_are_named_in_a_warning(tmp_path, caplog):
    from latentbeam.model.data import ParquetSource
    from latentbeam.pipeline.batch import resolve_inputs
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "table"
    (table / "day=1").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0]}), table / "day=1" / "a.parquet")
    (table / "day=1" / "000000_0").write_bytes(b"x")
    (table / "_SUCCESS").write_bytes(b"")  # hidden: not data, not worth a word
    with caplog.at_level("WARNING", logger="latentbeam.fs"):
        assert resolve_inputs(str(table)) == [str(table / "day=1" / "a.parquet")]
        assert ParquetSource(str(table)).files == [str(table / "day=1" / "a.parquet")]
    expected = (f"{table}/ holds 1 file(s) not named *.parquet, which are not read (e.g. "
                f"{table}/day=1/000000_0); if they are Parquet (Hive and Impala write names "
                f"such as 000000_0), give the glob '{table}/**'.")
    assert [r.getMessage() for r in caplog.records] == [expected, expected]
    caplog.clear()
    with caplog.at_level("WARNING", logger="latentbeam.fs"):
        resolve_inputs(str(table / "day=1" / "*.parquet"))  # a glob says what it wants
    assert caplog.records == []
