"""The store: every measured trial, kept in MetaSchedule's JSON database, one per layer and target.

    logs/<target tag>/<workload key>/
        database_workload.json        TVM's JSONDatabase (one workload per algorithm)
        database_tuning_record.json   one line per trial: trace, run seconds, target
        task.json                     the layer, target, threads, TVM version, knob names
        rejected.json                 records whose kernel failed the reference check (never best)
        failures.jsonl                why each failed trial failed (build or run error, timeout)
        .lock                         held by a tuning run, so two runs never interleave writes

`tvm.s_tir.meta_schedule.database.JSONDatabase(work_dir=that directory)` reads it as it is; its
files are checked line by line first (tuning/records/repair.py).

Reading is free of side effects: `top`, `best` and `find` measure nothing and write nothing. A
record faster than the machine's theoretical ceiling is never believed; judging records against
the *measured* peak (and marking them rejected on disk) is the job of a `PeakJudge`
(tuning/records/judge.py), which a caller that may measure (a search, a compile) passes in.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from schedules.workload import Workload

from ..files import write_json_atomic
from ..peak import ceiling_gflops
from ..target import Target
from ..task import Task
from .errors import ForeignRecords, RecordsError, median_seconds, warn_once
from .repair import DB_FILES, repair_database

FAILURE_LOG = "failures.jsonl"  # why each failed trial failed


@dataclass
class Record:
    seconds: float
    trace: object  # s_tir.Trace
    algorithm: str

    def gflops(self, wl: Workload) -> float:
        return wl.flops / self.seconds / 1e9


def read_task_json(directory: str) -> dict | None:
    """A layer's task.json; None when it is absent, or unreadable (with a warning: the layer is then
    treated as having none)."""
    path = os.path.join(directory, "task.json")
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) else f"not valid JSON ({err})"
        warn_once(f"warning: {path}: {why}; treated as absent (delete it, a tuning run writes a new one)")
        return None
    if not isinstance(info, dict):
        warn_once(f"warning: {path}: not a JSON object; treated as absent (delete it, a tuning run writes a new one)")
        return None
    return info


class LayerRecords:
    """The records of one layer on one target."""

    def check_on_disk(self) -> None:
        """Every record this process holds reached the disk. TVM's JSONDatabase appends each trial
        to its file without reporting a failed write (a full disk): a search that held more records
        than its file has lost the difference, and must say so, with how many are safe."""
        path = os.path.join(self.directory, DB_FILES[1])
        try:
            with open(path, "rb") as f:
                on_disk = sum(1 for line in f if line.strip())
        except FileNotFoundError:
            on_disk = 0
        held = len(self.database)
        if on_disk < held:
            raise RecordsError(f"{path}: {held - on_disk} of {held} trial records did not reach the disk (is it "
                               f"full?); the {on_disk} on disk are safe: free space and rerun to measure the rest")

    def __init__(self, directory: str, target: Target, workload: Workload, judge=None, bounded: bool = True):
        self.directory = directory
        self.target = target
        self.workload = workload
        # A PeakJudge (tuning/records/judge.py), from a caller allowed to measure: records above the
        # measured peak are then rejected on disk. Without one a read only leaves out what exceeds the
        # target's theoretical ceiling (`bounded`; not for another CPU's records read as a head start,
        # transfer, which are only ever measured again), and measures and writes nothing.
        self.judge = judge
        self.bounded = bounded
        self._scratch = None  # the good lines of records that cannot be repaired on disk
        self._rejected_here: dict[str, str] = {}  # verdicts that could not be written
        self.database = self._load()

    def _load(self, locked: bool = False, deep: bool = False) -> ms.database.JSONDatabase:
        """The layer's JSONDatabase, its files checked line by line first (`repair_database`; by TVM
        itself, `deep`, once TVM refused them). Files that cannot be rewritten are read from a
        scratch copy holding their good lines."""
        self._scratch = None
        unwritten = repair_database(self.directory, locked, deep)
        missing = [n for n in DB_FILES if not os.path.exists(os.path.join(self.directory, n))]
        work_dir = self.directory
        if unwritten or (missing and not os.access(self.directory, os.W_OK)):
            self._scratch = tempfile.TemporaryDirectory(prefix="convtune-records-")
            work_dir = self._scratch.name
            for name in DB_FILES:
                if name in unwritten:
                    content = unwritten[name]
                else:
                    try:
                        with open(os.path.join(self.directory, name), "rb") as f:
                            content = f.read()
                    except FileNotFoundError:
                        content = b""
                with open(os.path.join(work_dir, name), "wb") as f:
                    f.write(content)
        try:
            return ms.database.JSONDatabase(work_dir=work_dir)
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types
            if not deep:
                return self._load(locked, deep=True)
            first = next((l for l in str(err).splitlines() if l.strip()), type(err).__name__)
            raise RecordsError(f"{self.directory}: TVM cannot read these records ({first.strip()[:200]}); move "
                               f"{DB_FILES[1]} aside (or out of --logs)") from None

    @classmethod
    def open(cls, logs: str, target: Target, workload: Workload, judge=None) -> "LayerRecords":
        directory = layer_directory(logs, target, workload)
        os.makedirs(directory, exist_ok=True)
        return cls(directory, target, workload, judge)

    @classmethod
    def open_for_tuning(cls, logs: str, target: Target, workload: Workload, label: str | None = None,
                        judge=None) -> "LayerRecords":
        """`open`, refusing records made with another TVM (their traces may not replay); `label`
        names the layer in the message (a network run)."""
        store = cls.open(logs, target, workload, judge)
        foreign = store.foreign_version()
        if foreign:
            raise ForeignRecords(f"{store.directory}{f' ({label})' if label else ''} holds records made with TVM "
                                 f"{foreign}; this is TVM {tvm.__version__}: their traces may not replay. Move them "
                                 "aside or use another --logs.")
        return store

    @classmethod
    def existing(cls, logs: str, target: Target, workload: Workload, judge=None) -> "LayerRecords | None":
        directory = layer_directory(logs, target, workload)
        return cls(directory, target, workload, judge) if os.path.isdir(directory) else None

    @contextlib.contextmanager
    def lock(self):
        """Exclusive use of this layer's records for a tuning run (a second run waits)."""
        with directory_lock(self.directory, "this layer"):
            # Another run may have appended records while we waited: read them too.
            self.database = self._load(locked=True)
            if self._scratch is not None:
                raise RecordsError(f"{self.directory}: its records cannot be repaired on disk (see the "
                                   "warnings); tuning needs writable --logs")
            yield self

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
        """The k fastest valid records: measured, for this target, not rejected by the reference check,
        not faster than the machine can be: its theoretical ceiling; with a judge, its measured peak
        (and those the judge rejects on disk)."""
        if not self.database.has_workload(task.mod):
            return []
        rejected = self.rejected()
        out, bound = [], None
        # TVM ranks by the mean of the repeats; we rank by the median (robust to a noisy repeat), so
        # look a little deeper than k.
        for r in self.database.get_top_k(self.database.commit_workload(task.mod), 2 * k + 8 + len(rejected)):
            median = median_seconds(r.run_secs)
            if median is None or not self._same_target(r) or trace_id(r.trace) in rejected:
                continue
            record = Record(median, r.trace, task.algorithm)
            if bound is None:
                bound = self._bound(task)
            if record.gflops(task.workload) > bound:
                if self.judge is not None:
                    self.judge.reject(self, task, record, bound)
                continue
            out.append(record)
        return sorted(out, key=lambda rec: rec.seconds)[:k]

    def _bound(self, task: Task) -> float:
        if self.judge is not None:
            return self.judge.bound(task)
        if not self.bounded:
            return math.inf
        template = task.template
        return ceiling_gflops(self.target.machine, self.target.threads) * template.multiplication_saving * template.peak_ratio

    def find(self, task: Task, design: str) -> Record | None:
        """The record of `task` whose trace, before MetaSchedule's postprocessing, has id `design`
        (`design_id`), if measured, for this target, not rejected."""
        rejected = self.rejected()
        for r in self._records(task):
            median = median_seconds(r.run_secs)
            if (median is not None and self._same_target(r) and design_id(r.trace) == design
                    and trace_id(r.trace) not in rejected):
                return Record(median, r.trace, task.algorithm)
        return None

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
        try:
            with open(path) as f:
                verdicts = json.load(f)
        except FileNotFoundError:
            verdicts = {}
        except (OSError, ValueError) as err:
            why = err.strerror if isinstance(err, OSError) else f"not valid JSON ({err})"
            raise RecordsError(f"{path}: {why}; restore it, or delete it to believe its records again") from None
        if not isinstance(verdicts, dict):
            raise RecordsError(f"{path}: not a JSON object; restore it, or delete it to believe its records again")
        return {**verdicts, **self._rejected_here}

    def reject(self, record: Record, reason: str) -> None:
        rejected = self.rejected()
        rejected[trace_id(record.trace)] = self._rejected_here[trace_id(record.trace)] = f"{record.algorithm}: {reason}"
        try:
            write_json_atomic(os.path.join(self.directory, "rejected.json"), rejected)
        except OSError as err:
            warn_once(f"warning: {self.directory}: cannot write rejected.json ({err.strerror}); the rejection "
                       "holds for this run only")

    def foreign_version(self) -> str | None:
        """The TVM version the records were made with, if it is not this one."""
        made_with = (read_task_json(self.directory) or {}).get("tvm")
        return made_with if made_with and made_with != tvm.__version__ else None

    def write_task_json(self, tasks: list[Task], measure_config) -> None:
        path = os.path.join(self.directory, "task.json")
        info = read_task_json(self.directory) or {}
        info.update({"workload": self.workload.to_dict(), "target": self.target.to_dict(),
                     "tvm": tvm.__version__, "measure": measure_config.to_dict()})
        algorithms = info.get("algorithms")
        algorithms = info["algorithms"] = algorithms if isinstance(algorithms, dict) else {}
        for t in tasks:
            algorithms[t.algorithm] = {"knobs": t.knob_names, "template_version": t.template_version}
        write_json_atomic(path, info)


@contextlib.contextmanager
def directory_lock(directory: str, what: str):
    """Exclusive use of a records directory by one tuning run: a second run says whose run it
    waits for and waits (fcntl lock on `.lock`, released if the holder dies)."""
    try:
        f = open(os.path.join(directory, ".lock"), "a+")
    except OSError as err:
        raise RecordsError(f"{directory}: cannot write ({err.strerror}); tuning needs writable --logs") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            print(f"waiting for another tuning run of {what} ({f.read().strip() or 'pid ?'}) "
                  f"to finish with {directory}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def trace_id(trace) -> str:
    return hashlib.sha1(str(trace).encode()).hexdigest()[:16]


def design_id(trace) -> str:
    """The id of the config a trace chose: its sampling decisions in order, without what
    MetaSchedule's postprocessors appended when it was measured (a search stores the measured
    trace with unroll annotations after it, with or without `enter_postproc`; the same config built
    by `compile` has none). Traces of one task share their instructions, so decisions name a config."""
    decisions = trace.decisions
    chosen = [f"{inst.kind.name}={decisions[inst]}" for inst in trace.insts if inst in decisions]
    return hashlib.sha1(";".join(chosen).encode()).hexdigest()[:16]


def layer_directory(logs: str, target: Target, workload: Workload) -> str:
    return os.path.join(logs, target.tag, workload.key)


