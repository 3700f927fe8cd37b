"""Helpers of the safety tests: a fingerprint of a whole directory tree."""
import hashlib
import os
from typing import Dict


def tree_hashes(root: str, skip: str = None) -> Dict[str, str]:
    """{relative path: sha256 of the content (or 'link -> target', or 'dir')} of every entry.

    Hidden files and directories included; symlinks recorded, never followed. Entries
    at or below `skip` (a path) are left out.
    """
    out = {}
    skip = os.path.realpath(skip) if skip else None
    for here, dirs, files in os.walk(root):
        if skip and (os.path.realpath(here) == skip or
                     os.path.realpath(here).startswith(skip + os.sep)):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(here, name)
            rel = os.path.relpath(path, root)
            if skip and (os.path.abspath(path) == skip or os.path.abspath(path).startswith(skip + os.sep)):
                continue
            if os.path.islink(path):
                out[rel] = "link -> " + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out
