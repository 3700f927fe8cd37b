"""Fixtures for the Beam tests: input directories with faults, and one scored output."""
from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentbeam.demo import digits_table

@pytest.fixture(scope="session")
def faulty_dir(tmp_path_factory, digits_dir) -> str:
    """Inputs sorted as: the 2 digits files, a corrupt file, a file with bad rows, a 0-byte file.

    `d-02-bad-rows.parquet` holds the first 10 digits with pixel_05 of row 2 null,
    pixel_07 of row 5 NaN and pixel_09 of row 7 +inf.
    """
    d = str(tmp_path_factory.mktemp("faulty"))
    for i, name in enumerate(sorted(os.listdir(digits_dir))):
        shutil.copy(os.path.join(digits_dir, name), os.path.join(d, f"d-0{i}-{name}"))
    with open(os.path.join(d, "d-02-corrupt.parquet"), "wb") as f:
        f.write(b"PAR1 this is not parquet at all" * 10)
    t = digits_table().slice(0, 10)
    cols = {n: t.column(n).to_pylist() for n in t.schema.names}
    cols["pixel_05"][2] = None
    cols["pixel_07"][5] = float("nan")
    cols["pixel_09"][7] = float("inf")
    pq.write_table(pa.table(cols, schema=t.schema), os.path.join(d, "d-03-bad-rows.parquet"))
    open(os.path.join(d, "d-04-empty.parquet"), "wb").close()
    return d
