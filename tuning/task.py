"""A tuning task: one workload through one algorithm, as a TIR function and a search space.

`ms-auto` is MetaSchedule's own generated (Ansor-style) space over the direct compute: the rival
to the hand-written templates, with no knobs of ours and no prepare phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from schedules import ALGORITHMS, family, get_algorithm
from schedules.template import Algorithm, Knobs, Unsupported

from .workload import Workload

GENERATED = "ms-auto"
ALGORITHM_NAMES = tuple(ALGORITHMS) + (GENERATED,)


@dataclass(frozen=True)
class Task:
    workload: Workload
    algorithm: str

    def __post_init__(self):
        if self.algorithm not in ALGORITHM_NAMES:
            raise Unsupported(self.algorithm, f"unknown algorithm; known: {', '.join(ALGORITHM_NAMES)}, auto")
        self.template.require(self.workload)

    @property
    def template(self) -> Algorithm:
        """The algorithm whose compute this task tunes (direct's, for the generated space)."""
        return get_algorithm("direct" if self.algorithm == GENERATED else self.algorithm)

    @property
    def generated(self) -> bool:
        return self.algorithm == GENERATED

    @property
    def name(self) -> str:
        return f"{self.algorithm}:{self.workload.key}"

    @cached_property
    def func(self) -> tirx.PrimFunc:
        """The tuned function; tagged with the algorithm so that records of different algorithms
        over the same compute (direct and ms-auto) are different workloads in the database."""
        func = self.template.functions(self.workload)[self.template.tuned].func
        return func.with_attr("convtune.algorithm", self.algorithm)

    @cached_property
    def mod(self) -> tvm.IRModule:
        """The module MetaSchedule tunes and its database keys records by."""
        func = self.func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
        return tvm.IRModule({"main": func})

    @cached_property
    def knob_names(self) -> list[str]:
        return [] if self.generated else self.template.knob_names(self.workload)

    def space(self) -> ms.space_generator.SpaceGenerator:
        if self.generated:
            return ms.space_generator.PostOrderApply()
        wl, template = self.workload, self.template

        def sample(sch):
            template.schedule(sch, wl, Knobs(sch))

        return ms.space_generator.ScheduleFn(
            sample,
            sch_rules=[],
            postprocs=[ms.postproc.RewriteParallelVectorizeUnroll(), ms.postproc.DisallowDynamicLoop()],
            mutator_probs={ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateUnroll(): 0.1},
        )


def tasks_for(wl: Workload, algorithm: str) -> list[Task]:
    """`auto`: every template that fits the layer (the generated space is a rival, asked by name);
    a family name (`winograd`) gives the members that fit; a full name gives its one task."""
    if "," in algorithm:  # a list: the members of each that fit
        names = [n.strip() for n in algorithm.split(",") if n.strip()]
        found = []
        for name in names:
            try:
                found += [t for t in tasks_for(wl, name) if t not in found]
            except Unsupported:
                continue
        if not found:
            raise Unsupported(algorithm, f"none of these fits {wl.spec}")
        return found
    if algorithm == GENERATED:
        return [Task(wl, GENERATED)]
    members = list(ALGORITHMS.values()) if algorithm == "auto" else family(algorithm)
    fits = [a for a in members if a.supports(wl) is None]
    if not fits:
        reasons = "; ".join(a.supports(wl) for a in members)
        raise Unsupported(algorithm, f"no variant fits {wl.spec}: {reasons}")
    return [Task(wl, a.name) for a in fits]
