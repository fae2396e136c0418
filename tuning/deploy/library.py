"""Compile and export: the best record of a layer, built into a shared library and its sidecar.

The library exports `conv2d(data, weight, out)` taking the plain-layout weight; two-phase
algorithms also export their prepare functions (e.g. `pack_weight`) and `conv2d_packed`. The
sidecar `<library>.json` says what was built, from which record, and every function's arguments.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.support import cc

from schedules import ALGORITHMS, get_algorithm
from schedules.machine import host_machine
from schedules.reference import epilogue_inputs, random_inputs
from schedules.template import Unsupported, config_from_trace
from schedules.workload import Workload

from ..files import publish_library
from ..records import LayerRecords, Record, RecordsError, median_seconds, design_id
from ..target import Target
from ..task import Task, tasks_for
from .kernel import Kernel, sidecar_path

SIDECAR_VERSION = 1


class NoRecord(UserWarning):
    pass


@dataclass
class Choice:
    """What will be built: a task and its config (None when untuned)."""

    task: Task
    record: Record | None
    config: dict | None
    # whose record it is: "" (this layer's own), or "bare conv" (a fused conv built with its bare
    # conv's best config: the same knobs and tile space, the epilogue's cost not measured)
    source: str = ""

    @property
    def tuned(self) -> bool:
        return self.record is not None


def choose(wl: Workload, algorithm: str, target: Target, logs: str, judge=None) -> Choice:
    """The best record for the layer (over every algorithm under `auto`), or the default config.
    A fused conv (an epilogue) without records of its own takes its bare conv's best config.
    `judge` (tuning.records.PeakJudge): records are judged against the measured peak (a compile)."""
    choice = _choose(wl, algorithm, target, logs, judge)
    if choice.tuned or wl.epilogue.empty:
        return choice
    bare = _choose(wl.bare, algorithm, target, logs, judge)
    if not bare.tuned or bare.task.generated:  # a generated trace names the bare conv's blocks
        return choice
    return Choice(Task(wl, bare.task.algorithm, target.machine), bare.record, bare.config, "bare conv")


def _choose(wl: Workload, algorithm: str, target: Target, logs: str, judge=None) -> Choice:
    store = LayerRecords.existing(logs, target, wl, judge)
    if store is not None and store.foreign_version():
        print(f"WARNING: {store.directory} holds records made with TVM {store.foreign_version()}, not "
              f"{tvm.__version__}; they are not used.", file=sys.stderr)
        store = None
    machine = target.machine
    candidates = tasks_for(wl, algorithm, machine) + (_generated(wl, machine) if algorithm == "auto" else [])
    best: tuple[Task, Record] | None = None
    if store is not None:
        records = [(task, store.best(task)) for task in candidates]
        if any(record for _, record in records) and target.is_host:
            # Records never make a layer slower: each template's untuned default competes too,
            # measured once here and kept as a record (the default of another machine, or a
            # board's, is not measurable here: records alone decide there).
            records += [(task, default_record(store, task, target)) for task in candidates if not task.generated]
        for task, record in records:
            if record and (best is None or record.seconds < best[1].seconds):
                best = (task, record)
    if best is None:
        task = candidates[0] if algorithm != "auto" else Task(wl, untuned_algorithm(wl, machine), machine)
        return Choice(task, None, None)
    task, record = best
    config = None if task.generated else config_from_trace(record.trace, task.knob_names)
    return Choice(task, record, config)


# how a default config is timed: MeasureConfig's defaults (tuning/search/measure.py), as its records were
DEFAULT_NUMBER, DEFAULT_REPEAT, DEFAULT_MIN_REPEAT_MS = 3, 5, 50


def default_record(store: LayerRecords, task: Task, target: Target) -> Record | None:
    """The template's default config as a record: found in the layer's records by its trace, or
    built, timed (run function, prepared state) and committed to them; None when it cannot be built."""
    trace = task.default_trace()
    found = store.find(task, design_id(trace))
    if found is not None:  # a search measures the default first; or an earlier compile did
        return found
    try:
        kernel = in_memory_kernel(Choice(task, None, None), target)
    except Exception as err:  # noqa: BLE001 - TVM's build errors come in several types
        print(f"warning: {task.algorithm}'s default config for {task.workload.spec} does not build "
              f"({str(err).splitlines()[0][:160]}): not a candidate", file=sys.stderr)
        return None
    tensors = kernel.tensors(*random_inputs(task.workload), epilogue_inputs(task.workload))
    kernel.prepare(tensors)
    run_secs = kernel.timer(tensors, DEFAULT_NUMBER, DEFAULT_REPEAT, DEFAULT_MIN_REPEAT_MS)()
    record = Record(median_seconds(run_secs), trace, task.algorithm)
    print(f"measured {task.algorithm}'s untuned default for {task.workload.spec}: "
          f"{record.seconds * 1e3:.3f} ms (kept in its records)", file=sys.stderr)
    try:
        with store.lock():
            store.database.commit_tuning_record(ms.database.TuningRecord(
                trace, store.database.commit_workload(task.mod), [float(s) for s in run_secs], target.tvm,
                ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])))
    except (RecordsError, OSError) as err:
        print(f"warning: {store.directory}: the measured default is not kept ({err}); it is measured again "
              "next time", file=sys.stderr)
    return record


def untuned_algorithm(wl: Workload, machine=None) -> str:
    """The algorithm whose DEFAULT config is fastest for a layer of this kind on this kind of
    machine: what `compile --algorithm auto` builds for a layer without records. The rule is read
    off the untuned surveys (scripts/untuned_survey.py: every conv layer of ResNet-18 and
    MobileNet-v1, every algorithm's default config, oneDNN and MLAS in the same run; AVX-512 and
    AVX2 builds on the same Zen 4; docs/bench/untuned-*.json, docs/performance.md), and for 16
    registers again after im2col's 6 x 16 micro-kernel and per-block unfolding (AMD EPYC Zen 2,
    one thread, ResNet-18's layers, each default built in-process and timed with TVM's timer, the
    measurement `convtune bench LAYER --algorithm A --threads 1 --no-rivals` makes, 2026-12-06:
    im2col 69-83 GFLOP/s on every 3x3 and 1x1 layer, indirect 61-69, direct and spatial pack 48-70;
    Winograd F4 188 / 153 effective on 56x56 / 28x28, F2 104 on 14x14 where F4 pads 14 to 16
    and reaches 50; on 7x7 im2col 47, F4 37, F2 21).

      depthwise                          depthwise    (the only template that vectorises channels alone)
      3x3 stride 1, >= 28x28 output      winograd-f4  (AVX-512 3.1-3.9x, AVX2 1.8-2.3x the rivals)
      3x3 stride 1, 14x14 .. 27x27       winograd-f2
      3x3 stride 1, < 14x14              im2col
      <= 7x7 output otherwise            im2col
      a 7x7+ stem on 3-4 channels        spatial-pack on 32 registers, direct on 16
      1x1 stride 1 (pointwise, matmul)   im2col       (its GEMM needs no copy; spatial pack's and
                                                       direct's defaults fall to 3-10 GFLOP/s when
                                                       CO is not a multiple of their channel tile)
      anything else with groups = 1      spatial-pack on 32 registers, im2col on 16
      grouped, not depthwise             grouped      (direct's vectors straddle groups: gathers)
    An algorithm that does not support the layer (Winograd and indirect in NCHW) falls through.

    int8 / s8s8 layers (the float32 templates refuse them), reasoned, not yet measured (no VNNI
    CPU has been available; the AVX2 comparison's commands are in docs/performance.md):
      depthwise                          depthwise-int8    (the only int8 template for it)
      a VNNI CPU (vpdpbusd), groups = 1  im2col-int8-vnni  (64 u8 x s8 products per instruction
                                                            where vpmaddwd does 32 + a vpaddd)
      1x1                                im2col-int8       (the col matrix is the input widened,
                                                            a quarter of it at stride 2, where
                                                            direct-int8 widens all of it; the
                                                            GEMM's register rows come from the
                                                            flat OH*OW pixels, not OW's divisors)
      anything else                      direct-int8       (no KH*KW-fold copy of the input)"""
    machine = machine or host_machine()
    wide = machine.registers >= 32
    if wl.quantized:
        fits = [a for a in ALGORITHMS.values() if a.supports(wl) is None]
        if not fits:
            raise Unsupported("auto", f"no int8 template fits {wl.spec}")
        names = [a.name for a in fits if a.suits(machine)] or [a.name for a in fits]
        pointwise = (wl.kh, wl.kw) == (1, 1)
        for name in ("depthwise-int8", "im2col-int8-vnni", "im2col-int8" if pointwise else "direct-int8"):
            if name in names:
                return name
        return names[0]
    candidates = []
    if wl.is_depthwise:
        candidates.append("depthwise")
    if wl.groups == 1:
        winograd = (wl.kh, wl.kw, wl.stride, wl.dilation) == (3, 3, (1, 1), (1, 1))
        side = min(wl.oh, wl.ow)
        if winograd and side >= 28:
            candidates.append("winograd-f4")
        elif winograd and side >= 14:
            candidates.append("winograd-f2")
        elif winograd:
            candidates.append("im2col")
        if (wl.kh, wl.kw, wl.stride) == (1, 1, (1, 1)):
            candidates.append("im2col")
        if wl.oh * wl.ow <= 49:
            candidates.append("im2col")
        if not wide and wl.ci <= 4 and wl.kh >= 7:
            candidates.append("direct")
        candidates += ["spatial-pack"] if wide else ["im2col", "spatial-pack"]
    candidates += ["grouped", "direct"]
    return next(name for name in candidates if get_algorithm(name).supports(wl) is None)


def _generated(wl: Workload, machine) -> list[Task]:
    """MetaSchedule's generated space over direct's compute: float32 only (direct's compute is)."""
    return [] if wl.quantized else [Task(wl, "ms-auto", machine)]


def schedule_functions(choice: Choice) -> tvm.IRModule:
    """Every exported function, scheduled: the template re-applied with the record's knob values."""
    task, wl = choice.task, choice.task.workload
    phases = task.template.functions(wl)
    funcs = {}
    postproc = ms.postproc.RewriteParallelVectorizeUnroll()
    for name, phase in phases.items():
        if task.generated:
            sch = (_replay(phase.func, choice.record.trace) if choice.tuned
                   else task.template.apply(phase.func, wl, None, task.machine))
        else:
            sch = task.template.apply(phase.func, wl, choice.config, task.machine)
        postproc.apply(sch)
        funcs[name] = sch.mod["main"].with_attr("global_symbol", name)
    return tvm.IRModule(funcs)


def _replay(func, trace) -> s_tir.Schedule:
    func = func.with_attr("convtune.algorithm", "ms-auto")
    sch = s_tir.Schedule(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch


def build(choice: Choice, target: Target) -> tvm.runtime.Executable:
    return tvm.compile(schedule_functions(choice), target=target.tvm)


def in_memory_kernel(choice: Choice, target: Target, label: str = "in-memory",
                     layer_name: str | None = None) -> Kernel:
    """`choice` built for this host and loaded without a file (reference checks, benchmarks, tests)."""
    return Kernel(build(choice, target).mod, sidecar(choice, target, label, layer_name), tvm.cpu(0))


def export(choice: Choice, target: Target, path: str, layer_name: str | None = None, warn: bool = True) -> dict:
    """Build and write `path` (.so) and its sidecar; returns the sidecar. An untuned choice prints
    a warning naming the default config, unless `warn` is False (a bundle warns once for all its layers)."""
    if warn and not choice.tuned:
        print(f"WARNING: no tuning record for {choice.task.workload.spec} ({choice.task.algorithm}) on "
              f"{target.tag}: building the template's UNTUNED default config "
              f"{choice.task.default_config()}. Run `convtune tune` first for a fast kernel.", file=sys.stderr)
    executable = build(choice, target)
    side = sidecar(choice, target, os.path.basename(path), layer_name)
    publish_library(path, lambda tmp: write_library(executable, target, tmp), sidecar_path(path), side)
    return side


def write_library(executable, target: Target, path: str) -> None:
    """`executable` as a shared library at `path`, cross-linked for a target that is not this host."""
    if target.cross_compiler:
        executable.export_library(path, fcompile=cc.cross_compiler(target.cross_compiler))
    else:
        executable.export_library(path)


def sidecar(choice: Choice, target: Target, library: str, layer_name: str | None) -> dict:
    task, wl = choice.task, choice.task.workload
    functions = {name: {"args": [a.to_dict() for a in phase.args]}
                 for name, phase in task.template.functions(wl).items()}
    return {
        "sidecar_version": SIDECAR_VERSION,
        "library": library,
        "layer": layer_name or wl.spec,
        "workload": wl.to_dict(),
        "layout": wl.layout,
        "weight_layout": wl.weight_layout,
        "algorithm": task.algorithm,
        "target": target.to_dict(),
        "threads": target.threads,
        "tvm": tvm.__version__,
        "tuned": choice.tuned,
        "record_source": choice.source or ("own" if choice.tuned else None),
        "config": choice.config if choice.tuned else choice.task.default_config(),
        "trace": str(choice.record.trace) if choice.tuned and task.generated else None,
        "record": ({"seconds": choice.record.seconds, "gflops": choice.record.gflops(wl)} if choice.tuned else None),
        "run_function": task.template.run_function,
        "functions": functions,
    }

