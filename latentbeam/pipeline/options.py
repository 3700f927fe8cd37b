"""Beam PipelineOptions from the flags a latentbeam command did not recognise."""
from __future__ import annotations

from typing import List, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions


DASK_RUNNER_PATH = "latentbeam.pipeline.dask_runner.DaskRunner"
BEAM_DASK_RUNNER_PATH = "apache_beam.runners.dask.dask_runner.DaskRunner"
DASK_SHORT_NAMES = ("dask", "daskrunner")  # --runner values meaning DASK_RUNNER_PATH


def is_dask_runner(name: Optional[str]) -> bool:
    """True for `dask`, `DaskRunner`, Beam's DaskRunner path or latentbeam's."""
    return bool(name) and (name.lower() in DASK_SHORT_NAMES
                           or name in (DASK_RUNNER_PATH, BEAM_DASK_RUNNER_PATH))


def _resolve_runner(name: str) -> str:
    if name.lower() not in DASK_SHORT_NAMES:
        return name
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise ValueError(f"--runner {name} needs Dask: pip install 'latentbeam[dask]' "
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
