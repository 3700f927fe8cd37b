"""Beam PipelineOptions from the flags a latentbeam command did not recognise."""
from __future__ import annotations

from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions


def _has_flag(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def pipeline_options(beam_args: Sequence[str] = ()) -> PipelineOptions:
    """PipelineOptions for `beam_args`, defaulting to Beam's in-process batch engine.

    Without `--runner` the job runs on FnApiRunner, the engine DirectRunner uses for
    batch pipelines: Beam 2.77's DirectRunner first tries to download the Prism
    runner binary (even with an explicit `direct_running_mode`) and only falls back
    after that fails. `--direct_running_mode` (in_memory by default, or
    multi_processing with `--direct_num_workers N`) applies to it unchanged.
    """
    args = list(beam_args)
    if not _has_flag(args, "--runner"):
        args.append("--runner=FnApiRunner")
        if not _has_flag(args, "--direct_running_mode"):
            args.append("--direct_running_mode=in_memory")
    return PipelineOptions(args)
