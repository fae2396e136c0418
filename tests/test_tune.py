"""tuning/search/tune.py over damaged records: a run resumes past malformed lines, and a record that
did not reach the disk stops it, saying what is safe (issue 16)."""

from __future__ import annotations

import json
import os

import pytest

from schedules.workload import parse_spec
from tuning.records import DB_FILES
from tuning.task import Task

LAYER = "h=8,ci=8,co=8,k=3,pad=1"
RECORDS = DB_FILES[1]


@pytest.fixture(autouse=True)
def no_peak(monkeypatch):
    """No FMA benchmark in these tests: the peak is unknown (a search judges its records by it)."""
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: None)
    monkeypatch.setattr("tuning.records.judge.peak_contended", lambda target, threads=None: False)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
