"""`latentbeam report` and `latentbeam info` on real bundles and real scored output."""
from __future__ import annotations

import glob
import html.parser
import importlib.util
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from latentbeam.cli import main
from latentbeam.demo import digit_images_table
from latentbeam.model import load_bundle_info
from latentbeam.pipeline.batch import FileJob, run_file_job
from latentbeam.pipeline.records import ScoringOptions
from latentbeam.report import build_report
from latentbeam.report.scored import summarize_scored

pytestmark = pytest.mark.filterwarnings("ignore")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers

class _Refs(html.parser.HTMLParser):
    """Every src/href and id of a page, and whether it has scripts."""

    def __init__(self):
        super().__init__()
        self.refs, self.ids, self.tags = [], set(), set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.refs.append((tag, key, attrs[key]))
        if attrs.get("id"):
            self.ids.add(attrs["id"])


def check_page(report_dir: str) -> _Refs:
    """index.html: no scripts or network; every link and image resolves; every PNG is real."""
    with open(os.path.join(report_dir, "index.html"), encoding="utf-8") as f:
        text = f.read()
    refs = _Refs()
    refs.feed(text)
    assert "script" not in refs.tags
    assert "http://" not in text and "https://" not in text
    images = [v for tag, key, v in refs.refs if tag == "img"]
    assert images, "the page shows no image"
    for tag, key, value in refs.refs:
        if value.startswith("#"):
            assert value[1:] in refs.ids, f"link {value} has no target"
        else:
            assert os.path.isfile(os.path.join(report_dir, value)), f"{value} missing"
    for name in images:
        check_png(os.path.join(report_dir, name))
    return refs


def check_png(path: str) -> None:
    """Decodes, has a plausible size and is not one colour."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        w, h = im.size
        assert 200 <= w <= 4000 and 100 <= h <= 4000, (path, im.size)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10, f"{path} is nearly one colour"
    colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 20, f"{path} has only {len(colours)} colours"


def report_json(report_dir: str) -> dict:
    with open(os.path.join(report_dir, "report.json")) as f:
        return json.load(f)


def images_in(report_dir: str):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(report_dir, "*.png")))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def batch_scored(tmp_path_factory, tiny_image_bundle_dir, digit_images_glob) -> str:
    """The image digits scored by the batch job, the image passed through as a key column."""
    out = str(tmp_path_factory.mktemp("scored") / "out")
    run_file_job(FileJob(tiny_image_bundle_dir, digit_images_glob, out, opts=ScoringOptions(
        key_columns=("id", "label", "image"), per_feature_errors=True, top_features=3)))
    return out


@pytest.fixture(scope="module")
def batch_report(tmp_path_factory, tiny_image_bundle_dir, batch_scored) -> str:
    """The report of the batch output (built once; tests that change it work on a copy)."""
    out = str(tmp_path_factory.mktemp("batch_report") / "report")
    build_report(tiny_image_bundle_dir, out, scored=batch_scored, top_n=10, sample_rows=500,
                 seed=3)
    return out


@pytest.fixture(scope="module")
def second_image_bundle_dir(tmp_path_factory, digit_images_glob) -> str:
    from latentbeam.model import train
    from tiny import tiny_config

    out = str(tmp_path_factory.mktemp("image_bundle_v2") / "v2")
    train(tiny_config(digit_images_glob, "train.seed=1"), out)
    return out


def _land_with_times(directory, name, start, n, t0, t1, spike=0):
    """Rows start..start+n of the digits with event times t0..t1 (epoch s); `spike` rows get a
    far-out pixel, so their window has a known share of anomalies."""
    table = digit_images_table().slice(start, n)
    images = np.asarray(table.column("image").to_pylist(), dtype=np.float32)
    images[:spike, 3, 3] += 200.0
    pq.write_table(pa.table({
        "id": table.column("id"), "label": table.column("label"),
        "image": pa.array(images.tolist(), pa.list_(pa.list_(pa.float32()))),
        "ts": pa.array(np.linspace(t0, t1, n))}), os.path.join(directory, name))


@pytest.fixture(scope="module")
def stream_scored(tmp_path_factory, tiny_image_bundle_dir, second_image_bundle_dir) -> str:
    """Two stream runs into one output: bundle v1 scores event times 0..29 s, v2 30..59 s
    (10 s windows); the window [10, 20) has 30 rows with a far-out pixel."""
    root = tmp_path_factory.mktemp("stream")
    out = str(root / "out")
    for run, bundle, files in (
            ("a", tiny_image_bundle_dir, [(0, 100, 0.0, 9.9, 0), (100, 100, 10.0, 19.9, 30),
                                          (200, 100, 20.0, 29.9, 0)]),
            ("b", second_image_bundle_dir, [(300, 100, 30.0, 39.9, 0),
                                            (400, 100, 40.0, 49.9, 0),
                                            (500, 100, 50.0, 59.9, 0)])):
        watch = root / f"in-{run}"
        watch.mkdir()
        for i, (start, n, t0, t1, spike) in enumerate(files):
            _land_with_times(str(watch), f"f{i}.parquet", start, n, t0, t1, spike)
        assert main(["stream", "--bundle", bundle, "--watch", str(watch / "*.parquet"),
                     "--output", out, "--window-seconds", "10", "--poll-seconds", "0.5",
                     "--stop-after-seconds", "2", "--timestamp-column", "ts",
                     "--allowed-lateness-seconds", "1000000000000",
                     "--key-columns", "id,label", "--top-features", "2"]) == 0
    return out


# ----------------------------------------------------------------------------- report

def test_report_from_the_bundle_alone(tmp_path, tiny_image_bundle_dir):
    out = str(tmp_path / "report")
    result = build_report(tiny_image_bundle_dir, out)
    info = load_bundle_info(tiny_image_bundle_dir)
    assert result.index == os.path.join(out, "index.html")
    check_page(out)
    assert images_in(out) == ["anomalies_calibration.png", "calibration_errors.png",
                              "generated.png", "latent_calibration.png", "latent_plane.png",
                              "loss.png", "typical_calibration.png"]
    rep = report_json(out)
    cal = rep["calibration"]
    # Every calibration row read again and scored: the threshold flags exactly the
    # fraction it flagged at training.
    assert cal["available"] and cal["complete"]
    assert cal["rows"] == info.calibration["rows"] == info.training["rows_by_split"]["calibration"]
    assert cal["flagged_fraction"] == pytest.approx(info.calibration["flagged_fraction"], abs=1e-12)
    assert sum(cal["histogram"]["counts"]) == cal["rows"]
    scores = [t["anomaly_score"] for t in cal["top"]]
    assert len(scores) == 20 and scores == sorted(scores, reverse=True)
    # ... and they are the highest: the first is the calibration maximum stored at training.
    assert scores[0] * info.threshold.threshold == pytest.approx(info.calibration["max"], rel=1e-5)
    assert all(t["name"].startswith("image[") for t in cal["top"][0]["top_features"])
    assert "scored" not in rep
    with open(result.index, encoding="utf-8") as f:
        page = f.read()
    assert "the 2-number code itself" in page
    assert info.model_version in page


def test_report_with_batch_scored_output(batch_report, batch_scored, tiny_image_bundle_dir):
    out = batch_report
    check_page(out)
    assert {"scored_errors.png", "latent_scored.png", "anomalies_scored.png",
            "typical_scored.png"} <= set(images_in(out))
    rep = report_json(out)["scored"]
    table = pq.read_table(batch_scored)
    threshold = load_bundle_info(tiny_image_bundle_dir).threshold.threshold
    # The histogram is of the thresholded score: anomaly_score x threshold.
    value = table.column("anomaly_score").to_numpy().astype(np.float64) * threshold
    assert rep["rows"] == table.num_rows == 1797
    assert rep["anomalies"] == pc.sum(table.column("is_anomaly")).as_py()
    assert rep["label_column"] == "label"  # the bundle's data.label, found in the files
    assert rep["sample_rows"] == 500 and rep["sample_from_rows"] == 1797 and rep["seed"] == 3
    for level in ("0.5", "0.9", "0.99"):
        assert rep["score_quantiles"][level] == pytest.approx(
            np.quantile(value, float(level)), rel=0.01)
    assert sum(rep["histogram"]["counts"]) == 1797
    edges = np.asarray(rep["histogram"]["edges"])
    above = np.asarray(rep["histogram"]["counts"])[edges[:-1] > threshold * 1.01].sum()
    assert above <= rep["anomalies"]  # bins wholly above the threshold hold only anomalies
    # ... and every anomaly lies in a bin reaching above the threshold.
    reaching = np.asarray(rep["histogram"]["counts"])[edges[1:] > threshold].sum()
    assert rep["anomalies"] <= reaching
    # The top table is the exact top 10 by anomaly_score, with the job's top_features.
    best = table.sort_by([("anomaly_score", "descending")]).slice(0, 10).to_pylist()
    assert [r["id"] for r in rep["top"]] == [r["id"] for r in best]
    assert [[t["name"] for t in r["top_features"]] for r in rep["top"]] == \
        [[t["name"] for t in r["top_features"]] for r in best]
    assert "image" not in rep["top"][0]  # drawn as a picture, not put in the table


def test_report_with_stream_output_shows_windows_and_model_versions(
        tmp_path, tiny_image_bundle_dir, second_image_bundle_dir, stream_scored):
    out = str(tmp_path / "report")
    build_report(second_image_bundle_dir, out, scored=stream_scored)
    check_page(out)
    assert "stream_windows.png" in images_in(out)
    rep = report_json(out)["scored"]
    v1 = load_bundle_info(tiny_image_bundle_dir).model_version
    v2 = load_bundle_info(second_image_bundle_dir).model_version
    assert rep["rows"] == 600 and rep["model_versions"] == sorted([v1, v2])
    windows = rep["windows"]
    assert [w["start"] for w in windows] == [f"1970-01-01T00:00:{s:02d}+00:00"
                                             for s in (0, 10, 20, 30, 40, 50)]
    assert [w["rows"] for w in windows] == [100] * 6
    assert [w["model_versions"] for w in windows] == [[v1]] * 3 + [[v2]] * 3
    # Per-window counts are exact: compare with the files of each window.
    files = sorted(glob.glob(os.path.join(stream_scored, "scored-*.parquet")))
    truth = {}
    for f in files:
        start = os.path.basename(f).split("-")[1]
        t = pq.read_table(f)
        truth[start] = truth.get(start, 0) + pc.sum(t.column("is_anomaly")).as_py()
    assert [w["anomalies"] for w in windows] == [truth[k] for k in sorted(truth)]
    # The 30 rows with a far-out pixel make their window the worst one.
    assert windows[1]["anomalies"] >= 30
    assert max(range(6), key=lambda i: windows[i]["anomaly_rate"]) == 1
    # Window quantiles come from the window's histogram: close to the exact value.
    t = pa.concat_tables(pq.read_table(f) for f in files
                         if os.path.basename(f).split("-")[1] == "19700101T000010")
    threshold = load_bundle_info(second_image_bundle_dir).threshold.threshold
    exact = np.quantile(t.column("anomaly_score").to_numpy().astype(np.float64) * threshold, 0.5)
    assert windows[1]["score_quantiles"]["0.5"] == pytest.approx(exact, rel=0.05)


def test_report_without_reachable_training_data_uses_stored_quantiles(
        tmp_path, digit_images_glob):
    """A bundle whose training data is gone: the page says why and shows what bundle.json has."""
    from latentbeam.model import train
    from tiny import tiny_config

    data = tmp_path / "data"
    shutil.copytree(os.path.dirname(digit_images_glob), data)
    bundle = str(tmp_path / "bundle")
    train(tiny_config(str(data / "*.parquet")), bundle)
    shutil.rmtree(data)
    out = str(tmp_path / "report")
    build_report(bundle, out)
    check_page(out)
    rep = report_json(out)
    assert rep["calibration"]["available"] is False
    assert "No non-empty Parquet files match" in rep["calibration"]["reason"]
    assert images_in(out) == ["calibration_errors.png", "generated.png", "latent_plane.png",
                              "loss.png"]
    with open(os.path.join(out, "index.html"), encoding="utf-8") as f:
        assert "The calibration rows are not shown: the training data is not readable" in f.read()


def test_tabular_report_draws_shares_instead_of_images(tmp_path, tiny_bundle_dir, digits_glob):
    scored = str(tmp_path / "scored")
    run_file_job(FileJob(tiny_bundle_dir, digits_glob, scored,
                         opts=ScoringOptions(key_columns=("id",), per_feature_errors=True)))
    out = str(tmp_path / "report")
    build_report(tiny_bundle_dir, out, scored=scored, top_n=5)
    check_page(out)
    names = images_in(out)
    assert "top_features_calibration.png" in names and "top_features_scored.png" in names
    assert not any(n.startswith(("anomalies_", "typical_", "generated")) for n in names)
    rep = report_json(out)
    # Without a top_features column the shares come from feature_errors, same function.
    top = rep["scored"]["top"][0]["top_features"]
    t = pq.read_table(scored).sort_by([("anomaly_score", "descending")]).slice(0, 1)
    ferr = np.asarray(t.column("feature_errors").to_pylist()[0], np.float64)
    j = int(np.argmax(ferr))
    assert top[0]["name"] == f"pixel_{j:02d}"
    assert top[0]["share"] == pytest.approx(ferr[j] / ferr.sum(), rel=1e-5)


def test_a_second_report_into_the_same_directory_removes_figures_it_no_longer_draws(
        tmp_path, tiny_image_bundle_dir, batch_report):
    out = str(tmp_path / "report")
    shutil.copytree(batch_report, out)
    assert "latent_scored.png" in images_in(out)
    build_report(tiny_image_bundle_dir, out)
    assert "latent_scored.png" not in images_in(out)
    check_page(out)


def _write_synthetic_scored(path, rows, row_group, seed=0):
    rng = np.random.default_rng(seed)
    err = rng.lognormal(-1.0, 0.6, rows).astype(np.float32)
    z = rng.standard_normal((rows, 3)).astype(np.float32)
    offsets = pa.array(np.arange(0, 3 * rows + 1, 3, dtype=np.int32))
    pq.write_table(pa.table({
        "id": np.arange(rows, dtype=np.int64),
        "latent": pa.ListArray.from_arrays(offsets, pa.array(z.reshape(-1))),
        "reconstruction_error": err, "anomaly_score": err / np.float32(1.5),
        "is_anomaly": err / np.float32(1.5) > 1, "model_version": ["m"] * rows}),
        path, row_group_size=row_group)
    return err


def test_large_output_is_sampled_from_a_bounded_number_of_rows(tmp_path):
    """200k rows in 200 row groups, a 500-row sample: at most 25k rows (50 per sampled row)
    are decoded for it; counts, quantiles and the top table still use every row."""
    err = _write_synthetic_scored(str(tmp_path / "part-00000.parquet"), 200_000, 1000)
    s = summarize_scored(str(tmp_path), top_n=7, sample_rows=500, seed=0)
    assert s.rows == 200_000 and s.anomalies == int((err / np.float32(1.5) > 1).sum())
    assert s.sample_rows == 500 and s.sample["latent"].shape == (500, 3)
    assert 25_000 <= s.sample_from_rows <= 26_000
    # Without a threshold the histogram is of anomaly_score itself.
    score = (err / np.float32(1.5)).astype(np.float64)
    assert s.quantiles([0.5])[0] == pytest.approx(float(np.quantile(score, 0.5)), rel=0.005)
    assert s.top["id"] == np.argsort(-err, kind="stable")[:7].tolist()
    again = summarize_scored(str(tmp_path), top_n=7, sample_rows=500, seed=0)
    other = summarize_scored(str(tmp_path), top_n=7, sample_rows=500, seed=1)
    np.testing.assert_array_equal(s.sample["latent"], again.sample["latent"])
    assert not np.array_equal(s.sample["latent"], other.sample["latent"])


def test_scored_errors_name_the_file_and_the_fix(tmp_path, tiny_image_bundle_dir, digits_dir):
    with pytest.raises(ValueError, match=r"is not scored output: column\(s\) "
                                         r"reconstruction_error, anomaly_score, is_anomaly "
                                         r"missing .* Pass --scored the output of"):
        build_report(tiny_image_bundle_dir, str(tmp_path / "r"), scored=digits_dir)
    with pytest.raises(ValueError, match="No scored Parquet files match"):
        build_report(tiny_image_bundle_dir, str(tmp_path / "r"), scored=str(tmp_path / "none"))
    # A run that dead-lettered every file: the message says so instead of only "no files".
    from latentbeam.pipeline.batch import FileJob, run_file_job

    empty = str(tmp_path / "all-dead")
    run_file_job(FileJob(tiny_image_bundle_dir, digits_dir, empty))  # no `image` column
    with pytest.raises(ValueError, match=r"all-dead is the output of a run that scored no rows: "
                                         r"0 row\(s\) read, 0 row\(s\) and 2 whole file\(s\) "
                                         r"dead-lettered \(their reasons are in .*_dead_letter\)"):
        build_report(tiny_image_bundle_dir, str(tmp_path / "r"), scored=empty)


def test_the_report_never_writes_into_what_it_reads(tmp_path, tiny_image_bundle_dir,
                                                    batch_scored):
    before = sorted(os.listdir(batch_scored))
    for output, what in ((batch_scored, "scored output"),
                         (os.path.join(batch_scored, "report"), "scored output"),
                         (tiny_image_bundle_dir, "bundle"),
                         (os.path.dirname(tiny_image_bundle_dir), "bundle")):
        with pytest.raises(ValueError, match=f"the {what}|The {what}") as e:
            build_report(tiny_image_bundle_dir, output, scored=batch_scored)
        assert "must not overlap what it reads" in str(e.value)
    assert sorted(os.listdir(batch_scored)) == before


def test_cli_report_prints_where_to_open_it(tmp_path, capsys, tiny_image_bundle_dir,
                                            batch_scored):
    out = str(tmp_path / "report")
    assert main(["report", "--bundle", tiny_image_bundle_dir, "--scored", batch_scored,
                 "--output", out, "--sample-rows", "300"]) == 0
    text = capsys.readouterr().out
    assert f"open:    file://{out}/index.html" in text
    assert "scored:  1,797 rows in 2 files" in text and "latent map of 300 sampled rows" in text
    assert main(["report", "--bundle", tiny_image_bundle_dir, "--scored", batch_scored,
                 "--output", out, "--label-column", "nope"]) == 2
    assert "Label column 'nope' is not in" in capsys.readouterr().err
    assert main(["report", "--bundle", tiny_image_bundle_dir, "--scored", batch_scored,
                 "--output", out, "--label-column", "latent"]) == 2
    assert "Label column 'latent' of " in capsys.readouterr().err
    # A score column as the label: the sample keeps it under both names.
    s = summarize_scored(batch_scored, sample_rows=300, label_column="is_anomaly")
    assert s.sample["label"].tolist() == s.sample["is_anomaly"].tolist()
    assert len(s.sample["latent"]) == 300 and s.sample["is_anomaly"].sum() > 0
    assert main(["report", "--bundle", tiny_image_bundle_dir, "--scored", batch_scored,
                 "--output", out, "--label-column", "is_anomaly"]) == 0


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_cli_report_refuses_a_seed_numpy_cannot_take(tmp_path, capsys, tiny_image_bundle_dir,
                                                     seed):
    out = tmp_path / "report"
    assert main(["report", "--bundle", tiny_image_bundle_dir, "--output", str(out),
                 "--seed", seed]) == 2
    assert capsys.readouterr().err == (f"latentbeam report: error: --seed must be an integer "
                                       f"in [0, 2**32 - 1]. Received: {seed}\n")
    assert not out.exists()


# ----------------------------------------------------------------------------- chromium

def _screenshot_module():
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", os.path.join(REPO, "scripts", "screenshot_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_renders_in_headless_chromium(tmp_path, batch_report):
    shot = _screenshot_module()
    if shot.find_chromium() is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser, google-chrome); "
                    ".ci/run installs Debian's chromium package")
    png = shot.screenshot(os.path.join(batch_report, "index.html"), str(tmp_path / "shot.png"),
                          width=1280, height=3000)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1280, 3000)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    # The header bar is dark, the page below it light, and the figures drew colour.
    assert pixels[:40].mean() < 80 and pixels[200:].mean() > 150
    colours = np.unique(pixels.reshape(-1, 3)[::11], axis=0)
    assert len(colours) > 200
    assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).mean() > 0.001  # coloured plot marks


# ----------------------------------------------------------------------------- info

def test_info_normalization_line_says_what_the_bundle_recorded():
    from latentbeam.report.info import normalization_text

    def summary(**training):
        return {"n_inputs": 70, "training": training}

    assert normalization_text(summary()) == ""  # a bundle that recorded none of it
    assert normalization_text(summary(
        config={"model": {"normalization": "shared"}},
        shared_scale_features=[f"p{i}" for i in range(5)], robust_scaled_inputs=70,
        constant_inputs=2)) == ("shared; one scale for all 70 inputs; 70 of 70 inputs by "
                                "median and quartiles; 2 constant")
    assert normalization_text(summary(
        config={"model": {"normalization": "auto"}}, one_unit_range=[0.0, 255.0],
        shared_scale_features=[f"p{i}" for i in range(70)], robust_scaled_inputs=0)) == \
        ("auto; one scale for all 70 inputs (integer values within 0 to 255); 0 of 70 "
         "inputs by median and quartiles")
    assert normalization_text(summary(
        config={"model": {"normalization": "per_feature"}},
        shared_scale_features=[f"v{i}" for i in range(5)], robust_scaled_inputs=0)) == \
        ("per_feature; one scale within each of v0, v1, v2 and 2 more; 0 of 70 inputs by "
         "median and quartiles")
    assert normalization_text(summary(
        config={"model": {"normalization": "per_input"}}, shared_scale_features=[],
        robust_scaled_inputs=9, constant_inputs=0)) == \
        "per_input; every input scaled alone; 9 of 70 inputs by median and quartiles"


def test_info_text_json_and_integrity(tmp_path, capsys, tiny_image_bundle_dir):
    info = load_bundle_info(tiny_image_bundle_dir)
    assert main(["info", tiny_image_bundle_dir]) == 0
    text = capsys.readouterr().out
    assert f"model_version:   {info.model_version} (format_version {info.format_version})" in text
    assert (f"integrity:       ok, the seal of bundle.json and the sha256 of "
            f"{len(info.files)} file(s) ({', '.join(sorted(info.files))}) match") in text
    assert "features:        1 (64 inputs): image float32 (8, 8)" in text
    assert "architecture:    dense 64 -> 16 -> 2 -> 16 -> 64" in text
    t = info.training
    assert (f"normalization:   auto; one scale within image; {t['robust_scaled_inputs']} of 64 "
            f"inputs by median and quartiles; {t['constant_inputs']} constant") in text
    assert t["robust_scaled_inputs"] in (0, 64) and t["constant_inputs"] > 0
    assert f"threshold:       {info.threshold.threshold:.6g} (quantile, value=0.99)" in text
    assert f"epochs {info.training['epochs']} (best {info.training['best_epoch']})" in text

    assert main(["info", tiny_image_bundle_dir, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["integrity"]["ok"] is True and doc["integrity"]["sealed"] is True
    assert doc["integrity"]["files"]["model.keras"]["actual"] == info.sha256
    assert doc["architecture"]["layers"] == "64 -> 16 -> 2 -> 16 -> 64"
    assert doc["training"]["history"]["losses"]["loss"] == info.training["losses"]["loss"]
    assert doc["calibration"]["rows"] == info.calibration["rows"]
    assert set(doc["versions"]) == {"latentbeam", "tensorflow", "keras", "apache-beam", "pyarrow"}

    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_image_bundle_dir, tampered)
    with open(tampered / "model.keras", "ab") as f:
        f.write(b"x")
    assert main(["info", str(tampered)]) == 1
    assert f"integrity:       FAILED, sha256 of {tampered}/model.keras is" in \
        capsys.readouterr().out
    os.remove(tampered / "model.keras")
    assert main(["info", str(tampered)]) == 1
    assert f"{tampered}/model.keras is missing" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "bundle.json is missing" in capsys.readouterr().err


def test_info_loads_neither_tensorflow_nor_matplotlib(tiny_image_bundle_dir):
    import subprocess
    import sys

    code = ("import sys; from latentbeam.cli import main; rc = main(['info', sys.argv[1]]); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules)); "
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, tiny_image_bundle_dir],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
