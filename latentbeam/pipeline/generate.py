"""`latentbeam generate`: rows decoded from codes sampled from the latent prior.

The decoding is `latentbeam decode`'s (`decode_record_batch`), so generated rows have its
schema plus the `sample` index and the `latent` code; the file is staged and published
with a _SUCCESS record like every other output.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pyarrow as pa

from latentbeam import fs, outputs, paths
from latentbeam.errors import ConfigError
from latentbeam.pipeline.layout import PARTIAL_SUFFIX
from latentbeam.pipeline.parquet_out import ParquetOutput
from latentbeam.pipeline.records import COL_LATENT, decode_record_batch, float_list_array

GENERATED_FILE = "generated-00000-of-00001.parquet"


def generated_table(bundle, num_samples: int, seed: int) -> pa.Table:
    """`num_samples` decoded rows with their `sample` index and `latent` code."""
    from latentbeam.model import sample_latent

    z = sample_latent(bundle, num_samples, seed)
    codes = pa.RecordBatch.from_pydict({"sample": pa.array(np.arange(len(z), dtype=np.int64)),
                                        COL_LATENT: float_list_array(z)})
    decoded, _ = decode_record_batch(bundle, codes, key_columns=("sample",))
    return pa.Table.from_batches([decoded]).add_column(1, COL_LATENT, codes.column(COL_LATENT))


def run_generate(bundle_path: str, output: str, *, num_samples: int, seed: int = 0,
                 overwrite: bool = False) -> Tuple[str, int]:
    """Writes the generated rows under `output`; returns (file path, rows)."""
    from latentbeam.model import load_bundle

    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1. Received: {num_samples}")
    paths.check_output(output, [("bundle", bundle_path)])
    replace = outputs.check_output_dir(output, overwrite)
    bundle = load_bundle(bundle_path)
    table = generated_table(bundle, num_samples, seed)
    staging = outputs.staging_dir(output)
    staged = fs.join(staging, GENERATED_FILE + PARTIAL_SUFFIX)
    try:
        writer = ParquetOutput(staged)
        for batch in table.to_batches():
            writer.write(batch)
        writer.close()
        outputs.commit(output, [(staged, GENERATED_FILE)],
                       {"job": "generate", "model_version": bundle.info.model_version,
                        "num_samples": table.num_rows, "seed": seed}, replace, staging)
    except BaseException:
        outputs.remove_tree(staging)
        raise
    return fs.join(output, GENERATED_FILE), table.num_rows


__all__ = ["GENERATED_FILE", "generated_table", "run_generate"]
