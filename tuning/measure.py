"""How trials are built and timed: one place for threads, repeats, timeouts and the builders.

MetaSchedule's default builder imports every tensor intrinsic (CUDA included) in each fresh worker
pool, about 7 s per trial here; building straight with tvm.tirx.build costs about a second.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import tvm
from tvm.s_tir import meta_schedule as ms

from .target import Target

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class MeasureConfig:
    number: int = 3  # calls per repeat
    repeat: int = 5  # repeats; the median is recorded
    min_repeat_ms: int = 50  # each repeat lasts at least this long (stable medians on 2 cores)
    flush_cache: bool = False
    build_timeout: float = 60.0
    run_timeout: float = 30.0
    builders: int = 2  # parallel build workers

    def evaluator(self) -> ms.runner.EvaluatorConfig:
        return ms.runner.EvaluatorConfig(number=self.number, repeat=self.repeat,
                                         min_repeat_ms=self.min_repeat_ms,
                                         enable_cpu_cache_flush=self.flush_cache)

    def to_dict(self) -> dict:
        return asdict(self)


def fast_build(mod: tvm.IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415 - worker-side import

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def export_aarch64(mod: tvm.runtime.Module) -> str:
    """Link a trial's module into an aarch64 .so on the host: a board has no compiler."""
    from tvm.support import cc  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(prefix="convtune-trial-"), "trial.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


def builder(target: Target, config: MeasureConfig) -> ms.builder.LocalBuilder:
    return ms.builder.LocalBuilder(
        max_workers=config.builders, timeout_sec=config.build_timeout, f_build=fast_build,
        f_export=export_aarch64 if target.arch == "aarch64" and not target.is_host else None)


def local_runner(target: Target, config: MeasureConfig, tasks=()) -> ms.runner.LocalRunner:
    # Runner workers inherit the environment: this is how the thread count reaches them.
    os.environ["TVM_NUM_THREADS"] = str(target.threads)
    states = run_state(tasks, target)
    return ms.runner.LocalRunner(timeout_sec=config.run_timeout, evaluator_config=config.evaluator(),
                                 cooldown_sec=0.0, f_alloc_argument=StateFiller(states) if states else None)


# -- run-phase state for trials ---------------------------------------------------------------------------
def _signature(args_info) -> str:
    return json.dumps([[str(a[1]), [int(d) for d in a[2]]] for a in args_info])


class StateFiller:
    """MetaSchedule's runner fills every argument with random bits; an index table (the indirection
    buffer) full of random indices reads out of bounds. This allocator fills a run function's
    integer state with what its prepare phase really builds, so trials run the real access pattern.
    Sent to the runner workers by cloudpickle; keyed by the run function's argument signature."""

    def __init__(self, states: dict[str, dict[int, "np.ndarray"]]):
        self.states = states

    def __call__(self, device, args_info, alloc_repeat):
        from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument  # noqa: PLC0415

        repeated = default_alloc_argument(device, args_info, alloc_repeat)
        for index, array in self.states.get(_signature(args_info), {}).items():
            for args in repeated:
                args[index].copyfrom(array)
        return repeated


def run_state(tasks, target: Target) -> dict[str, dict[int, "np.ndarray"]]:
    """The integer state arguments of each two-phase task's run function, from its prepare phase."""
    from .library import Choice, in_memory_kernel  # noqa: PLC0415 - measurement set-up only
    from schedules.reference import random_inputs  # noqa: PLC0415

    host = Target("host", {"kind": "llvm"}, 1)
    states = {}
    for task in tasks:
        if task.generated or task.template.tuned == "conv2d":
            continue
        run = task.template.functions(task.workload)[task.template.tuned]
        wanted = [i for i, a in enumerate(run.args) if not a.dtype.startswith("float")]
        if not wanted:
            continue
        kernel = in_memory_kernel(Choice(task, None, None), host, "state")
        tensors = kernel.tensors(*random_inputs(task.workload))
        kernel.prepare(tensors)
        info = [["TENSOR", a.dtype, list(a.shape)] for a in run.args]
        states[_signature(info)] = {i: tensors[run.args[i].name].numpy() for i in wanted}
    return states
