"""tuning/search/tune.py: the one orchestration, under faults injected on purpose. Nothing measured is
lost (crashing, hanging and unbuildable trials are records; a killed run resumes; two runs share the
records), every failure says what went wrong, a kernel that computes garbage never wins, and a
record write that did not reach the disk stops the run, saying what is safe. Every test here tunes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tvm.s_tir import meta_schedule as ms

from schedules import ALGORITHMS, direct
from schedules.template import Algorithm
from schedules.workload import parse_spec
from tuning.deploy.library import choose
from tuning.records import DB_FILES, FAILURE_LOG, LayerRecords
from tuning.search.measure import MeasureConfig
from tuning.search.tune import SearchOptions, tune
from tuning.target import resolve_target
from tuning.task import Task

from .support import faults

pytestmark = pytest.mark.slow  # tuning runs: `pytest -m "not slow"` skips them

LAYER = "h=8,ci=8,co=8,k=3,pad=1"
RECORDS = DB_FILES[1]
FAULTY_LAYER = "h=6,w=7,ci=4,co=8,k=3,pad=1"
QUICK = MeasureConfig(min_repeat_ms=1, run_timeout=4, build_timeout=30)


@pytest.fixture
def no_peak(monkeypatch):
    """No FMA benchmark in these tests: the peak is unknown (a search judges its records by it)."""
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: None)
    monkeypatch.setattr("tuning.records.judge.peak_contended", lambda target, threads=None: False)


@pytest.mark.usefixtures("no_peak")
def test_a_tuning_run_resumes_past_malformed_lines(tmp_path, target):
    from tuning.search.measure import MeasureConfig
    from tuning.search.tune import SearchOptions, tune

    logs, wl = str(tmp_path), parse_spec(LAYER)
    options = SearchOptions(measure=MeasureConfig(number=1, repeat=2, min_repeat_ms=5), trials_per_iter=2, quiet=True)
    store = tune([Task(wl, "direct")], target, logs, 2, options)
    path = os.path.join(store.directory, RECORDS)
    with open(path, "a") as f:
        f.write('{}\n[0]\n"x"\n')
    store = tune([Task(wl, "direct")], target, logs, 3, options)  # TVM would have crashed reading them
    assert store.trial_count(Task(wl, "direct")) == 3  # the 2 recorded count, 1 more measured
    assert len(open(path + ".torn").read().splitlines()) == 3
    assert [json.loads(line)[0] for line in open(path)] == [0, 0, 0]


@pytest.mark.usefixtures("no_peak")
def test_a_record_write_that_did_not_reach_the_disk_stops_the_run(tmp_path, monkeypatch):
    """TVM's database appends without reporting a failed write (a full disk): the search compares
    what it holds with what the file has, and says how many trials are safe."""
    import tuning.search.tune as tune_module
    from schedules.workload import parse_spec
    from tuning.records import RecordsError
    from tuning.search.measure import MeasureConfig
    from tuning.search.tune import SearchOptions, tune
    from tuning.target import resolve_target
    from tuning.task import Task

    real = tune_module._run_search

    def lose_the_last_line(todo, target, work_dir, database, *args, **kwargs):
        real(todo, target, work_dir, database, *args, **kwargs)
        path = os.path.join(work_dir, "database_tuning_record.json")
        lines = open(path).read().splitlines(keepends=True)
        open(path, "w").write("".join(lines[:-1]))  # the disk filled before the last append

    monkeypatch.setattr(tune_module, "_run_search", lose_the_last_line)
    quick = MeasureConfig(number=1, repeat=2, min_repeat_ms=5)
    with pytest.raises(RecordsError, match=r"1 of 3 trial records did not reach the disk .*the 2 on disk are safe"):
        tune([Task(parse_spec("h=8,ci=8,co=8,k=3,pad=1"), "direct")], resolve_target("x86"), str(tmp_path), 3,
             SearchOptions(measure=quick, trials_per_iter=3, seed=1, quiet=True))


@pytest.mark.usefixtures("no_peak")
def test_a_lost_write_stops_the_run_at_the_batch_that_lost_it(tmp_path, monkeypatch):
    """Checked after every batch, not only at the end: the second batch is never measured once the
    first lost a record, and the error says what is safe."""
    from schedules.workload import parse_spec
    from tuning.records import RecordsError, layer_directory
    from tuning.search import plugins
    from tuning.search.measure import MeasureConfig
    from tuning.search.tune import SearchOptions, tune
    from tuning.target import resolve_target
    from tuning.task import Task

    wl, target = parse_spec("h=8,ci=8,co=8,k=3,pad=1"), resolve_target("x86")
    path = os.path.join(layer_directory(str(tmp_path), target, wl), "database_tuning_record.json")
    real_report, batches = plugins.Progress.report, []

    def report(self, task_id, seconds):
        real_report(self, task_id, seconds)
        batches.append(len(seconds))
        lines = open(path).read().splitlines(keepends=True)
        open(path, "w").write("".join(lines[:-1]))  # the disk filled before the batch's last append

    monkeypatch.setattr(plugins.Progress, "report", report)
    quick = MeasureConfig(number=1, repeat=2, min_repeat_ms=5)
    with pytest.raises(RecordsError, match=r"1 of 3 trial records did not reach the disk .*the 2 on disk are safe"):
        tune([Task(wl, "direct")], target, str(tmp_path), 9,
             SearchOptions(measure=quick, trials_per_iter=3, seed=1, quiet=True))
    assert batches == [3]


# -- faults injected: crashes, hangs, failed builds, kills, concurrent runs, wrong kernels ---------------
def records_of(logs, wl=None):
    store = LayerRecords.existing(logs, resolve_target("x86"), wl or parse_spec(FAULTY_LAYER))
    return store, store.database.get_all_tuning_records()


def test_crashing_hanging_and_unbuildable_trials_are_recorded_as_failed(tmp_path):
    logs, wl = str(tmp_path), parse_spec(FAULTY_LAYER)
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

    logs, wl = str(tmp_path), parse_spec(FAULTY_LAYER)
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=30, f_build=faults.failing_build)
    monkeypatch.setattr(measure, "builder", lambda target, config: builder)
    store = tune([Task(wl, "direct")], resolve_target("x86"), logs, 6, SearchOptions(measure=QUICK, quiet=True))
    reasons = [json.loads(l) for l in open(os.path.join(store.directory, FAILURE_LOG))]
    assert reasons and all(r["stage"] == "build" and "injected build failure" in r["error"] for r in reasons)
    assert store.trial_count(Task(wl, "direct")) == 6


def _tune_cmd(logs, trials):
    return [sys.executable, "-m", "tuning.cli", "tune", FAULTY_LAYER, "--trials", str(trials), "--logs", logs,
            "--min-repeat-ms", "1", "--batch", "3"]


def _env():
    return dict(os.environ, PYTHONPATH=os.getcwd())


def test_killed_run_resumes_and_tolerates_a_torn_line(tmp_path):
    logs, wl = str(tmp_path), parse_spec(FAULTY_LAYER)
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


def test_two_concurrent_runs_do_not_corrupt_the_records(tmp_path):
    logs = str(tmp_path)
    procs = [subprocess.Popen(_tune_cmd(logs, 5), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=400)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    store, records = records_of(logs)
    assert len(records) == 5  # the second run waited, saw the budget met, measured nothing more
    assert any("waiting for another tuning run" in e for e in errs)


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
