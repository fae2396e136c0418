"""tuning/search/model.py: a model's fused convs and its other ops tuned under one budget; the other
ops' records (model-ops) are one database per target, shared by every model's run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

from tuning.search.tune import SearchOptions
from tuning.target import resolve_target


def test_two_model_tunes_take_turns_on_model_ops(tmp_path, capsys, monkeypatch):
    """model-ops is one database for every model tuned on a target: a second `tune --model` waits
    for the first (it once appended to the same file at the same time), then recounts its records."""
    from tuning.graph import ops_directory
    from tuning.search import model as search_model

    target = resolve_target("x86")
    work_dir = ops_directory(str(tmp_path), target)
    os.makedirs(work_dir)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid 4242'); f.flush(); print('held', flush=True); time.sleep(1.5)"), os.path.join(work_dir, ".lock")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    ran = []
    monkeypatch.setattr(search_model, "ops_tasks", lambda graph, target: [SimpleNamespace(task_name="fused_max_pool2d")])
    monkeypatch.setattr(search_model, "_tune_ops_locked", lambda *args: ran.append(time.monotonic()))
    started = time.monotonic()
    search_model.tune_ops(None, target, str(tmp_path), 4, SearchOptions(quiet=True))
    holder.wait(timeout=30)
    assert ran and ran[0] - started >= 1.0  # it waited for the holder
    assert "waiting for another tuning run of a model's ops (pid 4242)" in capsys.readouterr().err
