"""Repairing TVM's JSON record files: every line of a layer's two database files checked before
TVM reads them (a malformed line makes TVM crash or refuse the whole layer).

A torn last line (a killed run), or any line that is not a well-formed workload or record, is
moved aside to `*.torn`; where the directory cannot be written (read-only logs, another run
holding it) the bad lines are skipped in memory and the files are left as they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import sys

from tvm.s_tir import meta_schedule as ms

from .errors import RecordsError

DB_FILES = ("database_workload.json", "database_tuning_record.json")


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


