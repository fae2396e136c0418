"""Issue 16: nothing lost, nothing believed that wasn't measured, never a traceback.

Bad input is refused in one line; malformed or read-only records neither crash nor get lost; a
record faster than the machine can be is never the best; a library is checked before it is loaded.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import shutil

import pytest

from schedules.workload import WorkloadError, parse_spec
from tuning import cli
from tuning.deploy.bundle import BundleError, read_manifest
from tuning.deploy.kernel import LibraryError, check_sidecar, read_sidecar
from tuning.deploy.library import Choice, choose, export, in_memory_kernel, sidecar
from tuning.deploy.verify import Check, check_library, print_checks
from tuning.records import DB_FILES, PEAK_MARGIN, PEAK_REASON, LayerRecords, PeakJudge, summaries
from tuning.target import TargetError, elf_machine, host_cores, resolve_target
from tuning.task import Task

from .support.checks import host_target
from .support.records import write_record

LAYER = "h=8,ci=8,co=8,k=3,pad=1"
RECORDS = DB_FILES[1]


@pytest.fixture(autouse=True)
def no_peak(monkeypatch):
    """No FMA benchmark in these tests: the peak is unknown unless a test sets one."""
    monkeypatch.setattr("tuning.records.judge.target_peak", lambda target, threads=None: None)
    monkeypatch.setattr("tuning.records.judge.peak_contended", lambda target, threads=None: False)


def one_line_error(capsys, text):
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1, err
    return err


# -- A: bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, field", [
    ("h=\u0668,ci=8,co=8,k=3", "h"),  # ARABIC-INDIC DIGIT EIGHT: int() takes it
    ("h=8_0,ci=8,co=8,k=3", "h"),
    ("h=+8,ci=8,co=8,k=3", "h"),
    ("h=8,ci=8,co=8,k=3,pad=1:1", "pad"),
    ("h=8,ci=8,co=8,k=3,pad=1/1", "pad"),
    ("h=8,ci=8,co=8,k=3,stride=1x", "stride"),
])
def test_spec_numbers_are_ascii_decimal_integers_separated_by_x(spec, field):
    with pytest.raises(WorkloadError) as err:
        parse_spec(spec)
    assert err.value.field == field and "integer" in err.value.rule


def test_x_remains_the_separator():
    wl = parse_spec("h=9,w=7,ci=4,co=6,kh=3,kw=1,stride=2x1,pad=1x0x2x1")
    assert wl.stride == (2, 1) and wl.pad == (1, 0, 2, 1)


@pytest.mark.parametrize("spec, tensor", [
    ("h=100000,w=100000,ci=4096,co=8,k=1", "input"),
    ("h=46340,w=46340,ci=1,co=2,k=1", "output"),  # the input under 2**31 elements, the output over
    ("h=46340,w=46340,ci=1,co=1,k=3,pad=2", "padded input"),
    ("h=8,ci=65536,co=65536,k=1", "weight"),
])
def test_a_layer_overflowing_int32_indices_is_refused(spec, tensor):
    with pytest.raises(WorkloadError, match=f"the {tensor} would hold .*\\(2\\*\\*31 - 1\\)") as err:
        parse_spec(spec)
    assert err.value.field == "shape"


@pytest.mark.parametrize("text, message", [
    ('{"kind": "c"}', "kind 'c' is not supported"),
    ('{"kind": "cuda"}', "kind 'cuda' is not supported"),
    ('{"kind": "llvm", "num-cores": 0}', "num-cores must be a positive integer"),
    ('{"kind": "llvm", "num-cores": -2}', "num-cores must be a positive integer"),
    ('{"kind": "llvm", "num-cores": "2"}', "num-cores must be a positive integer"),
    ('{"kind": "llvm", "num-cores": true}', "num-cores must be a positive integer"),
])
def test_targets_are_llvm_with_a_positive_core_count(text, message):
    with pytest.raises(TargetError, match=message):
        resolve_target(text)


@pytest.mark.parametrize("args, message", [
    (["tune", LAYER, "--run-timeout", "0"], "--run-timeout: must be a number of seconds > 0, got 0"),
    (["tune", LAYER, "--run-timeout", "nan"], "--run-timeout: must be"),
    (["tune", LAYER, "--min-repeat-ms", "-1"], "--min-repeat-ms: must be a number of milliseconds >= 0"),
    (["bench", LAYER, "--min-repeat-ms", "-0.5"], "--min-repeat-ms: must be a number of milliseconds >= 0"),
    (["tune", LAYER, "--threads", str(8 * host_cores())], f"--threads: {8 * host_cores()} threads on this machine's"),
    (["compile", LAYER, "--threads", str(8 * host_cores())], f"--threads: {8 * host_cores()} threads on this "
                                                              f"machine's {host_cores()} cores would share cores"),
])
def test_bad_options_are_refused_in_one_line(args, message, capsys):
    assert cli.main(args) == 2
    one_line_error(capsys, f"convtune {args[0]}: error: {message}")


@pytest.mark.parametrize("command", ["tune", "compile", "records"])
def test_logs_that_is_a_file_is_refused_in_one_line(command, tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.write_text("not a directory")
    args = [command] + ([LAYER] if command != "records" else []) + ["--logs", str(logs)]
    assert cli.main(args) == 2
    one_line_error(capsys, f"--logs: {logs} is not a directory")
    assert cli.main(args[:-1] + [str(logs / "sub")]) == 2
    one_line_error(capsys, f"is under {logs}, which is not a directory")


def test_force_threads_allows_more_threads_than_cores(monkeypatch):
    monkeypatch.setattr("tuning.app.set_threads", lambda n: None)
    args = argparse.Namespace(command="compile", target="x86", threads=8 * host_cores(), force_threads=True)
    assert cli._target(args).threads == 8 * host_cores()
    with pytest.raises(cli.UsageError, match="--force-threads"):
        cli._target(argparse.Namespace(**{**vars(args), "force_threads": False}))


# -- B: malformed record lines --------------------------------------------------------------------------
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


# -- C: read-only logs ----------------------------------------------------------------------------------
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


# -- D: nothing faster than the machine ---------------------------------------------------------------
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


# -- E: verify checks the library before it loads it -----------------------------------------------------
@pytest.fixture(scope="module")
def library(tmp_path_factory):
    target = host_target()
    path = str(tmp_path_factory.mktemp("lib") / "k.so")
    export(Choice(Task(parse_spec(LAYER), "direct", target.machine), None, None), target, path)
    return path


def _copy(library, tmp_path, side_edit=None, truncate=None) -> str:
    path = str(tmp_path / "k.so")
    shutil.copy(library, path)
    side = json.load(open(library[:-3] + ".json"))
    if side_edit:
        side_edit(side)
    json.dump(side, open(str(tmp_path / "k.json"), "w"))
    if truncate:
        with open(path, "r+b") as f:
            f.truncate(truncate(os.path.getsize(path)))
    return path


@pytest.mark.parametrize("cut", [lambda n: n - 1, lambda n: n // 2, lambda n: 40])
def test_a_truncated_library_is_refused_in_one_line(cut, library, tmp_path, capsys):
    path = _copy(library, tmp_path, truncate=cut)
    with pytest.raises(LibraryError, match="truncated"):
        elf_machine(path)
    assert cli.main(["verify", path]) == 2
    one_line_error(capsys, "truncated")


def test_a_whole_library_verifies_with_a_summary(library, tmp_path, capsys):
    assert cli.main(["verify", _copy(library, tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1/1 functions ok"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(workload=[1, 2]), "workload: must be a dict"),
    (lambda s: s["workload"].pop("h"), "workload: "),
    (lambda s: s.update(functions=[]), "functions: must be a dict"),
    (lambda s: s["functions"]["conv2d"].update(args="data"), "functions.conv2d: must be"),
    (lambda s: s["functions"]["conv2d"]["args"][0].update(shape=["1"]), "functions.conv2d.args[0]: must be"),
    (lambda s: s["functions"]["conv2d"]["args"][0].update(dtype="float77"), "unknown dtype"),
    (lambda s: s.update(run_function="conv2d_packed"), "run_function: 'conv2d_packed' is not one of"),
    (lambda s: s.update(threads=0), "threads: must be a positive integer"),
    (lambda s: s.update(target="x86"), "target: must be a dict"),
])
def test_sidecar_fields_and_types_are_checked(edit, message, library, tmp_path, capsys):
    path = _copy(library, tmp_path, side_edit=edit)
    with pytest.raises(LibraryError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_sidecar(path)
    assert cli.main(["verify", path]) == 2
    one_line_error(capsys, message)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["functions"]["conv2d"]["args"][1].update(shape=[3, 3, 8, 16]),
     "conv2d: argument 'weight' is float32[3, 3, 8, 16] in the sidecar, but direct computes"),
    (lambda s: s["functions"]["conv2d"]["args"].reverse(), "conv2d: the sidecar's arguments (out, weight, data)"),
    (lambda s: s["functions"].update(pack_weight={"args": []}), "names function 'pack_weight'"),
])
def test_sidecar_arguments_must_be_the_computes(edit, message, library, tmp_path, capsys):
    assert cli.main(["verify", _copy(library, tmp_path, side_edit=edit)]) == 2
    one_line_error(capsys, message)


def test_a_function_the_library_lacks_is_refused(target):
    wl = parse_spec(LAYER)
    kernel = in_memory_kernel(Choice(Task(wl, "direct", target.machine), None, None), target)
    kernel.side = sidecar(Choice(Task(wl, "winograd-f2", target.machine), None, None), target, "k.so", None)
    with pytest.raises(LibraryError, match="does not export 'pack_weight'"):
        check_library(kernel)


def test_print_checks_ends_with_a_summary(capsys):
    status = print_checks([("a", [Check("conv2d", 0.0, 1.0)]), ("b", [Check("conv2d", 2.0, 1.0)])])
    assert status == 1 and capsys.readouterr().out.splitlines()[-1] == "1/2 functions ok"


def test_a_bundle_without_layers_is_refused(tmp_path):
    json.dump({"manifest_version": 1, "layers": [], "target": {}}, open(tmp_path / "manifest.json", "w"))
    with pytest.raises(BundleError, match="'layers' is empty"):
        read_manifest(str(tmp_path))


def test_check_sidecar_names_a_bundle_entry():
    with pytest.raises(LibraryError, match="manifest.json: layer 0: sidecar lacks 'algorithm'"):
        check_sidecar({"workload": {}, "functions": {}, "run_function": "conv2d", "target": {}},
                      "manifest.json: layer 0")


# -- F: never a traceback -----------------------------------------------------------------------------
def test_an_unexpected_exception_is_one_line_and_a_crash_log(tmp_path, monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(cli, "cmd_records", boom)
    monkeypatch.setenv("CONVTUNE_CACHE", str(tmp_path / "cache"))
    assert cli.main(["records", "--logs", str(tmp_path)]) == 1
    err = one_line_error(capsys, "convtune records: internal error: RuntimeError: something nobody foresaw")
    crash = err.split("(traceback in ")[1].rstrip(")")
    assert os.path.dirname(crash) == str(tmp_path / "cache") and os.path.basename(crash).startswith("crash-")
    assert "Traceback (most recent call last)" in open(crash).read() and "boom" in open(crash).read()


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
