"""Command line: `latentbeam {train,score,stream,decode,generate,rethreshold,report,info,demo}` (also `python -m latentbeam`).

Flags a subcommand does not know are passed to Beam's PipelineOptions, so
`--runner DataflowRunner --project P --temp_location gs://... --setup_file ./setup.py`
works unchanged on `score`, `stream` and `decode`.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

from latentbeam.errors import BUG_HINT, ConfigError, is_user_error

log = logging.getLogger("latentbeam")

BEAM_COMMANDS = ("score", "stream", "decode")
PATH_ARGS = ("output", "input", "bundle", "watch", "config", "data_dir", "workdir", "scored")
BEAM_EPILOG = ("Flags not listed here go to Beam's PipelineOptions, e.g. --runner DataflowRunner "
               "--project P --region R --temp_location gs://B/tmp --setup_file ./setup.py. "
               "Default: the in-process FnApiRunner.")


def _add_output_flags(p: argparse.ArgumentParser, progress: bool = True) -> None:
    """--log-level (also accepted after the command) and, for jobs, progress flags."""
    p.add_argument("--log-level", default=argparse.SUPPRESS,
                   help="Python logging level: WARNING (default) shows warnings only; INFO "
                        "also shows Beam's, absl's and TensorFlow's INFO lines")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (the final summary is still printed)")
    if progress:
        p.add_argument("--progress-seconds", type=float, default=10.0,
                       help="seconds between progress lines when stderr is not a terminal "
                            "(default 10; a terminal gets one live line)")


def _add_scoring_flags(p: argparse.ArgumentParser) -> None:
    from latentbeam.pipeline.layout import DEFAULT_BATCH_ROWS

    p.add_argument("--key-columns", default="",
                   help="comma-separated input columns copied to the output unchanged")
    p.add_argument("--per-feature-errors", action="store_true",
                   help="add `feature_errors`: per-feature squared error (normalized space)")
    p.add_argument("--reconstruction", action="store_true",
                   help="add `reconstruction`: X-hat in input units")
    p.add_argument("--latent-distance", action="store_true",
                   help="add `latent_distance`: the code's mean distance to the nearest "
                        "training code of each reference group (the score's density term)")
    p.add_argument("--top-features", type=int, default=0, metavar="K",
                   help="add `top_features`: the K inputs with the largest share of each "
                        "row's error, as {name, share} (e.g. pixel_07 or image[3,5])")
    p.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                   help=f"rows per Arrow record batch read from each file (default "
                        f"{DEFAULT_BATCH_ROWS})")
    p.add_argument("--missing", default="reject", choices=("reject", "impute", "mask"),
                   help="rows with null or NaN feature values: reject (default) dead-letters "
                        "them; impute fills the bundle's training medians; mask fills them "
                        "for the model but scores the observed inputs only and adds "
                        "`coverage`. ±inf is always a dead letter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentbeam",
        description="Keras autoencoder anomaly scoring for Apache Beam.")
    parser.add_argument("--log-level", default="WARNING",
                        help="Python logging level (default WARNING; INFO shows Beam's, "
                             "absl's and TensorFlow's INFO lines)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_score(sub)
    _add_stream(sub)
    _add_decode(sub)
    _add_generate(sub)
    _add_rethreshold(sub)
    _add_report(sub)
    _add_info(sub)
    _add_demo(sub)
    return parser


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an autoencoder and write a model bundle")
    p.add_argument("--config", required=True, help="YAML training config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.latent_dim=2 (repeatable)")
    p.add_argument("--output", required=True, help="bundle directory (local, gs://, s3://)")
    _add_output_flags(p, progress=False)


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score Parquet or a TFDS split with Beam; write Parquet", epilog=BEAM_EPILOG)
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--input", required=True,
                   help="Parquet glob, or tfds:NAME/SPLIT (with --data-dir)")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir for --input tfds:...")
    p.add_argument("--output", required=True, help="output directory for scored Parquet")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the contents of a non-empty output directory")
    _add_scoring_flags(p)
    _add_output_flags(p)


def _add_stream(sub) -> None:
    p = sub.add_parser("stream", help="score Parquet files as they land (Beam streaming)", epilog=BEAM_EPILOG)
    p.add_argument("--bundle", required=True, help="bundle directory (or a watched pattern)")
    p.add_argument("--watch", default=None, help="glob watched for new Parquet files")
    p.add_argument("--pubsub-subscription", default=None,
                   help="projects/P/subscriptions/S: JSON messages with the feature fields")
    p.add_argument("--output", required=True, help="output directory for windowed Parquet")
    p.add_argument("--window-seconds", type=float, default=60.0)
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--stop-after-seconds", type=float, default=None,
                   help="end the job cleanly after this long (tests, bounded backfills)")
    p.add_argument("--timestamp-column", default=None,
                   help="event-time column (default: processing time)")
    p.add_argument("--allowed-lateness-seconds", type=float, default=0.0)
    p.add_argument("--adaptive-threshold", action="store_true",
                   help="add adaptive_threshold / is_anomaly_adaptive columns")
    p.add_argument("--early-firing-seconds", type=float, default=None,
                   help="also write a window's rows so far this often (processing time)")
    p.add_argument("--bundle-poll-seconds", type=float, default=None,
                   help="how often a watched --bundle location is re-checked (default: "
                        "--poll-seconds)")
    p.add_argument("--adaptive-quantile", type=float, default=0.5,
                   help="level of the rolling score quantile; a calibration level of the "
                        "bundle (default 0.5)")
    p.add_argument("--adaptive-window-rows", type=int, default=1000,
                   help="recent non-anomalous errors kept per key (default 1000)")
    p.add_argument("--adaptive-warmup-rows", type=int, default=50,
                   help="rows per key before the rolling threshold replaces the bundle's")
    p.add_argument("--adaptive-key", default=None,
                   help="input column: keep one adaptive threshold per value")
    _add_scoring_flags(p)
    _add_output_flags(p)


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode a `latent` column back to features (Beam)", epilog=BEAM_EPILOG)
    p.add_argument("--bundle", required=True)
    p.add_argument("--input", required=True, help="Parquet glob with a `latent` column")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--key-columns", default="")
    _add_output_flags(p)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample the latent space and decode to new rows")
    p.add_argument("--bundle", required=True)
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--output", required=True, help="output directory (one Parquet file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier latentbeam run wrote to --output")


def _add_rethreshold(sub) -> None:
    p = sub.add_parser("rethreshold", help="re-seal a bundle with a new threshold")
    p.add_argument("--bundle", required=True, help="bundle directory")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--threshold", type=float, default=None,
                     help="explicit reconstruction-error threshold (> 0)")
    how.add_argument("--method", default=None,
                     choices=("quantile", "contamination", "mad", "mean_std", "f1"),
                     help="compute the threshold from the calibration summary in the bundle")
    p.add_argument("--value", type=float, default=None,
                   help="the method's parameter (level, anomaly fraction, k)")
    p.add_argument("--output", default=None,
                   help="write the new bundle here (default: replace --bundle in place)")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write a static HTML report (PNG plots) of a bundle and "
                                      "its scored output")
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--scored", default=None,
                   help="output directory of `score` or `stream` (or a glob of its *.parquet)")
    p.add_argument("--output", required=True, help="report directory (index.html, *.png)")
    p.add_argument("--top", type=int, default=20, help="rows in the top-anomalies tables")
    p.add_argument("--sample-rows", type=int, default=20000,
                   help="rows drawn for the latent maps (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--label-column", default=None,
                   help="scored column to colour the latent map by (default: the bundle's "
                        "data.label when the scored files have it)")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a bundle's summary and check its integrity")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the embedded digits example end to end")
    p.add_argument("--workdir", default="build/demo")


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _own_flags(parser: argparse.ArgumentParser, command: str) -> List[str]:
    """The long flags of `command` (and the global ones), offered as corrections."""
    flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            flags += [f for a in action.choices[command]._actions
                      for f in a.option_strings if f.startswith("--")]
    return flags


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
                beam_args = check_beam_flags(beam_args, _own_flags(parser, args.command))
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
                   data_dir=args.data_dir, overwrite=args.overwrite, batch_rows=args.batch_rows)
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
                    overwrite=args.overwrite)
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
        adaptive = AdaptiveConfig(quantile=args.adaptive_quantile,
                                  window_rows=args.adaptive_window_rows,
                                  warmup_rows=min(args.adaptive_warmup_rows,
                                                  args.adaptive_window_rows),
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
    import uuid

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentbeam import fs, outputs, paths
    from latentbeam.model import load_bundle, sample_latent
    from latentbeam.pipeline.records import COL_LATENT, decode_record_batch, float_list_array

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1. Received: {args.num_samples}")
    paths.check_output(args.output, [("bundle", args.bundle)])
    replace = outputs.check_output_dir(args.output, args.overwrite)
    bundle = load_bundle(args.bundle)
    z = sample_latent(bundle, args.num_samples, args.seed)
    codes = pa.RecordBatch.from_pydict({"sample": pa.array(np.arange(len(z), dtype=np.int64)),
                                        COL_LATENT: float_list_array(z)})
    # The same decoding as `latentbeam decode`, so generated rows have its schema.
    decoded, _ = decode_record_batch(bundle, codes, key_columns=("sample",))
    table = pa.Table.from_batches([decoded]).add_column(1, COL_LATENT, codes.column(COL_LATENT))
    name = "generated-00000-of-00001.parquet"
    staging = fs.join(args.output, f"{outputs.STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    staged = fs.join(staging, name + outputs.PARTIAL_SUFFIX)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    try:
        fs.write_bytes(staged, sink.getvalue().to_pybytes())
        outputs.commit(args.output, [(staged, name)],
                       {"job": "generate", "model_version": bundle.info.model_version,
                        "num_samples": len(z), "seed": args.seed}, replace, staging)
    except BaseException:
        outputs.remove_tree(staging)
        raise
    print(f"wrote {len(z)} samples to {fs.join(args.output, name)}")
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
    return run_demo(args.workdir)


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
