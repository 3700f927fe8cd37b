"""A Beam YAML pipeline with the latentbeam provider, run as users run it:
`python -m apache_beam.yaml.main --yaml_pipeline_file=...` in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentbeam.demo import digits_table, pixel_columns
from latentbeam.model import score
from latentbeam.pipeline.yaml_provider import PROVIDERS_FILE

PIPELINE = """\
pipeline:
  transforms:
    - type: ReadFromParquet
      name: Read digits
      config:
        path: {data}/*.parquet
    - type: LatentbeamScore
      name: Score
      input: Read digits
      config:
        bundle: {bundle}
        key_columns: [id, label]
        per_feature_errors: true
        error_handling:
          output: dead_letters
    - type: Filter
      name: Anomalies only
      input: Score
      config:
        keep: is_anomaly
    - type: WriteToParquet
      name: Write anomalies
      input: Anomalies only
      config:
        path: {out}/anomalies
    - type: WriteToParquet
      name: Write dead letters
      input: Score.dead_letters
      config:
        path: {out}/dead_letters
providers:
  - include: {providers}
"""


def test_read_score_filter_write_pipeline(tmp_path, digits_dir, tiny_bundle_dir, tiny_bundle):
    data = tmp_path / "data"
    data.mkdir()
    table = digits_table()
    pq.write_table(table.slice(0, 1000), data / "a.parquet")
    rest = table.slice(1000).to_pydict()
    rest["pixel_10"][5] = None  # id 1005: a dead letter, not a scored row
    pq.write_table(pa.table(rest, schema=table.schema), data / "b.parquet")
    out = tmp_path / "out"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(data=data, bundle=tiny_bundle_dir, out=out,
                                        providers=PROVIDERS_FILE))

    result = subprocess.run(
        [sys.executable, "-m", "apache_beam.yaml.main", f"--yaml_pipeline_file={pipeline}",
         "--runner=FnApiRunner"],  # pinned: plain DirectRunner would try to download Prism
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]

    x = np.stack([table.column(c).to_numpy() for c in pixel_columns()], axis=1)
    expected = score(tiny_bundle, x)
    good = np.arange(len(x)) != 1005
    anomalous = np.nonzero(expected.is_anomaly & good)[0]
    assert len(anomalous) > 0

    got = pq.read_table([str(p) for p in sorted(out.glob("anomalies*"))]).sort_by("id")
    assert got.column_names == ["id", "label", "latent", "reconstruction_error", "anomaly_score",
                                "is_anomaly", "model_version", "feature_errors"]
    assert got.column("id").to_pylist() == anomalous.tolist()
    assert got.column("label").to_pylist() == table.column("label").to_numpy()[anomalous].tolist()
    assert all(got.column("is_anomaly").to_pylist())
    np.testing.assert_allclose(got.column("anomaly_score").to_numpy(),
                               expected.anomaly_score[anomalous], rtol=1e-5)
    np.testing.assert_allclose(np.array(got.column("feature_errors").to_pylist()),
                               expected.feature_errors[anomalous], rtol=1e-4, atol=1e-6)
    assert set(got.column("model_version").to_pylist()) == {tiny_bundle.info.model_version}

    dead = pq.read_table([str(p) for p in sorted(out.glob("dead_letters*"))]).to_pylist()
    assert [(d["reason"], json.loads(d["payload"])["id"]) for d in dead] == [("null_value", 1005)]
    assert "pixel_10" in dead[0]["detail"]
