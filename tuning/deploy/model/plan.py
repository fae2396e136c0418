"""Planning a model's library: per distinct conv workload, the record (or default config) to build,
and, where the weights outgrow the last-level cache, the algorithm fastest with cold weights
(`cold_choice` builds and times the candidates: a compile may measure)."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from schedules.reference import epilogue_inputs, random_inputs

from ...graph import ConvChain, ModelGraph
from ...target import Target
from ...task import tasks_for
from ..library import Choice, choose, in_memory_kernel


@dataclass
class LayerPlan:
    """One distinct conv workload of the model: what will be built for it."""

    name: str  # the first chain's name
    choice: Choice
    chains: list[ConvChain]

    @property
    def workload(self):
        return self.choice.task.workload


def plan(graph: ModelGraph, target: Target, logs: str, algorithm: str = "auto", cold: bool | None = None,
         stream=None, judge=None) -> list[LayerPlan]:
    """What to build per distinct workload. `cold` (default: on this host, when the model's weights
    exceed the last-level cache): among each layer's best record per algorithm, the one fastest with
    its weights flushed from the caches, as every layer's are inside such a model; records are timed
    warm, and an algorithm that re-reads its weights (direct on a 7x7 map: 1.2 ms warm, 2.2 ms cold
    on ResNet-18's layer4 here, im2col's packed panels 1.1 / 1.2) is not the fastest in the model."""
    plans: dict = {}
    for chain in graph.chains():
        wl = chain.workload
        if wl not in plans:
            plans[wl] = LayerPlan(chain.name, choose(wl, algorithm, target, logs, judge), [])
        plans[wl].chains.append(chain)
    layers = list(plans.values())
    if cold is None:
        weights = sum(c.weight.nbytes for c in graph.chains())
        cold = target.is_host and target.machine.l3 > 0 and weights > target.machine.l3
    if cold:
        started = time.perf_counter()
        changed = 0
        for layer in layers:
            best = cold_choice(layer.workload, algorithm, target, logs, judge, rule=layer.choice)
            if best is not None and best.task.algorithm != layer.choice.task.algorithm:
                layer.choice = best
                changed += 1
        if stream is not None:
            print(f"cold-weight check: {changed} of {len(layers)} layers changed algorithm "
                  f"({time.perf_counter() - started:.0f} s)", file=stream)
    return layers


COLD_REPEATS = 15


def cold_choice(wl, algorithm: str, target: Target, logs: str, judge=None,
                rule: Choice | None = None) -> Choice | None:
    """The layer's best record per algorithm (its own, else its bare conv's), each built and timed
    with its weights flushed before every call; the fastest. Without records, the untuned rule's
    pick (`rule`: `choose(wl, algorithm, ...)`, which `plan` has already made) against im2col's
    default for a weight larger than the L2. None when there is nothing to choose between."""
    candidates = []
    for algo in dict.fromkeys(t.algorithm for t in tasks_for(wl, algorithm, target.machine)):
        if algo == "ms-auto":
            continue
        choice = choose(wl, algo, target, logs, judge)
        # im2col's packed panels stream the weight once per block: under cold weights its default
        # config is a candidate even untuned (ResNet-18's layer4 3x3: 1.2 ms cold, direct's 2.2)
        if choice.tuned or algo == "im2col":
            candidates.append(choice)
    if not any(c.tuned for c in candidates):
        # No records: the untuned rule's pick (read off warm layers) against im2col's default,
        # where the weight outgrows the L2 and so is read from far away on every call (Winograd's
        # transformed weight is 1.8x (F2) to 4x (F4) the weight).
        rule = rule or choose(wl, algorithm, target, logs, judge)
        weight_bytes = math.prod(wl.weight_shape) * 4
        if weight_bytes <= target.machine.l2 or rule.task.algorithm == "im2col" or rule.task.generated:
            return None
        candidates = [rule] + [c for c in candidates if c.task.algorithm == "im2col"]
    if len(candidates) < 2:
        return None
    timed = []
    for choice in candidates:
        kernel = in_memory_kernel(choice, target, "cold check")
        tensors = kernel.tensors(*random_inputs(wl), epilogue_inputs(wl))
        kernel.prepare(tensors)
        timer = kernel.timer(tensors, number=1, repeat=COLD_REPEATS, min_repeat_ms=0, cold=True)
        timed.append((statistics.median(timer()), choice))
    return min(timed, key=lambda t: t[0])[1]

