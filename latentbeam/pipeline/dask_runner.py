"""Beam's DaskRunner, with the translations a latentbeam pipeline needs (`--runner dask`).

Beam 2.77's `apache_beam.runners.dask.dask_runner.DaskRunner` runs the `latentbeam
score` / `decode` job correctly (Create -> one single-output ParDo per file), but
silently gives wrong results for ordinary user pipelines:

* outputs a DoFn emits in `finish_bundle` are dropped (it collects the outputs
  before calling `finish_bundle`), so `BatchElements`, and with it `Score` on
  rows, loses rows while the job reports DONE;
* every output of a multi-output ParDo (`.with_outputs()`) flows into each of its
  PCollections, so dead letters would appear among scored rows;
* a bounded `Read` (`ReadFromParquet`, `ReadFromParquetBatched`, `ReadFromText`)
  becomes a no-op and the job fails at construction;
* a side input is computed again, separately, inside every task that reads it, so
  `WriteToParquet` (whose finalize step reads the written files as a side input)
  re-runs its writes with fresh temporary directories and commits an empty file;
* only the last transform of the pipeline is computed, so a second sink never runs.

`DaskRunner` here keeps Beam's runner (options, Create, GroupByKey, Flatten, the
result object) and replaces just those translations: ParDo outputs are collected
after `finish_bundle` and routed by tag, a bounded source is split on the launcher
and its splits are read on the workers, side inputs are dependencies of the same
Dask graph (computed once), and every sink is computed.

Runner metrics are not collected on Dask (`result.metrics()` raises
NotImplementedError, as in Beam); `latentbeam score` reports from its per-file
records instead.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.dask import dask_runner as _beam_dask
from apache_beam.runners.dask.overrides import _Read, dask_overrides
from apache_beam.runners.dask.transform_evaluator import (TRANSLATIONS, Flatten, NoOp,
                                                          get_windowed_value)
from apache_beam.runners.common import Receiver
from apache_beam.runners.runner import PipelineState

log = logging.getLogger(__name__)

DaskOptions = _beam_dask.DaskOptions
# Bytes per split when a bounded source is divided among the workers.
READ_SPLIT_BYTES = 64 << 20


class _Tagged:
    """An output of a multi-output ParDo on its way to the PCollection of its tag."""
    __slots__ = ("tag", "value")

    def __init__(self, tag: str, value: Any):
        self.tag = tag
        self.value = value

    def __reduce__(self):
        return _Tagged, (self.tag, self.value)


class _ListReceiver(Receiver):
    def __init__(self, values: List[Any], tag: Optional[str]):
        self._values = values
        self._tag = tag

    def receive(self, windowed_value) -> None:
        # Elements travel between Dask tasks as plain values (Beam's GroupByKey and
        # Flatten translations expect them so); a tagged output keeps its tag.
        value = windowed_value.value
        self._values.append(value if self._tag is None else _Tagged(self._tag, value))


class _Receivers(dict):
    def __init__(self, values: List[Any]):
        super().__init__()
        self._values = values

    def __missing__(self, tag):
        receiver = self[tag] = _ListReceiver(self._values, tag)
        return receiver


def _run_bundle(items, fn, fn_args, fn_kwargs, label: str, window_fn, side_specs,
                *side_values):
    """Runs a ParDo over one Dask partition; returns main and tagged outputs."""
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
    from apache_beam.transforms.sideinputs import SideInputMap

    values: List[Any] = []
    receivers = _Receivers(values)
    side_inputs = [
        SideInputMap(view_class, view_options,
                     [get_windowed_value(v, mapping_fn) for v in side])
        for (view_class, view_options, mapping_fn), side in zip(side_specs, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn),
        _OutputHandler(window_fn=window_fn, main_receivers=receivers[None],
                       tagged_receivers=receivers, per_element_output_counter=None,
                       output_batch_converter=None, process_yields_batches=False,
                       process_batch_yields_elements=False),
        context=DoFnContext(label, state=None), side_inputs=side_inputs,
        input_args=list(fn_args), input_kwargs=fn_kwargs, user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(get_windowed_value(item, window_fn))
    invoker.invoke_finish_bundle()  # before reading `values`: it may emit (BatchElements)
    invoker.invoke_teardown()
    return values


def _concat(*partitions) -> List[Any]:
    return [v for part in partitions for v in part]


def _read_splits(splits) -> List[Any]:
    out: List[Any] = []
    for split in splits:
        tracker = split.source.get_range_tracker(split.start_position, split.stop_position)
        out.extend(split.source.read(tracker))
    return out


def _main_output(item) -> bool:
    return not isinstance(item, _Tagged)


def _tag_is(tag):
    def keep(item) -> bool:
        return isinstance(item, _Tagged) and item.tag == tag
    return keep


def _untag(item):
    return item.value


class _Visitor(PipelineVisitor):
    """Translates leaf transforms to Dask bags, in topological order."""

    def __init__(self, bag_kwargs: Dict[str, Any]):
        self.bag_kwargs = bag_kwargs
        self.bags: Dict[AppliedPTransform, Any] = {}
        self.consumed: set = set()

    def _input_bag(self, pcoll):
        producer = pcoll.producer
        self.consumed.add(producer)
        bag = self.bags.get(producer)
        if bag is None or len(producer.outputs) < 2:
            return bag
        if pcoll.tag is None:
            return bag.filter(_main_output)
        return bag.filter(_tag_is(pcoll.tag)).map(_untag)

    def visit_transform(self, node: AppliedPTransform) -> None:
        import dask
        import dask.bag as db
        from apache_beam import ParDo

        transform = node.transform
        if isinstance(transform, _Read):
            splits = list(transform.source.split(READ_SPLIT_BYTES))
            self.bags[node] = db.from_sequence(
                splits, npartitions=max(1, len(splits))).map_partitions(_read_splits)
            return
        # The exact class, as in Beam's translation table: ParDo subclasses such as
        # the GroupByKey override's _GroupAlsoByWindow keep Beam's translation.
        if transform.__class__ is ParDo:
            specs, values = [], []
            for si in node.side_inputs:
                bag = self._input_bag(si.pvalue)
                specs.append((type(si), si._view_options(), si._window_mapping_fn))
                # One Delayed per side input in the same graph: computed once, shared.
                values.append(dask.delayed(_concat)(*bag.to_delayed(optimize_graph=False)))
            main = next(iter(node.main_inputs.values()))
            window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
            # Only the DoFn and its plain arguments go to the workers, not the transform
            # (its side-input views reference the whole pipeline).
            fn_args, fn_kwargs = transform.raw_side_inputs
            self.bags[node] = self._input_bag(main).map_partitions(
                _run_bundle, transform.fn, list(fn_args), dict(fn_kwargs), node.full_label,
                window_fn, specs, *values)
            return
        inputs = [self._input_bag(i) for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        op = TRANSLATIONS.get(transform.__class__, NoOp)(node, bag_kwargs=self.bag_kwargs)
        if not inputs:
            self.bags[node] = op.apply(input_bag=None)
        elif len(inputs) == 1 and not isinstance(op, Flatten):
            self.bags[node] = op.apply(input_bag=inputs[0])
        else:
            self.bags[node] = op.apply(input_bag=inputs)

    def sinks(self) -> List[Any]:
        """Bags nothing reads: computing them computes the whole pipeline."""
        return [bag for node, bag in self.bags.items()
                if bag is not None and node not in self.consumed]


class DaskRunnerResult(_beam_dask.DaskRunnerResult):
    """Beam's result; closes the Dask client once the job has finished or failed."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self._state in (PipelineState.DONE, PipelineState.FAILED):
                self.client.close()


class DaskRunner(_beam_dask.DaskRunner):
    """Executes a batch pipeline on a Dask cluster (`--dask_client_address tcp://HOST:8786`).

    Example::

        latentbeam score --bundle B --input 'data/*.parquet' --output OUT \\
            --runner dask --dask_client_address tcp://scheduler:8786
    """

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist

        dask_options = options.view_as(DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        pipeline.replace_all(dask_overrides())
        visitor = _Visitor(bag_kwargs)
        pipeline.visit(visitor)
        futures = client.compute(list(dask.optimize(*visitor.sinks())))
        return DaskRunnerResult(client, futures)


__all__ = ["DaskRunner", "DaskRunnerResult"]
