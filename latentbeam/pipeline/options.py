"""Beam PipelineOptions from the flags a latentbeam command did not recognise."""
from __future__ import annotations

from typing import List, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from latentbeam.errors import ConfigError


DASK_RUNNER_PATH = "latentbeam.pipeline.dask_runner.DaskRunner"
BEAM_DASK_RUNNER_PATH = "apache_beam.runners.dask.dask_runner.DaskRunner"
DASK_SHORT_NAMES = ("dask", "daskrunner")  # --runner values meaning DASK_RUNNER_PATH


def is_dask_runner(name: Optional[str]) -> bool:
    """True for `dask`, `DaskRunner`, Beam's DaskRunner path or latentbeam's."""
    return bool(name) and (name.lower() in DASK_SHORT_NAMES
                           or name in (DASK_RUNNER_PATH, BEAM_DASK_RUNNER_PATH))


def _resolve_runner(name: str) -> str:
    # Every spelling of Dask, Beam's own runner path included, runs latentbeam's runner:
    # Beam 2.77's DaskRunner silently drops outputs (see dask_runner.py).
    if not is_dask_runner(name):
        return name
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise ConfigError(f"--runner {name} needs Dask: pip install 'latentbeam[dask]' "
                         f"(installs dask and distributed).")
    return DASK_RUNNER_PATH


def dask_partitions(beam_args: Sequence[str], n: int) -> List[str]:
    """`beam_args` plus `--dask_npartitions=n` unless a Dask partitioning flag is given.

    Beam's DaskRunner puts up to 128 elements of a Create into one partition (one task),
    so a job over a few input files would run on one worker; one file per task lets
    Dask spread them (on Dask, `Reshuffle` does not redistribute).
    """
    args = list(beam_args)
    if any(a.split("=", 1)[0] in ("--dask_npartitions", "--dask_partition_size") for a in args):
        return args
    return args + [f"--dask_npartitions={max(1, n)}"]


def _has_flag(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def _runner_value(args: Sequence[str]) -> Optional[str]:
    """The value of the last --runner flag in `args` (None without one)."""
    value = None
    for i, a in enumerate(args):
        if a == "--runner" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--runner="):
            value = a.split("=", 1)[1]
    return value


def resolve_runner_alias(beam_args: Sequence[str]) -> List[str]:
    """`beam_args` with `--runner dask` (or `DaskRunner`) spelled as a runner Beam can load.

    Beam knows no short name for its Dask runner; latentbeam's (see
    `latentbeam.pipeline.dask_runner`) is Beam's with the translations user pipelines need.

    Raises:
      ValueError: `--runner dask` without Dask installed.
    """
    out, args, i = [], list(beam_args), 0
    while i < len(args):
        a = args[i]
        if a == "--runner" and i + 1 < len(args):
            out += [a, _resolve_runner(args[i + 1])]
            i += 2
            continue
        if a.startswith("--runner="):
            a = "--runner=" + _resolve_runner(a.split("=", 1)[1])
        out.append(a)
        i += 1
    return out


def uses_dask(beam_args: Sequence[str]) -> bool:
    """True when `beam_args` select a Dask runner (short name or either runner path)."""
    return is_dask_runner(_runner_value(beam_args))


def pipeline_options(beam_args: Sequence[str] = ()) -> PipelineOptions:
    """PipelineOptions for `beam_args`, defaulting to Beam's in-process batch engine.

    Without `--runner` the job runs on FnApiRunner, the engine DirectRunner uses for
    batch pipelines: Beam 2.77's DirectRunner first tries to download the Prism
    runner binary (even with an explicit `direct_running_mode`) and only falls back
    after that fails. `--direct_running_mode` (in_memory by default, or
    multi_processing with `--direct_num_workers N`) applies to it unchanged.
    """
    args = resolve_runner_alias(beam_args)
    if not _has_flag(args, "--runner"):
        args.append("--runner=FnApiRunner")
        if not _has_flag(args, "--direct_running_mode"):
            args.append("--direct_running_mode=in_memory")
    return PipelineOptions(args)


def _runner_module(name: str) -> Optional[str]:
    """The module defining runner `name` (a short name Beam knows, or a dotted path)."""
    from apache_beam.options.pipeline_options import StandardOptions

    if "." in name:
        return name.rsplit(".", 1)[0]
    known = {p.rsplit(".", 1)[-1].lower(): p for p in StandardOptions.ALL_KNOWN_RUNNERS}
    path = known.get(name.lower()) or known.get(name.lower() + "runner")
    return path.rsplit(".", 1)[0] if path else None


def _import_runner(name: str) -> None:
    """Imports the runner's module, so its options (e.g. --dask_client_address) are known.

    Raises:
      ValueError: the runner is unknown or its module cannot be imported.
    """
    import difflib
    import importlib

    from apache_beam.options.pipeline_options import StandardOptions

    module = _runner_module(name)
    if module is None:
        names = list(StandardOptions.KNOWN_RUNNER_NAMES) + ["dask"]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"Did you mean {close[0]}? " if close else ""
        raise ConfigError(f"Unknown runner --runner {name}. {hint}Known runners: "
                         f"{', '.join(names)}, or a runner's dotted class path.")
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"--runner {name}: cannot import {module} ({e}). Install the runner's "
                         f"dependencies, e.g. pip install 'apache-beam[gcp]' for DataflowRunner "
                         f"or 'latentbeam[dask]' for dask.") from e


def _beam_flags() -> List[str]:
    """Every flag of the PipelineOptions classes imported so far (option strings, not dests:
    --dask_client_address is stored as `address`)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        try:
            cls._add_argparse_args(parser)
        except Exception:  # an options class that conflicts with another: skip its flags
            continue
    return [f for a in parser._actions for f in a.option_strings if f.startswith("--")]


def check_beam_flags(beam_args: Sequence[str], own_flags: Sequence[str] = ()) -> List[str]:
    """Refuses flags that neither latentbeam nor Beam's PipelineOptions know.

    PipelineOptions only logs "Unparseable argument" for an unknown flag and drops it,
    so a typo such as `--keycolumns id` would silently change the job. Options of a
    runner count as known once its module is imported, which this does for --runner.

    Args:
      beam_args: the flags the latentbeam command did not recognise.
      own_flags: the command's own flags, offered as corrections.

    Returns:
      `beam_args` with `--runner dask` resolved (see `resolve_runner_alias`).

    Raises:
      ValueError: an unknown flag or runner, naming it and the closest valid flag.
    """
    import difflib
    import logging

    args = resolve_runner_alias(beam_args)
    runner = _runner_value(args)
    if runner:
        _import_runner(runner)
    options_log = logging.getLogger("apache_beam.options.pipeline_options")
    previous = options_log.level
    options_log.setLevel(logging.ERROR)  # it warns about exactly what is reported below
    try:
        opts = PipelineOptions(args)
        known = opts.get_all_options()
        unknown = set(opts.get_all_options(retain_unknown_options=True)) - set(known)
    finally:
        options_log.setLevel(previous)
    bad = []
    for i, token in enumerate(args):
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            if name.lstrip("-").replace("-", "_") in unknown and name not in bad:
                bad.append(name)
        elif i == 0 or "=" in args[i - 1] or not args[i - 1].startswith("-"):
            bad.append(token)  # a value no flag takes
    if not bad:
        return args
    candidates = list(own_flags) + _beam_flags()
    close = difflib.get_close_matches(bad[0], candidates, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]}?" if close else ""
    what = "flag" if bad[0].startswith("-") else "argument"
    more = f" (also unknown: {', '.join(bad[1:])})" if len(bad) > 1 else ""
    raise ConfigError(f"Unknown {what} {bad[0]}{more}: neither latentbeam nor Beam's "
                     f"PipelineOptions{f' (runner {runner})' if runner else ''} knows it."
                     f"{hint} See --help for this command's flags.")
