"""Transfer: start a layer's search from what was learnt on similar layers.

Two things carry over from the records of other layers (same layout, same kernel size and stride,
same kind of grouping), nearest shapes first: of this target when it has any, else of the other
CPUs of the same architecture under the logs (tophub-like: a new machine starts from the
records shipped for the others, the same layer first, `OTHER_CPU_PENALTY` further away):

  configs      the best knob values of the same algorithm on the nearest layers, adapted to this
               layer's loop extents (a split keeps its inner factors as far as divisibility allows)
               and measured as the search's first batch
  cost model   XGBoost pre-trained on those layers' trials: the features of their schedules and
               their run times, normalised per layer as MetaSchedule's model always does. A cold
               model predicts at random until it holds 100 samples; a pre-trained one guides the
               evolutionary search from its first iteration.

Nothing is copied into the new layer's records: transferred configs are measured like any trial,
and a config from another CPU is refitted to this machine (its register tile capped by this
machine's template bounds), never applied as "tuned".
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from schedules.template import Knobs, config_from_trace
from schedules.workload import Workload

from ..records import LayerRecords
from ..target import Target
from ..task import Task

NEAREST_LAYERS = 3  # layers whose best configs are transferred
CONFIGS_PER_LAYER = 4  # best records taken from each
MODEL_LAYERS = 8  # layers whose trials pre-train the cost model
MODEL_RECORDS_PER_LAYER = 64
OTHER_CPU_PENALTY = 0.25  # another CPU's record of a layer ranks as a neighbour slightly further away


def distance(a: Workload, b: Workload) -> float | None:
    """How far apart two layers are for transfer: None when their loop nests differ in kind
    (layout, kernel, stride, dilation, depthwise or not); else the sum of |log2| ratios of the
    output size and channel counts, so 56x56 -> 28x28 costs as much as 64 -> 128 channels."""
    if (a.layout, a.kh, a.kw, a.stride, a.dilation) != (b.layout, b.kh, b.kw, b.stride, b.dilation):
        return None
    if (a.groups == a.ci) != (b.groups == b.ci) or (a.groups > 1) != (b.groups > 1):
        return None

    def log_ratio(x: int, y: int) -> float:
        return abs(math.log2(x / y))

    return (log_ratio(a.oh, b.oh) + log_ratio(a.ow, b.ow) + log_ratio(a.ci // a.groups, b.ci // b.groups)
            + log_ratio(a.co // a.groups, b.co // b.groups) + log_ratio(a.groups, b.groups) + log_ratio(a.n, b.n)
            + (0.5 if a.pad != b.pad else 0.0))


@dataclass
class Neighbour:
    workload: Workload
    directory: str
    target: Target
    algorithms: dict  # algorithm -> {"knobs": [...]}, from task.json
    distance: float

    @cached_property
    def store(self) -> LayerRecords:
        """Opened on first use: a scan reads every task.json, but only the nearest layers' records."""
        return LayerRecords(self.directory, self.target, self.workload, bounded=False)


@dataclass
class History:
    """The layers recorded under a logs directory for one target, as seen from one new layer."""

    neighbours: list[Neighbour] = field(default_factory=list)

    @classmethod
    def scan(cls, logs: str, target: Target, workload: Workload) -> "History":
        """Every other layer of `target` under `logs` whose loop nest matches `workload`'s in kind,
        nearest first; when there is none, the layers (this one included) recorded for other CPUs of
        the same architecture. Unreadable or foreign directories are passed over."""
        found = cls._scan_tag(logs, target.tag, target, workload, 0.0)
        if found or not os.path.isdir(logs):
            return cls(sorted(found, key=lambda n: (n.distance, n.workload.key)))
        for tag in sorted(os.listdir(logs)):
            if tag != target.tag and tag.startswith(target.arch + "-"):
                found += cls._scan_tag(logs, tag, None, workload, OTHER_CPU_PENALTY)
        return cls(sorted(found, key=lambda n: (n.distance, n.workload.key)))

    @staticmethod
    def _scan_tag(logs: str, tag: str, target: Target | None, workload: Workload, penalty: float) -> list:
        """The neighbours under logs/<tag>; `target` None: another CPU's, read with its own target."""
        root = os.path.join(logs, tag)
        found = []
        if not os.path.isdir(root):
            return found
        for key in sorted(os.listdir(root)):
            path = os.path.join(root, key, "task.json")
            if (key == workload.key and target is not None) or not os.path.exists(path):
                continue
            try:
                info = json.load(open(path))
                other = Workload.from_dict(info["workload"])
                if info.get("tvm") != tvm.__version__:
                    continue  # traces from another TVM may not replay
                d = distance(workload, other)
                if d is None:
                    continue
                owner = target or Target(info["target"].get("name", "custom"), info["target"]["config"],
                                         int(info["target"].get("threads", 1)))
                found.append(Neighbour(other, os.path.dirname(path), owner, info.get("algorithms", {}), d + penalty))
            except (OSError, ValueError, KeyError, TypeError) as err:
                print(f"warning: transfer: skipping {path}: {err}", file=sys.stderr)
        return found

    @classmethod
    def merge(cls, histories: list["History"]) -> "History":
        """One history for several tasks (a network run's layers share neighbours): each layer once."""
        seen, merged = set(), []
        for h in histories:
            for n in h.neighbours:
                if n.directory not in seen:  # a layer may come from this CPU and another
                    seen.add(n.directory)
                    merged.append(n)
        return cls(sorted(merged, key=lambda n: n.distance))

    def with_algorithm(self, algorithm: str) -> list[Neighbour]:
        return [n for n in self.neighbours if algorithm in n.algorithms]


# -- configs ---------------------------------------------------------------------------------------------
class TransferredKnobs(Knobs):
    """Knobs that take their decisions from another layer's config, fitted to this layer's extents:
    a split's inner factors become the wishes of the template's default tiling (largest divisor of
    the new extent not above each), a choice keeps its index."""

    def __init__(self, sch: s_tir.Schedule, source: dict, machine=None):
        super().__init__(sch, default=True, machine=machine)
        self.source = source

    def split(self, name, loop, n, max_inner=64, prefer=()):
        old = self.source.get(name)
        if isinstance(old, list) and len(old) == n:
            prefer = tuple(reversed(old[1:]))  # innermost first
        return super().split(name, loop, n, max_inner, prefer)

    def choice(self, name, candidates, default_index=0):
        old = self.source.get(name)
        if isinstance(old, int) and 0 <= old < len(candidates):
            default_index = old
        return super().choice(name, candidates, default_index)


def adapt(task: Task, config: dict) -> s_tir.Schedule:
    """`config` (another layer's knob values) applied to `task`'s module, fitted to its extents."""
    sch = s_tir.Schedule(task.mod)
    knobs = TransferredKnobs(sch, config, task.machine)
    task.template.schedule(sch, task.workload, knobs)
    return sch


def seed_traces(task: Task, history: History, limit: int) -> list[s_tir.Trace]:
    """Up to `limit` distinct schedules of `task` adapted from the best records of the nearest
    layers tuned with the same algorithm (round-robin over the layers, best first)."""
    nearest = history.with_algorithm(task.algorithm)[:NEAREST_LAYERS]
    if task.generated or limit <= 0 or not nearest:
        return []
    names = task.knob_names
    per_layer = []
    for n in nearest:
        if n.algorithms[task.algorithm].get("knobs") != names:
            continue  # the template's knobs changed shape between the layers
        try:
            source = Task(n.workload, task.algorithm)
            per_layer.append([config_from_trace(r.trace, names) for r in n.store.top(source, CONFIGS_PER_LAYER)])
        except (ValueError, tvm.TVMError) as err:
            print(f"warning: transfer: {n.workload.key}: {err}", file=sys.stderr)
    traces, seen = [], set()
    for rank in range(CONFIGS_PER_LAYER):
        for configs in per_layer:
            if rank >= len(configs) or len(traces) >= limit:
                continue
            try:
                sch = adapt(task, configs[rank])
            except (ValueError, KeyError, tvm.TVMError) as err:
                print(f"warning: transfer: config {configs[rank]} does not fit {task.name}: {err}", file=sys.stderr)
                continue
            decisions = json.dumps(config_from_trace(sch.trace, names), sort_keys=True)
            if decisions not in seen:
                seen.add(decisions)
                traces.append(sch.trace)
    return traces


# -- the cost model --------------------------------------------------------------------------------------
def pretrain(model: ms.cost_model.XGBModel, history: History, algorithms: list[str], target: Target) -> int:
    """Feed `model` the measured trials of the nearest layers for `algorithms`; returns how many.
    Each layer is its own group (the model learns the ranking within a layer, not absolute times)."""
    fed = 0
    for n in history.neighbours[:MODEL_LAYERS]:
        for algorithm in algorithms:
            if algorithm not in n.algorithms:
                continue
            try:
                task = Task(n.workload, algorithm)
                fed += _feed(model, task, n.store, target)
            except (ValueError, tvm.TVMError) as err:
                print(f"warning: transfer: cost model: {n.workload.key} {algorithm}: {err}", file=sys.stderr)
    return fed


def _feed(model, task: Task, store: LayerRecords, target: Target) -> int:
    candidates, results = [], []
    for record in store.top(task, MODEL_RECORDS_PER_LAYER):
        sch = s_tir.Schedule(task.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        candidates.append(ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
        results.append(ms.runner.RunnerResult(run_secs=[record.seconds], error_msg=None))
    if len(candidates) < 2:
        return 0  # a single time says nothing about ranking
    context = ms.TuneContext(mod=task.mod, target=target.tvm, task_name=task.name)
    model.update(context, candidates, results)
    return len(candidates)


@dataclass
class Transfer:
    """Where transferred knowledge comes from; `convtune tune --transfer-from` (default: the logs
    being tuned into) and `--no-transfer`."""

    logs: str

    def history(self, target: Target, workload: Workload) -> History:
        return History.scan(self.logs, target, workload)
