"""tuning/records/: what a record must be to be believed (issue 23); reads that measure nothing (issue 21)."""

from __future__ import annotations

import math
import os

import pytest

from schedules.workload import parse_spec
from tuning import cli
from tuning.records import DB_FILES, LayerRecords, PeakJudge, summaries
from tuning.task import Task

from .support.checks import host_target
from .support.records import write_record

LAYER = "h=8,ci=8,co=8,k=3,pad=1"


@pytest.fixture
def target():
    return host_target()


@pytest.fixture(autouse=True)
def idle_peak(monkeypatch):
    """No FMA benchmark: a measured peak of 1000 GFLOP/s, read on idle cores, unless a test says otherwise."""
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: 1000.0)
    monkeypatch.setattr("tuning.records.judge.peak_contended", lambda target, threads=None: False)


@pytest.mark.parametrize("run_secs", [[-0.001] * 3, [0.0, 0.0, 0.0], [1e-3, math.inf, 1e-3], [math.nan] * 3])
def test_a_record_with_a_time_no_kernel_takes_is_set_aside_never_best(tmp_path, target, capsys, run_secs):
    wl = parse_spec(LAYER)
    logs = str(tmp_path)
    write_record(logs, target, wl, seconds=2e-3)
    store = write_record(logs, target, wl, seconds=run_secs, seed=1)
    store = LayerRecords(store.directory, target, wl)  # read back as a later command would
    best = store.best(Task(wl, "direct"))
    assert best is not None and best.seconds == pytest.approx(2e-3)
    assert store.trial_count(Task(wl, "direct")) == 1
    err = capsys.readouterr().err
    # TVM writes an infinite or NaN time as bare `inf`/`nan`: such a line is not even JSON
    assert f"{DB_FILES[1]}.torn" in err and ("not all positive and finite" in err or "not a JSON line" in err)
    rows = summaries(logs)
    assert [r["best_ms"] for r in rows] == [pytest.approx(2.0)]
    assert cli.main(["records", "--logs", logs]) == 0


@pytest.mark.parametrize("busy", [False, True])
def test_a_forged_record_is_refused_however_busy_the_cores_were(tmp_path, target, monkeypatch, busy):
    monkeypatch.setattr("tuning.records.judge.peak_contended", lambda target, threads=None: busy)
    wl = parse_spec(LAYER)
    store = write_record(str(tmp_path), target, wl, seconds=1e-12)
    judged = LayerRecords(store.directory, target, wl, judge=PeakJudge(target))  # as a search or a compile reads
    assert judged.best(Task(wl, "direct")) is None
    assert os.path.exists(os.path.join(store.directory, "rejected.json"))


def test_a_read_measures_nothing_and_writes_nothing(tmp_path, target, monkeypatch):
    """`top`/`best` without a judge: the theoretical ceiling only; no FMA benchmark, no rejected.json."""
    def no_benchmark(target, threads=None):
        raise AssertionError("a read ran the FMA benchmark")

    monkeypatch.setattr("tuning.records.judge.target_peak", no_benchmark)
    wl = parse_spec(LAYER)
    forged = write_record(str(tmp_path), target, wl, seconds=1e-12)
    sound = write_record(str(tmp_path / "b"), target, wl, seconds=1e-3)
    assert forged.best(Task(wl, "direct")) is None and sound.best(Task(wl, "direct")) is not None
    assert summaries(str(tmp_path))[0]["gflops"] is None
    assert not os.path.exists(os.path.join(forged.directory, "rejected.json"))


def test_the_ceiling_holds_where_no_peak_can_be_measured(tmp_path, target, monkeypatch):
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: None)
    wl = parse_spec(LAYER)
    store = write_record(str(tmp_path), target, wl, seconds=1e-12)
    assert store.best(Task(wl, "direct")) is None
    sound = write_record(str(tmp_path / "b"), target, wl, seconds=1e-3)
    assert sound.best(Task(wl, "direct")) is not None


def test_the_ceiling_is_the_machine_description_at_a_generous_clock(target):
    from tuning.peak import ceiling_gflops

    m = target.machine
    assert ceiling_gflops(m, 2) == pytest.approx(2 * m.lanes * m.fma_units * 2 * 6.0)


@pytest.mark.parametrize("damage", ["torn last line", "no workload file"])
def test_the_model_ops_database_is_repaired_as_layer_records_are(tmp_path, target, capsys, damage):
    """logs/<target>/model-ops (tune --model's other ops) gets the layer records' repair: a damaged
    file is moved aside with a warning naming it, never a crash naming no file."""
    from tuning.graph import ops_directory
    from tuning.search.model import recorded_ops_trials

    wl = parse_spec(LAYER)
    store = write_record(str(tmp_path / "layer"), target, wl, seconds=1e-3)
    work_dir = ops_directory(str(tmp_path), target)
    os.makedirs(work_dir)
    for name in DB_FILES:
        with open(os.path.join(store.directory, name), "rb") as src, open(os.path.join(work_dir, name), "wb") as dst:
            dst.write(src.read())
    if damage == "torn last line":
        with open(os.path.join(work_dir, DB_FILES[1]), "ab") as f:
            f.write(b'[0, [[["Sch')
    else:
        os.remove(os.path.join(work_dir, DB_FILES[0]))
    assert recorded_ops_trials(str(tmp_path), target, []) == 0
    assert f"{DB_FILES[1]}.torn" in capsys.readouterr().err
