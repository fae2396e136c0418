"""convtune's task scheduler: MetaSchedule's per-task pieces driven from Python, one batch at a time.

Why not MetaSchedule's own (`tune_tasks`, `TaskScheduler.Tune` in C++, tvm 0.27): it first makes
every task's design space and pre-tunes every search strategy; then the gradient scheduler's warm-up
round gives each task one batch (generated, built, measured: the LocalRunner measures as it is
asked) but joins none of them before the round is over, and only a join runs the measure callbacks
(our progress line, AddToDatabase). A 56-task network printed nothing and wrote no record for about
15 minutes, and a kill in that window lost everything measured. And Ctrl-C raises KeyboardInterrupt
in whatever Python callback the C++ loop is in: TVM turns it into a bare RuntimeError (an internal
error, exit 1) or, from some frames, std::terminate (a segfault, exit -11).

Here the same pieces (each task's TuneContext with its space generator and search strategy, the
builder, the runner, the cost model, the database) are called from Python:

- a task starts (its context, design space, strategy pre-tuning, run state) when it is first picked,
  so start-up work comes one task at a time, each announced with what it cost;
- a batch is generated, built, then measured trial by trial (`runner_workers` at a time), and every
  trial is committed to the records as soon as it is measured: a kill loses the trials in flight;
- SIGINT only sets a flag (`StopFlag`) while a search runs; the loop looks at it between steps and
  stops by raising `SearchInterrupted` from its own frame, never from inside a C++ call. The
  workers the search starts never see a terminal's Ctrl-C: they are not killed mid-trial.

The policy is MetaSchedule's gradient one (`GradientBased`, Ansor's), restated: a warm-up round of
one batch per task in order, then the task with the largest weight x (alpha x its best time's drop
per batch over the last `window` batches + (1 - alpha) x best time / batches). One difference: a
run's last batch is cut to what is left of the budget (MetaSchedule went over by up to a batch).
Batches run one after another: a measurement never shares the cores with the next batch's search
and builds (MetaSchedule overlapped them only across tasks, and only with an asynchronous runner).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule import _ffi_api

from .. import records

ALPHA, WINDOW = 0.2, 3  # MetaSchedule's GradientBased defaults
FAILED_MS = 1e9  # the latency MetaSchedule's schedulers give a failed trial
# AddToDatabase's run time for a failed trial (what MetaSchedule itself writes; >= FAILED_SECONDS).
FAILED_RUN_SECS = 1e10


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search, raised between two steps of the loop: what was measured is committed."""

    def __init__(self, measured: int):
        self.measured = measured
        trials = "1 trial measured so far is" if measured == 1 else f"{measured} trials measured so far are"
        super().__init__(f"interrupted; {trials} in the records")


class StopFlag:
    """While `deferring_sigint()` holds, SIGINT sets `requested` instead of raising KeyboardInterrupt
    wherever Python happens to be (inside a callback of a C++ loop, that crashed the process)."""

    NOTICE = b"\ninterrupt: stopping after the step in progress; what was measured stays in the records\n"

    def __init__(self):
        self.requested = False
        self._announce = True

    def _request(self) -> None:
        if not self.requested and self._announce:
            with contextlib.suppress(OSError):  # os.write: no print lock to re-enter
                os.write(2, self.NOTICE)
        self.requested = True

    @contextlib.contextmanager
    def deferring_sigint(self, announce: bool = True):
        # Only the main thread may set handlers; an ignored SIGINT (a background job) stays ignored.
        previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
            yield self
            return
        self._announce = announce
        # A terminal's Ctrl-C goes to the whole process group, the build and run workers too: they
        # died mid-trial (a failure the schedule did not cause) with a traceback each. Children
        # inherit the signal mask of the thread that starts them, and the search's workers are
        # started by this thread or threads it starts: with SIGINT blocked here they never see it.
        # A helper thread takes it for the process (sigwait), says so at once and sets the flag.
        signal.signal(signal.SIGINT, lambda signum, frame: self._request())  # if another thread gets it
        closing = threading.Event()

        def catch():
            while not closing.is_set():
                if signal.sigwait({signal.SIGINT}) == signal.SIGINT and not closing.is_set():
                    self._request()

        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # before the helper starts
        catcher = threading.Thread(target=catch, name="convtune-sigint", daemon=True)
        catcher.start()
        try:
            yield self
        finally:
            closing.set()
            signal.pthread_kill(catcher.ident, signal.SIGINT)  # wakes its sigwait to end it
            catcher.join()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            # None: a handler not set from Python; the default one is what Python started with.
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

    def check(self, measured: int) -> None:
        if self.requested:
            raise SearchInterrupted(measured)


class GradientPolicy:
    """Which task gets the next batch (MetaSchedule's GradientBased.NextTaskId, in Python)."""

    def __init__(self, weights: list[float], seed: int | None = None, alpha: float = ALPHA, window: int = WINDOW):
        self.weights = weights
        self.alpha, self.window = alpha, window
        self.best_ms: list[list[float]] = [[] for _ in weights]  # each task's best time after each batch
        self.random = random.Random(seed)

    def measured(self, task: int, best_ms: float) -> None:
        self.best_ms[task].append(best_ms)

    def next(self, alive: list[int]) -> int | None:
        if not alive:
            return None
        for i in alive:  # the warm-up round: one batch for each task, in order
            if not self.best_ms[i]:
                return i
        grads = []
        for i in alive:
            history, w = self.best_ms[i], self.window
            best, n = history[-1], len(history)
            if best >= FAILED_MS:  # none of its trials ran
                grads.append(-1e9)
                continue
            recent = (history[n - 1 - w] - best) / w if n >= 1 + w else 0.0
            grads.append(self.weights[i] * (self.alpha * recent + (1 - self.alpha) * best / n))
        if max(grads) == min(grads):
            return self.random.choice(alive)
        return alive[grads.index(max(grads))]


@dataclass
class TaskRun:
    """One task of a search: `start()` makes its TuneContext when the policy first picks it and
    returns a few words on its first batch (e.g. where its seeds come from) for the progress line."""

    start: Callable[[], tuple[ms.TuneContext, str]]
    weight: float = 1.0
    context: ms.TuneContext | None = None
    workload: object = None  # its database workload entry
    latencies_ms: list[float] = field(default_factory=list)  # this run's trials
    done: bool = False


@dataclass
class Hooks:
    """What the loop tells the caller: a task started (index, seconds, words), a batch was measured
    (index, candidates, builder results, runner results)."""

    started: Callable[[int, float, str], None] = lambda i, seconds, words: None
    measured: Callable[[int, list, list, list], None] = lambda i, candidates, built, results: None


def run_tasks(tasks: list[TaskRun], *, budget: int, max_trials_per_task: int, trials_per_iter: int, builder,
              runner, database, cost_model, stop: StopFlag, hooks: Hooks | None = None, seed: int | None = None,
              runner_workers: int = 1) -> int:
    """Measure up to `budget` trials over `tasks`, committing each to `database` as it is measured;
    returns how many were committed. Raises SearchInterrupted when `stop` is requested."""
    hooks = hooks or Hooks()
    policy = GradientPolicy([t.weight for t in tasks], seed)
    sent = committed = 0
    try:
        while sent < budget:
            stop.check(committed)
            i = policy.next([j for j, t in enumerate(tasks) if not t.done])
            if i is None:
                break
            task = tasks[i]
            if task.context is None:
                started = time.time()
                task.context, words = task.start()
                # What MetaSchedule's TaskRecord and Tune do for every task up front, for this one now.
                _ffi_api.TuneContextInitialize(task.context)
                spaces = task.context.space_generator.generate_design_space(task.context.mod)
                task.context.search_strategy.pre_tuning(max_trials_per_task, trials_per_iter, spaces, database,
                                                        cost_model)
                task.workload = database.commit_workload(task.context.mod)
                hooks.started(i, time.time() - started, words)
                stop.check(committed)
            if len(task.latencies_ms) >= max_trials_per_task:
                task.done = True
                continue
            candidates = task.context.search_strategy.generate_measure_candidates()
            if not candidates:
                task.done = True
                continue
            candidates = list(candidates)[:budget - sent]  # the last batch: only what the budget has left
            sent += len(candidates)
            stop.check(committed)
            results, n = _measure(task, candidates, builder, runner, database, cost_model, stop, committed,
                                  runner_workers, hooks, i)
            committed += n
            task.latencies_ms += [_latency_ms(r) for r in results]
            policy.measured(i, min(task.latencies_ms))
    except SearchInterrupted:
        _post_tuning(tasks)
        raise
    _post_tuning(tasks)
    return committed


def _post_tuning(tasks: list[TaskRun]) -> None:
    """As MetaSchedule's Tune ends: every started task's strategy is told the search is over."""
    for task in tasks:
        if task.context is not None:
            task.context.search_strategy.post_tuning()


def _measure(task: TaskRun, candidates, builder, runner, database, cost_model, stop: StopFlag, committed: int,
             runner_workers: int, hooks: Hooks, index: int):
    """Build and run one batch; each trial reaches the database as soon as its result is known.
    A result that comes in after Ctrl-C is dropped: a terminal's SIGINT reaches the build and run
    workers too, so it may be a failure the interrupt caused, not the schedule."""
    target = task.context.target
    built = builder.build([ms.builder.BuilderInput(c.sch.mod, target) for c in candidates])
    try:
        stop.check(committed)
        results: list = [None] * len(candidates)
        for j, b in enumerate(built):
            if b.error_msg:
                results[j] = ms.runner.RunnerResult(run_secs=None, error_msg=b.error_msg)
        n = _commit(task, candidates, results, [j for j in range(len(candidates)) if results[j] is not None],
                    database)
        ready = [j for j in range(len(candidates)) if results[j] is None]
        for k in range(0, len(ready), max(1, runner_workers)):
            chunk = ready[k:k + max(1, runner_workers)]
            futures = runner.run([ms.runner.RunnerInput(built[j].artifact_path, _device_type(target),
                                                        candidates[j].args_info) for j in chunk])
            got = [f.result() for f in futures]
            stop.check(committed + n)
            for j, r in zip(chunk, got):
                results[j] = r
            n += _commit(task, candidates, results, chunk, database)
    finally:
        for b in built:
            if b.artifact_path:
                with contextlib.suppress(OSError):
                    ms.utils.remove_build_dir(b.artifact_path)
    task.context.search_strategy.notify_runner_results(candidates, results)
    if cost_model is not None:
        # What UpdateCostModel passes on: built trials that ran, or failed while running.
        kept = [j for j, (b, r) in enumerate(zip(built, results))
                if not b.error_msg and (r.error_msg or (r.run_secs and sum(float(s) for s in r.run_secs) > 0))]
        cost_model.update(task.context, [candidates[j] for j in kept], [results[j] for j in kept])
    hooks.measured(index, candidates, list(built), results)
    return results, n


def _commit(task: TaskRun, candidates, results, indices, database) -> int:
    """AddToDatabase, for the trials at `indices`: a failed one gets MetaSchedule's failed time."""
    for j in indices:
        run_secs = results[j].run_secs
        database.commit_tuning_record(ms.database.TuningRecord(
            candidates[j].sch.trace, task.workload,
            [float(s) for s in run_secs] if run_secs else [FAILED_RUN_SECS],
            task.context.target, candidates[j].args_info))
    return len(indices)


def _device_type(target) -> str:
    """The runner's name of the device a target's kernels run on: the runners look it up with
    `tvm.runtime.device(name)`, which knows "cpu", not the target kind "llvm" (convtune's only kind)."""
    return "cpu" if target.kind.name == "llvm" else target.kind.name


def _latency_ms(result) -> float:
    """A trial's time as MetaSchedule's schedulers weigh it: the median in ms, 1e9 ms when it failed."""
    seconds = records.median_seconds(result.run_secs) if not result.error_msg else None
    return FAILED_MS if seconds is None else seconds * 1e3
