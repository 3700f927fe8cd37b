"""File access through Beam FileSystems: local paths, gs://, s3:// and any registered scheme.

One place for path handling so training, bundles and pipelines accept the same paths.
"""
from __future__ import annotations

import logging
import os
import urllib.parse
from typing import Dict, List, Optional, Tuple

from latentbeam.errors import InputError


log = logging.getLogger(__name__)


def _import_beam_filesystems():
    # Importing apache_beam logs that optional GCP clients (apitools, BigQuery storage)
    # are absent; irrelevant here, and it buries the CLI's one-line error messages.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
    finally:
        logging.disable(previous)
    return CompressionTypes, FileSystems


CompressionTypes, FileSystems = _import_beam_filesystems()


FILE_SCHEME = "file://"


def local_path(path: str) -> str:
    """A `file://` URL as the local path it names (`file://` alone is `/`); others unchanged."""
    if path.startswith(FILE_SCHEME):
        return path[len(FILE_SCHEME):] or "/"
    return path


def native(path: str, *, io: bool = True) -> str:
    """`path` as Beam's FileSystems take it: `file://` spelled as the local path it names.

    Args:
      io: the path is about to be read, written or listed (not only spelled or joined):
        the filesystem's client library must be installed too.

    Raises:
      InputError: no Beam filesystem handles the path's scheme (a missing extra).
    """
    if path.startswith(FILE_SCHEME):
        return local_path(path)
    if "://" in path:
        scheme = path.split("://", 1)[0]
        try:
            FileSystems.get_filesystem(path)
        except ValueError as e:
            raise InputError(_no_filesystem(path, scheme)) from e
        # Beam registers these filesystems whether or not their client library is there,
        # and fails only at the first call, deep inside a job.
        client = _CLIENT_MODULES.get(scheme.lower())
        if io and client and not _importable(client):
            raise InputError(_no_filesystem(path, scheme, client))
    return path


# The client library each cloud filesystem of Beam needs (installed by its Beam extra).
_CLIENT_MODULES = {"gs": "google.cloud.storage", "s3": "boto3", "azfs": "azure.storage.blob"}


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def _no_filesystem(path: str, scheme: str, client: str = "") -> str:
    what = (f"Beam's {scheme}:// filesystem needs {client}, which this Python does not have"
            if client else f"no Beam filesystem handles {scheme}:// in this Python")
    return (f"{path}: {what}. Install the "
            f"Beam extra for it (gs://: pip install 'apache-beam[gcp]', s3://: "
            f"'apache-beam[aws]', azfs://: 'apache-beam[azure]') or use a local path.")


def join(base: str, *parts: str) -> str:
    return FileSystems.join(native(base, io=False), *parts)


def exists(path: str) -> bool:
    return FileSystems.exists(native(path))


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith(FILE_SCHEME)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(native(path), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    path = native(path)
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def open_read(path: str):
    """A seekable binary file object (what pyarrow.parquet.ParquetFile needs)."""
    return FileSystems.open(native(path), compression_type=CompressionTypes.UNCOMPRESSED)


GLOB_CHARS = frozenset("*?[")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # a null partition value in Hive / Spark paths
PARQUET_SUFFIX = ".parquet"
ANY_DEPTH = "**" + PARQUET_SUFFIX  # what a directory input means: its Parquet files at any depth
DELTA_LOG = "_delta_log/"  # the transaction log directory of a Delta Lake table


def parquet_pattern(path: str) -> str:
    """The glob for a Parquet input given as a glob, a file, or a directory / prefix.

    A directory (local) or a prefix that is not an object (gs://b/table/) means its
    `*.parquet` files at any depth (`DIR/**.parquet`: a Hive-partitioned table such as
    DIR/day=2024-01-01/part-0.parquet, as pyarrow.dataset and Spark read a directory);
    `match_parquet` then skips hidden names. A glob or an existing file is returned
    unchanged.
    """
    if any(c in path for c in GLOB_CHARS):
        return path
    if is_local(path):
        local = native(path)
        if os.path.isdir(local):
            return join(local.rstrip("/") or "/", ANY_DEPTH)
        return path
    if path.endswith("/") or not exists(path):
        return join(path.rstrip("/"), ANY_DEPTH)
    return path


def pattern_head(pattern: str) -> Optional[str]:
    """The fixed directory of a glob, as matched paths spell it: its part before the first
    glob character, up to and including the last `/`. None for a pattern without glob
    characters (it names a file)."""
    p = native(pattern, io=False)
    cut = min((p.index(c) for c in GLOB_CHARS if c in p), default=None)
    return None if cut is None else p[:p.rfind("/", 0, cut) + 1]


def hive_partitions(path: str, head: Optional[str]) -> Dict[str, Optional[str]]:
    """`name=value` directories between a pattern's fixed directory and the file, in order.

    lake/day=2024-01-01/hour=03/part-0.parquet under `lake/` -> {"day": "2024-01-01",
    "hour": "03"}. Values are URL-unquoted (Hive and Spark escape `/`, `=` and the like)
    and stay text; `__HIVE_DEFAULT_PARTITION__` (Hive's null) is None.
    """
    if head is None or not path.startswith(head):
        return {}
    found: Dict[str, Optional[str]] = {}
    for name in path[len(head):].split("/")[:-1]:
        key, sep, value = name.partition("=")
        if sep and key:
            value = urllib.parse.unquote(value)
            found[urllib.parse.unquote(key)] = None if value == HIVE_NULL else value
    return found


class Visible:
    """Whether a path matched by `pattern` is a data file rather than a hidden one.

    Hidden: a name below the pattern's fixed directory (its part before the first glob
    character) that starts with `_` or `.`, as pyarrow.dataset, Spark and pandas skip
    them: `_SUCCESS`, `_temporary/`, `_dead_letter/`, `.part-0.parquet.inprogress`, a
    writer's `.staging/`. A pattern without glob characters names its file: visible.
    Picklable, for a `beam.Filter`.
    """

    def __init__(self, pattern: str):
        self._head = pattern_head(pattern)

    def __call__(self, path: str) -> bool:
        if self._head is None:
            return True
        rest = path[len(self._head):] if path.startswith(self._head) else path.rsplit("/", 1)[-1]
        return not any(name.startswith(("_", ".")) for name in rest.split("/"))


def match_parquet(pattern: str) -> List[tuple]:
    """(path, size) of the files matching a `parquet_pattern`, sorted, hidden ones skipped
    (see `Visible`); 0-byte files included (callers decide)."""
    visible = Visible(pattern)
    return [(p, size) for p, size in match_with_sizes(pattern) if visible(p)]


def directory_of(pattern: str) -> Optional[str]:
    """DIR/ when `pattern` is what `parquet_pattern` made of a directory DIR, else None."""
    return pattern[:-len(ANY_DEPTH)] if pattern.endswith("/" + ANY_DEPTH) else None


def warn_if_delta_table(pattern: str) -> None:
    """Logs a warning when the pattern's fixed directory is a Delta Lake table.

    A Delta table's directory (it holds `_delta_log/`) keeps the files that later
    versions removed until it is vacuumed, so reading its Parquet files directly reads
    rows the table no longer has. Called once per job, where its input is resolved.
    """
    head = pattern_head(pattern)
    if not head:
        return
    try:
        # Listed, not `exists`: object stores have no directory objects to test for.
        is_delta = bool(match(head + DELTA_LOG + "*.json"))
    except (IOError, OSError, ValueError):
        return
    if is_delta:
        log.warning("%s is a Delta Lake table (%s): its Parquet files include those that "
                    "later table versions removed, so rows the table no longer has are read "
                    "too. Read the current version's files instead (e.g. deltalake's "
                    "DeltaTable(path).file_uris(), copied or linked into one directory), or "
                    "VACUUM the table first.", head, head + DELTA_LOG)


def no_parquet_hint(pattern: str) -> str:
    """For a directory pattern (`DIR/**.parquet`) that matched nothing: what DIR holds instead.

    Hive and Impala name Parquet files without an extension (`000000_0`); this names one
    and the glob that reads them. "" when the pattern is not a directory's or DIR holds no
    visible file.
    """
    directory = directory_of(pattern)
    if directory is None:
        return ""
    try:
        _, others = _directory_listing(directory)
    except (IOError, OSError, ValueError):
        return ""
    if not others:
        return ""
    return (f" It holds {len(others)} other file(s), none named *.parquet "
            f"{_unnamed_parquet(directory, others)}.")


def match_input(pattern: str) -> List[tuple]:
    """`match_parquet(pattern)` for a job's input, listed once: for a directory input
    (`DIR/**.parquet`) it lists DIR/** and logs a warning naming the visible files not named
    *.parquet, which are not read (they may be Parquet files that Hive or Impala named
    without an extension). Call it once per job, not per poll."""
    directory = directory_of(pattern)
    if directory is None:
        return match_parquet(pattern)
    files, others = _directory_listing(directory)
    if files and others:
        log.warning("%s holds %d file(s) not named *.parquet, which are not read %s.",
                    directory, len(others), _unnamed_parquet(directory, others))
    return files


def _directory_listing(directory: str) -> Tuple[List[tuple], List[str]]:
    """The visible files at any depth below `directory`: ((path, size) of those named
    *.parquet, paths of the others)."""
    everything = directory + "**"
    visible = Visible(everything)
    listed = [(p, size) for p, size in match_with_sizes(everything) if visible(p)]
    return ([(p, size) for p, size in listed if p.endswith(PARQUET_SUFFIX)],
            [p for p, _ in listed if not p.endswith(PARQUET_SUFFIX)])


def _unnamed_parquet(directory: str, others: List[str]) -> str:
    """What may be Parquet among `others`, and the glob that reads it."""
    return (f"(e.g. {others[0]}); if they are Parquet (Hive and Impala write names such as "
            f"000000_0), give the glob {directory + '**'!r}")


def match(pattern: str) -> List[str]:
    """Paths matching a glob, sorted, 0-byte files included (callers decide)."""
    results = FileSystems.match([native(pattern)])[0].metadata_list
    return sorted(m.path for m in results)


def match_with_sizes(pattern: str) -> List[tuple]:
    results = FileSystems.match([native(pattern)])[0].metadata_list
    return sorted((m.path, m.size_in_bytes) for m in results)


def makedirs(path: str) -> None:
    path = native(path)
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        try:
            FileSystems.mkdirs(path)
        except IOError:
            pass  # object stores have no directories; an existing prefix is fine


def list_dir(path: str) -> List[str]:
    """Every file below `path` (recursive on object stores, one level locally)."""
    path = native(path)
    if is_local(path):
        if not os.path.isdir(path):
            return []
        return sorted(os.path.join(path, n) for n in os.listdir(path))
    return match(join(path, "**"))
