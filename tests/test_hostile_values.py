"""No value kills a job: every Arrow value converts or is a dead letter with a reason.

Unit level (to_matrix, row_payload) and through the real batch job and stream on real
Parquet files, where the good files of the same job are still scored.
"""
import datetime
import decimal
import json
import os

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentbeam import cli
from latentbeam.demo import digits_table, pixel_columns
from latentbeam.model import score
from latentbeam.model.features import (MAX_PAYLOAD_CHARS, Feature, SchemaMismatch,
                                       row_payload, to_matrix)
from latentbeam.pipeline.batch import FileJob, run_file_job
from latentbeam.pipeline.metrics import MAX_RECORDED_ERROR
from latentbeam.summaries import format_summary
from latentbeam.pipeline.records import ScoringOptions, score_record_batch
from latentbeam.pipeline.streaming import event_times

pytestmark = pytest.mark.filterwarnings("ignore")
X = [Feature("x", "float64")]


def faults(conv):
    return [(row, reason) for row, reason, _ in conv.faults]


def test_integers_of_any_width_convert():
    batch = pa.table({"x": pa.array([2 ** 62, -2 ** 63, None, 7], pa.int64())})
    conv = to_matrix(batch, X)
    assert faults(conv) == [(2, "null_value")]
    assert conv.matrix[:, 0].tolist() == [np.float32(2.0 ** 62), np.float32(-2.0 ** 63), 7.0]
    u = pa.table({"x": pa.array([2 ** 64 - 1, 0, None], pa.uint64())})
    conv = to_matrix(u, X)
    assert faults(conv) == [(2, "null_value")]
    assert conv.matrix[:, 0].tolist() == [np.float32(2.0 ** 64), 0.0]


def test_decimals_dictionaries_and_all_null_columns():
    d = pa.table({"x": pa.array([decimal.Decimal("2"), decimal.Decimal(10) ** 75, None],
                                pa.decimal256(76, 0))})
    conv = to_matrix(d, X)
    assert faults(conv) == [(1, "out_of_range"), (2, "null_value")]
    assert conv.matrix.tolist() == [[2.0]]
    dict_num = pa.table({"x": pa.array([1.0, 2.0, 1.0]).dictionary_encode()})
    assert to_matrix(dict_num, X).matrix[:, 0].tolist() == [1.0, 2.0, 1.0]
    dict_text = pa.table({"x": pa.array(["3", "three", None]).dictionary_encode()})
    assert faults(to_matrix(dict_text, X)) == [(1, "non_numeric"), (2, "null_value")]
    nulls = pa.table({"x": pa.nulls(3)})
    assert faults(to_matrix(nulls, X)) == [(0, "null_value"), (1, "null_value"),
                                           (2, "null_value")]


def test_huge_strings_give_bounded_details_and_payloads():
    big = "x" * 300_000
    batch = pa.table({"x": pa.array(["1.25", big, "9" * 400]), "note": [big, "", ""]})
    conv = to_matrix(batch, X)
    assert faults(conv) == [(1, "non_numeric"), (2, "out_of_range")]
    assert len(conv.faults[1][2]) < 160  # the 400 digits are clipped in the detail too
    detail = conv.faults[0][2]
    assert detail.startswith("column 'x' value 'xxxx") and detail.endswith("(300002 chars) is not a number")
    assert len(detail) < 160
    payload = json.loads(row_payload(batch, 1))
    assert payload["truncated"] is True and payload["chars"] > 300_000
    assert len(payload["head"]) == MAX_PAYLOAD_CHARS


@pytest.mark.parametrize("column, reason", [
    (pa.array([{"a": 1.0}]), "wrong_type"),
    (pa.array([datetime.datetime(2024, 1, 1)], pa.timestamp("us")), "wrong_type"),
    (pa.array([b"\x00"], pa.binary()), "wrong_type"),
    (pa.array([["1"]], pa.list_(pa.string())), "wrong_type"),
])
def test_unusable_column_types_say_wrong_type(column, reason):
    with pytest.raises(SchemaMismatch) as e:
        to_matrix(pa.table({"x": column}), X)
    assert e.value.reason == reason
    with pytest.raises(SchemaMismatch) as e:
        to_matrix(pa.table({"y": [1.0]}), X)
    assert e.value.reason == "missing_column"


def test_a_column_named_twice_is_refused_not_read_by_position(tmp_path, tiny_bundle_dir,
                                                              tiny_bundle):
    """Arrow and pandas allow repeated names; the first `pixel_03` used to be taken silently."""
    from latentbeam.config import from_dict
    from latentbeam.errors import InputError
    from latentbeam.model import train

    digits = digits_table().slice(0, 20)
    dup_feature = digits.append_column("pixel_03", pa.array(np.full(20, 99.0)))
    dup_key = digits.append_column("id", pa.array(np.arange(100, 120)))
    d = tmp_path / "in"
    d.mkdir()
    for name, table in (("a-feature.parquet", dup_feature), ("b-key.parquet", dup_key),
                        ("c-fine.parquet", digits)):
        pq.write_table(table, d / name)
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, str(d), out,
                                   opts=ScoringOptions(key_columns=("id",))))
    assert (summary.rows_scored, summary.files_dead_lettered) == (20, 2)
    dead = pq.read_table(os.path.join(out, "_dead_letter")).to_pylist()
    at = digits.schema.names.index("pixel_03")
    assert [(os.path.basename(x["source"]), x["reason"]) for x in dead] == [
        ("a-feature.parquet", "duplicate_column"), ("b-key.parquet", "duplicate_column")]
    assert f"feature column 'pixel_03' appears 2 times in the file (at column positions {at}, " \
           f"{digits.num_columns})" in dead[0]["detail"]
    assert "key column 'id' appears 2 times" in dead[1]["detail"]
    np.testing.assert_allclose(pq.read_table(out).column("anomaly_score").to_numpy(),
                               score(tiny_bundle, np.stack([digits.column(c).to_numpy()
                                                            for c in pixel_columns()], 1)
                                     ).anomaly_score, rtol=1e-6)
    # Training refuses it too, naming the file (it was a KeyError from inside Arrow).
    with pytest.raises(InputError, match=r"Feature column 'pixel_03' appears 2 times in .*"
                                         r"a-feature\.parquet"):
        train(from_dict({"data": {"path": str(d / "a-feature.parquet"), "label": "label",
                                  "key_columns": ["id"]}}, ["train.verbose=0"]))


def test_payloads_of_values_python_cannot_represent():
    batch = pa.table({
        "ts": pa.array([2 ** 62], pa.timestamp("us")),
        "day": pa.array([2 ** 31 - 1], pa.date32()),
        "ms": pa.array([2 ** 62], pa.date64()),
        "nested": pa.array([[{"k": [1, None]}]]),
        "f": pa.array([float("nan")]),
        "raw": pa.array([b"\xff\x00"]),
    })
    payload = json.loads(row_payload(batch, 0))
    assert payload["ts"] == f"<value out of range: {2 ** 62}>"
    assert payload["day"] == f"<value out of range: {2 ** 31 - 1}>"
    assert payload["nested"] == [{"k": [1, None]}]
    assert payload["f"] == "nan" and payload["raw"] == "ff00"


def test_event_times_at_the_edges_never_raise():
    us, bad = event_times(pa.array([1.5, float("nan"), 1e300, -1e300, None, 2.0 ** 62]), "t")
    assert us[0] == 1_500_000
    assert bad.tolist() == [False, True, True, True, False, True]
    us, bad = event_times(pa.array([2 ** 63 - 1, -2 ** 63, 7], pa.int64()), "t")
    assert bad.tolist() == [True, True, False] and us[2] == 7_000_000
    ns = pa.array([1_000_000_001, 2 ** 63 - 1, None], pa.timestamp("ns"))
    us, bad = event_times(ns, "t")
    assert us[0] == 1_000_000 and bad.tolist() == [False, False, False]
    seconds = pa.array([2 ** 62, 0], pa.timestamp("s"))
    us, bad = event_times(seconds, "t")
    assert bad.tolist() == [True, False] and us[1] == 0
    with pytest.raises(SchemaMismatch) as e:
        event_times(pa.array(["2024-01-01"]), "t")
    assert e.value.reason == "wrong_type"


def test_rows_the_model_overflows_on_are_dead_letters(tiny_bundle):
    t = digits_table().slice(0, 4)
    cols = {n: t.column(n) for n in t.schema.names}
    cols["pixel_00"] = pa.array([0.0, 3.0e38, 2.0 ** 62, 1.0], pa.float32())
    scored, letters = score_record_batch(tiny_bundle, pa.table(cols), source="s",
                                         opts=ScoringOptions(key_columns=("id",)))
    assert [(d["row"], d["reason"]) for d in letters] == [(1, "model_error")]
    assert "reconstruction error is inf" in letters[0]["detail"]
    assert scored.column("id").to_pylist() == [0, 2, 3]
    assert scored.column("is_anomaly").to_pylist()[1] is True  # 2**62: finite and flagged


# ----------------------------------------------------------------------------- real files

def _digits(start, n):
    return digits_table().slice(start, n)


def _with(table, name, array):
    return table.set_column(table.schema.get_field_index(name), name, array)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    """One good file and one file per hostile kind; id ranges never overlap."""
    d = tmp_path_factory.mktemp("hostile") / "in"
    d.mkdir()
    pq.write_table(_digits(0, 40), d / "a-good.parquet")
    ints = _digits(100, 10)
    big = [0] * 10
    big[3] = 2 ** 62
    ints = _with(ints, "pixel_00", pa.array(big, pa.int64()))
    u = [0] * 10
    u[5] = 2 ** 64 - 1
    ints = _with(ints, "pixel_01", pa.array(u, pa.uint64()))
    pq.write_table(ints, d / "b-ints.parquet")
    dec = [decimal.Decimal(int(v)) for v in _digits(200, 10).column("pixel_02").to_pylist()]
    dec[2] = decimal.Decimal(10) ** 75
    pq.write_table(_with(_digits(200, 10), "pixel_02", pa.array(dec, pa.decimal256(76, 0))),
                   d / "c-decimal.parquet")
    edge = _digits(300, 10).append_column(
        "when", pa.array([2 ** 62] + [0] * 9, pa.timestamp("us")))
    nulls = edge.column("pixel_03").to_pylist()
    nulls[0] = None
    pq.write_table(_with(edge, "pixel_03", pa.array(nulls, pa.float32())), d / "d-edge.parquet")
    text = [str(v) for v in _digits(400, 10).column("pixel_04").to_pylist()]
    text[6] = "x" * 200_000
    pq.write_table(_with(_digits(400, 10), "pixel_04", pa.array(text)), d / "e-text.parquet")
    pq.write_table(_with(_digits(500, 5), "pixel_05", pa.array([{"a": 1.0}] * 5)),
                   d / "f-struct.parquet")
    pq.write_table(_digits(600, 5).drop_columns(["pixel_06"]), d / "g-missing.parquet")
    over = _digits(700, 10).column("pixel_07").to_pylist()
    over[8] = 3.0e38
    pq.write_table(_with(_digits(700, 10), "pixel_07", pa.array(over, pa.float32())),
                   d / "h-overflow.parquet")
    return str(d)


EXPECTED_LETTERS = [
    ("c-decimal.parquet", 2, "out_of_range"),
    ("d-edge.parquet", 0, "null_value"),
    ("e-text.parquet", 6, "non_numeric"),
    ("f-struct.parquet", None, "wrong_type"),
    ("g-missing.parquet", None, "missing_column"),
    ("h-overflow.parquet", 8, "model_error"),
]
# Rows read = 40 + 10 * 5 (the two whole-file faults read none) = 90; 4 row letters.
# The int64 2**62 and the uint64 maximum (1.8e19) of b-ints are finite in float32 and
# inside the model (the pixels' shared scale is 6), so they are scored and flagged.
EXPECTED_IDS = sorted(list(range(0, 40)) + list(range(100, 110)) + [200, 201] +
                      list(range(203, 210)) + list(range(301, 310)) +
                      [i for i in range(400, 410) if i != 406] +
                      [i for i in range(700, 710) if i != 708])


def _letters(table):
    return sorted(((os.path.basename(d["source"]), d["row"], d["reason"])
                   for d in table.to_pylist()), key=str)


def test_the_batch_job_scores_every_good_row_and_dead_letters_the_rest(
        tmp_path, hostile_dir, tiny_bundle_dir, tiny_bundle):
    out = str(tmp_path / "out")
    summary = run_file_job(FileJob(tiny_bundle_dir, hostile_dir, out,
                                   opts=ScoringOptions(key_columns=("id",))))
    assert (summary.rows_read, summary.rows_scored, summary.rows_dead_lettered,
            summary.files_dead_lettered) == (90, 86, 4, 2)
    assert summary.rows_read == summary.rows_scored + summary.rows_dead_lettered
    scored = pq.read_table(out)
    assert sorted(scored.column("id").to_pylist()) == EXPECTED_IDS
    dead = pq.read_table(os.path.join(out, "_dead_letter"))
    assert _letters(dead) == sorted(EXPECTED_LETTERS, key=str)
    by = {os.path.basename(d["source"]): d for d in dead.to_pylist()}
    assert json.loads(by["d-edge.parquet"]["payload"])["when"] == \
        f"<value out of range: {2 ** 62}>"
    assert json.loads(by["e-text.parquet"]["payload"])["truncated"] is True
    assert "has type struct<a: double>, expected a number" in by["f-struct.parquet"]["detail"]
    # The file's own columns (label is read by no one here), not the job's projection.
    assert ("feature column 'pixel_06' is missing (columns present: id, label, pixel_00, "
            "pixel_01") in by["g-missing.parquet"]["detail"]
    assert max(len(d["detail"]) for d in dead.to_pylist()) < 600  # clipped, not the input's size
    # The int64 2**62 and uint64 maximum rows are scored (finite) and flagged; their
    # scores match the core.
    ints = {r["id"]: r for r in scored.filter(pa.compute.is_in(
        scored.column("id"), pa.array([103, 105]))).to_pylist()}
    x = np.stack([_digits(100, 10).column(c).to_numpy() for c in pixel_columns()],
                 axis=1)[[3, 5]].astype(np.float32)
    x[:, :2] = [[2.0 ** 62, 0], [0, 2.0 ** 64 - 1]]  # b-ints' pixel_00 and pixel_01
    want = score(tiny_bundle, x).reconstruction_error
    for i, row in enumerate((103, 105)):
        assert ints[row]["is_anomaly"] is True
        assert ints[row]["reconstruction_error"] == pytest.approx(float(want[i]), rel=1e-6)
    # The summary's error distribution: those rows' ~1e35 errors count as the cap (in
    # millionths they would wrap an int64 to a negative value); the other 84 are exact.
    errors = np.sort(scored.column("reconstruction_error").to_numpy().astype(np.float64))
    assert errors[-2] > 1e30 and errors[-3] < MAX_RECORDED_ERROR
    dist = summary.metrics["reconstruction_error_micros"]
    assert (dist.count, dist.max, dist.capped) == (86, MAX_RECORDED_ERROR, True)
    assert dist.min == pytest.approx(errors[0], abs=1e-6)
    assert dist.mean == pytest.approx((errors[:-2].sum() + 2 * MAX_RECORDED_ERROR) / 86,
                                      rel=1e-6)
    assert "errors above 1e+06 count as 1e+06 here" in format_summary(summary)


def test_the_stream_scores_the_same_rows_and_never_crashes(tmp_path, hostile_dir,
                                                           tiny_bundle_dir, capsys):
    out = str(tmp_path / "out")
    assert cli.main(["stream", "--bundle", tiny_bundle_dir, "--watch", hostile_dir,
                     "--output", out, "--window-seconds", "60", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "2", "--key-columns", "id"]) == 0
    # Rows and whole files apart, as the batch job counts them: 90 = 86 + 4.
    summary = capsys.readouterr().out
    for line in ("rows read:            90", "rows scored:          86",
                 "rows dead-lettered:   4", "files dead-lettered:  2"):
        assert line in summary, summary
    assert sorted(pd.read_parquet(out)["id"].tolist()) == EXPECTED_IDS
    assert sorted(r[0] for r in duckdb.sql(f"SELECT id FROM read_parquet('{out}')")
                  .fetchall()) == EXPECTED_IDS
    dead = pq.read_table(os.path.join(out, "_dead_letter"))
    assert _letters(dead) == sorted(EXPECTED_LETTERS, key=str)
    manifest = [json.load(open(os.path.join(out, "_manifest", f)))
                for f in os.listdir(os.path.join(out, "_manifest"))]
    assert len(manifest) == 8
    assert sum(m["rows"] for m in manifest) == 90
    assert sum(m["scored"] for m in manifest) == 86


def test_the_stream_dead_letters_unusable_event_times(tmp_path, tiny_bundle_dir):
    watch = tmp_path / "in"
    watch.mkdir()
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    t = _digits(0, 6).append_column("ts", pa.array([now, float("nan"), 1e300, now, -1e300,
                                                    None], pa.float64()))
    pq.write_table(t, watch / "t.parquet")
    out = str(tmp_path / "out")
    assert cli.main(["stream", "--bundle", tiny_bundle_dir, "--watch", str(watch),
                     "--output", out, "--window-seconds", "60", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "1.5", "--key-columns", "id",
                     "--timestamp-column", "ts", "--allowed-lateness-seconds", "600"]) == 0
    assert sorted(pd.read_parquet(out)["id"].tolist()) == [0, 3]
    dead = pd.read_parquet(os.path.join(out, "_dead_letter")).sort_values("row")
    assert list(zip(dead["row"], dead["reason"])) == [
        (1, "bad_timestamp"), (2, "bad_timestamp"), (4, "bad_timestamp"), (5, "null_value")]
    assert "value 1e+300 is not a usable event time" in dead["detail"].iloc[1]
