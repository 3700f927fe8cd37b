"""`latentbeam stream` against a directory that files land in while it runs (real time)."""
import json
import os
import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentbeam import cli
from latentbeam.demo import digits_table
from latentbeam.model import load_bundle_info

pytestmark = pytest.mark.filterwarnings("ignore")


def _land(directory: str, name: str, table: pa.Table) -> None:
    """Writes under a temporary name, then renames: the watcher never sees half a file."""
    tmp = os.path.join(directory, f".{name}.tmp")
    pq.write_table(table, tmp)
    os.rename(tmp, os.path.join(directory, name))


def _slice(start: int, n: int) -> pa.Table:
    return digits_table().slice(start, n)


def _read_all(out: str):
    scored = [os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith(".parquet")]
    dl_dir = os.path.join(out, "_dead_letter")
    dead = [os.path.join(dl_dir, f) for f in sorted(os.listdir(dl_dir))] if os.path.isdir(dl_dir) else []
    return ([pq.read_table(f) for f in scored], [pq.read_table(f) for f in dead])


def _wait_until_recorded(out: str, names, timeout: float = 60.0) -> None:
    """Waits until the stream's manifest records every file in `names` as scored."""
    from latentbeam.pipeline.streaming.manifest import read_manifest

    deadline = time.time() + timeout
    while time.time() < deadline:
        if set(names) <= {os.path.basename(s) for s in read_manifest(out)}:
            return
        time.sleep(0.2)
    raise AssertionError(f"{sorted(names)} not scored into {out} within {timeout} s")


@pytest.fixture(scope="module")
def second_bundle_dir(tmp_path_factory, digits_glob):
    from latentbeam.model import train
    from tiny import tiny_config

    out = str(tmp_path_factory.mktemp("bundle2") / "v2")
    train(tiny_config(digits_glob, "train.seed=1"), out)
    return out


def test_files_landing_while_streaming_are_scored_once_with_hot_swap(
        tmp_path, tiny_bundle_dir, second_bundle_dir):
    watch, out, models = tmp_path / "in", str(tmp_path / "out"), tmp_path / "models"
    watch.mkdir()
    shutil.copytree(tiny_bundle_dir, models / "v1")
    v1 = load_bundle_info(tiny_bundle_dir).model_version
    v2 = load_bundle_info(second_bundle_dir).model_version
    assert v1 != v2
    bad_rows = _slice(300, 20).to_pylist()
    bad_rows[4]["pixel_10"] = None
    landed = {}

    def feed():
        # Each step waits for the stream to record what the next one depends on, not for a
        # fixed time: on a loaded machine the stream's start-up alone can take seconds.
        time.sleep(3.0)
        for i in range(3):  # scored by v1
            _land(str(watch), f"a{i}.parquet", _slice(i * 100, 100))
            landed[f"a{i}"] = time.time()
            time.sleep(0.4)
        (watch / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
        _wait_until_recorded(out, [f"a{i}.parquet" for i in range(3)] + ["corrupt.parquet"])
        shutil.copytree(second_bundle_dir, models / "v2")  # bundle.json lands last
        os.utime(models / "v2" / "bundle.json")
        time.sleep(2.5)  # > --bundle-poll-seconds
        for i in range(3):  # scored by v2
            _land(str(watch), f"b{i}.parquet", _slice(500 + i * 100, 100))
            time.sleep(0.4)
        _land(str(watch), "bad.parquet", pa.Table.from_pylist(bad_rows, schema=_slice(0, 1).schema))
        fed.set()

    fed = threading.Event()
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    # Long enough for a slow machine; the feeder lands its last file well before.
    rc = cli.main(["stream", "--bundle", str(models), "--watch", str(watch / "*.parquet"),
                   "--output", out, "--window-seconds", "2", "--poll-seconds", "0.5",
                   "--bundle-poll-seconds", "0.5", "--stop-after-seconds", "20",
                   "--key-columns", "id"])
    thread.join(timeout=5)
    assert rc == 0 and fed.is_set(), "the stream stopped before every file had landed"

    scored, dead = _read_all(out)  # every output file reads back
    ids = [i for t in scored for i in t.column("id").to_pylist()]
    expected = list(range(0, 300)) + list(range(500, 800)) + list(range(300, 320))
    assert sorted(ids + [json.loads(r)["id"] for t in dead for r in t.column("payload").to_pylist()
                         if r is not None]) == sorted(expected)
    assert len(ids) == len(set(ids)) == 619
    letters = pa.concat_tables(dead).to_pylist()
    assert sorted((os.path.basename(d["source"]), d["row"], d["reason"]) for d in letters) == [
        ("bad.parquet", 4, "null_value"), ("corrupt.parquet", None, "unreadable_file")]

    versions = {}
    for t in scored:
        for i, v in zip(t.column("id").to_pylist(), t.column("model_version").to_pylist()):
            versions[i] = v
    assert {versions[i] for i in range(0, 300)} == {v1}
    assert {versions[i] for i in range(500, 800)} == {v2}
    # The swapped-out version is no longer held by the per-process bundle cache.
    from latentbeam.pipeline import io as pipeline_io
    assert str(models / "v1") not in pipeline_io._BUNDLES
    assert str(models / "v2") in pipeline_io._BUNDLES
    assert all(t.schema.names == ["id", "latent", "reconstruction_error", "anomaly_score",
                                  "is_anomaly", "model_version"] for t in scored)

    manifest = [json.load(open(os.path.join(out, "_manifest", f)))
                for f in os.listdir(os.path.join(out, "_manifest"))]
    assert sorted(os.path.basename(m["source"]) for m in manifest) == [
        "a0.parquet", "a1.parquet", "a2.parquet", "b0.parquet", "b1.parquet", "b2.parquet",
        "bad.parquet", "corrupt.parquet"]
    assert sum(m["rows"] for m in manifest) == 620
    assert sum(m["scored"] for m in manifest) == 619

    # Restart: scored files are skipped; only the new one is scored.
    before = sorted(os.listdir(out))
    _land(str(watch), "c0.parquet", _slice(900, 50))
    assert cli.main(["stream", "--bundle", str(models), "--watch", str(watch / "*.parquet"),
                     "--output", out, "--window-seconds", "2", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "2", "--key-columns", "id"]) == 0
    new = sorted(set(os.listdir(out)) - set(before))
    assert len(new) == 1
    assert pq.read_table(os.path.join(out, new[0])).column("id").to_pylist() == list(range(900, 950))
    assert len(os.listdir(os.path.join(out, "_manifest"))) == 9


def test_event_time_file_rows_go_to_their_windows_late_rows_to_dead_letters(tmp_path,
                                                                            tiny_bundle_dir):
    watch, out = tmp_path / "in", str(tmp_path / "out")
    watch.mkdir()
    now = time.time()
    t = _slice(0, 6)
    # Event times: 3 rows now, 2 rows 25 s ago (window closed, within 30 s lateness),
    # 1 row 300 s ago (beyond lateness -> late_row dead letter).
    ts = [now, now, now, now - 25, now - 25, now - 300]
    _land(str(watch), "f.parquet", t.append_column("ts", pa.array(ts, pa.float64())))
    assert cli.main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(watch / "*.parquet"),
                     "--output", out, "--window-seconds", "10", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "2", "--key-columns", "id",
                     "--timestamp-column", "ts", "--allowed-lateness-seconds", "30",
                     "--adaptive-threshold", "--adaptive-warmup-rows", "1",
                     "--latent-distance"]) == 0
    scored, dead = _read_all(out)
    assert sorted(sorted(x.column("id").to_pylist()) for x in scored) == [[0, 1, 2], [3, 4]]
    assert [(d["row"], d["reason"]) for d in dead[0].to_pylist()] == [(5, "late_row")]
    table = pa.concat_tables(scored).sort_by("id")
    assert table.schema.names[-3:] == ["latent_distance", "adaptive_threshold",
                                       "is_anomaly_adaptive"]
    assert table.column("adaptive_threshold").type == pa.float32()
    # The stream scores as the core does: both terms of the score and the score itself.
    from latentbeam.demo import pixel_columns
    from latentbeam.model import load_bundle, score
    expected = score(load_bundle(tiny_bundle_dir),
                     np.stack([t.column(c).to_numpy() for c in pixel_columns()], axis=1)[:5])
    np.testing.assert_allclose(table.column("latent_distance").to_numpy(),
                               expected.latent_distance, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table.column("anomaly_score").to_numpy(),
                               expected.anomaly_score, rtol=1e-5)


def test_restart_after_crash_replaces_the_unfinished_outputs_of_a_source(tmp_path, tiny_bundle_dir):
    import hashlib

    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    _land(str(watch), "f.parquet", _slice(0, 30))
    # Hidden names match the glob but are a writer's staging, never data (as in pyarrow).
    pq.write_table(_slice(100, 5), watch / ".f2.parquet")
    pq.write_table(_slice(200, 5), watch / "_staging.parquet")
    # What a crash after writing but before the manifest entry leaves behind.
    tag = hashlib.sha256(str(watch / "f.parquet").encode()).hexdigest()[:16]
    stale = out / f"scored-19700101T000000-19700101T000010-{tag}.parquet"
    pq.write_table(_slice(0, 30), stale)
    assert cli.main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(watch / "*.parquet"),
                     "--output", str(out), "--window-seconds", "10", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "1.5", "--key-columns", "id"]) == 0
    assert not stale.exists()
    scored, dead = _read_all(str(out))
    assert sorted(i for t in scored for i in t.column("id").to_pylist()) == list(range(30))
    assert dead == []


def test_a_file_that_fails_part_way_leaves_no_partial_output(tmp_path, tiny_bundle_dir):
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    _land(str(watch), "good.parquet", _slice(0, 10))
    # Two row groups; the second one's data pages are overwritten with garbage, so the
    # first batches score fine and the read fails part way through the file.
    broken = str(watch / "broken.parquet")
    pq.write_table(_slice(10, 400), broken, row_group_size=200, compression="snappy")
    meta = pq.ParquetFile(broken).metadata
    second = meta.row_group(1).column(5)
    data = bytearray(open(broken, "rb").read())
    start = second.data_page_offset
    data[start + 8:start + second.total_compressed_size - 8] = \
        b"\xff" * (second.total_compressed_size - 16)
    open(broken, "wb").write(bytes(data))
    with pytest.raises(OSError):
        pq.read_table(broken)
    assert cli.main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(watch / "*.parquet"),
                     "--output", str(out), "--window-seconds", "10", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "1.5", "--key-columns", "id",
                     "--batch-rows", "100"]) == 0
    scored, dead = _read_all(str(out))
    assert sorted(i for t in scored for i in t.column("id").to_pylist()) == list(range(10))
    letters = [d for t in dead for d in t.to_pylist()]
    assert [(d["source"], d["row"], d["reason"]) for d in letters] == [
        (broken, None, "unreadable_file")]
    assert "after 200 rows" in letters[0]["detail"]
    assert os.listdir(out / "_temp") == []  # the staged part of broken.parquet is gone
    manifest = {e["source"]: (e["scored"], e["dead_letters"]) for e in
                (json.loads(p.read_text()) for p in (out / "_manifest").glob("*.json"))}
    assert manifest == {str(watch / "good.parquet"): (10, 0), broken: (0, 1)}


def test_a_watched_directory_is_read_at_every_depth_with_its_partition_values(tmp_path,
                                                                               tiny_bundle_dir):
    watch, out = tmp_path / "in", str(tmp_path / "out")
    (watch / "region=eu").mkdir(parents=True)
    (watch / "_staging").mkdir()
    _land(str(watch / "region=eu"), "f.parquet", _slice(0, 6))
    pq.write_table(_slice(100, 4), watch / "_staging" / "g.parquet")  # not data
    assert cli.main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(watch),
                     "--output", out, "--window-seconds", "10", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "1.5", "--key-columns", "id,region"]) == 0
    scored, dead = _read_all(out)
    table = pa.concat_tables(scored).sort_by("id")
    assert table.column("id").to_pylist() == list(range(6)) and dead == []
    assert table.column("region").to_pylist() == ["eu"] * 6
