"""Where an output may go: locations compared after resolving them, never as typed.

Every command that writes (train, score, decode, stream, generate, rethreshold) asks
`check_output` before it writes or deletes anything. Two spellings of one place
compare equal here: a relative and an absolute path, `file://`, a trailing `/.`, `..`,
a symlink (local paths are resolved with realpath), doubled slashes and `.` segments
of gs:// / s3:// paths. A leading `~` is expanded by the command line
(`expand_user`) before any of this, as a shell would: here, as in every read and
write, `~` is an ordinary name, so the check sees the place that is written. A glob stands for the files it matches and for its
base directory (the part before the first glob character).

An output is refused when it is, contains or lies inside a location the command
reads (input files, their directory, a glob's base, a TFDS data_dir, a watched
directory, the bundle), or when it is or contains the current working directory.
"""
from __future__ import annotations

import os
import posixpath
from typing import Iterable, List, Optional, Sequence, Tuple

from latentbeam import fs
from latentbeam.errors import OutputError
from latentbeam.fs import GLOB_CHARS

# What a location is, for messages: ("input file", "/data/a.parquet").
Location = Tuple[str, str]


def is_remote(path: str) -> bool:
    return not fs.is_local(path)


def has_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def normalize(path: str) -> str:
    """The canonical spelling of a location (local: absolute realpath; remote: scheme://b/k).

    Globs are kept as they are (normalize their base with `glob_base`).
    """
    path = str(path).strip()
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        # Used only to compare locations: collapsing `//` and `..` (literal characters of
        # an object name on GCS / S3) can only make two paths look equal, i.e. refuse an
        # output that was safe, never let an overlapping one through.
        rest = posixpath.normpath("/" + rest).lstrip("/") if rest else ""
        return f"{scheme.lower()}://{rest}".rstrip("/") if rest else f"{scheme.lower()}://"
    return os.path.realpath(fs.local_path(path) or ".")


def expand_user(path: str) -> str:
    """A local path with a leading `~` expanded (what a shell does to an unquoted one)."""
    if isinstance(path, str) and path.startswith("~") and not is_remote(path):
        return os.path.expanduser(path)
    return path


def glob_base(pattern: str) -> str:
    """The directory a glob searches in: its path before the first glob character, normalized."""
    if not has_glob(pattern):
        return normalize(pattern)
    if is_remote(pattern):
        head = pattern[:min(pattern.index(c) for c in GLOB_CHARS if c in pattern)]
        scheme, rest = head.split("://", 1)
        return normalize(f"{scheme}://{rest.rsplit('/', 1)[0] if '/' in rest else rest}")
    local = fs.local_path(pattern)
    head = local[:min(local.index(c) for c in GLOB_CHARS if c in local)]
    return normalize(os.path.dirname(head) or ".")


def parent(path: str) -> str:
    """Directory holding `path` (normalized)."""
    norm = normalize(path)
    if is_remote(norm):
        scheme, rest = norm.split("://", 1)
        return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else f"{scheme}://"
    return os.path.dirname(norm)


def is_inside(child: str, ancestor: str) -> bool:
    """True when normalized `child` is `ancestor` or lies below it."""
    child, ancestor = normalize(child), normalize(ancestor)
    if child == ancestor:
        return True
    if is_remote(child) != is_remote(ancestor):
        return False
    prefix = ancestor if ancestor.endswith("/") else ancestor + "/"
    return child.startswith(prefix)


def input_locations(pattern: str, files: Sequence[str], label: str = "input") -> List[Location]:
    """What a job reading `pattern` (matched as `files`) depends on.

    The files themselves, their directories and the pattern's base directory (a
    directory given as input is its own base).
    """
    out: List[Location] = []
    seen = set()

    def add(what: str, path: str) -> None:
        norm = normalize(path)
        if norm not in seen:
            seen.add(norm)
            out.append((what, path))

    # Files first: the message then names a file the output would put at risk.
    for f in files:
        add(f"{label} file", f)
    if has_glob(pattern):
        add(f"{label} glob's base directory", glob_base(pattern))
    else:
        add(f"{label} directory" if _is_dir(pattern) else label, pattern)
    for f in files:
        add(f"{label} directory", parent(f))
    return out


def _is_dir(path: str) -> bool:
    if is_remote(path):
        return path.endswith("/")
    return os.path.isdir(normalize(path))


def _relation(output: str, location: str) -> Optional[str]:
    if normalize(output) == normalize(location):
        return "is"
    if is_inside(output, location):
        return "lies inside"
    if is_inside(location, output):
        return "contains"
    return None


def check_output(output: str, reads: Iterable[Location] = (), *, flag: str = "--output",
                 cwd: bool = True) -> str:
    """Refuses an output location that overlaps what the command reads; returns it normalized.

    Args:
      output: the output directory as given.
      reads: (what, path) of every location the command reads, e.g.
        ("input file", "data/a.parquet"), ("bundle", "bundles/v1").
      flag: the option that named `output`, for messages.
      cwd: also refuse an output that is or contains the current working directory.

    Raises:
      OutputError: naming both locations (as given and resolved) and the fix.
    """
    if not str(output).strip():
        raise OutputError(f"{flag} is empty. Expected a directory path, e.g. {flag} scored/.")
    if has_glob(output):
        raise OutputError(f"{flag} {output!r} contains a glob character (one of * ? [). "
                          f"Expected one directory; name it without wildcards.")
    norm = normalize(output)
    if not is_remote(norm) and os.path.exists(norm) and not os.path.isdir(norm):
        raise OutputError(f"{flag} {output} is an existing file ({norm}), expected a directory. "
                          f"Choose a directory path.")
    if cwd and not is_remote(norm):
        here = os.getcwd()
        if is_inside(here, norm):
            what = "is" if normalize(here) == norm else "contains"
            raise OutputError(
                 f"{flag} {output} (resolved: {norm}) {what} the current working directory "
                 f"{here}. Writing there could replace or delete files you are working on. "
                 f"Choose a new directory such as {os.path.join(here, 'out')}.")
    for what, path in reads:
        relation = _relation(output, path)
        if relation is None:
            continue
        if relation == "contains":
            # Phrased from the input's side: the input is inside the output directory.
            sentence = (f"The {what} {path} (resolved: {normalize(path)}) is inside the output "
                        f"directory {flag} {output} (resolved: {norm})")
        else:
            sentence = (f"{flag} {output} (resolved: {norm}) {relation} the {what} {path} "
                        f"(resolved: {normalize(path)})")
        raise OutputError(
             f"{sentence}. The command writes and replaces files in its output directory, "
             f"so it must not overlap what it reads. Choose an output directory that neither "
             f"contains nor lies inside {path}.")
    return norm


def tfds_data_dir(data_dir: Optional[str]) -> str:
    """The TFDS data_dir a job reads (TFDS's own default when none is given)."""
    # The TFDS reader expands `~` itself, so the check does too.
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or
                              "~/tensorflow_datasets")

