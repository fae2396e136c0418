"""Records: every measured trial, kept in MetaSchedule's JSON database, one per layer and target.

    logs/<target tag>/<workload key>/
        database_workload.json        TVM's JSONDatabase (one workload per algorithm)
        database_tuning_record.json   one line per trial: trace, run seconds, target
        task.json                     the layer, target, threads, TVM version, knob names
        rejected.json                 records whose kernel failed the reference check (never best)
        failures.jsonl                why each failed trial failed (build or run error, timeout)
        .lock                         held by a tuning run, so two runs never interleave writes

`tvm.s_tir.meta_schedule.database.JSONDatabase(work_dir=that directory)` reads it as it is.
A torn last line (a killed run) is moved aside to `*.torn` before TVM reads the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from schedules.workload import Workload

from .files import write_json_atomic
from .target import Target
from .task import ALGORITHM_NAMES, Task

DB_FILES = ("database_workload.json", "database_tuning_record.json")
FAILURE_LOG = "failures.jsonl"  # why each failed trial failed
FAILED_SECONDS = 1e9  # MetaSchedule's stand-in run time for a failed trial


def median_seconds(run_secs) -> float | None:
    """A trial's time: the median of its repeats; None when it failed (no time, or MetaSchedule's
    stand-in for a failure)."""
    secs = sorted(float(s) for s in run_secs or [])
    median = secs[len(secs) // 2] if secs else None
    return None if median is None or median >= FAILED_SECONDS else median


class ForeignRecords(ValueError):
    """Records from another TVM version: not applied silently."""


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
    def open_for_tuning(cls, logs: str, target: Target, workload: Workload, label: str | None = None) -> "LayerRecords":
        """`open`, refusing records made with another TVM (their traces may not replay); `label`
        names the layer in the message (a network run)."""
        store = cls.open(logs, target, workload)
        foreign = store.foreign_version()
        if foreign:
            raise ForeignRecords(f"{store.directory}{f' ({label})' if label else ''} holds records made with TVM "
                                 f"{foreign}; this is TVM {tvm.__version__}: their traces may not replay. Move them "
                                 "aside or use another --logs.")
        return store

    @classmethod
    def existing(cls, logs: str, target: Target, workload: Workload) -> "LayerRecords | None":
        directory = layer_directory(logs, target, workload)
        return cls(directory, target, workload) if os.path.isdir(directory) else None

    @contextlib.contextmanager
    def lock(self):
        """Exclusive use of this layer's records for a tuning run (a second run waits)."""
        with open(os.path.join(self.directory, ".lock"), "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                print(f"waiting for another tuning run of this layer ({f.read().strip() or 'pid ?'}) "
                      f"to finish with {self.directory}", file=sys.stderr)
                fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            try:
                # Another run may have appended records while we waited: read them too.
                self.database = ms.database.JSONDatabase(work_dir=self.directory)
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- queries ---------------------------------------------------------------------------------
    def _records(self, task: Task) -> list:
        if not self.database.has_workload(task.mod):
            return []
        workload = self.database.commit_workload(task.mod)
        return [r for r in self.database.get_all_tuning_records() if r.workload.same_as(workload)
                or tvm_ffi.structural_equal(r.workload.mod, task.mod)]

    def trial_count(self, task: Task) -> int:
        return len(self._records(task))

    def top(self, task: Task, k: int) -> list[Record]:
        """The k fastest valid records: measured, for this target, not rejected by the reference check."""
        if not self.database.has_workload(task.mod):
            return []
        rejected = self.rejected()
        out = []
        # TVM ranks by the mean of the repeats; we rank by the median (robust to a noisy repeat), so
        # look a little deeper than k.
        for r in self.database.get_top_k(self.database.commit_workload(task.mod), 2 * k + 8 + len(rejected)):
            median = median_seconds(r.run_secs)
            if median is None or not self._same_target(r) or trace_id(r.trace) in rejected:
                continue
            out.append(Record(median, r.trace, task.algorithm))
        return sorted(out, key=lambda rec: rec.seconds)[:k]

    def best(self, task: Task) -> Record | None:
        top = self.top(task, 1)
        return top[0] if top else None

    def _same_target(self, record) -> bool:
        # A record made for another CPU (a copied directory) must not be applied silently.
        mine = {k: v for k, v in self.target.config.items() if k in ("mcpu", "mtriple")}
        theirs = {k: str(record.target.attrs[k]) for k in mine if k in record.target.attrs}
        return all(str(mine[k]) == theirs.get(k, str(mine[k])) for k in mine)

    # -- the reference check's verdicts ------------------------------------------------------------
    def rejected(self) -> dict[str, str]:
        path = os.path.join(self.directory, "rejected.json")
        return json.load(open(path)) if os.path.exists(path) else {}

    def reject(self, record: Record, reason: str) -> None:
        rejected = self.rejected()
        rejected[trace_id(record.trace)] = f"{record.algorithm}: {reason}"
        write_json_atomic(os.path.join(self.directory, "rejected.json"), rejected)

    def foreign_version(self) -> str | None:
        """The TVM version the records were made with, if it is not this one."""
        path = os.path.join(self.directory, "task.json")
        if not os.path.exists(path):
            return None
        made_with = json.load(open(path)).get("tvm")
        return made_with if made_with and made_with != tvm.__version__ else None

    def write_task_json(self, tasks: list[Task], measure_config) -> None:
        path = os.path.join(self.directory, "task.json")
        info = json.load(open(path)) if os.path.exists(path) else {}
        info.update({"workload": self.workload.to_dict(), "target": self.target.to_dict(),
                     "tvm": tvm.__version__, "measure": measure_config.to_dict()})
        algorithms = info.setdefault("algorithms", {})
        for t in tasks:
            algorithms[t.algorithm] = {"knobs": t.knob_names}
        write_json_atomic(path, info)


def trace_id(trace) -> str:
    return hashlib.sha1(str(trace).encode()).hexdigest()[:16]


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
