"""Records: every measured trial, kept in MetaSchedule's JSON database, one per layer and target.

    logs/<target tag>/<workload key>/
        database_workload.json        TVM's JSONDatabase (one workload per algorithm)
        database_tuning_record.json   one line per trial: trace, run seconds, target
        task.json                     the layer, target, threads, TVM version, knob names
        rejected.json                 records whose kernel failed the reference check (never best)
        failures.jsonl                why each failed trial failed (build or run error, timeout)
        .lock                         held by a tuning run, so two runs never interleave writes

`tvm.s_tir.meta_schedule.database.JSONDatabase(work_dir=that directory)` reads it as it is.
A torn last line (a killed run), or any line that is not a well-formed workload or record, is
moved aside to `*.torn` before TVM reads the file (a malformed line makes TVM crash or refuse the
whole layer). Where the directory cannot be written (read-only logs, another run holding it) the
bad lines are skipped in memory and the files are left as they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from schedules.template import Unsupported
from schedules.workload import Workload

from .files import write_json_atomic
from .peak import ceiling_gflops, peak_contended, target_peak
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


class RecordsError(ValueError):
    """Records that cannot be read or written as asked; the message names the path and the fix."""


PEAK_REASON = "faster than the machine's peak: re-measure"
# A record and the peak are two timings, each a few percent off on a shared 2-core VM: a sound
# kernel at 97% of the true peak must not be rejected by a peak read 4% low (seen here: 223 vs
# 220 GFLOP/s). What is refused is the impossible (a 1e-9 s record), not the excellent.
PEAK_MARGIN = 1.15


@dataclass
class Record:
    seconds: float
    trace: object  # s_tir.Trace
    algorithm: str

    def gflops(self, wl: Workload) -> float:
        return wl.flops / self.seconds / 1e9


def repair_json_lines(path: str) -> int:
    """Move lines that are not JSON (a torn tail, a corrupt edit) aside; returns how many."""
    lines = _read_lines(path)
    if lines is None:
        return 0
    kept, bad = [], []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            why = _parse(line)[1]
            (bad.append((number, line, why)) if why else kept.append(line))
    if bad:
        _rewrite(path, kept, bad)
    return len(bad)


# -- the two JSONDatabase files, line by line ----------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def workload_problem(obj) -> str | None:
    """Why a database_workload.json line is not a workload TVM can read (None: it is one)."""
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(v, str) for v in obj)):
        return "not a workload ([structural hash, module])"
    return None


def _arg_info_ok(arg) -> bool:
    return (isinstance(arg, list) and len(arg) == 3 and arg[0] == "TENSOR" and isinstance(arg[1], str)
            and isinstance(arg[2], list) and all(_is_int(d) for d in arg[2]))


def record_problem(obj, workloads: int) -> str | None:
    """Why a database_tuning_record.json line is not a record TVM can read, the workload file holding
    `workloads` lines (None: it is one): `[workload index, [trace, run seconds or null, target dict,
    args info]]`, the trace `[instructions, decisions]`."""
    if not (isinstance(obj, list) and len(obj) == 2):
        return "not a tuning record ([workload index, record])"
    index, body = obj
    if not _is_int(index) or not 0 <= index < workloads:
        return f"workload index {index!r} names none of the {workloads} workload(s)"
    if not (isinstance(body, list) and len(body) == 4):
        return "not a tuning record ([trace, run seconds, target, args info])"
    trace, secs, target, args = body
    if not (isinstance(trace, list) and len(trace) == 2 and all(isinstance(part, list) for part in trace)
            and all(isinstance(i, list) and len(i) == 4 and isinstance(i[0], str) for i in trace[0])
            and all(isinstance(d, list) and len(d) == 2 and _is_int(d[0]) for d in trace[1])):
        return "its trace is not [instructions, decisions]"
    if secs is not None and not (isinstance(secs, list) and all(_is_number(s) for s in secs)):
        return "its run seconds are not a list of numbers"
    if secs is not None and not all(math.isfinite(s) and s > 0 for s in secs):
        # No kernel runs in no time: such a record would rank first (or divide by zero).
        return f"its run seconds {secs} are not all positive and finite"
    if not (isinstance(target, dict) and isinstance(target.get("kind"), str)):
        return "its target is not a TVM target dict"
    if not (isinstance(args, list) and all(_arg_info_ok(a) for a in args)):
        return 'its argument info is not a list of ["TENSOR", dtype, shape]'
    return None


def _read_lines(path: str) -> list[bytes] | None:
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return None
    if lines and not lines[-1]:
        lines.pop()  # the final newline
    return lines


def _parse(line: bytes):
    """(the JSON value, None) or (None, why not)."""
    try:
        return json.loads(line), None
    except ValueError:  # UnicodeDecodeError included
        return None, "not a JSON line"


_INDEX = re.compile(rb"^\s*\[\s*[0-9]+")


def _plan(directory: str, deep: bool = False) -> list[tuple[str, list[bytes], list]]:
    """What the two database files need: [(path, lines to keep, [(line number, line, why)])] for each
    file that must change (bad or blank lines; record indices shifted by a workload moved aside).
    `deep`: also have TVM parse every line (a record whose trace does not replay on its workload
    makes TVM refuse the whole file); slow, so only once TVM refused the files."""
    wpath, rpath = (os.path.join(directory, name) for name in DB_FILES)
    wlines, rlines = _read_lines(wpath), _read_lines(rpath)
    plan = []
    # TVM numbers the workloads by line; a record names its workload by that number.
    kept_w, bad_w, renumber, parsed, slots = [], [], {}, {}, 0
    for number, line in enumerate(wlines or [], start=1):
        if not line.strip():
            continue
        obj, why = _parse(line)
        why = why or workload_problem(obj)
        if not why and deep:
            why, parsed[slots] = _tvm_parse(lambda: ms.database.Workload.from_json(obj))
        if why:
            bad_w.append((number, line, why))
        else:
            renumber[slots] = len(kept_w)
            kept_w.append(line)
        slots += 1
    if wlines is not None and kept_w != wlines:
        plan.append((wpath, kept_w, bad_w))
    kept_r, bad_r = [], []
    for number, line in enumerate(rlines or [], start=1):
        if not line.strip():
            continue
        obj, why = _parse(line)
        why = why or record_problem(obj, slots)
        if not why and obj[0] not in renumber:
            why = f"its workload (line {obj[0] + 1} of {DB_FILES[0]}) is not a workload"
        if not why and deep:
            why = _tvm_parse(lambda: ms.database.TuningRecord.from_json(obj[1], parsed[obj[0]]))[0]
        if why:
            bad_r.append((number, line, why))
            continue
        if renumber[obj[0]] != obj[0]:
            line = _INDEX.sub(b"[%d" % renumber[obj[0]], line, count=1)
        kept_r.append(line)
    if rlines is not None and kept_r != rlines:
        plan.append((rpath, kept_r, bad_r))
    return plan


def _tvm_parse(parse) -> tuple[str | None, object]:
    """(None, what TVM parsed) or (why TVM cannot read it, None)."""
    try:
        return None, parse()
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types
        first = next((l.strip() for l in str(err).splitlines() if l.strip()), "")
        return f"TVM cannot read it ({type(err).__name__}{': ' + first[:160] if first else ''})", None


def _rewrite(path: str, kept: list[bytes], bad: list) -> None:
    """`path` holds `kept` only; `bad` lines are appended to `path.torn`, each named in a warning.
    OSError (a read-only directory) leaves `path` as it was."""
    _apply([(path, kept, bad)], raise_errors=True)


def repair_database(directory: str, locked: bool = False, deep: bool = False) -> dict[str, bytes]:
    """Check every line of a layer's two database files and move the bad ones aside (`*.torn`), so
    TVM never reads a line that would crash it or make it refuse the layer. Rewrites a file only
    under the layer's lock (`locked`: the caller holds it), so no append of a running search is
    lost. Where it cannot (a read-only directory, another run holding the lock) it leaves the files
    as they are and returns {file name: the good lines} for the caller to read instead."""
    plan = _plan(directory, deep)
    if not plan:
        return {}
    if locked:
        return _apply(plan)
    try:
        handle = open(os.path.join(directory, ".lock"), "a+")
    except OSError as err:
        return _in_memory(plan, f"cannot write {directory}: {err.strerror}")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return _in_memory(plan, "a tuning run holds it")
        try:
            return _apply(_plan(directory, deep))  # again: nobody appends now
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apply(plan, raise_errors: bool = False) -> dict[str, bytes]:
    """Rewrite every file of `plan` (see `_plan`), or none: the two files' record indices must stay
    consistent. Where they cannot be written: the good lines in memory, or OSError (`raise_errors`)."""
    written = []
    try:
        for path, kept, _ in plan:
            tmp = f"{path}.{os.getpid()}.tmp"
            written.append(tmp)
            with open(tmp, "wb") as f:
                f.write(b"".join(line + b"\n" for line in kept))
        for path, _, bad in plan:
            if bad:
                with open(path + ".torn", "ab") as f:
                    f.write(b"".join(line + b"\n" for _, line, _ in bad))
    except OSError as err:
        for tmp in written:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if raise_errors:
            raise
        return _in_memory(plan, f"cannot write {os.path.dirname(plan[0][0])}: {err.strerror}")
    for (path, _, bad), tmp in zip(reversed(plan), reversed(written)):  # the records first
        os.replace(tmp, path)
        for number, _, why in bad:
            print(f"warning: {path}:{number}: {why}, moved to {path}.torn", file=sys.stderr)
    return {}


def _in_memory(plan, reason: str) -> dict[str, bytes]:
    for path, _, bad in plan:
        for number, _, why in bad:
            print(f"warning: {path}:{number}: {why}; skipped, the file is left as it is ({reason})",
                  file=sys.stderr)
    return {os.path.basename(path): b"".join(line + b"\n" for line in kept) for path, kept, _ in plan}


def open_database(work_dir: str) -> ms.database.JSONDatabase:
    """A MetaSchedule JSON database kept outside the layer records (a model's other ops, `tune
    --model`'s logs/<target>/model-ops), its two files checked and repaired as a layer's are: a torn
    last line or a lost workload file is moved aside with a warning, never a crash naming no file."""
    if os.path.isdir(work_dir) and repair_database(work_dir):
        raise RecordsError(f"{work_dir}: its records cannot be repaired on disk (see the warnings); make it "
                           "writable, or move it aside")
    try:
        return ms.database.JSONDatabase(work_dir=work_dir)
    except Exception:  # noqa: BLE001 - TVM raises its own error types; a line that does not replay
        if repair_database(work_dir, deep=True):
            raise RecordsError(f"{work_dir}: its records cannot be repaired on disk (see the warnings); make it "
                               "writable, or move it aside") from None
    try:
        return ms.database.JSONDatabase(work_dir=work_dir)
    except Exception as err:  # noqa: BLE001
        first = next((l for l in str(err).splitlines() if l.strip()), type(err).__name__)
        raise RecordsError(f"{work_dir}: TVM cannot read these records ({first.strip()[:200]}); move "
                           f"{DB_FILES[1]} aside") from None


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
        _warn_once(f"warning: {path}: {why}; treated as absent (delete it, a tuning run writes a new one)")
        return None
    if not isinstance(info, dict):
        _warn_once(f"warning: {path}: not a JSON object; treated as absent (delete it, a tuning run writes a new one)")
        return None
    return info


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


_PEAK_UNKNOWN: set[str] = set()


def peak_bound(target: Target, task: Task) -> float:
    """The highest rate, in GFLOP/s of the direct algorithm's FLOPs, a record of `task` can truly
    reach here, times how many fewer multiplications the algorithm does (Winograd): the machine's
    measured FP32 peak (tuning.peak, measured once per process) with its margin, where it was read
    on idle cores; and always at most the target's theoretical ceiling (`ceiling_gflops`), which no
    load can lower, so a forged or impossible record is refused on a busy or a remote machine too."""
    bound = ceiling_gflops(target.machine, target.threads)
    peak = None
    if target.tag not in _PEAK_UNKNOWN:
        try:
            peak = target_peak(target)
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            _PEAK_UNKNOWN.add(target.tag)
            print(f"warning: the FP32 peak cannot be measured here ({err}): records are checked against the "
                  "machine's theoretical ceiling only", file=sys.stderr)
    if peak is not None and peak_contended(target):
        # A peak read on busy cores is low: judged by it, sound records would be rejected for good.
        _warn_once("warning: the FP32 peak was measured on busy cores: records are checked against the "
                   "machine's theoretical ceiling only in this run")
        peak = None
    if peak is not None:
        bound = min(bound, PEAK_MARGIN * peak)
    return bound * task.template.multiplication_saving * task.template.peak_ratio


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

    def __init__(self, directory: str, target: Target, workload: Workload, judge: bool = True):
        self.directory = directory
        self.target = target
        self.workload = workload
        # Whether records are judged against this machine's peak (and rejected on disk): not for
        # another CPU's records read as a head start (transfer), which are only ever measured again.
        self.judge = judge
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
        not faster than the machine can be (those are rejected: `peak_bound`)."""
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
                bound = peak_bound(self.target, task) if self.judge else math.inf
            if record.gflops(task.workload) > bound:
                self.reject(record, f"{PEAK_REASON} ({record.gflops(task.workload):.1f} GFLOP/s, the most this "
                                    f"machine can do for {task.algorithm} is {bound:.1f})")
                print(f"warning: {task.algorithm} record of {task.workload.spec} rejected: {PEAK_REASON} "
                      f"({record.gflops(task.workload):.1f} GFLOP/s > {bound:.1f})", file=sys.stderr)
                continue
            out.append(record)
        return sorted(out, key=lambda rec: rec.seconds)[:k]

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
            _warn_once(f"warning: {self.directory}: cannot write rejected.json ({err.strerror}); the rejection "
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


def summaries(logs: str, target: Target | None = None) -> list[dict]:
    """Best record per layer and algorithm under `logs` (optionally one target's). Entries that are
    not record directories (a stray file, a broken link) are skipped; a layer whose task.json
    cannot be read is skipped with a warning."""
    rows = []
    for tag in _subdirectories(logs):
        if target is not None and tag != target.tag:
            continue
        for key in _subdirectories(os.path.join(logs, tag)):
            directory = os.path.join(logs, tag, key)
            info = read_task_json(directory)
            if info is None:
                continue
            try:
                wl = Workload.from_dict(info["workload"])
                t = info["target"]
                if not isinstance(t, dict) or not isinstance(t.get("config"), dict):
                    raise TypeError("target is not {name, config: {...}, threads}")
                tgt = Target(str(t["name"]), t["config"], int(t["threads"]))
                store = LayerRecords(directory, tgt, wl)
            except (KeyError, TypeError, ValueError) as err:  # WorkloadError, RecordsError included
                _warn_once(f"warning: {os.path.join(directory, 'task.json')}: layer skipped: "
                           f"{type(err).__name__}: {err}")
                continue
            # Records of another TVM are never applied (choose, compile) nor extended (tune): say so here
            # too, rather than list them as if a compile would use them.
            foreign = store.foreign_version()
            algorithms = info.get("algorithms")
            for algorithm in algorithms if isinstance(algorithms, dict) else {}:
                if algorithm not in ALGORITHM_NAMES:
                    continue
                try:
                    task = Task(wl, algorithm)
                except Unsupported:
                    continue
                best = store.best(task)
                rows.append({"target": tag, "layer": wl.spec, "layout": wl.layout, "algorithm": algorithm,
                             "trials": store.trial_count(task),
                             "best_ms": best.seconds * 1e3 if best else None,
                             "gflops": best.gflops(wl) if best else None,
                             "tvm": foreign or tvm.__version__, "usable": foreign is None})
    return rows


def _subdirectories(path: str) -> list[str]:
    """The directories in `path`, sorted; nothing for a path that is not a readable directory."""
    try:
        names = sorted(os.listdir(path))
    except NotADirectoryError:
        return []
    except FileNotFoundError:
        return []
    except OSError as err:
        _warn_once(f"warning: {path}: cannot be read ({err.strerror}); skipped")
        return []
    return [n for n in names if os.path.isdir(os.path.join(path, n))]
