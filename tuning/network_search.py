"""Whole networks: every conv layer of a model tuned under one trial budget.

One task per distinct layer (per algorithm under `auto`), one MetaSchedule `tune_tasks` call with
the gradient task scheduler, task weights = how often the network runs each layer: after a
round-robin warm-up (one batch per task), each next batch goes to the task with the largest
expected drop of count x best time (its recent improvement and its best time per trial so far),
i.e. where the network's total conv time should drop most. (Under `auto` the
scheduler sees a layer's algorithms as separate tasks of the same weight, although only the
fastest of them counts in the network's time.)

Records stay per layer (logs/<target>/<layer key>/, tuning.records.LayerRecords): a routing
database hands each workload and trial to the owning layer's JSONDatabase by structural equality
of the task module, so `convtune tune`, `compile` and `records` see a network run's trials as
their own. Resumable: trials already recorded for the run's tasks count against the total;
tasks that already hold `max_trials_per_task` records are skipped. The scheduler works in whole
batches, so a run may go over the total by less than one batch; a resumed run subtracts it.
MetaSchedule takes one per-task cap for all tasks: during a run each task may add up to
`max_trials_per_task` minus the fewest records any running task holds (no cap by default).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from schedules.template import Unsupported

from . import records
from .library import choose
from .measure import MeasureConfig
from .networks import Layer, distinct_layers
from .records import LayerRecords
from .search import Progress, check_options, run_search
from .target import Target
from .task import Task, tasks_for
from .verify import check_top_records


class UnknownWorkload(RuntimeError):
    """A module that no task of this run tunes: a bug, never a silent write somewhere else.
    (Raised inside a TVM callback, it reaches the caller as a RuntimeError with this message.)"""


@derived_object
class LayerRoutedDatabase(ms.database.PyDatabase):
    """One MetaSchedule database over many layers' records: each call goes to the JSONDatabase of
    the layer whose task module (structurally) equals the one asked about."""

    def __init__(self, routes: list[tuple[tvm.IRModule, LayerRecords]]):
        super().__init__()
        self._routes: dict[int, list[tuple[tvm.IRModule, LayerRecords]]] = {}
        self._stores: list[LayerRecords] = []
        for mod, store in routes:
            self._routes.setdefault(tvm_ffi.structural_hash(mod), []).append((mod, store))
            if all(s is not store for s in self._stores):
                self._stores.append(store)

    def store_of(self, mod: tvm.IRModule) -> LayerRecords | None:
        for known, store in self._routes.get(tvm_ffi.structural_hash(mod), ()):
            if tvm_ffi.structural_equal(known, mod):
                return store
        return None

    def _db(self, mod: tvm.IRModule):
        store = self.store_of(mod)
        if store is None:
            raise UnknownWorkload("a workload that no task of this network run tunes reached its database")
        return store.database  # read now: LayerRecords.lock() re-opens it

    def has_workload(self, mod):
        store = self.store_of(mod)
        return store is not None and store.database.has_workload(mod)

    def commit_workload(self, mod):
        return self._db(mod).commit_workload(mod)

    def commit_tuning_record(self, record):
        self._db(record.workload.mod).commit_tuning_record(record)

    def get_top_k(self, workload, top_k):
        return self._db(workload.mod).get_top_k(workload, top_k)

    def get_all_tuning_records(self):
        return [r for store in self._stores for r in store.database.get_all_tuning_records()]

    def __len__(self):
        return sum(len(store.database) for store in self._stores)


# -- the network's layers ------------------------------------------------------------------------------
def network_tasks(layers: list[Layer], algorithm: str) -> list[tuple[Layer, Task]]:
    pairs = []
    for layer in layers:
        try:
            pairs += [(layer, t) for t in tasks_for(layer.workload, algorithm)]
        except Unsupported as err:
            raise Unsupported(err.algorithm, f"layer {layer.name} ({layer.workload.spec}): {err.reason}") from None
    return pairs


# -- the result ------------------------------------------------------------------------------------------
@dataclass
class LayerResult:
    layer: Layer
    algorithm: str  # what `compile` would build: the fastest valid record, else the default
    seconds: float | None  # the chosen record's measured time; None when untuned
    trials: int  # this run's tasks' records for the layer

    @property
    def tuned(self) -> bool:
        return self.seconds is not None

    @property
    def gflops(self) -> float | None:
        return self.layer.workload.flops / self.seconds / 1e9 if self.tuned else None

    @property
    def network_seconds(self) -> float | None:
        return self.layer.count * self.seconds if self.tuned else None


@dataclass
class NetworkResult:
    target: Target
    rows: list[LayerResult]
    measured: int = 0  # trials measured by this call
    budget: int = 0  # what this call was allowed
    untuned: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        """Estimated conv time of one network pass: sum of count x best time (tuned layers only)."""
        return sum(r.network_seconds for r in self.rows if r.tuned)

    def share(self, row: LayerResult) -> float | None:
        total = self.total_seconds
        return row.network_seconds / total if row.tuned and total > 0 else None

    def table(self) -> str:
        lines = [f"{'layer':32s} {'algorithm':>14s} {'trials':>6s} {'ms':>9s} {'GFLOP/s':>8s} {'count':>5s} {'share':>6s}"]
        for r in self.rows:
            if r.tuned:
                lines.append(f"{r.layer.name:32s} {r.algorithm:>14s} {r.trials:6d} {r.seconds * 1e3:9.4f} "
                             f"{r.gflops:8.1f} {r.layer.count:5d} {100 * self.share(r):5.1f}%")
            else:
                lines.append(f"{r.layer.name:32s} {r.algorithm + ' (untuned)':>14s} {r.trials:6d} {'-':>9s} "
                             f"{'-':>8s} {r.layer.count:5d} {'-':>6s}")
        total = f"estimated conv time of the network: {self.total_seconds * 1e3:.3f} ms per pass"
        if self.untuned:
            total += f" (without {len(self.untuned)} untuned layer(s): {', '.join(self.untuned)})"
        lines.append(total + f" on {self.target.tag}")
        return "\n".join(lines)


def summarize(layers: list[Layer], algorithm: str, target: Target, logs: str) -> NetworkResult:
    """Per layer, what `compile` would build from the records now, and the network's estimated time."""
    layers = distinct_layers(layers)
    rows = []
    for layer in layers:
        choice = choose(layer.workload, algorithm, target, logs)
        store = LayerRecords.existing(logs, target, layer.workload)
        trials = sum(store.trial_count(t) for t in tasks_for(layer.workload, algorithm)) if store else 0
        rows.append(LayerResult(layer, choice.task.algorithm, choice.record.seconds if choice.tuned else None, trials))
    return NetworkResult(target, rows, untuned=[r.layer.name for r in rows if not r.tuned])


# -- the search ------------------------------------------------------------------------------------------
def tune_network(layers: list[Layer], algorithm: str, target: Target, logs: str, trials_total: int, *,
                 max_trials_per_task: int | None = None, strategy: str = "evolutionary", cost_model: str = "xgb",
                 config: MeasureConfig = MeasureConfig(), runner=None, trials_per_iter: int = 16,
                 seed: int | None = None, quiet: bool = False, transfer=None) -> NetworkResult:
    """Tune every layer of a network until the run's tasks hold `trials_total` records in all.

    `max_trials_per_task` caps one task's records (default: no cap but the total). Returns (and
    prints, unless `quiet`) per layer the chosen algorithm, time, GFLOP/s, count and share of the
    network's conv time."""
    check_options(strategy, cost_model)
    if trials_total <= 0:
        raise ValueError(f"--trials: must be positive, got {trials_total}")
    layers = distinct_layers(layers)
    pairs = network_tasks(layers, algorithm)
    stores: dict = {}
    for layer in layers:
        stores[layer.workload] = LayerRecords.open_for_tuning(logs, target, layer.workload, layer.name)
    with contextlib.ExitStack() as held:
        stream = held.enter_context(open(os.devnull, "w")) if quiet else sys.stderr
        # Sorted, so two network runs sharing layers take their locks in one order (no deadlock).
        for store in sorted(stores.values(), key=lambda s: s.directory):
            held.enter_context(store.lock())
        measured, budget = _search_locked(pairs, stores, target, logs, trials_total, max_trials_per_task,
                                          strategy, cost_model, config, runner, trials_per_iter, seed, stream,
                                          transfer)
    if target.is_host and runner is None:
        for layer, task in pairs:
            check_top_records(stores[layer.workload], task, target)
    result = summarize(layers, algorithm, target, logs)
    result.measured, result.budget = measured, budget
    if not quiet:
        print(result.table())
    return result


def _search_locked(pairs, stores, target, logs, trials_total, max_trials_per_task, strategy, cost_model,
                   config, runner, trials_per_iter, seed, stream, transfer) -> tuple[int, int]:
    by_layer: dict = {}
    for layer, task in pairs:
        by_layer.setdefault(layer.workload, []).append(task)
    for wl, tasks in by_layer.items():
        stores[wl].note_tasks(tasks, config)
    done = [stores[layer.workload].trial_count(task) for layer, task in pairs]
    budget = trials_total - sum(done)
    cap = max_trials_per_task or trials_total
    todo = [i for i, (layer, task) in enumerate(pairs) if done[i] < cap]
    if budget <= 0 or not todo:
        print(f"network: {sum(done)} trials recorded for {len(pairs)} task(s), total {trials_total}: nothing to "
              "measure", file=stream)
        return 0, max(budget, 0)
    tasks = [pairs[i][1] for i in todo]
    names = [f"{pairs[i][0].name}:{pairs[i][1].algorithm}" if len(by_layer[pairs[i][0].workload]) > 1
             else pairs[i][0].name for i in todo]
    progress = Progress(tasks, budget, stream=stream, labels=names)
    for j, i in enumerate(todo):
        best = stores[pairs[i][0].workload].best(pairs[i][1])
        if best:
            progress.best_sec[j] = best.seconds
    print(f"network: {len(todo)} task(s) of {len(pairs)}, {sum(done)} trials recorded, measuring up to "
          f"{budget} more (total {trials_total})", file=stream)
    if budget < len(todo):
        print(f"warning: {budget} trials for {len(todo)} tasks: the scheduler's warm-up round gives each task "
              f"one batch in order, so the last {len(todo) - budget} get none; raise --trials", file=sys.stderr)
    database = LayerRoutedDatabase([(t.mod, stores[l.workload]) for l, t in pairs])
    # Small enough that the gradient scheduler's warm-up round (one batch per task) fits the budget.
    per_iter = max(1, min(trials_per_iter, budget // len(todo)))
    run_search(tasks, target, os.path.join(logs, target.tag), database, progress, budget=budget,
               max_trials_per_task=min(budget, max(cap - done[i] for i in todo)), trials_per_iter=per_iter,
               weights=[float(pairs[i][0].count) for i in todo],
               failure_logs=[os.path.join(stores[pairs[i][0].workload].directory, records.FAILURE_LOG) for i in todo],
               strategy=strategy, cost_model=cost_model, config=config, runner=runner, seed=seed, names=names,
               transfer=transfer)
    print(file=stream)
    return progress.done, budget
