"""The prepared state of a two-phase kernel, for trials that time its run phase alone.

MetaSchedule's runner fills every argument with random bits; an index table (the indirection
buffer) full of random indices reads out of bounds. The state a kernel's prepare phase really
builds is made here, on the library side (it builds the kernel), and handed to the runner.
"""

from __future__ import annotations

import json

import numpy as np
from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument

from schedules.reference import epilogue_inputs, random_inputs

from ..target import Target
from ..task import Task
from .library import Choice, in_memory_kernel


def _signature(args_info) -> str:
    return json.dumps([[str(a[1]), [int(d) for d in a[2]]] for a in args_info])


class StateFiller:
    """MetaSchedule's runner fills every argument with random bits; an index table (the indirection
    buffer) full of random indices reads out of bounds. This allocator fills a run function's
    integer state with what its prepare phase really builds, so trials run the real access pattern.
    Sent to the runner workers by cloudpickle; keyed by the run function's argument signature."""

    def __init__(self, states: dict[str, dict[int, np.ndarray]]):
        self.states = states

    def __call__(self, device, args_info, alloc_repeat):
        repeated = default_alloc_argument(device, args_info, alloc_repeat)
        for index, array in self.states.get(_signature(args_info), {}).items():
            for args in repeated:
                args[index].copyfrom(array)
        return repeated


def run_state(tasks, target: Target) -> dict[str, dict[int, np.ndarray]]:
    """The integer state arguments of each two-phase task's run function, from its prepare phase."""
    host = Target("host", {"kind": "llvm"}, 1)
    states = {}
    for task in tasks:
        if task.generated or task.template.run_function == "conv2d":
            continue
        run = task.template.functions(task.workload)[task.template.run_function]
        wanted = [i for i, a in enumerate(run.args) if not a.dtype.startswith("float")]
        if not wanted:
            continue
        # scheduled for the generic host it is built for: a template that tensorizes for the task's
        # machine (direct-int8's AVX2 vpmaddwd) would not compile for a generic x86-64
        kernel = in_memory_kernel(Choice(Task(task.workload, task.algorithm, host.machine), None, None), host, "state")
        # (a quantized layer's zero points and scales are arguments too: real ones, so the runner
        # times the kernel on the values it will see)
        tensors = kernel.tensors(*random_inputs(task.workload), epilogue_inputs(task.workload))
        kernel.prepare(tensors)
        info = [["TENSOR", a.dtype, list(a.shape)] for a in run.args]
        states[_signature(info)] = {i: tensors[run.args[i].name].numpy() for i in wanted}
    return states
