"""The search orchestration: one way to tune a layer's tasks or a whole network's.

MetaSchedule over each task's space, an XGBoost cost model, the evolutionary search. Budgets count
records: trials already recorded count against them, so re-running a command resumes where a
stopped run ended (the records also seed the evolutionary search's first population).

A layer run is the one-layer case of a network run: every task of every layer goes into one
scheduler loop (tuning/search/scheduler.py: MetaSchedule's gradient policy, run one batch at a time
from Python), each task's trials routed to its own layer's records as soon as they are measured.
Ctrl-C stops the loop between two steps: SearchInterrupted says how many trials are in the records.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import types
from dataclasses import dataclass, field

from tvm.s_tir import meta_schedule as ms

from .. import records
from ..deploy.verify import check_top_records
from ..networks import Layer
from ..records import LayerRecords, PeakJudge
from ..target import Target
from ..task import Task
from . import measure
from .measure import MeasureConfig
from .plugins import LayerRoutedDatabase, Progress, SkipRecorded, progress_hooks
from .scheduler import StopFlag, TaskRun, run_tasks
from .transfer import History, Transfer, pretrain, seed_traces

STRATEGIES = ("evolutionary", "replay-trace", "replay-func")
COST_MODELS = ("xgb", "random")
# MetaSchedule's XGBModel predicts at random until it holds 100 samples, i.e. for the whole of a
# typical per-layer budget; two batches are enough for it to rank a template's configs.
XGB_WARMUP_SAMPLES = 16
# A template's space is a few thousand points; MetaSchedule's default population of 512, scored
# by the cost model over 4 generations per batch, cost 11.8 s of a 32-trial direct run in this
# process (feature extraction of every candidate); 128 cost 3.4 s and found as fast a kernel
# (172 vs 176 GFLOP/s on resnet18.layer2.0.conv1; docs/performance.md, "What a trial costs").
POPULATION = 128


TENSOR_INTRIN = "tvm.s_tir.tensor_intrin"


def tensor_intrinsics(needed: bool) -> None:
    """MetaSchedule's TuneContext imports tvm.s_tir.tensor_intrin, which parses every CUDA, ROCm,
    Hexagon and ARM tensor intrinsic from TVMScript: about 30 s of a 2-core machine per tuning
    process. convtune's float32 templates never tensorize, and its int8 templates tensorize with
    their own intrinsics (schedules/int8_intrinsics.py, registered on import): for them an empty
    module stands in for the package and the import is a no-op. MetaSchedule's generated space
    (ms-auto) does look intrinsics up (its x86 rules try VNNI): then the real package is loaded,
    replacing a stand-in left by an earlier search in this process."""
    module = sys.modules.get(TENSOR_INTRIN)
    if needed:
        if module is not None and getattr(module, "convtune_stand_in", False):
            del sys.modules[TENSOR_INTRIN]
        importlib.import_module(TENSOR_INTRIN)
    elif module is None:
        stand_in = types.ModuleType(TENSOR_INTRIN, "stand-in: convtune's templates never tensorize")
        stand_in.convtune_stand_in = True
        sys.modules[TENSOR_INTRIN] = stand_in


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs (not what it tunes): the CLI's defaults are these fields' defaults."""

    strategy: str = "evolutionary"
    cost_model: str = "xgb"
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    trials_per_iter: int = 16  # trials measured per batch; records written, cost model retrained after each
    seed: int | None = None
    quiet: bool = False
    transfer: Transfer | None = None  # start from similar layers' records (tuning/search/transfer.py)
    # The evolutionary search's population (None: MetaSchedule's 512). Every batch scores the
    # population with the cost model over a few generations, in this process, between
    # measurements: the search's own share of a trial's cost (docs/performance.md).
    population: int | None = POPULATION

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy: unknown {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"--cost-model: unknown {self.cost_model!r}; known: {', '.join(COST_MODELS)}")
        if self.trials_per_iter <= 0:
            raise ValueError(f"--batch: must be positive, got {self.trials_per_iter}")


@dataclass
class SearchRun:
    """What one orchestration call did: the records it tuned into, and its trial counts."""

    stores: dict  # workload -> LayerRecords
    measured: int = 0  # trials measured by this call
    budget: int = 0  # what this call was allowed


def tune(tasks: list[Task], target: Target, logs: str, trials: int, options: SearchOptions = SearchOptions(),
         runner=None) -> LayerRecords:
    """Tune `tasks` (all of one workload) until each holds `trials` records; the budget is shared by
    the gradient task scheduler when there are several (e.g. `--algorithm auto`)."""
    if trials <= 0:
        raise ValueError(f"--trials: must be positive, got {trials}")
    layer = Layer(tasks[0].workload.spec, tasks[0].workload)
    run = search([(layer, t) for t in tasks], target, logs, per_task=trials, options=options, runner=runner)
    return run.stores[layer.workload]


def search(pairs: list[tuple[Layer, Task]], target: Target, logs: str, *, per_task: int | None = None,
           total: int | None = None, options: SearchOptions = SearchOptions(), runner=None) -> SearchRun:
    """Tune every (layer, task) pair until each task holds `per_task` records (None: no cap) and the
    pairs hold `total` records in all (None: as many as the caps allow). Locks every layer's records
    for the run, notes the tasks, counts what is done, searches, then checks the top records."""
    if per_task is None and total is None:
        raise ValueError("a search needs a budget: per_task, total or both")
    workloads = list(dict.fromkeys(layer.workload for layer, _ in pairs))
    names = {layer.workload: layer.name for layer, _ in reversed(pairs)}  # a network's messages name the layer
    judge = PeakJudge(target)  # a search measures: its records are judged against the machine's peak
    stores = {wl: LayerRecords.open_for_tuning(logs, target, wl, names[wl] if len(workloads) > 1 else None, judge)
              for wl in workloads}
    run = SearchRun(stores)
    stop = StopFlag()  # Ctrl-C, seen between two steps (see tuning/search/scheduler.py)
    with contextlib.ExitStack() as held:
        stream = held.enter_context(open(os.devnull, "w")) if options.quiet else sys.stderr
        # Sorted, so two runs sharing layers take their locks in one order (no deadlock).
        for store in sorted(stores.values(), key=lambda s: s.directory):
            held.enter_context(store.lock())
        # After the locks: Ctrl-C while waiting for another run's lock still stops at once.
        held.enter_context(stop.deferring_sigint(announce=not options.quiet))
        try:
            run.measured, run.budget = _search_locked(pairs, stores, target, logs, per_task, total, options, runner,
                                                      stream, stop)
        except KeyboardInterrupt:
            for store in stores.values():  # an interrupted run's records are whole too, or it says so
                store.check_on_disk()
            raise
        for store in stores.values():
            store.check_on_disk()
    if target.is_host and runner is None:
        # Building and running the top records calls into TVM too: Ctrl-C is deferred to between them.
        with stop.deferring_sigint(announce=not options.quiet):
            for layer, task in pairs:
                stop.check(run.measured)
                check_top_records(stores[layer.workload], task, target)
        stop.check(run.measured)
    return run


def _search_locked(pairs, stores, target, logs, per_task, total, options, runner, stream,
                   stop: StopFlag) -> tuple[int, int]:
    by_layer: dict = {}
    for layer, task in pairs:
        by_layer.setdefault(layer.workload, []).append(task)
    for wl, tasks in by_layer.items():
        stores[wl].write_task_json(tasks, options.measure)
    done = [stores[layer.workload].trial_count(task) for layer, task in pairs]
    cap = per_task or total
    todo = [i for i in range(len(pairs)) if done[i] < cap]
    budget = sum(cap - done[i] for i in todo)
    if total is not None:
        budget = min(budget, total - sum(done))
    network = len(by_layer) > 1
    if budget <= 0 or not todo:
        if network:
            print(f"network: {sum(done)} trials recorded for {len(pairs)} task(s), total {total}: nothing to "
                  "measure", file=stream)
        return 0, max(budget, 0)
    tasks = [pairs[i][1] for i in todo]
    # Progress labels: the algorithm for one layer; the layer (and its algorithm when it has several) for many.
    names = [(f"{pairs[i][0].name}:{pairs[i][1].algorithm}" if len(by_layer[pairs[i][0].workload]) > 1
              else pairs[i][0].name) if network else pairs[i][1].algorithm for i in todo]
    progress = Progress(tasks, budget, stream=stream, labels=names)
    for j, i in enumerate(todo):
        best = stores[pairs[i][0].workload].best(pairs[i][1])
        if best:
            progress.best_sec[j] = best.seconds
    # Small enough that the gradient scheduler's warm-up round (one batch per task) fits the budget.
    per_iter = max(1, min(options.trials_per_iter, budget // len(todo)))
    if network:
        print(f"network: {len(todo)} task(s) of {len(pairs)}, {sum(done)} trials recorded, measuring up to "
              f"{budget} more (total {total}) in batches of {per_iter}; each task starts when its first "
              "batch is due", file=stream)
    warning = budget_warning(budget, names, total, sum(done))
    if warning:
        print(warning, file=sys.stderr)
    if network:
        database = LayerRoutedDatabase([(t.mod, stores[l.workload]) for l, t in pairs])
        work_dir = os.path.join(logs, target.tag)
    else:
        database, work_dir = stores[pairs[0][0].workload].database, stores[pairs[0][0].workload].directory
    planned = [Planned(pairs[i][1], name, float(pairs[i][0].count),
                       os.path.join(stores[pairs[i][0].workload].directory, records.FAILURE_LOG),
                       stores[pairs[i][0].workload].check_on_disk) for i, name in zip(todo, names)]
    try:
        _run_search(planned, target, work_dir, database, progress, budget=budget,
                    max_trials_per_task=min(budget, max(cap - done[i] for i in todo)), trials_per_iter=per_iter,
                    options=options, runner=runner, stop=stop)
    finally:
        progress.end()
    return progress.done, budget


def budget_warning(budget: int, labels: list[str], total: int | None, recorded: int) -> str | None:
    """The warning for a budget smaller than the tasks to search (None when it is not): the
    scheduler's warm-up round gives each task one batch in order, so the last ones get nothing.
    Names those tasks and the flag that raises the budget: `--trials-total` when the run has a
    total (a network run), else `--trials`."""
    if budget >= len(labels):
        return None
    starved = labels[budget:]
    shown = ", ".join(starved[:6]) + (f" and {len(starved) - 6} more" if len(starved) > 6 else "")
    flag = (f"--trials-total to at least {recorded + len(labels)}" if total is not None
            else "--trials")
    return (f"warning: {budget} trial(s) for {len(labels)} tasks: the scheduler's warm-up round gives each task "
            f"one batch in order, so {len(starved)} get no trial: {shown}; raise {flag}")


@dataclass(frozen=True)
class Planned:
    """One task a search measures: its progress label, its share weight (the layer's count in the
    network), where its failed trials are explained, and the check that its records reached the disk."""

    task: Task
    name: str
    weight: float
    failure_log: str
    disk_check: object  # () -> None, raising RecordsError


def _run_search(planned: list[Planned], target: Target, work_dir: str, database, progress: Progress, *, budget: int,
                max_trials_per_task: int, trials_per_iter: int, options: SearchOptions, runner,
                stop: StopFlag | None = None) -> None:
    """The scheduler loop over the `planned` tasks with convtune's builder, runner, cost model and
    hooks; `database` receives every trial as it is measured. (`work_dir`: where `database` writes.)"""
    transfer, strategy, seed, config = options.transfer, options.strategy, options.seed, options.measure
    todo = [p.task for p in planned]
    tensor_intrinsics(needed=any(t.generated for t in todo))
    # One scan per layer: a layer's algorithms share its neighbours.
    scanned = {t.workload: transfer.history(target, t.workload) for t in todo} if transfer else {}
    histories = [scanned.get(t.workload, History()) for t in todo]
    if options.cost_model == "xgb":
        cost = ms.cost_model.XGBModel(num_tuning_cores=target.threads, num_warmup_samples=XGB_WARMUP_SAMPLES,
                                      adaptive_training=False)
        if transfer and any(h.neighbours for h in scanned.values()):
            # The one start-up step for all tasks (the model must rank from the first batch): shown.
            started = time.time()
            print("transfer: pre-training the cost model on similar layers' trials ...", file=progress.stream,
                  flush=True)
            fed = pretrain(cost, History.merge(list(scanned.values())), sorted({t.algorithm for t in todo}), target)
            print(f"transfer: cost model pre-trained on {fed} trials of similar layers in "
                  f"{time.time() - started:.1f} s", file=progress.stream, flush=True)
    else:
        cost = ms.cost_model.RandomModel()
    own_runner = runner is None
    if own_runner:
        started = time.time()  # its worker process imports TVM: seconds, shown
        runner = measure.local_runner(target, config)  # each task's run state is added when it starts
        print(f"measurement worker started in {time.time() - started:.1f} s", file=progress.stream, flush=True)

    def starter(i: int):
        def start():
            task = todo[i]
            # The first batch: configs transferred from similar layers, then the template's own
            # default for this machine (a strong start: the untuned survey's defaults beat the
            # rivals; a search should never end below the kernel `compile` would build without it).
            seeds = seed_traces(task, histories[i], trials_per_iter)
            words = ", ".join(([f"{len(seeds)} config(s) from similar layers"] if seeds else [])
                              + ([] if task.generated else ["its default config"]))
            seeds += [] if task.generated else [task.default_trace()]
            if own_runner:
                measure.add_run_state(runner, task, target)
            context = ms.TuneContext(
                mod=task.mod, target=target.tvm, space_generator=task.space(),
                search_strategy=SkipRecorded(strategy, seeds, options.population), task_name=planned[i].name,
                num_threads=target.threads, rand_state=seed if seed is not None else -1).clone()
            return context, f"{words} first" if words else ""
        return start

    try:
        run_tasks([TaskRun(starter(i), p.weight) for i, p in enumerate(planned)], budget=budget,
                  max_trials_per_task=max_trials_per_task, trials_per_iter=trials_per_iter,
                  builder=measure.builder(target, config), runner=runner, database=database, cost_model=cost,
                  stop=stop or StopFlag(), hooks=progress_hooks(progress, [p.failure_log for p in planned],
                                                                [p.disk_check for p in planned]), seed=seed,
                  runner_workers=getattr(runner, "workers", 1))
    finally:
        if own_runner:
            measure.close_runner(runner)  # its worker process ends now, interrupted or not
