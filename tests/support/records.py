"""Records written without a tuning run: a template's schedule committed with a chosen run time,
exactly as MetaSchedule's JSONDatabase stores a measured trial."""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from schedules.template import Knobs
from tuning.records import LayerRecords
from tuning.search.measure import MeasureConfig
from tuning.task import Task


def write_record(logs: str, target, wl, algorithm: str = "direct", seconds: float | list = 1e-3,
                 seed: int | None = None) -> LayerRecords:
    """Append one record of `algorithm` for `wl` (the template's default config, or a random one
    from `seed`) that claims `seconds` (each repeat; or the repeats as a list); notes the task in task.json. Returns the layer's records."""
    task = Task(wl, algorithm, target.machine)
    store = LayerRecords.open(logs, target, wl)
    sch = s_tir.Schedule(task.mod)
    config = None if seed is None else task.template.sample_config(wl, seed, target.machine)
    task.template.schedule(sch, wl, Knobs(sch, config=config, default=config is None, machine=target.machine))
    workload = store.database.commit_workload(task.mod)
    store.database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, seconds if isinstance(seconds, list) else [seconds] * 3, target.tvm, ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])))
    store.write_task_json([task], MeasureConfig())
    return store
