"""What a finished command did, as the text the CLI (and the demo) print.

Renders the results the library returns (`pipeline.jobs.JobSummary`,
`pipeline.jobs.StreamSummary`, a bundle's `BundleInfo`); computes nothing itself.
"""
from __future__ import annotations

from latentbeam.pipeline.jobs import JobSummary, StreamSummary
from latentbeam.pipeline.metrics import ERROR_DISTRIBUTION, MAX_RECORDED_ERROR
from latentbeam.pipeline.records import MODE_SCORE
from latentbeam.report.info import epoch_span, normalization_text


def format_summary(summary: JobSummary) -> str:
    """`latentbeam score` / `decode`: rows, dead letters, anomalies and the files written."""
    mode = summary.mode
    verb = "scored" if mode == MODE_SCORE else "decoded"
    lines = [
        f"rows read:            {summary.rows_read}",
        f"rows {verb}:{' ' * (16 - len(verb))}{summary.rows_scored}",
        f"rows dead-lettered:   {summary.rows_dead_lettered}",
        f"files dead-lettered:  {summary.files_dead_lettered}",
    ]
    if mode == MODE_SCORE:
        lines.append(f"anomalies:            {summary.anomalies}")
        dist = summary.metrics.get(ERROR_DISTRIBUTION)
        if dist is not None:
            lines.append(f"reconstruction error: mean {dist.mean:.6g}, min {dist.min:.6g}, "
                         f"max {dist.max:.6g}" + (
                             f" (errors above {MAX_RECORDED_ERROR:g} count as {MAX_RECORDED_ERROR:g}"
                             f" here; the output holds them exactly)" if dist.capped else ""))
    if not summary.metrics:
        lines.append("runner metrics:       unavailable on this runner; counts above are from "
                     "the job's per-file records")
    lines.append(f"output files:         {len(summary.files)} in {summary.output}")
    lines += _listed(summary.files)
    if summary.dead_letter_files:
        lines.append(f"dead-letter files:    {len(summary.dead_letter_files)}")
        lines += _listed(summary.dead_letter_files)
    lines.append(f"model_version:        {summary.model_version}")
    return "\n".join(lines)


def _listed(files, shown: int = 10):
    """The first `shown` paths, then how many more (all of them are in `_SUCCESS`)."""
    lines = [f"  {p}" for p in files[:shown]]
    if len(files) > shown:
        lines.append(f"  ... and {len(files) - shown} more (all listed in _SUCCESS)")
    return lines


def format_stream_summary(summary: StreamSummary) -> str:
    """What a finished `latentbeam stream` run did: files, rows and where they went."""
    lines = [f"stream ended:         {summary.state} after {summary.seconds:.1f} s"]
    if summary.watched:
        lines += [
            f"files scored:         {summary.files_scored} (manifest: {summary.manifest_files} "
            f"in total)",
            f"rows read:            {summary.rows_read}",
            f"rows scored:          {summary.rows_scored}",
            f"rows dead-lettered:   {summary.rows_dead_lettered}",
            f"files dead-lettered:  {summary.files_dead_lettered}",
        ]
    lines.append(f"output:               {summary.output}")
    return "\n".join(lines)


def summarize_bundle(info) -> str:
    """A trained bundle (`model.BundleInfo`): data, training, threshold and calibration."""
    t = info.training
    losses = t.get("losses", {})
    normalization = normalization_text({"n_inputs": info.n_inputs, "training": t})
    lines = [
        f"bundle:          {info.path}",
        f"model_version:   {info.model_version}",
        f"features:        {len(info.features)} ({info.n_inputs} inputs) -> latent_dim {info.latent_dim}",
        *([f"normalization:   {normalization}"] if normalization else []),
        f"rows:            {t.get('rows')} {t.get('rows_by_split')} (skipped {t.get('rows_skipped')})",
        f"epochs:          {t.get('epochs')} (best {t.get('best_epoch')})"
        + epoch_span(t.get("rows_per_epoch"), (t.get("rows_by_split") or {}).get("train", 0)),
        f"loss:            {losses.get('loss', [float('nan')])[-1]:.5f} (train, last epoch)",
    ]
    if "val_loss" in losses:
        lines.append(f"val_loss:        {min(losses['val_loss']):.5f} (best)")
    th = info.threshold
    lines.append(f"threshold:       {th.threshold:.6g} ({th.method}, value={th.value})")
    cal = info.calibration
    if cal.get("quantiles"):
        q = cal["quantiles"]
        lines.append(f"calibration:     {cal['rows']} rows, score p50 {q['0.5']:.4g}, "
                     f"p99 {q['0.99']:.4g}, flagged {cal['flagged_fraction']:.2%}")
    if "roc_auc" in cal:
        lines.append(f"calibration AUC: {cal['roc_auc']:.4f} (label column)")
    return "\n".join(lines)


__all__ = ["format_stream_summary", "format_summary", "summarize_bundle"]
