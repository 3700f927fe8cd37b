"""Writing bundles: model.keras and any extra files, then the sealed bundle.json.

A bundle is written to a hidden sibling directory and swapped in whole, so a failed
write leaves the previous bundle loadable; a directory holding anything but a
latentbeam bundle is never replaced.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Optional

from latentbeam import fs, outputs, paths
from latentbeam.errors import BundleError, OutputError
from latentbeam.model.bundle import (BUNDLE_FILE, COMPUTED_KEYS, MODEL_FILE,
                                     BundleInfo, format_version_of, json_default, model_version,
                                     parse_bundle_json, safe_name, scoring_meta, seal_of)


def library_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("latentbeam", "tensorflow", "keras", "apache-beam", "pyarrow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def save_bundle(model, path: str, meta: Dict[str, Any],
                extra_files: Optional[Dict[str, bytes]] = None) -> BundleInfo:
    """Writes a bundle (model.keras, any `extra_files`, then bundle.json) to a local or remote dir.

    `meta` holds every bundle.json key except the computed ones (COMPUTED_KEYS), which
    are computed here; computed keys in `meta` are ignored. The bundle is written to a
    hidden sibling directory and swapped in whole (see `write_bundle`).
    """
    meta = _plain(meta)
    with tempfile.TemporaryDirectory(prefix="latentbeam-save-") as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        model.save(local)
        with open(local, "rb") as f:
            data = f.read()
    return write_bundle(path, {**(extra_files or {}), MODEL_FILE: data}, meta,
                        model_version(model, scoring_meta(meta)))


def write_bundle(path: str, files: Dict[str, bytes], meta: Dict[str, Any], version: str
                 ) -> BundleInfo:
    """Writes `files` and a sealed bundle.json into a staging sibling, then swaps it in.

    `files` covers every file of the bundle but bundle.json; their hashes are read back
    from the staging directory, so whatever is written there is covered by `files`.
    A failure before the swap leaves the previous bundle at `path` untouched.

    Raises:
      OutputError: `path` holds entries that are not part of a latentbeam bundle.
      BundleError: a file name is not inside the bundle, or the document does not validate.
    """
    check_bundle_target(path)
    for name in files:
        if not safe_name(name):
            raise BundleError(f"Bundle file name {name!r} must be a relative path inside the "
                              f"bundle (no '..', not {BUNDLE_FILE}).")
    staging = outputs.staging_sibling(path)
    try:
        for name, data in files.items():
            fs.write_bytes(fs.join(staging, name), data)
        hashes = {rel: hashlib.sha256(fs.read_bytes(fs.join(staging, rel))).hexdigest()
                  for rel in outputs.list_tree(staging) if not rel.endswith("/")}
        doc = _document(_plain(meta), version, hashes)
        text = json.dumps(doc, indent=2, sort_keys=False, default=json_default)
        info = parse_bundle_json(path, text)  # refuse what a loader would refuse, before the swap
        fs.write_bytes(fs.join(staging, BUNDLE_FILE), text.encode("utf-8"))
        outputs.swap_in(staging, path, BUNDLE_FILE)
    except BaseException:
        outputs.remove_tree(staging)
        raise
    return info


def check_bundle_target(path: str) -> None:
    """Refuses to replace a directory holding anything but a latentbeam bundle.

    An absent or empty directory, or one with a bundle.json (any format) and only the
    files it lists, may be replaced.

    Raises:
      OutputError: naming the entries that are not part of a bundle.
    """
    tree = outputs.list_tree(path)
    if not tree:
        return
    listed = {BUNDLE_FILE, MODEL_FILE}
    doc = None
    if BUNDLE_FILE in tree:
        try:
            doc = json.loads(fs.read_bytes(fs.join(path, BUNDLE_FILE)))
        except (ValueError, RecursionError):
            doc = None
    if not (isinstance(doc, dict) and "format_version" in doc and "model_version" in doc):
        raise OutputError(
             f"Bundle output {path} is a non-empty directory that is not a latentbeam bundle "
             f"(no valid {BUNDLE_FILE}; it holds {outputs.describe(tree)}). Writing a bundle "
             f"there would delete those files. Choose an empty or new directory.")
    if isinstance(doc.get("files"), dict):
        listed.update(k for k in doc["files"] if isinstance(k, str))
    foreign = [rel for rel in tree if rel not in listed]
    if foreign:
        raise OutputError(
             f"Bundle output {path} holds {outputs.describe(foreign)}, which the bundle there "
             f"does not list. Replacing the bundle would delete them. Move them away or "
             f"choose another directory.")


def check_bundle_output(path: str, reads=()) -> None:
    """All checks before writing a bundle to `path`: no overlap with what is read, no foreign files."""
    paths.check_output(path, reads, flag="--output")
    check_bundle_target(path)


def in_memory_info(model, meta: Dict[str, Any]) -> BundleInfo:
    """The BundleInfo `save_bundle` would write, for a model kept in memory only.

    `path` is empty and `sha256` all zeros: there is no model file to hash.
    """
    meta = _plain(meta)
    doc = _document(meta, model_version(model, scoring_meta(meta)), {MODEL_FILE: "0" * 64})
    return parse_bundle_json("", json.dumps(doc, default=json_default))


def _plain(meta: Dict[str, Any]) -> Dict[str, Any]:
    """`meta` as JSON values (numpy scalars/arrays converted), computed keys dropped."""
    return json.loads(json.dumps({k: v for k, v in meta.items() if k not in COMPUTED_KEYS},
                                 default=json_default))


def _document(meta: Dict[str, Any], version: str, files: Dict[str, str]) -> Dict[str, Any]:
    doc = {
        "format_version": format_version_of(meta),
        "model_version": version,
        **meta,
        "versions": library_versions(),
        "sha256": files[MODEL_FILE],
        "files": dict(sorted(files.items())),
    }
    doc["seal"] = seal_of(doc)
    return doc
