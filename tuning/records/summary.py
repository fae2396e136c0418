"""Summaries: the best record per layer and algorithm under a logs directory (`convtune records`).
A read: nothing measured, nothing written."""

from __future__ import annotations

import os

import tvm

from schedules.template import Unsupported
from schedules.workload import Workload

from ..target import Target
from ..task import ALGORITHM_NAMES, Task
from .errors import warn_once
from .store import LayerRecords, read_task_json


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
                warn_once(f"warning: {os.path.join(directory, 'task.json')}: layer skipped: "
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
        warn_once(f"warning: {path}: cannot be read ({err.strerror}); skipped")
        return []
    return [n for n in names if os.path.isdir(os.path.join(path, n))]
