"""Tuning a whole model: its conv workloads (with their fused epilogues) and its other ops.

The convs are a network search (tuning/search/network.py) over the model's distinct fused
workloads: each one's first batch starts from the bare conv's records and similar layers'
(search/transfer.py: the same layer without its epilogue is the nearest neighbour, distance 0,
same tile space). The other ops (pools, the classifier, transposes, adds no conv absorbed) are
MetaSchedule tasks of its generated space, extracted from exactly the module the deployed model
compiles (tuning.graph.ops_module), recorded under logs/<target>/model-ops, where `compile
--model` applies them by structural match.

Budget: the other ops take little of a CNN's time (a few per cent of ResNet-18's) and their
space is small, so they get OPS_SHARE of the total, at most OPS_TRIALS_PER_TASK each; the convs
get the rest. Both resume: recorded trials count against the budget.
"""

from __future__ import annotations

import logging
import os
import sys

from tvm.s_tir import meta_schedule as ms

from ..graph import ModelGraph, ops_directory, ops_module
from ..records import directory_lock, open_database
from ..target import Target
from . import measure
from .network import NetworkResult, network_tasks, summarize
from .tune import SearchOptions, search, tensor_intrinsics

OPS_SHARE = 0.1
OPS_TRIALS_PER_TASK = 32


def ops_tasks(graph: ModelGraph, target: Target) -> list:
    """The MetaSchedule tasks of the model's non-conv ops (convtune's kernels stand outside them)."""
    tensor_intrinsics(needed=True)  # the generated space's x86 rules look intrinsics up
    return ms.relax_integration.extract_tasks(ops_module(graph), target.tvm)


def recorded_ops_trials(logs: str, target: Target, tasks) -> int:
    """Records of these tasks (the directory is shared by every model tuned on this target)."""
    work_dir = ops_directory(logs, target)
    if not os.path.exists(os.path.join(work_dir, "database_tuning_record.json")):
        return 0
    database = open_database(work_dir)
    total = 0
    for task in tasks:
        mod = task.dispatched[0]
        if database.has_workload(mod):
            total += len(database.get_top_k(database.commit_workload(mod), 1 << 30))
    return total


def tune_ops(graph: ModelGraph, target: Target, logs: str, trials: int, options: SearchOptions = SearchOptions(),
             stream=sys.stderr) -> int:
    """Tune the model's other ops until their records hold `trials` (resumable); returns how many
    this run measured."""
    tasks = ops_tasks(graph, target)
    recorded = recorded_ops_trials(logs, target, tasks)
    todo = max(0, trials - recorded)
    names = ", ".join(t.task_name for t in tasks)
    print(f"model ops: {len(tasks)} tasks ({names}); {recorded} trials recorded, {todo} to go", file=stream)
    if not tasks or todo == 0:
        return 0
    work_dir = ops_directory(logs, target)
    os.makedirs(work_dir, exist_ok=True)
    # MetaSchedule prints its whole task table after every batch; its per-task logs under
    # model-ops/logs keep the detail, the console gets convtune's lines.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.ERROR)
    # model-ops is shared by every model tuned on this target: two `tune --model` runs at once would
    # interleave their appends to one database file, so the second waits for the first.
    with directory_lock(work_dir, "a model's ops"):
        recorded = recorded_ops_trials(logs, target, tasks)  # the run we waited for may have added some
        todo = max(0, trials - recorded)
        if todo:
            _tune_ops_locked(tasks, target, work_dir, todo, options)
    measured = recorded_ops_trials(logs, target, tasks) - recorded
    print(f"model ops: {measured} trials measured, records in {work_dir}", file=stream)
    return measured


def _tune_ops_locked(tasks, target: Target, work_dir: str, todo: int, options: SearchOptions) -> None:
    config = options.measure
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir, num_threads=target.threads, seed=options.seed)
    ms.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=todo,
        max_trials_per_task=min(todo, OPS_TRIALS_PER_TASK), num_trials_per_iter=min(options.trials_per_iter, 16),
        builder=measure.builder(target, config), runner=measure.local_runner(target, config),
        database=open_database(work_dir),
        cost_model=ms.cost_model.XGBModel(num_tuning_cores=target.threads) if options.cost_model == "xgb"
        else ms.cost_model.RandomModel(),
        task_scheduler="round-robin",
    )


MODEL_CANDIDATES = 2  # per fused layer under `auto`: its bare conv's best algorithms on this target


def model_tasks(layers, algorithm: str, target: Target, logs: str) -> list[tuple]:
    """(layer, task) pairs of a model's fused workloads. Under `auto`, a layer whose bare conv has
    records here tunes the MODEL_CANDIDATES algorithms fastest on them (their first batch re-measures
    the bare conv's best configs with the epilogue, on this machine, now) and the algorithm the
    untuned rule picks; a layer without records, the untuned rule's algorithm alone."""
    from schedules import get_algorithm

    from ..deploy.library import untuned_algorithm
    from ..records import LayerRecords
    from ..task import Task, tasks_for

    if algorithm != "auto":
        return network_tasks(layers, algorithm, target.machine)
    pairs = []
    for layer in layers:
        wl = layer.workload
        store = LayerRecords.existing(logs, target, wl.bare)
        ranked = []
        if store is not None:
            best = {}
            for task in tasks_for(wl.bare, "auto", target.machine):
                record = store.best(task)
                if record is not None and not task.generated:
                    best[task.algorithm] = record.seconds
            ranked = sorted(best, key=best.get)[:MODEL_CANDIDATES]
        if not ranked:
            # No records of this conv here: the algorithm the untuned rule picks for its kind (a
            # model has tens of layers: every fitting algorithm for each would spend the budget
            # on warm-up batches alone); its first batch is similar layers' configs and its default.
            ranked = [untuned_algorithm(wl, target.machine)]
        names = list(dict.fromkeys(ranked + [untuned_algorithm(wl, target.machine)]))
        pairs += [(layer, Task(wl, name, target.machine)) for name in names if get_algorithm(name).supports(wl) is None]
    return pairs


def tune_model(graph: ModelGraph, algorithm: str, target: Target, logs: str, total: int,
               options: SearchOptions = SearchOptions(), runner=None, stream=sys.stderr) -> NetworkResult:
    """The model's conv workloads and other ops under one budget of `total` trials (see the docstring)."""
    layers = graph.layers()
    ops = 0 if runner is not None else max(1, min(int(total * OPS_SHARE), OPS_TRIALS_PER_TASK * 8))
    convs = total - ops
    pairs = model_tasks(layers, algorithm, target, logs)
    print(f"tuning {graph.label}: {len(layers)} distinct conv workloads (epilogues fused; {sum(l.count for l in layers)} "
          f"convs) as {len(pairs)} tasks with {convs} trials, its other ops with {ops}, on {target.tag}", file=stream)
    run = search(pairs, target, logs, total=convs, options=options, runner=runner)
    result = summarize(layers, algorithm, target, logs)
    result.measured, result.budget = run.measured, run.budget
    if not options.quiet:
        print(result.table())
    if ops:
        tune_ops(graph, target, logs, ops, options, stream)
    elif runner is not None:
        print("model ops: not tuned over RPC (their records are for this host); compile schedules them by rule",
              file=stream)
    return result
