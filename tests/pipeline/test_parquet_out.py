"""The one Parquet writer: what it encodes how, and that it reads back."""
import pyarrow as pa
import pyarrow.parquet as pq

from latentbeam.pipeline.parquet_out import ParquetOutput, dictionary_columns


def test_measured_columns_are_written_plain_and_the_rest_with_a_dictionary(tmp_path):
    n = 4096
    table = pa.table({
        "id": pa.array(range(n)),
        "site": pa.array(["a", "b"] * (n // 2)),
        "latent": pa.array([[0.001 * i, -0.002 * i] for i in range(n)], pa.list_(pa.float32())),
        "image": pa.array([[[0.5 * i]] for i in range(n)],
                          pa.list_(pa.list_(pa.float32(), 1), 1)),
        "anomaly_score": pa.array([0.01 * i for i in range(n)], pa.float32()),
        "is_anomaly": pa.array([i % 7 == 0 for i in range(n)]),
        "model_version": pa.array(["0123456789abcdef"] * n),
    })
    assert dictionary_columns(table.schema) == ["id", "site", "is_anomaly", "model_version"]
    path = str(tmp_path / "out.parquet")
    out = ParquetOutput(path)
    for batch in table.to_batches(max_chunksize=1000):
        out.write(batch)
    out.close()
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 5
    group = meta.row_group(0)
    encodings = {group.column(i).path_in_schema.split(".")[0]: group.column(i).encodings
                 for i in range(group.num_columns)}
    for name in ("latent", "image", "anomaly_score"):
        assert "RLE_DICTIONARY" not in encodings[name], name
    for name in ("id", "site", "model_version"):
        assert "RLE_DICTIONARY" in encodings[name], name
    assert pq.read_table(path).to_pydict() == table.to_pydict()
