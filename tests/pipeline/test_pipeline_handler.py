"""RunInference with BundleModelHandler, and the bundle detector in Beam's AnomalyDetection."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.anomaly.transforms import AnomalyDetection
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that

from latentbeam.demo import digits_table, pixel_columns
from latentbeam.model import score
from latentbeam.pipeline.detector import bundle_detector
from latentbeam.pipeline.handler import BundleModelHandler, RowScore
from latentbeam.pipeline.options import pipeline_options
from latentbeam.pipeline.transforms import Score
from test_pipeline_transforms import Collected  # noqa: E402  (same directory)


def test_run_inference_with_exception_handling(tiny_bundle_dir, tiny_bundle, digits_matrix):
    rows = digits_table().slice(0, 60).to_pylist()
    rows[25]["pixel_03"] = float("nan")
    expected = score(tiny_bundle, digits_matrix[:60])
    with beam.Pipeline(options=pipeline_options()) as p:
        main, failed = (p | beam.Create(rows)
                        | RunInference(BundleModelHandler(tiny_bundle_dir, min_batch_size=10,
                                                          max_batch_size=10))
                        .with_exception_handling())
        arrays = (p | "Arrays" >> beam.Create(list(digits_matrix[:5]))
                  | "Numpy" >> RunInference(BundleModelHandler(tiny_bundle_dir)))
        assert_that(main, Collected.into("main"), label="main")
        assert_that(failed.failed_inferences, Collected.into("failed"), label="failed")
        assert_that(arrays, Collected.into("arrays"), label="arrays")

    main = {r.example["id"]: r for r in Collected.store["main"]}
    failed_ids = sorted(e["id"] for batch, _ in Collected.store["failed"] for e in batch)
    # The whole batch holding the NaN row fails; every other row is scored exactly once.
    assert 25 in failed_ids and 25 not in main
    assert sorted(list(main) + failed_ids) == list(range(60))
    assert len(failed_ids) <= 10
    ids = np.array(sorted(main))
    got = [main[i].inference for i in ids]
    assert all(isinstance(s, RowScore) for s in got)
    np.testing.assert_allclose([s.anomaly_score for s in got], expected.anomaly_score[ids],
                               rtol=1e-5)
    assert [s.is_anomaly for s in got] == expected.is_anomaly[ids].tolist()
    np.testing.assert_allclose(np.stack([s.latent for s in got]), expected.latent[ids],
                               rtol=1e-5, atol=1e-6)
    assert main[ids[0]].model_id == tiny_bundle.info.model_version
    errors = [str(err) for _, err in Collected.store["failed"]]
    assert any("not_finite" in e and "pixel_03" in e for e in errors)

    by_first_pixel = sorted(Collected.store["arrays"], key=lambda r: r.example.tobytes())
    want = sorted(range(5), key=lambda i: digits_matrix[i].tobytes())
    np.testing.assert_allclose([r.inference.reconstruction_error for r in by_first_pixel],
                               expected.reconstruction_error[want], rtol=1e-5)


def test_anomaly_detection_flags_equal_score(tiny_bundle_dir, tiny_bundle):
    table = digits_table()
    rows = [beam.Row(**r) for r in table.to_pylist()]
    with beam.Pipeline(options=pipeline_options()) as p:
        rows_pc = p | beam.Create(rows)
        results = rows_pc | AnomalyDetection(bundle_detector(tiny_bundle_dir,
                                                             features=pixel_columns()))
        scored = rows_pc | Score(tiny_bundle_dir, key_columns=["id"])
        assert_that(results, Collected.into("detected"), label="detected")
        assert_that(scored, Collected.into("scored"), label="scored")

    detected = {}
    for r in Collected.store["detected"]:
        (pred,) = r.predictions
        detected[r.example.id] = pred
    scored = {r.id: r for r in Collected.store["scored"]}
    assert sorted(detected) == sorted(scored) == list(range(table.num_rows))
    flags = {i: bool(p.label) for i, p in detected.items()}
    assert flags == {i: r.is_anomaly for i, r in scored.items()}
    assert sum(flags.values()) == int(score(tiny_bundle, _matrix(table)).is_anomaly.sum()) > 0
    some = next(iter(detected))
    assert detected[some].score == pytest.approx(scored[some].anomaly_score, rel=1e-5)
    assert detected[some].model_id == f"latentbeam:{tiny_bundle.info.model_version}"
    assert detected[some].threshold == 1.0


def _matrix(table):
    return np.stack([table.column(c).to_numpy() for c in pixel_columns()], axis=1)


def test_update_model_path_accepts_the_bundle_json_that_watch_file_pattern_emits(
        tmp_path, tiny_bundle_dir):
    import shutil

    from latentbeam.model import load_bundle_info

    copy = tmp_path / "v2"
    shutil.copytree(tiny_bundle_dir, copy)
    handler = BundleModelHandler(tiny_bundle_dir)
    handler.update_model_path(str(copy / "bundle.json"))
    bundle = handler.load_model()
    assert bundle.info.path == str(copy)
    assert bundle.info.model_version == load_bundle_info(tiny_bundle_dir).model_version
    handler.update_model_path(str(copy / "model.keras"))
    assert handler.load_model() is bundle
