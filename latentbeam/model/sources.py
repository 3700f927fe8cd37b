"""Arrow record batches of a Parquet file or a prepared TFDS split: the one reader that
training (`latentbeam.model.data`) and scoring (`latentbeam.pipeline`) share.

Both yield `(row offset, record batch)` in the source's stored order, one batch at a
time; TFDS features become columns (tensors as flat lists), so both sources go through
the same `to_matrix` validation. Imports no TensorFlow until a TFDS split is read.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentbeam import fs
from latentbeam.config import DEFAULT_BATCH_ROWS
from latentbeam.errors import InputError
from latentbeam.model.arrow_types import list_array
from latentbeam.model.features import FILE_COLUMNS_KEY, Feature

TFDS_PREFIX = "tfds:"


class UnreadableFile(InputError):
    """A whole input file cannot be read (corrupt, truncated, empty, not Parquet)."""


def parquet_batches(path: str, *, columns: Optional[Sequence[str]] = None,
                    batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Tuple[int, pa.RecordBatch]]:
    """Yields (row offset in file, record batch) for one Parquet file, streaming.

    Memory stays at about one record batch (plus one row group being decoded).
    `columns` absent from the file are left out (the conversion names them).

    Raises:
      UnreadableFile: the file is empty, not Parquet, or fails to decode; the message
        names the file. Batches yielded before the failure must be discarded by the
        caller if it needs all-or-nothing per file.
    """
    try:
        with fs.open_read(path) as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                raise UnreadableFile(f"{path}: not a readable Parquet file ({e})") from e
            present = pf.schema_arrow.names
            cols = None if columns is None else [c for c in columns if c in present]
            # A projection that left a requested column out: the batches carry the file's
            # own column names, so the message about the missing one can list them.
            meta = ({FILE_COLUMNS_KEY: json.dumps(present).encode()}
                    if cols is not None and len(cols) < len(columns) else None)
            offset = 0
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
                    if meta:
                        batch = batch.replace_schema_metadata(
                            {**(batch.schema.metadata or {}), **meta})
                    yield offset, batch
                    offset += batch.num_rows
            except (pa.ArrowException, OSError) as e:
                raise UnreadableFile(f"{path}: failed to decode after {offset} rows ({e})") from e
    except UnreadableFile:
        raise
    except (OSError, IOError) as e:
        raise UnreadableFile(f"{path}: cannot open ({e})") from e


def parse_tfds(source: str) -> Tuple[str, str]:
    """(name, split) of `tfds:NAME/SPLIT`."""
    spec = source[len(TFDS_PREFIX):]
    if "/" not in spec.rstrip("/"):
        raise InputError(f"Expected --input tfds:NAME/SPLIT (e.g. tfds:mnist/test). "
                         f"Received: {source!r}")
    name, split = spec.rsplit("/", 1)
    return name, split


_TFDS_HELP = ("Prepare it on a connected machine with `tfds build {name} --data_dir DIR` "
              "(or `tfds.builder('{name}', data_dir=DIR).download_and_prepare()`) and copy "
              "DIR here, or write your own data with "
              "`tfds.dataset_builders.store_as_tfds_dataset`. latentbeam never downloads.")


def load_tfds_builder(name: str, data_dir: Optional[str]):
    """A prepared TFDS builder from `data_dir`; never downloads.

    Raises:
      InputError: the dataset is not prepared, naming where it looked and how to fix it.
    """
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(data_dir) if data_dir else None
    where = data_dir or tfds.core.constants.DATA_DIR
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types (DatasetNotFoundError, ...)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"TFDS dataset {name!r} was not found in data_dir {where!r} "
                         f"({first_line}). "
                         + _TFDS_HELP.format(name=name.split('/')[0].split(':')[0])) from e
    if not builder.is_prepared():
        raise InputError(f"TFDS dataset {name!r} is not prepared in data_dir {where!r} "
                         f"(looked in {builder.data_dir}). "
                         + _TFDS_HELP.format(name=name.split('/')[0].split(':')[0]))
    return builder


def tfds_features(builder, *, include: Optional[Sequence[str]] = None,
                  exclude: Sequence[str] = ()) -> List[Feature]:
    """Numeric TFDS features (tensors, images, class labels excluded) as Feature specs."""
    import tensorflow_datasets as tfds

    info = builder.info.features
    # Sorted: a restored FeaturesDict does not keep the order the dataset was written in
    # (it varies between processes), and the default order fixes the model's input order.
    available = sorted(info.keys())
    names = list(include) if include else [k for k in available if k not in set(exclude)]
    out = []
    for name in names:
        if name not in info:
            raise InputError(f"Feature {name!r} not in TFDS dataset {builder.name!r}. "
                             f"Available: {', '.join(available)}.")
        feat = info[name]
        dtype = np.dtype(feat.np_dtype) if hasattr(feat, "np_dtype") else np.dtype(feat.dtype.as_numpy_dtype)
        shape = tuple(int(s) for s in (feat.shape or ()))
        if isinstance(feat, tfds.features.ClassLabel) and not include:
            continue
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or any(s is None or s < 0 for s in shape):
            if include:
                raise InputError(f"TFDS feature {name!r} has dtype {dtype} and shape {shape}; "
                                 f"expected a fixed-shape numeric feature.")
            continue
        out.append(Feature(name, dtype.name, shape))
    if not out:
        raise InputError(f"No fixed-shape numeric features in TFDS dataset {builder.name!r}. "
                         f"Set `data.features`.")
    return out


def tfds_split_batches(builder, split: str, batch_rows: int
                       ) -> Iterator[Tuple[int, pa.RecordBatch]]:
    """(row offset, record batch) of a split of a prepared builder, in stored order.

    Scalar features become columns; tensors (images, vectors) become flat lists.
    """
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=batch_rows)
    offset = 0
    for examples in tfds.as_numpy(ds):
        batch = examples_to_batch(examples)
        yield offset, batch
        offset += batch.num_rows


def tfds_batches(source: str, data_dir: Optional[str], batch_rows: int
                 ) -> Iterator[Tuple[int, pa.RecordBatch]]:
    """(row offset, record batch) of `tfds:NAME/SPLIT`, in the split's stored order."""
    name, split = parse_tfds(source)
    yield from tfds_split_batches(load_tfds_builder(name, data_dir), split, batch_rows)


def examples_to_batch(examples: Dict[str, Any]) -> pa.RecordBatch:
    """A batch of TFDS examples (dict of numpy arrays) as one record batch."""
    columns: Dict[str, pa.Array] = {}
    _add_columns(columns, examples, "")
    return pa.RecordBatch.from_pydict(columns)


def _add_columns(columns: Dict[str, pa.Array], examples: Dict[str, Any], prefix: str) -> None:
    for key, value in examples.items():
        if isinstance(value, dict):  # nested FeaturesDict: "outer/inner" columns
            _add_columns(columns, value, f"{prefix}{key}/")
            continue
        arr = np.asarray(value)
        if arr.ndim <= 1:
            columns[prefix + key] = pa.array(arr)
            continue
        columns[prefix + key] = list_array(arr.reshape(len(arr), -1))
