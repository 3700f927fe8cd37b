"""Command line: `latentbeam {train,score,stream,decode,generate,rethreshold,report,info,demo}` (also `python -m latentbeam`).

Flags a subcommand does not know are passed to Beam's PipelineOptions, so
`--runner DataflowRunner --project P --temp_location gs://... --setup_file ./setup.py`
works unchanged on `score`, `stream` and `decode`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

from latentbeam.arguments import BEAM_COMMANDS, PATH_ARGS, build_parser, own_flags
from latentbeam.errors import BUG_HINT, is_user_error

log = logging.getLogger("latentbeam")

def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and args.command not in BEAM_COMMANDS:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    # A quoted '~/x' reaches us unexpanded; expand it as the shell would, once, so the
    # output checks and every read and write see the same place.
    from latentbeam.paths import expand_user
    for name in PATH_ARGS:
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, expand_user(getattr(args, name)))
    from latentbeam.console import NativeLogFilter, configure_logging

    try:
        level = configure_logging(args.log_level)
    except ValueError as e:
        parser.error(str(e))
    _quiet_tensorflow()
    native = NativeLogFilter() if level > logging.INFO else contextlib.nullcontext()
    with native:
        try:
            if args.command in BEAM_COMMANDS:
                from latentbeam.pipeline.options import check_beam_flags
                beam_args = check_beam_flags(beam_args, own_flags(parser, args.command))
            return COMMANDS[args.command](args, beam_args)
        except Exception as e:  # noqa: BLE001  sorted into user errors and bugs below
            if not is_user_error(e):
                report_bug(args.command)
                return 1
            # One clear line, no traceback (use --log-level DEBUG for it).
            log.debug("failed", exc_info=True)
            print(f"latentbeam {args.command}: error: {e}", file=sys.stderr)
            return 2


def report_bug(command: str) -> None:
    """Prints the traceback of the exception being handled and where to report it."""
    import traceback

    traceback.print_exc(file=sys.stderr)
    print(f"latentbeam {command}: internal error. {BUG_HINT}", file=sys.stderr)


def cmd_train(args, beam_args: List[str]) -> int:
    from latentbeam.config import load_config
    from latentbeam.model import train
    from latentbeam.summaries import summarize_bundle

    overrides = list(args.overrides) + (["train.verbose=0"] if args.quiet else [])
    config = load_config(args.config, overrides)
    bundle = train(config, args.output)
    print(summarize_bundle(bundle.info))
    return 0


def _key_columns(text: Optional[str]) -> Tuple[str, ...]:
    """`--key-columns a,b` -> ("a", "b")."""
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _scoring_options(args, keys: Tuple[str, ...]):
    from latentbeam.pipeline.records import ScoringOptions

    return ScoringOptions(key_columns=keys, per_feature_errors=args.per_feature_errors,
                          reconstruction=args.reconstruction,
                          latent_distance=args.latent_distance,
                          top_features=args.top_features, missing=args.missing)


def cmd_score(args, beam_args: List[str]) -> int:
    from latentbeam.console import progress_line
    from latentbeam.pipeline.batch import run_file_job
    from latentbeam.pipeline.jobs import ScoreJob
    from latentbeam.summaries import format_summary

    job = ScoreJob(bundle=args.bundle, input=args.input, output=args.output,
                   opts=_scoring_options(args, _key_columns(args.key_columns)),
                   data_dir=args.data_dir, overwrite=args.overwrite, batch_rows=args.batch_rows,
                   max_dead_letter_fraction=args.max_dead_letter_fraction)
    print(format_summary(run_file_job(job, beam_args, progress=progress_line(args))))
    return 0


def cmd_decode(args, beam_args: List[str]) -> int:
    from latentbeam.console import progress_line
    from latentbeam.pipeline.batch import run_file_job
    from latentbeam.pipeline.jobs import DecodeJob
    from latentbeam.pipeline.records import ScoringOptions
    from latentbeam.summaries import format_summary

    job = DecodeJob(bundle=args.bundle, input=args.input, output=args.output,
                    opts=ScoringOptions(key_columns=_key_columns(args.key_columns)),
                    overwrite=args.overwrite,
                    max_dead_letter_fraction=args.max_dead_letter_fraction)
    print(format_summary(run_file_job(job, beam_args, progress=progress_line(args))))
    return 0


def _stream_job(args):
    """The StreamJob of `latentbeam stream`'s flags (the adaptive key is kept as a key column)."""
    from latentbeam import fs
    from latentbeam.pipeline.adaptive import AdaptiveConfig
    from latentbeam.pipeline.jobs import StreamJob

    keys = _key_columns(args.key_columns)
    adaptive = None
    if args.adaptive_threshold:
        # A warm-up longer than a short window is cut to it (a window < 1 is refused by
        # AdaptiveConfig, naming that flag).
        adaptive = AdaptiveConfig(quantile=args.adaptive_quantile,
                                  window_rows=args.adaptive_window_rows,
                                  warmup_rows=min(args.adaptive_warmup_rows,
                                                  max(args.adaptive_window_rows, 1)),
                                  key_column=args.adaptive_key)
        if adaptive.key_column and adaptive.key_column not in keys:
            keys = keys + (adaptive.key_column,)
    return StreamJob(
        bundle=args.bundle, output=args.output,
        watch=fs.parquet_pattern(args.watch) if args.watch else None,
        pubsub_subscription=args.pubsub_subscription, window_seconds=args.window_seconds,
        poll_seconds=args.poll_seconds, stop_after_seconds=args.stop_after_seconds,
        timestamp_column=args.timestamp_column,
        allowed_lateness_seconds=args.allowed_lateness_seconds,
        early_firing_seconds=args.early_firing_seconds,
        bundle_poll_seconds=args.bundle_poll_seconds, batch_rows=args.batch_rows,
        scoring=_scoring_options(args, keys), adaptive=adaptive)


def cmd_stream(args, beam_args: List[str]) -> int:
    from latentbeam.console import progress_line
    from latentbeam.pipeline.streaming import run_stream
    from latentbeam.summaries import format_stream_summary

    summary = run_stream(_stream_job(args), beam_args, progress=progress_line(args))
    print(format_stream_summary(summary))
    return 0


def cmd_generate(args, beam_args: List[str]) -> int:
    from latentbeam.console import progress_line
    from latentbeam.pipeline.generate import run_generate

    path, rows = run_generate(args.bundle, args.output, num_samples=args.num_samples,
                              seed=args.seed, overwrite=args.overwrite,
                              progress=progress_line(args))
    print(f"wrote {rows} samples to {path}")
    return 0


def cmd_rethreshold(args, beam_args: List[str]) -> int:
    from latentbeam.model.rethreshold import rethreshold

    old, new = rethreshold(args.bundle, threshold=args.threshold, method=args.method,
                           value=args.value, output=args.output)
    print(f"threshold:       {old.threshold.threshold:.6g} ({old.threshold.method}) -> "
          f"{new.threshold.threshold:.6g} ({new.threshold.method}, value={new.threshold.value})")
    print(f"model_version:   {old.model_version} -> {new.model_version}")
    print(f"flagged:         {new.calibration['flagged_fraction']:.2%} of the calibration rows "
          f"(estimated from the stored score quantiles)")
    print(f"bundle:          {new.path}")
    return 0


def cmd_report(args, beam_args: List[str]) -> int:
    from latentbeam.report import build_report

    result = build_report(args.bundle, args.output, scored=args.scored, top_n=args.top,
                          sample_rows=args.sample_rows, seed=args.seed,
                          label_column=args.label_column)
    s = result.summary
    print(f"report:  {result.index} ({len(result.files)} files, {result.seconds:.1f} s)")
    if "scored" in s:
        sc = s["scored"]
        print(f"scored:  {sc['rows']:,} rows in {sc['files']} files, {sc['anomalies']:,} "
              f"anomalies ({sc['anomaly_fraction']:.2%}); latent map of {sc['sample_rows']:,} "
              f"sampled rows (seed {sc['seed']})")
    print(f"open:    file://{os.path.abspath(result.index)}" if "://" not in result.index
          else f"open:    {result.index}")
    return 0


def cmd_info(args, beam_args: List[str]) -> int:
    """Exit code 0 when model.keras matches bundle.json's sha256, 1 when it does not."""
    import json

    from latentbeam.report.info import bundle_summary, format_info

    summary = bundle_summary(args.bundle)
    print(json.dumps(summary, indent=2) if args.json else format_info(summary))
    return 0 if summary["integrity"]["ok"] else 1


def cmd_demo(args, beam_args: List[str]) -> int:
    from latentbeam.demo import run_demo
    return run_demo(args.workdir, overrides=args.overrides)


COMMANDS = {
    "train": cmd_train,
    "score": cmd_score,
    "decode": cmd_decode,
    "stream": cmd_stream,
    "generate": cmd_generate,
    "rethreshold": cmd_rethreshold,
    "report": cmd_report,
    "info": cmd_info,
    "demo": cmd_demo,
}
