"""What latentbeam writes into an output directory, and how it replaces only that.

Layout (names starting with `_` or `.` are skipped by pandas, pyarrow.dataset, Spark
and polars when they read OUT as a dataset; DuckDB's `read_parquet(OUT)` reads every
`*.parquet` below OUT, so nothing but scored rows ends in `.parquet`):

    OUT/part-NNNNN.parquet, OUT/scored-*.parquet   data
    OUT/_SUCCESS                                   commit marker (JSON, lists the files)
    OUT/_COMMITTING                                files of a commit in progress
    OUT/_dead_letter/*.pq                          dead letters (Parquet, `.pq` suffix)
    OUT/_manifest/*.json                           stream: one entry per scored source
    OUT/.tmp-<job>/, OUT/_temp/, *.partial         staging (never complete data)

Overwriting: only files a latentbeam run listed (in `_SUCCESS`, `_COMMITTING` or a
stream manifest entry) and latentbeam's staging are deleted; anything else in the
directory is foreign, and an overwrite is refused naming it.

Directories that must change all at once (a model bundle) are written to a hidden
sibling and swapped in by rename (`swap_in`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from latentbeam import fs, paths
from latentbeam.errors import OutputError

log = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS"
COMMITTING_FILE = "_COMMITTING"
DEAD_LETTER_DIR = "_dead_letter"
LEGACY_DEAD_LETTER_DIR = "dead_letter"  # before the `_` prefix; read when overwriting
DEAD_LETTER_SUFFIX = ".pq"
PARTIAL_SUFFIX = ".partial"
STAGING_PREFIX = ".tmp-"
MANIFEST_DIR = "_manifest"
TEMP_DIR = "_temp"
WRITER = "latentbeam"  # the `writer` field of _SUCCESS / _COMMITTING
# Directories of the layout, removed when an overwrite leaves them empty.
LAYOUT_DIRS = (DEAD_LETTER_DIR, LEGACY_DEAD_LETTER_DIR, MANIFEST_DIR, TEMP_DIR)

_SHOWN = 5  # foreign entries named in a message


def dead_letter_name(stem: str) -> str:
    return stem + DEAD_LETTER_SUFFIX


# --------------------------------------------------------------------------- listing

def list_tree(directory: str) -> List[str]:
    """Every file below `directory`, as sorted '/'-separated relative paths.

    Local symlinks are listed as entries, never followed (deleting one removes the
    link, not its target). Empty local directories are listed with a trailing '/'.
    """
    if paths.is_remote(directory):
        base = directory.rstrip("/") + "/"
        return sorted(p[len(base):] for p in fs.match(base + "**") if p.startswith(base))
    root = fs.local_path(directory)
    if not os.path.isdir(root):
        return []
    out = []
    for here, dirs, files in os.walk(root):
        rel = os.path.relpath(here, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for d in list(dirs):
            if os.path.islink(os.path.join(here, d)):
                dirs.remove(d)
                out.append(prefix + d)
        out += [prefix + f for f in files]
        if not dirs and not files and prefix:
            out.append(prefix)
    return sorted(out)


def is_staging(rel: str) -> bool:
    """True for latentbeam's own staging: `.tmp-*/`, `_temp/` and `*.partial` files."""
    first = rel.split("/", 1)[0]
    return first.startswith(STAGING_PREFIX) or first == TEMP_DIR or \
        rel.rstrip("/").endswith(PARTIAL_SUFFIX)


def _read_json(path: str) -> Optional[dict]:
    try:
        doc = json.loads(fs.read_bytes(path))
    except (OSError, ValueError) as e:
        log.debug("not a latentbeam record: %s (%s)", path, e)
        return None
    return doc if isinstance(doc, dict) else None


def _relative(output: str, listed: str) -> str:
    """A path listed in a record, relative to `output` (records hold names or full paths)."""
    listed = str(listed)
    if "/" not in listed:
        return listed
    base = output.rstrip("/") + "/"
    if listed.startswith(base):
        return listed[len(base):]
    if paths.is_inside(listed, output) and not paths.is_remote(listed):
        return os.path.relpath(paths.normalize(listed), paths.normalize(output)).replace(os.sep, "/")
    parts = listed.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] in LAYOUT_DIRS:
        return "/".join(parts[-2:])
    return listed  # not below output: matches nothing in its tree


def _is_success_record(doc: Optional[dict]) -> bool:
    # Current records say writer=latentbeam; earlier ones have a `job` and a `files` list.
    return bool(doc) and (doc.get("writer") == WRITER or ("job" in doc and "files" in doc))


def success_record(output: str) -> Optional[dict]:
    """The `_SUCCESS` document a latentbeam run wrote in `output`; None if there is none."""
    doc = _read_json(fs.join(output, SUCCESS_FILE))
    return doc if _is_success_record(doc) else None


def owned_files(output: str, tree: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """(files an earlier latentbeam run wrote or staged, foreign entries) below `output`."""
    tree = list_tree(output) if tree is None else list(tree)
    present = set(tree)
    owned = {rel for rel in tree if is_staging(rel)}
    for marker in (SUCCESS_FILE, COMMITTING_FILE):
        if marker not in present:
            continue
        doc = _read_json(fs.join(output, marker))
        if not _is_success_record(doc):
            continue
        owned.add(marker)
        listed = list(doc.get("files") or []) + list(doc.get("dead_letter_files") or [])
        owned.update(_relative(output, p) for p in listed if isinstance(p, str))
    for rel in tree:
        if rel.startswith(MANIFEST_DIR + "/") and rel.endswith(".json"):
            entry = _read_json(fs.join(output, rel))
            if entry and "source" in entry and isinstance(entry.get("outputs"), list):
                owned.add(rel)
                owned.update(_relative(output, p) for p in entry["outputs"] if isinstance(p, str))
    owned &= present
    # An empty layout directory is ours to remove; any other empty directory is not.
    owned.update(rel for rel in tree if rel.endswith("/") and rel.rstrip("/") in LAYOUT_DIRS)
    foreign = [rel for rel in tree if rel not in owned]
    return sorted(owned), foreign


def describe(entries: Sequence[str]) -> str:
    shown = ", ".join(entries[:_SHOWN])
    more = f", ... ({len(entries)} in all)" if len(entries) > _SHOWN else ""
    return shown + more


def check_output_dir(output: str, overwrite: bool, *, flag: str = "--output") -> List[str]:
    """The files an overwrite of `output` will delete; refuses what it must not touch.

    A directory holding only staging of an interrupted run counts as empty.

    Raises:
      OutputError: `output` holds files and `overwrite` is False; or `overwrite` is True
        and some files were not written by latentbeam (named in the message).
    """
    tree = list_tree(output)
    data = [rel for rel in tree if not is_staging(rel)]
    if data and not overwrite:
        tops = sorted({rel.split("/", 1)[0] for rel in data})
        raise OutputError(
             f"Output directory {output} is not empty ({len(tops)} entries: "
             f"{', '.join(tops[:3])}{', ...' if len(tops) > 3 else ''}). Writing into it would "
             f"mix old and new shards. Pass --overwrite to replace what an earlier latentbeam "
             f"run wrote there, or choose an empty directory.")
    owned, foreign = owned_files(output, tree)
    if foreign:
        raise OutputError(
             f"{flag} {output} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
             f"that no latentbeam run listed as its output: {describe(foreign)}. --overwrite only "
             f"deletes files a previous latentbeam run wrote (listed in its {SUCCESS_FILE} or "
             f"manifest). Move those entries away, or choose another output directory.")
    return owned


# --------------------------------------------------------------------------- writing

def delete_files(output: str, rels: Iterable[str]) -> None:
    """Deletes the given files below `output` (never globbing), then empty layout dirs."""
    rels = sorted(set(rels), key=lambda r: (r != SUCCESS_FILE, r))  # commit marker first
    if paths.is_remote(output):
        targets = [fs.join(output, r) for r in rels if not r.endswith("/")]
        if targets:
            fs.FileSystems.delete(targets)
        return
    root = fs.local_path(output)
    for rel in rels:
        path = os.path.join(root, *rel.rstrip("/").split("/"))
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        elif os.path.isdir(path) and rel.split("/", 1)[0].startswith(STAGING_PREFIX):
            shutil.rmtree(path)
    _prune_empty_dirs(root)


def _prune_empty_dirs(root: str) -> None:
    """Removes empty staging and layout directories (only those) below `root`."""
    for here, dirs, files in os.walk(root, topdown=False):
        if here == root or files or os.listdir(here):
            continue
        first = os.path.relpath(here, root).split(os.sep)[0]
        if first.startswith(STAGING_PREFIX) or first in LAYOUT_DIRS:
            os.rmdir(here)


def remove_tree(path: str) -> None:
    """Deletes a staging directory of ours (local or remote) without globbing."""
    try:
        if paths.is_remote(path):
            files = fs.match(fs.join(path, "**"))
            if files:
                fs.FileSystems.delete(files)
        elif os.path.lexists(fs.local_path(path)):
            shutil.rmtree(fs.local_path(path))
    except OSError as e:
        log.warning("Could not remove staging %s: %s", path, e)


def write_atomically(path: str, data: bytes) -> None:
    """Readers see the old file or the whole new one (local: temp file + rename)."""
    if paths.is_remote(path):
        fs.write_bytes(path, data)  # object stores publish an object only when it is closed
        return
    local = fs.local_path(path)
    directory = os.path.dirname(os.path.abspath(local))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(local)}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, local)


def commit(output: str, moves: Sequence[Tuple[str, str]], success: Dict, replace: Sequence[str],
           staging: Optional[str] = None) -> None:
    """Moves staged files into `output` and writes `_SUCCESS` last.

    Args:
      output: the output directory.
      moves: (staged path, name relative to output) of every new file.
      success: the `_SUCCESS` document; `writer` and `files` are filled in here.
      replace: files of the previous run to delete (from `check_output_dir`).
      staging: the staging directory, removed at the end.

    `_COMMITTING`, written first, lists every file this commit may leave behind, so a
    commit killed part way is still recognised (and replaced) by the next overwrite.
    Until `_SUCCESS` exists, no output looks complete.
    """
    new = [rel for _, rel in moves]
    write_atomically(fs.join(output, COMMITTING_FILE), json.dumps(
        {"writer": WRITER, "files": sorted(set(replace) | set(new) | {SUCCESS_FILE})}).encode())
    delete_files(output, [r for r in replace if r != COMMITTING_FILE])
    if moves:
        for rel in {rel.rsplit("/", 1)[0] for rel in new if "/" in rel}:
            fs.makedirs(fs.join(output, rel))
        fs.FileSystems.rename([src for src, _ in moves], [fs.join(output, rel) for rel in new])
    doc = dict(success, writer=WRITER)
    doc.setdefault("files", new)
    write_atomically(fs.join(output, SUCCESS_FILE), (json.dumps(doc, indent=2) + "\n").encode())
    delete_files(output, [COMMITTING_FILE])
    if staging:
        remove_tree(staging)


# --------------------------------------------------------------------------- directories

def staging_dir(output: str) -> str:
    """A fresh hidden directory inside `output` where a job stages its files until `commit`."""
    return fs.join(output, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")


def staging_sibling(target: str, kind: str = "staging") -> str:
    """A hidden directory next to `target` (same filesystem, so a rename can swap them)."""
    norm = target.rstrip("/") if paths.is_remote(target) else paths.normalize(target)
    parent, name = norm.rsplit("/", 1) if "/" in norm else ("", norm)
    return f"{parent}/.{name}.{kind}-{uuid.uuid4().hex[:12]}"


def swap_in(staging: str, target: str, marker: str) -> None:
    """Replaces directory `target` by the complete directory `staging`.

    Local: two renames (old aside, new in), then the old one is deleted; if the second
    rename fails the old directory is put back. Object stores have no rename: the old
    `marker` (the commit file, e.g. bundle.json) is deleted first, the new files are
    copied with `marker` last, then files of the old version are removed.
    """
    if paths.is_remote(target):
        _swap_remote(staging, target.rstrip("/"), marker)
        return
    target = paths.normalize(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    old = staging_sibling(target, "old")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _swap_remote(staging: str, target: str, marker: str) -> None:
    new = list_tree(staging)
    old = list_tree(target)
    if marker in old:
        fs.FileSystems.delete([fs.join(target, marker)])
    first = [rel for rel in new if rel != marker]
    if first:
        fs.FileSystems.rename([fs.join(staging, r) for r in first],
                              [fs.join(target, r) for r in first])
    fs.FileSystems.rename([fs.join(staging, marker)], [fs.join(target, marker)])
    stale = [fs.join(target, r) for r in old if r not in set(new)]
    if stale:
        fs.FileSystems.delete(stale)
    remove_tree(staging)
