"""`latentbeam generate`: rows decoded from codes sampled from the latent prior.

The decoding is `latentbeam decode`'s (`decode_record_batch`), so generated rows have its
schema plus the `sample` index and the `latent` code; the file is staged and published
with a _SUCCESS record like every other output.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np
import pyarrow as pa

from latentbeam import fs, outputs, paths
from latentbeam.config import check_seed
from latentbeam.errors import ConfigError
from latentbeam.pipeline.layout import PARTIAL_SUFFIX
from latentbeam.pipeline.parquet_out import ParquetOutput
from latentbeam.pipeline.records import COL_LATENT, decode_record_batch, float_list_array

GENERATED_FILE = "generated-00000-of-00001.parquet"


# Rows decoded per batch: memory stays bounded however many samples are asked for.
GENERATE_BATCH_ROWS = 65536


def generated_batches(bundle, num_samples: int, seed: int,
                      batch_rows: int = GENERATE_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """`num_samples` decoded rows with their `sample` index and `latent` code, a batch of
    at most `batch_rows` at a time; the same codes whatever `batch_rows` (decoded up to
    float32 rounding, which depends on the batch)."""
    from latentbeam.model.scoring import latent_sampler

    draw = latent_sampler(bundle, seed)
    for start in range(0, num_samples, batch_rows):
        z = draw(min(batch_rows, num_samples - start))
        index = np.arange(start, start + len(z), dtype=np.int64)
        codes = pa.RecordBatch.from_pydict({"sample": pa.array(index),
                                            COL_LATENT: float_list_array(z)})
        decoded, _ = decode_record_batch(bundle, codes, key_columns=("sample",))
        yield decoded.add_column(1, COL_LATENT, codes.column(COL_LATENT))


def run_generate(bundle_path: str, output: str, *, num_samples: int, seed: int = 0,
                 overwrite: bool = False, progress=None) -> Tuple[str, int]:
    """Writes the generated rows under `output`; returns (file path, rows).

    `progress` (a `latentbeam.console.ProgressLine`, optional) shows rows written of
    `num_samples` while it runs.
    """
    from latentbeam.model import load_bundle

    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1. Received: {num_samples}")
    check_seed(seed, "--seed")
    paths.check_output(output, [("bundle", bundle_path)])
    replace = outputs.check_output_dir(output, overwrite)
    bundle = load_bundle(bundle_path)
    staging = outputs.staging_dir(output)
    staged = fs.join(staging, GENERATED_FILE + PARTIAL_SUFFIX)
    rows = 0
    try:
        writer = ParquetOutput(staged)
        for batch in generated_batches(bundle, num_samples, seed):
            writer.write(batch)
            rows += batch.num_rows
            if progress is not None:
                progress.update(f"generate: {rows:,} / {num_samples:,} rows "
                                f"({rows / num_samples:.0%})")
        writer.close()
        if progress is not None:
            progress.finish()
        outputs.commit(output, [(staged, GENERATED_FILE)],
                       {"job": "generate", "model_version": bundle.info.model_version,
                        "num_samples": rows, "seed": seed}, replace, staging)
    except BaseException:
        outputs.remove_tree(staging)
        raise
    return fs.join(output, GENERATED_FILE), rows


__all__ = ["GENERATED_FILE", "GENERATE_BATCH_ROWS", "generated_batches", "run_generate"]
