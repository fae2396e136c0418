"""Whole networks: every conv layer of a model tuned under one trial budget.

One task per distinct layer (per algorithm under `auto`), one scheduler loop
(tuning/search/scheduler.py) with MetaSchedule's gradient policy, task weights = how often the
network runs each layer: after a round-robin warm-up (one batch per task), each next batch goes to
the task with the largest expected drop of count x best time (its recent improvement and its best
time per batch so far), i.e. where the network's total conv time should drop most. (Under `auto`
the scheduler sees a layer's algorithms as separate tasks of the same weight, although only the
fastest of them counts in the network's time.) Each task starts (space, search, run state) when its
first batch is due, and each trial is in its layer's records as soon as it is measured: the
warm-up round shows a line per task started and per batch, and a stopped run keeps what it measured.

Records stay per layer (logs/<target>/<layer key>/, tuning.records.LayerRecords): a routing
database hands each workload and trial to the owning layer's JSONDatabase by structural equality
of the task module, so `convtune tune`, `compile` and `records` see a network run's trials as
their own. Resumable: trials already recorded for the run's tasks count against the total;
tasks that already hold `max_trials_per_task` records are skipped. The scheduler cuts a run's last
batch to what the total has left, so a run measures no more than its total.
MetaSchedule takes one per-task cap for all tasks: during a run each task may add up to
`max_trials_per_task` minus the fewest records any running task holds (no cap by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schedules.template import Unsupported

from ..deploy.library import choose
from ..networks import Layer, distinct_layers
from ..records import LayerRecords
from ..tables import table
from ..target import Target
from ..task import Task, tasks_for
from .tune import SearchOptions, search


# -- the network's layers ------------------------------------------------------------------------------
def network_tasks(layers: list[Layer], algorithm: str, machine=None) -> list[tuple[Layer, Task]]:
    pairs = []
    for layer in layers:
        try:
            pairs += [(layer, t) for t in tasks_for(layer.workload, algorithm, machine)]
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
        rows = []
        for r in self.rows:
            if r.tuned:
                rows.append([r.layer.name, r.algorithm, r.trials, f"{r.seconds * 1e3:.4f}", f"{r.gflops:.1f}",
                             r.layer.count, f"{100 * self.share(r):.1f}%"])
            else:
                rows.append([r.layer.name, f"{r.algorithm} (untuned)", r.trials, "-", "-", r.layer.count, "-"])
        lines = [table(["layer", "algorithm", "trials", "ms", "GFLOP/s", "count", "share"], rows, align="<<>>>>>")]
        total = f"estimated conv time of the network: {self.total_seconds * 1e3:.3f} ms per pass"
        if self.untuned:
            total += f" (without the {len(self.untuned)} untuned layer(s) marked above)"
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
                 max_trials_per_task: int | None = None, options: SearchOptions = SearchOptions(),
                 runner=None) -> NetworkResult:
    """Tune every layer of a network until the run's tasks hold `trials_total` records in all.

    `max_trials_per_task` caps one task's records (default: no cap but the total). Returns (and
    prints, unless `options.quiet`) per layer the chosen algorithm, time, GFLOP/s, count and share
    of the network's conv time."""
    if trials_total <= 0:
        raise ValueError(f"--trials: must be positive, got {trials_total}")
    layers = distinct_layers(layers)
    run = search(network_tasks(layers, algorithm, target.machine), target, logs, per_task=max_trials_per_task, total=trials_total,
                 options=options, runner=runner)
    result = summarize(layers, algorithm, target, logs)
    result.measured, result.budget = run.measured, run.budget
    if not options.quiet:
        print(result.table())
    return result
