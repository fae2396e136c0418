"""Faults injected on purpose: nothing measured is lost, and every failure says what went wrong."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from tvm.s_tir import meta_schedule as ms

from schedules import ALGORITHMS, direct
from schedules.template import Algorithm
from schedules.workload import parse_spec
from tuning.deploy.kernel import LibraryError, read_sidecar
from tuning.deploy.library import choose
from tuning.records import FAILURE_LOG, LayerRecords, repair_json_lines
from tuning.search.measure import MeasureConfig
from tuning.search.tune import SearchOptions, tune
from tuning.target import resolve_target
from tuning.task import Task

from .support import faults

pytestmark = pytest.mark.slow  # tuning runs: `pytest -m "not slow"` skips them

LAYER = "h=6,w=7,ci=4,co=8,k=3,pad=1"
QUICK = MeasureConfig(min_repeat_ms=1, run_timeout=4, build_timeout=30)


def records_of(logs, wl=None):
    store = LayerRecords.existing(logs, resolve_target("x86"), wl or parse_spec(LAYER))
    return store, store.database.get_all_tuning_records()


def test_crashing_hanging_and_unbuildable_trials_are_recorded_as_failed(tmp_path):
    logs, wl = str(tmp_path), parse_spec(LAYER)
    runner = ms.runner.LocalRunner(timeout_sec=QUICK.run_timeout, evaluator_config=QUICK.evaluator(),
                                   f_run_evaluator=faults.faulty_run)
    started = time.time()
    store = tune([Task(wl, "direct")], resolve_target("x86"), logs, 8, SearchOptions(measure=QUICK, quiet=True), runner)
    assert time.time() - started < 240  # the hung trials were cut off by the run timeout
    records = store.database.get_all_tuning_records()
    assert len(records) == 8  # crashed and hung trials are records too (MetaSchedule's failed time)
    failed = [r for r in records if float(r.run_secs[0]) >= 1e9]
    assert 2 <= len(failed) < 8
    reasons = [json.loads(l) for l in open(os.path.join(store.directory, FAILURE_LOG))]
    assert len(reasons) == len(failed) and all(r["stage"] == "run" and r["error"] for r in reasons)
    assert any("terminated" in r["error"].lower() or "timeout" in r["error"].lower() for r in reasons)
    assert store.best(Task(wl, "direct")).seconds < 1  # the run went on and found working kernels


def test_failing_builds_are_recorded_with_their_reason(tmp_path, monkeypatch):
    import tuning.search.measure as measure

    logs, wl = str(tmp_path), parse_spec(LAYER)
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=30, f_build=faults.failing_build)
    monkeypatch.setattr(measure, "builder", lambda target, config: builder)
    store = tune([Task(wl, "direct")], resolve_target("x86"), logs, 6, SearchOptions(measure=QUICK, quiet=True))
    reasons = [json.loads(l) for l in open(os.path.join(store.directory, FAILURE_LOG))]
    assert reasons and all(r["stage"] == "build" and "injected build failure" in r["error"] for r in reasons)
    assert store.trial_count(Task(wl, "direct")) == 6


def _tune_cmd(logs, trials):
    return [sys.executable, "-m", "tuning.cli", "tune", LAYER, "--trials", str(trials), "--logs", logs,
            "--min-repeat-ms", "1", "--batch", "3"]


def _env():
    return dict(os.environ, PYTHONPATH=os.getcwd())


def test_killed_run_resumes_and_tolerates_a_torn_line(tmp_path):
    logs, wl = str(tmp_path), parse_spec(LAYER)
    proc = subprocess.Popen(_tune_cmd(logs, 40), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    path = None
    deadline = time.time() + 300
    while time.time() < deadline:
        found = [os.path.join(d, f) for d, _, fs in os.walk(logs) for f in fs if f == "database_tuning_record.json"]
        if found and sum(1 for _ in open(found[0])) >= 3:  # the first batch is in
            path = found[0]
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # power loss: no clean-up of any kind
    proc.wait()
    assert path, "the run never wrote a record"
    kept = [l for l in open(path).read().splitlines() if l.strip()]
    with open(path, "a") as f:
        f.write('[0, [[["GetSBlock", [], ["pad"')  # a torn last line
    done = subprocess.run(_tune_cmd(logs, len(kept) + 3), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "not a JSON line, moved to" in done.stderr and os.path.exists(path + ".torn")
    store, records = records_of(logs, wl)
    assert len(records) == len(kept) + 3  # nothing lost, nothing measured twice
    assert len({str(r.trace) for r in records}) == len(records)
    lines = [json.loads(l) for l in open(path)]  # every line is JSON again
    assert len(lines) == len(records)


def test_corrupt_line_is_skipped_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "database_tuning_record.json"
    path.write_text('[0, [1]]\n{corrupt\n[0, [2]]\n')
    assert repair_json_lines(str(path)) == 1
    assert f"{path}:2: not a JSON line" in capsys.readouterr().err
    assert path.read_text() == "[0, [1]]\n[0, [2]]\n"


def test_two_concurrent_runs_do_not_corrupt_the_records(tmp_path):
    logs = str(tmp_path)
    procs = [subprocess.Popen(_tune_cmd(logs, 5), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=400)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    store, records = records_of(logs)
    assert len(records) == 5  # the second run waited, saw the budget met, measured nothing more
    assert any("waiting for another tuning run" in e for e in errs)


def test_records_of_another_tvm_version_or_cpu_are_not_applied(tmp_path, capsys):
    logs, wl = str(tmp_path), parse_spec(LAYER)
    tune([Task(wl, "direct")], resolve_target("x86"), logs, 2, SearchOptions(measure=QUICK, quiet=True))
    target = resolve_target("x86")
    store = LayerRecords.existing(logs, target, wl)
    assert choose(wl, "direct", target, logs).tuned

    # the same records seen from another CPU's directory: never applied there
    other = resolve_target('{"kind": "llvm", "mcpu": "skylake", "num-cores": %d}' % target.threads)
    os.makedirs(os.path.join(logs, other.tag))
    os.rename(store.directory, os.path.join(logs, other.tag, wl.key))
    assert not choose(wl, "direct", other, logs).tuned

    # another TVM version
    os.rename(os.path.join(logs, other.tag, wl.key), store.directory)
    info = json.load(open(os.path.join(store.directory, "task.json")))
    info["tvm"] = "0.18.0"
    json.dump(info, open(os.path.join(store.directory, "task.json"), "w"))
    assert not choose(wl, "direct", target, logs).tuned
    assert "made with TVM 0.18.0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="made with TVM 0.18.0"):
        tune([Task(wl, "direct")], target, logs, 4, SearchOptions(measure=QUICK, quiet=True))


def _wrong_conv(wl):
    """Direct convolution that silently drops the last input channel: a schedule computing garbage."""
    from tvm import te

    data = te.placeholder(wl.data_shape, name="data")
    weight = te.placeholder(wl.weight_shape, name="weight")
    rh, rw = te.reduce_axis((0, wl.kh), "rh"), te.reduce_axis((0, wl.kw), "rw")
    rc = te.reduce_axis((0, wl.ci - 1), "rc")
    out = te.compute(wl.out_shape, lambda n, y, x, c: te.sum(
        data[n, y + rh, x + rw, rc] * weight[rh, rw, rc, c], axis=[rh, rw, rc]), name="conv2d")
    from schedules.template import phase

    return {"conv2d": phase("conv2d", data=data, weight=weight, out=out)}


def test_a_kernel_that_computes_garbage_never_wins(tmp_path, monkeypatch, capsys):
    wl = parse_spec("h=6,w=6,ci=4,co=8,k=3")
    wrong = Algorithm("wrong", ("NHWC",), "test only", direct.check, _wrong_conv, direct.schedule)
    monkeypatch.setitem(ALGORITHMS, "wrong", wrong)
    monkeypatch.setattr("tuning.task.ALGORITHM_NAMES", tuple(ALGORITHMS) + ("ms-auto",))
    logs = str(tmp_path)
    store = tune([Task(wl, "wrong")], resolve_target("x86"), logs, 3, SearchOptions(measure=QUICK, quiet=True))
    assert "rejected by the reference check" in capsys.readouterr().err
    assert store.best(Task(wl, "wrong")) is None  # every record was rejected
    assert len(store.rejected()) == 3
    assert not choose(wl, "wrong", resolve_target("x86"), logs).tuned


def test_sidecar_paths_cannot_leave_the_library_directory(tmp_path):
    lib = tmp_path / "k.so"
    lib.write_bytes(b"")
    side = {"workload": {}, "functions": {}, "run_function": "conv2d", "target": {}, "library": "../../etc/k.so"}
    (tmp_path / "k.json").write_text(json.dumps(side))
    with pytest.raises(LibraryError, match="must be a file name beside the sidecar"):
        read_sidecar(str(lib))
    (tmp_path / "k.json").write_text("{not json")
    with pytest.raises(LibraryError, match="not valid JSON"):
        read_sidecar(str(lib))


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
