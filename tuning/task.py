"""A tuning task: one workload through one algorithm, as a TIR function and a search space.

`ms-auto` is MetaSchedule's own generated (Ansor-style) space over the direct compute: the rival
to the hand-written templates, with no knobs of ours and no prepare phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms

from schedules import ALGORITHMS, family, get_algorithm
from schedules.machine import Machine
from schedules.template import Algorithm, Knobs, Unsupported
from schedules.workload import Workload

GENERATED = "ms-auto"
ALGORITHM_NAMES = tuple(ALGORITHMS) + (GENERATED,)


@dataclass(frozen=True)
class Task:
    workload: Workload
    algorithm: str
    # What the template's defaults and bounds are derived for (None: this host). Not part of the
    # task's identity: records are keyed by the tuned function, which no machine changes.
    machine: Machine | None = field(default=None, compare=False, repr=False)

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
        func = self.template.functions(self.workload)[self.template.run_function].func
        func = func.with_attr("convtune.algorithm", self.algorithm)
        # A changed template makes another workload: records of the old one are set aside, not trusted.
        version = self.template_version
        return func.with_attr("convtune.template_version", version) if version > 1 else func

    @property
    def template_version(self) -> int:
        return self.template.template_version

    @cached_property
    def mod(self) -> tvm.IRModule:
        """The module MetaSchedule tunes and its database keys records by."""
        func = self.func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
        return tvm.IRModule({"main": func})

    @cached_property
    def knob_names(self) -> list[str]:
        return [] if self.generated else self.template.knob_names(self.workload)

    def default_trace(self):
        """The template's default config for this task's machine as a trace of the tuned module
        (replayable by the search, e.g. as a first candidate)."""
        sch = s_tir.Schedule(self.mod)
        self.template.schedule(sch, self.workload, Knobs(sch, default=True, machine=self.machine))
        return sch.trace

    def default_config(self) -> dict:
        """The template's default config for this task's machine (the generated space: direct's)."""
        return self.template.default_config(self.workload, self.machine)

    def space(self) -> ms.space_generator.SpaceGenerator:
        if self.generated:
            return ms.space_generator.PostOrderApply()
        wl, template = self.workload, self.template

        machine = self.machine

        def sample(sch):
            template.schedule(sch, wl, Knobs(sch, machine=machine))

        return ms.space_generator.ScheduleFn(
            sample,
            sch_rules=[],
            postprocs=[ms.postproc.RewriteParallelVectorizeUnroll(), ms.postproc.DisallowDynamicLoop()],
            mutator_probs={ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateUnroll(): 0.1},
        )


def algorithm_names(text: str) -> list[str]:
    """The `--algorithm` syntax: a name, a family (`winograd`), `auto`, or a comma list of those.
    Every name must exist: a typo in a list is refused, not dropped."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise Unsupported(text, "no algorithm named")
    for name in names:
        if name not in ("auto", GENERATED):
            family(name)  # raises Unsupported for an unknown name
    return names


def tasks_for(wl: Workload, algorithm: str, machine: Machine | None = None) -> list[Task]:
    """The tasks an `--algorithm` value asks for on `wl`. `auto`: every template that fits the layer
    (the generated space is a rival, asked by name); a family name (`winograd`) gives the members
    that fit; a full name gives its one task; a comma list, the members of each that fit."""
    names = algorithm_names(algorithm)
    if len(names) > 1:
        found = []
        for name in names:
            try:
                found += [t for t in tasks_for(wl, name, machine) if t not in found]
            except Unsupported:  # a known algorithm that does not fit this layer: the others may
                continue
        if not found:
            raise Unsupported(algorithm, f"none of these fits {wl.spec}")
        return found
    if algorithm == GENERATED:
        return [Task(wl, GENERATED, machine)]
    # auto: the templates built around an instruction this machine lacks are left out (they are
    # still built when asked for by name)
    members = ([a for a in ALGORITHMS.values() if a.suits(machine)] if algorithm == "auto"
               else family(algorithm))
    fits = [a for a in members if a.supports(wl) is None]
    if not fits:
        reasons = "; ".join(a.supports(wl) for a in members)
        raise Unsupported(algorithm, f"no variant fits {wl.spec}: {reasons}")
    return [Task(wl, a.name, machine) for a in fits]
