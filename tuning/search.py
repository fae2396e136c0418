"""The search: MetaSchedule over each task's space, XGBoost cost model, evolutionary search.

Budgets are totals per task: trials already in the records count, so re-running a command resumes
where a stopped run ended (the records also seed the evolutionary search's first population).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.ir.utils import derived_object

from . import measure, records
from .measure import MeasureConfig
from .target import Target
from .task import Task
from .transfer import History, Transfer, pretrain, seed_traces
from .verify import check_top_records

STRATEGIES = ("evolutionary", "replay-trace", "replay-func")
COST_MODELS = ("xgb", "random")
# MetaSchedule's XGBModel predicts at random until it holds 100 samples, i.e. for the whole of a
# typical per-layer budget; two batches are enough for it to rank a template's configs.
XGB_WARMUP_SAMPLES = 16


@dataclass
class Progress:
    """What the progress line shows; filled by the measure callback."""

    tasks: list[Task]
    total: int
    done: int = 0
    best_sec: dict[int, float] = field(default_factory=dict)
    failed: int = 0
    started: float = field(default_factory=time.time)
    stream: object = sys.stderr
    labels: list[str] | None = None  # shown instead of the algorithm (a network run names the layer)

    def report(self, task_id: int, seconds: list[float | None]) -> None:
        self.done += len(seconds)
        for s in seconds:
            if s is None:
                self.failed += 1
            elif s < self.best_sec.get(task_id, float("inf")):
                self.best_sec[task_id] = s
        task = self.tasks[task_id]
        best = self.best_sec.get(task_id)
        gflops = f"{task.workload.flops / best / 1e9:7.1f} GFLOP/s" if best else "      - GFLOP/s"
        width = 24
        filled = int(width * min(self.done, self.total) / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        rate = (time.time() - self.started) / max(self.done, 1)
        label = self.labels[task_id] if self.labels else task.algorithm
        print(f"\r[{bar}] {self.done:4d}/{self.total} trials  {label:>12s}  best {gflops}"
              f"  failed {self.failed}  {rate:4.1f} s/trial", end="", file=self.stream, flush=True)


def _make_callback(progress: Progress, failure_logs: list[str]):
    """Progress, and why each failed trial failed (MetaSchedule keeps only its 'failed' time), into
    `failure_logs[task]` (a network run keeps each layer's in its directory)."""

    @derived_object
    class ProgressCallback(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            seconds, failures = [], []
            for cand, built, ran in zip(measure_candidates, builder_results, runner_results):
                error = built.error_msg or ran.error_msg
                if error or not ran.run_secs:
                    seconds.append(None)
                    failures.append({"algorithm": progress.tasks[task_id].algorithm,
                                     "trace": records.trace_id(cand.sch.trace),
                                     "stage": "build" if built.error_msg else "run",
                                     "error": str(error or "no run time")[-2000:]})
                else:
                    secs = sorted(float(s) for s in ran.run_secs)
                    seconds.append(secs[len(secs) // 2])
            if failures:
                with open(failure_logs[task_id], "a") as f:
                    f.write("".join(json.dumps(x) + "\n" for x in failures))
            progress.report(task_id, seconds)

    return ProgressCallback()


def tune(tasks: list[Task], target: Target, logs: str, trials: int, *, strategy: str = "evolutionary",
         cost_model: str = "xgb", config: MeasureConfig = MeasureConfig(), runner=None,
         trials_per_iter: int = 16, seed: int | None = None, quiet: bool = False,
         transfer: Transfer | None = None) -> records.LayerRecords:
    """Tune `tasks` (all of one workload) until each has `trials` records (shared budget).
    `transfer`: start from the configs and trials of similar layers (tuning/transfer.py)."""
    check_options(strategy, cost_model)
    workload = tasks[0].workload
    store = records.LayerRecords.open_for_tuning(logs, target, workload)
    with store.lock():
        _tune_locked(store, tasks, target, trials, strategy, cost_model, config, runner, trials_per_iter, seed, quiet,
                     transfer)
    if target.is_host and runner is None:
        for task in tasks:
            check_top_records(store, task, target)
    return store


def _tune_locked(store, tasks, target, trials, strategy, cost_model, config, runner, trials_per_iter, seed, quiet,
                 transfer):
    store.note_tasks(tasks, config)
    done = {t.algorithm: store.trial_count(t) for t in tasks}
    todo = [t for t in tasks if done[t.algorithm] < trials]
    if not todo:
        return
    budget = sum(trials - done[t.algorithm] for t in todo)
    progress = Progress(todo, budget, stream=sys.stderr if not quiet else open("/dev/null", "w"))
    for i, t in enumerate(todo):
        best = store.best(t)
        if best:
            progress.best_sec[i] = best.seconds
    run_search(todo, target, store.directory, store.database, progress, budget=budget,
               max_trials_per_task=max(trials - done[t.algorithm] for t in todo),
               trials_per_iter=min(trials_per_iter, budget), weights=[1.0] * len(todo),
               failure_logs=[os.path.join(store.directory, records.FAILURE_LOG)] * len(todo),
               strategy=strategy, cost_model=cost_model, config=config, runner=runner, seed=seed,
               transfer=transfer)
    print(file=progress.stream)


@derived_object
class SkipRecorded(ms.search_strategy.PySearchStrategy):
    """A search strategy that never measures a schedule already in the records.

    MetaSchedule seeds its search from a reused database but may propose a recorded schedule
    again (its evolutionary search keeps only this run's measured set). This wrapper drops such
    candidates before they are built and tells the inner strategy their recorded times instead,
    so they still steer the search but cost no measurement.

    `seeds` (traces of schedules transferred from similar layers) are measured first, as the
    first batch; their results reach the database, the cost model and the inner search like any
    trial's."""

    def __init__(self, inner: str = "evolutionary", seeds: list | None = None):
        self.inner_name = inner
        self.inner = ms.search_strategy.SearchStrategy.create(inner)
        self.seeds = list(seeds or [])
        self.recorded: dict[str, list] = {}
        self.held: list = []
        self.pending_seeds: list = []

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)
        self.mod = context.mod
        self.postprocs = list(context.space_generator.postprocs or [])

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        self.recorded = {}
        if database is not None and database.has_workload(self.mod):
            token = database.commit_workload(self.mod)
            for r in database.get_top_k(token, 1 << 30):
                self.recorded[str(r.trace)] = list(r.run_secs or [])
        self.pending_seeds = self.seeds[:min(num_trials_per_iter, max_trials)]

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        self.held = []
        seeded = self._seed_candidates()
        if seeded:
            return seeded
        for _ in range(16):  # a few rounds of only-recorded proposals, then let the search end
            candidates = self.inner.generate_measure_candidates()
            if candidates is None:
                return None
            fresh = [c for c in candidates if str(c.sch.trace) not in self.recorded]
            held = [c for c in candidates if str(c.sch.trace) in self.recorded]
            if fresh:
                self.held = held
                return fresh
            self.inner.notify_runner_results(held, [self._recorded_result(c) for c in held])
        return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        held = self.held
        self.held = []
        for c, r in zip(measure_candidates, results):
            self.recorded[str(c.sch.trace)] = list(r.run_secs or [])
        self.inner.notify_runner_results(list(measure_candidates) + held,
                                         list(results) + [self._recorded_result(c) for c in held])

    def _seed_candidates(self) -> list:
        """The transferred schedules not yet recorded, postprocessed as the search's own are."""
        out = []
        for trace in self.pending_seeds:
            sch = s_tir.Schedule(self.mod)
            trace.apply_to_schedule(sch, remove_postproc=True)
            if not all(p.apply(sch) for p in self.postprocs) or str(sch.trace) in self.recorded:
                continue
            out.append(ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
        self.pending_seeds = []
        return out

    def _recorded_result(self, candidate):
        secs = self.recorded.get(str(candidate.sch.trace)) or [records.FAILED_SECONDS]
        return ms.runner.RunnerResult(run_secs=[float(x) for x in secs], error_msg=None)

    def clone(self):
        return SkipRecorded(self.inner_name, self.seeds)


def check_options(strategy: str, cost_model: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy: unknown {strategy!r}; known: {', '.join(STRATEGIES)}")
    if cost_model not in COST_MODELS:
        raise ValueError(f"--cost-model: unknown {cost_model!r}; known: {', '.join(COST_MODELS)}")


def run_search(todo: list[Task], target: Target, work_dir: str, database, progress: Progress, *, budget: int,
               max_trials_per_task: int, trials_per_iter: int, weights: list[float], failure_logs: list[str],
               strategy: str, cost_model: str, config: MeasureConfig, runner, seed: int | None,
               names: list[str] | None = None, transfer: Transfer | None = None) -> None:
    """One MetaSchedule `tune_tasks` call over `todo` with convtune's builder, runner, cost model and
    callbacks; `database` receives every trial. Shared by a layer's search and a network's
    (tuning/network_search.py), whose database routes each task's trials to its layer's records."""
    # One scan per layer: a layer's algorithms share its neighbours.
    scanned = {t.workload: transfer.history(target, t.workload) for t in todo} if transfer else {}
    histories = [scanned.get(t.workload, History()) for t in todo]
    seeds = [seed_traces(t, h, trials_per_iter) for t, h in zip(todo, histories)]
    contexts = [
        ms.TuneContext(mod=t.mod, target=target.tvm, space_generator=t.space(),
                       search_strategy=SkipRecorded(strategy, seeds[i]), task_name=names[i] if names else t.algorithm,
                       num_threads=target.threads, rand_state=seed if seed is not None else -1).clone()
        for i, t in enumerate(todo)
    ]
    callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.RemoveBuildArtifact(),
                 ms.measure_callback.UpdateCostModel(), _make_callback(progress, failure_logs)]
    if cost_model == "xgb":
        cost = ms.cost_model.XGBModel(num_tuning_cores=target.threads, num_warmup_samples=XGB_WARMUP_SAMPLES,
                                      adaptive_training=False)
        if transfer:
            fed = pretrain(cost, History.merge(list(scanned.values())), sorted({t.algorithm for t in todo}), target)
            if fed:
                print(f"transfer: cost model pre-trained on {fed} trials of similar layers", file=progress.stream)
    else:
        cost = ms.cost_model.RandomModel()
    if any(seeds):
        print(f"transfer: {sum(map(len, seeds))} configs from similar layers measured first", file=progress.stream)
    ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=work_dir,
        max_trials_global=budget,
        max_trials_per_task=max_trials_per_task,
        num_trials_per_iter=trials_per_iter,
        builder=measure.builder(target, config),
        runner=runner or measure.local_runner(target, config, todo),
        database=database,
        cost_model=cost,
        measure_callbacks=callbacks,
        task_scheduler="gradient" if len(todo) > 1 else "round-robin",
    )
