"""tuning/records/: files repaired line by line (repair), reads that measure nothing and write nothing
(store), what a record must be to be believed (judge), and `convtune records` (summary)."""

from __future__ import annotations

import builtins
import json
import math
import os

import pytest

from schedules.workload import parse_spec
from tuning import cli
from tuning.deploy.library import choose
from tuning.records import DB_FILES, PEAK_MARGIN, PEAK_REASON, LayerRecords, PeakJudge, repair_json_lines, summaries
from tuning.search.measure import MeasureConfig
from tuning.search.tune import SearchOptions, tune
from tuning.target import resolve_target
from tuning.task import Task

from .support.checks import host_target
from .support.records import write_record

LAYER = "h=8,ci=8,co=8,k=3,pad=1"
RECORDS = DB_FILES[1]
QUICK = MeasureConfig(min_repeat_ms=1, run_timeout=4, build_timeout=30)


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


# -- repair: malformed record lines ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, target):
    return write_record(str(tmp_path / "logs"), target, parse_spec(LAYER), seconds=1e-3)


def _body(store) -> list:
    return json.loads(open(os.path.join(store.directory, RECORDS)).readline())[1]


@pytest.mark.parametrize("bad", ["{}", "[0]", '"x"', "[0, [1]]", "7", "null", "[true, BODY]", "[1, BODY]",
                                 "[-1, BODY]", '[0, ["trace", null, {"kind": "llvm"}, []]]'])
def test_a_malformed_record_line_is_moved_aside(bad, store, target, capsys):
    path = os.path.join(store.directory, RECORDS)
    line = bad.replace("BODY", json.dumps(_body(store)))
    with open(path, "a") as f:
        f.write(line + "\n")
    again = LayerRecords(store.directory, target, store.workload)  # TVM would crash or raise here
    assert again.best(Task(store.workload, "direct")).seconds == pytest.approx(1e-3)
    assert f"{path}:2: " in capsys.readouterr().err
    assert open(path + ".torn").read() == line + "\n"
    assert len(open(path).read().splitlines()) == 1


def test_a_bad_workload_line_takes_its_records_and_renumbers_the_rest(tmp_path, target, capsys):
    logs, wl = str(tmp_path / "logs"), parse_spec(LAYER)
    write_record(logs, target, wl, "direct", seconds=1e-3)
    store = write_record(logs, target, wl, "im2col", seconds=2e-3)
    wpath = os.path.join(store.directory, DB_FILES[0])
    lines = open(wpath).read().splitlines()
    open(wpath, "w").write("[0]\n" + lines[1] + "\n")  # the direct workload ruined
    again = LayerRecords(store.directory, target, wl)
    err = capsys.readouterr().err
    assert f"{wpath}:1: not a workload" in err and "is not a workload, moved to" in err
    assert again.best(Task(wl, "direct")) is None
    assert again.best(Task(wl, "im2col")).seconds == pytest.approx(2e-3)  # index 1 became 0
    assert [json.loads(l)[0] for l in open(os.path.join(store.directory, RECORDS))] == [0]
    assert len(open(os.path.join(store.directory, RECORDS + ".torn")).read().splitlines()) == 1


def test_a_record_tvm_cannot_replay_is_moved_aside(tmp_path, target, capsys):
    logs, wl = str(tmp_path / "logs"), parse_spec(LAYER)
    write_record(logs, target, wl, "direct", seconds=1e-3)
    store = write_record(logs, target, wl, "im2col", seconds=2e-3)
    path = os.path.join(store.directory, RECORDS)
    direct = json.loads(open(path).readline())
    unknown = json.loads(json.dumps(direct))
    unknown[1][0][0][0][0] = "NoSuchInstruction"
    with open(path, "a") as f:
        f.write(json.dumps([1, direct[1]]) + "\n")  # direct's trace on im2col's workload
        f.write(json.dumps(unknown) + "\n")
    again = LayerRecords(store.directory, target, wl)  # TVM alone refuses the whole layer
    err = capsys.readouterr().err
    assert f"{path}:3: TVM cannot read it" in err and f"{path}:4: TVM cannot read it" in err
    assert again.best(Task(wl, "direct")).seconds == pytest.approx(1e-3)
    assert again.best(Task(wl, "im2col")).seconds == pytest.approx(2e-3)
    assert len(open(path + ".torn").read().splitlines()) == 2


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"workload": 3, "target": {}}'])
def test_an_unreadable_task_json_is_treated_as_absent(content, store, target, capsys):
    open(os.path.join(store.directory, "task.json"), "w").write(content)
    logs = os.path.dirname(os.path.dirname(store.directory))
    assert summaries(logs) == []
    assert "task.json" in capsys.readouterr().err
    assert choose(store.workload, "direct", target, logs).tuned  # the records themselves still count
    assert cli.main(["records", "--logs", logs]) == 0


def test_records_skips_stray_files_and_symlink_loops(store, capsys):
    logs = os.path.dirname(os.path.dirname(store.directory))
    open(os.path.join(logs, "README"), "w").write("stray")
    os.symlink("loop", os.path.join(logs, "loop"))
    os.symlink("loop2", os.path.join(os.path.dirname(store.directory), "loop2"))
    open(os.path.join(os.path.dirname(store.directory), "notes.txt"), "w").write("stray")
    assert cli.main(["records", "--logs", logs]) == 0
    assert "direct" in capsys.readouterr().out


def test_corrupt_line_is_skipped_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "database_tuning_record.json"
    path.write_text('[0, [1]]\n{corrupt\n[0, [2]]\n')
    assert repair_json_lines(str(path)) == 1
    assert f"{path}:2: not a JSON line" in capsys.readouterr().err
    assert path.read_text() == "[0, [1]]\n[0, [2]]\n"


# -- store: read-only logs ---------------------------------------------------------------------------------------------
def _deny_writes_under(monkeypatch, root):
    """What chmod -R a-w does for a user other than root (root ignores it)."""
    root = os.path.realpath(root)

    def under(path):
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(os.fspath(path)).startswith(root)

    def deny(path):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    real_open, real_os_open, real_replace = builtins.open, os.open, os.replace

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            deny(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND) and under(path):
            deny(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_replace(src, dst, *args, **kwargs):
        if under(src) or under(dst):
            deny(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "replace", guarded_replace)


@pytest.fixture
def read_only_logs(store, monkeypatch):
    logs = os.path.dirname(os.path.dirname(store.directory))
    with open(os.path.join(store.directory, RECORDS), "a") as f:
        f.write("{}\n")  # a bad line that cannot be moved aside
    before = {name: open(os.path.join(store.directory, name), "rb").read() for name in os.listdir(store.directory)}
    modes = {}
    for d, _, files in os.walk(logs):
        for p in [d] + [os.path.join(d, f) for f in files]:
            modes[p] = os.stat(p).st_mode
            os.chmod(p, modes[p] & ~0o222)
    if os.geteuid() == 0:
        _deny_writes_under(monkeypatch, logs)
    yield logs, store, before
    monkeypatch.undo()
    for p, mode in modes.items():
        os.chmod(p, mode)


def test_records_and_compile_work_on_read_only_logs(read_only_logs, tmp_path, capsys, monkeypatch):
    logs, store, before = read_only_logs
    assert cli.main(["records", "--logs", logs]) == 0
    captured = capsys.readouterr()
    assert "direct" in captured.out
    assert f"{os.path.join(store.directory, RECORDS)}:2: " in captured.err and "skipped" in captured.err
    lib = str(tmp_path / "out" / "k.so")
    assert cli.main(["compile", LAYER, "--algorithm", "direct", "--logs", logs, "-o", lib]) == 0
    assert "tuned" in capsys.readouterr().out and os.path.exists(lib)
    after = {name: open(os.path.join(store.directory, name), "rb").read() for name in os.listdir(store.directory)}
    assert after == before  # nothing written: no .torn, no .lock, no rejected.json


def test_a_rejection_that_cannot_be_written_still_holds_for_the_run(read_only_logs, monkeypatch, capsys):
    logs, store, _ = read_only_logs
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: 1e-3)
    again = LayerRecords(store.directory, store.target, store.workload, judge=PeakJudge(store.target))
    assert again.best(Task(store.workload, "direct")) is None
    assert "cannot write rejected.json" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(store.directory, "rejected.json"))


def test_tuning_read_only_logs_is_refused_in_one_line(read_only_logs):
    logs, store, _ = read_only_logs
    from tuning.records import RecordsError

    again = LayerRecords(store.directory, store.target, store.workload)
    with pytest.raises(RecordsError, match="tuning needs writable --logs"):
        with again.lock():
            pass


@pytest.mark.slow  # tunes
def test_records_of_another_tvm_version_or_cpu_are_not_applied(tmp_path, capsys):
    logs, wl = str(tmp_path), parse_spec("h=6,w=7,ci=4,co=8,k=3,pad=1")
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


# -- judge: nothing faster than the machine ----------------------------------------------------------------------------
def test_a_record_faster_than_the_peak_is_rejected(store, target, monkeypatch, capsys):
    wl = store.workload
    gflops = wl.flops / 1e-3 / 1e9
    logs = os.path.dirname(os.path.dirname(store.directory))
    # PEAK_MARGIN: the peak's own measurement error
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: gflops / PEAK_MARGIN * 0.9)
    assert not choose(wl, "direct", target, logs, PeakJudge(target)).tuned  # as compile judges
    assert PEAK_REASON in capsys.readouterr().err
    rejected = json.load(open(os.path.join(store.directory, "rejected.json")))
    assert [v.split(" (")[0] for v in rejected.values()] == [f"direct: {PEAK_REASON}"]
    assert summaries(logs)[0]["gflops"] is None  # never printed as the best


def test_a_record_under_the_peak_stands(store, target, monkeypatch):
    gflops = store.workload.flops / 1e-3 / 1e9
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: gflops * 1.1)
    logs = os.path.dirname(os.path.dirname(store.directory))
    assert choose(store.workload, "direct", target, logs, PeakJudge(target)).tuned


def test_a_peak_measured_on_busy_cores_rejects_nothing(store, target, monkeypatch, capsys):
    monkeypatch.setattr("tuning.records.errors._WARNED", set())  # said once a process: an earlier test may have
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: 1e-6)
    monkeypatch.setattr("tuning.records.judge.peak_contended", lambda target, threads=None: True)
    judged = LayerRecords(store.directory, target, store.workload, judge=PeakJudge(target))
    assert judged.best(Task(store.workload, "direct")) is not None
    assert "busy cores" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(store.directory, "rejected.json"))


@pytest.mark.parametrize("ratio, stands", [(3.9, True), (4.1, False)])
def test_winograd_may_exceed_the_peak_by_its_saving_in_multiplications(ratio, stands, tmp_path, target,
                                                                       monkeypatch):
    wl = parse_spec(LAYER)
    store = write_record(str(tmp_path), target, wl, "winograd-f4", seconds=1e-3)
    gflops = wl.flops / 1e-3 / 1e9  # F(4x4, 3x3): 36 multiplications per 16 outputs, 4x fewer than 9 each
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: gflops / ratio / PEAK_MARGIN)
    judged = LayerRecords(store.directory, target, wl, judge=PeakJudge(target))
    assert (judged.best(Task(wl, "winograd-f4")) is not None) == stands
