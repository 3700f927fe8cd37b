"""score_record_batch: the Arrow-level scoring every Beam path wraps."""
import json

import numpy as np
import pyarrow as pa
import pytest

from latentbeam.model import score
from latentbeam.model.features import SchemaMismatch
from latentbeam.pipeline.records import (DEAD_LETTER_SCHEMA, ScoringOptions,
                                         dead_letters_to_batch, score_record_batch)


def test_scores_match_core_and_bad_rows_are_dead_lettered(tiny_bundle, digits_matrix):
    from latentbeam.demo import digits_table

    table = digits_table().slice(0, 10)
    cols = {n: table.column(n).to_pylist() for n in table.schema.names}
    cols["pixel_05"][3] = None
    cols["pixel_07"][6] = float("nan")
    batch = pa.RecordBatch.from_pydict(cols, schema=table.schema)
    out, letters = score_record_batch(tiny_bundle, batch, source="f.parquet", row_offset=100,
                                      opts=ScoringOptions(key_columns=("id",),
                                                          per_feature_errors=True,
                                                          reconstruction=True))
    assert out.num_rows == 8
    assert out.column("id").to_pylist() == [0, 1, 2, 4, 5, 7, 8, 9]
    assert [(d["row"], d["reason"]) for d in letters] == [(103, "null_value"), (106, "not_finite")]
    assert json.loads(letters[0]["payload"])["id"] == 3
    expected = score(tiny_bundle, digits_matrix[[0, 1, 2, 4, 5, 7, 8, 9]])
    np.testing.assert_allclose(out.column("reconstruction_error").to_numpy(),
                               expected.reconstruction_error, rtol=1e-6)
    assert out.column("latent").to_pylist()[0] == pytest.approx(expected.latent[0].tolist(), rel=1e-6)
    assert len(out.column("feature_errors")[0]) == 64
    assert out.schema.metadata[b"latentbeam.model_version"] == tiny_bundle.info.model_version.encode()
    assert dead_letters_to_batch(letters).schema == DEAD_LETTER_SCHEMA


def test_missing_feature_column_is_a_whole_batch_fault(tiny_bundle):
    batch = pa.RecordBatch.from_pydict({"id": [1, 2], "pixel_00": [0.0, 1.0]})
    with pytest.raises(SchemaMismatch, match="pixel_01"):
        score_record_batch(tiny_bundle, batch)


def test_a_pandas_frame_scores_as_the_readme_shows(tiny_bundle, digits_matrix):
    """pandas turns NaN into Arrow nulls: such rows come back as dead letters, the rest
    (columns in any order) score as the core does."""
    import pandas as pd

    from latentbeam.demo import digits_table

    df = digits_table().slice(0, 12).to_pandas()
    df = df[list(reversed(df.columns))]  # found by name, not position
    df.loc[3, "pixel_10"] = np.nan
    scored, dead = score_record_batch(tiny_bundle, pa.Table.from_pandas(df, preserve_index=False),
                                      opts=ScoringOptions(key_columns=("id",)))
    out = scored.to_pandas()
    assert isinstance(out, pd.DataFrame)
    assert out["id"].tolist() == [0, 1, 2, *range(4, 12)]
    assert [(d["row"], d["reason"], d["detail"]) for d in dead] == [
        (3, "null_value", "column 'pixel_10' is null")]
    want = score(tiny_bundle, digits_matrix[[0, 1, 2, *range(4, 12)]])
    np.testing.assert_allclose(out["anomaly_score"].to_numpy(), want.anomaly_score, rtol=1e-6)
