"""convtune's plug-ins to MetaSchedule's search: what it lacks for resumable, honest per-layer runs.

- `Progress` and `progress_hooks`: a progress line (one line per task started and per batch in a
  log), and why each failed trial failed (MetaSchedule keeps only a stand-in time) in the layer's
  failures.jsonl.
- `SkipRecorded`: a search strategy that never measures a recorded schedule again, and measures
  schedules transferred from similar layers first.
- `LayerRoutedDatabase`: one database over many layers' records, each trial routed to its layer.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .. import records
from ..records import LayerRecords
from ..task import Task
from .scheduler import Hooks


@dataclass
class Progress:
    """What the progress line shows; filled by the scheduler's hooks (`progress_hooks`). On a
    terminal one line is redrawn in place (carriage return); on anything else (a log file, a pipe)
    each measured batch and each task started prints its own line, so a log reads as a history
    instead of one endless line."""

    tasks: list[Task]
    total: int
    done: int = 0
    best_sec: dict[int, float] = field(default_factory=dict)
    failed: int = 0
    started: float = field(default_factory=time.time)
    stream: object = sys.stderr
    labels: list[str] | None = None  # shown instead of the algorithm (a network run names the layer)
    redraw: bool | None = None  # None: redraw in place when the stream is a terminal

    def __post_init__(self):
        if self.redraw is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                self.redraw = bool(isatty and isatty())
            except (ValueError, OSError):  # a closed stream
                self.redraw = False

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
        rate = (time.time() - self.started) / max(self.done, 1)
        label = self.labels[task_id] if self.labels else task.algorithm
        self._show(f"{self.done:4d}/{self.total} trials  {label:>12s}  best {gflops}  failed {self.failed}  "
                   f"{rate:4.1f} s/trial")

    def note(self, task_id: int, words: str) -> None:
        """A line about one task between batches (it started, what it measures first)."""
        label = self.labels[task_id] if self.labels else self.tasks[task_id].algorithm
        self._show(f"{self.done:4d}/{self.total} trials  {label:>12s}  {words}")

    def _show(self, stats: str) -> None:
        if self.redraw:
            width = 24
            filled = int(width * min(self.done, self.total) / max(self.total, 1))
            bar = "#" * filled + "." * (width - filled)
            # \033[K: clear what a longer line drawn before left on the right
            print(f"\r[{bar}] {stats}\033[K", end="", file=self.stream, flush=True)
        else:
            print(stats, file=self.stream, flush=True)

    def end(self) -> None:
        """After the last batch: end the redrawn line (a line-per-batch log needs nothing)."""
        if self.redraw:
            print(file=self.stream, flush=True)


def progress_hooks(progress: Progress, failure_logs: list[str], disk_checks: list | None = None) -> Hooks:
    """The scheduler's hooks: a line when a task starts; after each batch the progress line, and
    why each failed trial failed (MetaSchedule keeps only its 'failed' time) in
    `failure_logs[task]` (a network run keeps each layer's in its directory). `disk_checks[task]`
    (its records' `check_on_disk`) runs after each batch: TVM's appends report no failed write, so a
    full disk stops the run at the batch it first lost, naming the file and what is safe."""

    def started(task_id: int, seconds: float, words: str) -> None:
        progress.note(task_id, f"started in {seconds:.1f} s" + (f": {words}" if words else ""))

    def measured(task_id: int, measure_candidates, builder_results, runner_results) -> None:
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
                seconds.append(records.median_seconds(ran.run_secs))
        if failures:
            with open(failure_logs[task_id], "a") as f:
                f.write("".join(json.dumps(x) + "\n" for x in failures))
        progress.report(task_id, seconds)
        if disk_checks:
            disk_checks[task_id]()

    return Hooks(started=started, measured=measured)


@derived_object
class SkipRecorded(ms.search_strategy.PySearchStrategy):
    """A search strategy that never measures a schedule already in the records.

    MetaSchedule seeds its search from a reused database but may propose a recorded schedule
    again (its evolutionary search keeps only this run's measured set). This wrapper drops such
    candidates before they are built; only a round of nothing but recorded proposals is told to
    the inner strategy (with their recorded times), so that it moves on or ends.

    `seeds` (traces of schedules transferred from similar layers) are measured first, as the
    first batch; their results reach the database, the cost model and the inner search like any
    trial's."""

    def __init__(self, inner: str = "evolutionary", seeds: list | None = None, population: int | None = None):
        self.inner_name = inner
        self.population = population
        if inner == "evolutionary" and population:
            self.inner = ms.search_strategy.EvolutionarySearch(population_size=population,
                                                               init_min_unmeasured=min(50, population // 2))
        else:
            self.inner = ms.search_strategy.SearchStrategy.create(inner)
        self.seeds = list(seeds or [])
        self.recorded: dict[str, list] = {}
        self.pending_seeds: list = []
        self.batch = 0

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
        self.batch = min(num_trials_per_iter, max_trials)
        self.pending_seeds = self.seeds[:self.batch]

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        seeded = self._seed_candidates()
        if seeded:
            # A full first batch: the schedulers count trials per batch (ReplayTrace counts a
            # whole batch per notification), so the seeds are topped up with the search's own.
            room = self.batch - len(seeded)
            candidates = self.inner.generate_measure_candidates() if room > 0 else None
            if candidates:
                taken = {str(c.sch.trace) for c in seeded} | set(self.recorded)
                seeded += [c for c in candidates if str(c.sch.trace) not in taken][:room]
            return seeded
        for _ in range(16):  # a few rounds of only-recorded proposals, then let the search end
            candidates = self.inner.generate_measure_candidates()
            if candidates is None:
                return None
            fresh = [c for c in candidates if str(c.sch.trace) not in self.recorded]
            held = [c for c in candidates if str(c.sch.trace) in self.recorded]
            if fresh:
                return fresh
            self.inner.notify_runner_results(held, [self._recorded_result(c) for c in held])
        return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        # Only the measured candidates reach the inner strategy: it counts every notified result
        # against the budget, so recorded ones passed along with them would end a resumed run short
        # of its trials (they are in the database, which seeds its population anyway).
        for c, r in zip(measure_candidates, results):
            self.recorded[str(c.sch.trace)] = list(r.run_secs or [])
        self.inner.notify_runner_results(list(measure_candidates), list(results))

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
        return SkipRecorded(self.inner_name, self.seeds, self.population)


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
