"""The argument parser of `latentbeam`: one function per command's flags.

Kept apart from the commands (latentbeam.cli) so the flags of a command read in one place.
"""
from __future__ import annotations

import argparse
from typing import List

from latentbeam.config import DEFAULT_BATCH_ROWS

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
    _add_dead_letter_limit(p)
    _add_scoring_flags(p)
    _add_output_flags(p)


def _add_dead_letter_limit(p) -> None:
    p.add_argument("--max-dead-letter-fraction", type=float, default=None, metavar="F",
                   help="fail and write nothing when more than this share of the rows, or "
                        "of the input files, is dead-lettered (0: any dead letter fails "
                        "the job; default: no limit)")


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
    _add_dead_letter_limit(p)
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
    _add_output_flags(p)


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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo's training config (model, train, threshold),"
                        " e.g. --set model.latent_dim=4 (repeatable)")


def own_flags(parser: argparse.ArgumentParser, command: str) -> List[str]:
    """The long flags of `command` (and the global ones), offered as corrections."""
    flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            flags += [f for a in action.choices[command]._actions
                      for f in a.option_strings if f.startswith("--")]
    return flags
