"""Records: every measured trial, kept in MetaSchedule's JSON database, one per layer and target.

    logs/<target tag>/<workload key>/
        database_workload.json        TVM's JSONDatabase (one workload per algorithm)
        database_tuning_record.json   one line per trial: trace, run seconds, target
        task.json                     the layer, target, threads, TVM version, knob names

`tvm.s_tir.meta_schedule.database.JSONDatabase(work_dir=that directory)` reads it as it is.
A torn last line (a killed run) is moved aside to `*.torn` before TVM reads the file.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from .target import Target
from .task import ALGORITHM_NAMES, Task
from .workload import Workload

DB_FILES = ("database_workload.json", "database_tuning_record.json")
FAILED_SECONDS = 1e9  # MetaSchedule's stand-in run time for a failed trial


@dataclass
class Record:
    seconds: float
    trace: object  # s_tir.Trace
    algorithm: str

    def gflops(self, wl: Workload) -> float:
        return wl.flops / self.seconds / 1e9


def repair_json_lines(path: str) -> int:
    """Move lines that are not JSON (a torn tail, a corrupt edit) aside; returns how many."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    good, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
            good.append(line)
        except ValueError:
            bad.append((number, line))
    if bad:
        with open(path + ".torn", "ab") as f:
            for number, line in bad:
                f.write(line + b"\n")
                print(f"warning: {path}:{number}: not a JSON line, moved to {path}.torn", file=sys.stderr)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in good))
        os.replace(tmp, path)
    return len(bad)


class LayerRecords:
    """The records of one layer on one target."""

    def __init__(self, directory: str, target: Target, workload: Workload):
        self.directory = directory
        self.target = target
        self.workload = workload
        for name in DB_FILES:
            repair_json_lines(os.path.join(directory, name))
        self.database = ms.database.JSONDatabase(work_dir=directory)

    @classmethod
    def open(cls, logs: str, target: Target, workload: Workload) -> "LayerRecords":
        directory = layer_directory(logs, target, workload)
        os.makedirs(directory, exist_ok=True)
        return cls(directory, target, workload)

    @classmethod
    def existing(cls, logs: str, target: Target, workload: Workload) -> "LayerRecords | None":
        directory = layer_directory(logs, target, workload)
        return cls(directory, target, workload) if os.path.isdir(directory) else None

    def _records(self, task: Task) -> list:
        if not self.database.has_workload(task.mod):
            return []
        workload = self.database.commit_workload(task.mod)
        return [r for r in self.database.get_all_tuning_records() if r.workload.same_as(workload)
                or tvm_ffi.structural_equal(r.workload.mod, task.mod)]

    def trial_count(self, task: Task) -> int:
        return len(self._records(task))

    def best(self, task: Task) -> Record | None:
        if not self.database.has_workload(task.mod):
            return None
        top = self.database.get_top_k(self.database.commit_workload(task.mod), 1)
        if not top or not top[0].run_secs:
            return None
        secs = sorted(float(s) for s in top[0].run_secs)
        median = secs[len(secs) // 2]
        return None if median >= FAILED_SECONDS else Record(median, top[0].trace, task.algorithm)

    def note_tasks(self, tasks: list[Task], measure_config) -> None:
        path = os.path.join(self.directory, "task.json")
        info = json.load(open(path)) if os.path.exists(path) else {}
        info.update({"workload": self.workload.to_dict(), "target": self.target.to_dict(),
                     "tvm": tvm.__version__, "measure": measure_config.to_dict()})
        algorithms = info.setdefault("algorithms", {})
        for t in tasks:
            algorithms[t.algorithm] = {"knobs": t.knob_names}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, path)


def layer_directory(logs: str, target: Target, workload: Workload) -> str:
    return os.path.join(logs, target.tag, workload.key)


def summaries(logs: str, target: Target | None = None) -> list[dict]:
    """Best record per layer and algorithm under `logs` (optionally one target's)."""
    rows = []
    if not os.path.isdir(logs):
        return rows
    for tag in sorted(os.listdir(logs)):
        if target is not None and tag != target.tag:
            continue
        for key in sorted(os.listdir(os.path.join(logs, tag))):
            path = os.path.join(logs, tag, key, "task.json")
            if not os.path.exists(path):
                continue
            info = json.load(open(path))
            wl = Workload.from_dict(info["workload"])
            t = info["target"]
            tgt = Target(t["name"], t["config"], t["threads"])
            store = LayerRecords(os.path.dirname(path), tgt, wl)
            for algorithm in info.get("algorithms", {}):
                if algorithm not in ALGORITHM_NAMES:
                    continue
                task = Task(wl, algorithm)
                best = store.best(task)
                rows.append({"target": tag, "layer": wl.spec, "layout": wl.layout, "algorithm": algorithm,
                             "trials": store.trial_count(task),
                             "best_ms": best.seconds * 1e3 if best else None,
                             "gflops": best.gflops(wl) if best else None})
    return rows
