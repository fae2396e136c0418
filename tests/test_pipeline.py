"""The spine end to end: tune (and resume), records, compile, verify in a fresh process, errors."""

import json
import os
import subprocess
import sys

import pytest

from schedules.workload import Workload, parse_spec
from tuning.cli import main
from tuning.records import LayerRecords, summaries
from tuning.target import resolve_target
from tuning.task import Task

pytestmark = pytest.mark.slow  # tuning runs: `pytest -m "not slow"` skips them

LAYER = "h=10,w=9,ci=8,co=16,k=3,pad=1"


def run_cli(*args, cwd=None):
    """convtune in a fresh process (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "tuning.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ, PYTHONPATH=os.getcwd()))


@pytest.fixture(scope="module")
def tuned_logs(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("logs"))
    assert main(["tune", LAYER, "--trials", "6", "--logs", logs, "--min-repeat-ms", "5", "--seed", "7"]) == 0
    return logs


def test_tune_writes_records_tvm_can_read(tuned_logs):
    from tvm.s_tir import meta_schedule as ms

    target = resolve_target("x86")
    wl = parse_spec(LAYER)
    directory = os.path.join(tuned_logs, target.tag, wl.key)
    db = ms.database.JSONDatabase(work_dir=directory)  # TVM's own reader, nothing of ours
    records = db.get_all_tuning_records()
    assert len(records) == 6
    assert all(str(r.target.attrs["mcpu"]) == target.config["mcpu"] for r in records)
    info = json.load(open(os.path.join(directory, "task.json")))
    assert info["target"]["threads"] == target.threads and Workload.from_dict(info["workload"]) == wl
    assert info["algorithms"]["direct"]["knobs"] == ["tile_y", "tile_x", "tile_c", "tile_rc", "unroll"]
    best = LayerRecords.existing(tuned_logs, target, wl).best(Task(wl, "direct"))
    assert best is not None and 0 < best.seconds < 1


def test_tune_resumes_without_remeasuring(tuned_logs):
    target, wl = resolve_target("x86"), parse_spec(LAYER)
    assert main(["tune", LAYER, "--trials", "10", "--logs", tuned_logs, "--min-repeat-ms", "5"]) == 0
    store = LayerRecords.existing(tuned_logs, target, wl)
    records = store.database.get_all_tuning_records()
    assert len(records) == 10  # 6 kept + 4 new, not 6 + 10
    assert len({str(r.trace) for r in records}) == 10  # no config measured twice
    # the budget is already met: nothing more is measured
    assert main(["tune", LAYER, "--trials", "10", "--logs", tuned_logs]) == 0
    assert store.trial_count(Task(wl, "direct")) == 10
    rows = summaries(tuned_logs)
    assert [(r["algorithm"], r["trials"]) for r in rows] == [("direct", 10)] and rows[0]["gflops"] > 0


def test_compile_and_verify_in_a_fresh_process(tuned_logs, tmp_path):
    lib = str(tmp_path / "kernel.so")
    done = run_cli("compile", LAYER, "--algorithm", "direct", "--logs", tuned_logs, "-o", lib)
    assert done.returncode == 0, done.stderr
    side = json.load(open(tmp_path / "kernel.json"))
    assert side["tuned"] and side["algorithm"] == "direct" and side["threads"] == resolve_target("x86").threads
    assert side["functions"]["conv2d"]["args"][1] == {"name": "weight", "shape": [3, 3, 8, 16], "dtype": "float32"}
    done = run_cli("verify", lib)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "conv2d: max abs error" in done.stdout and "ok" in done.stdout

    # a library that does not compute what its sidecar claims fails verification
    side["workload"]["stride"] = [1, 1]
    side["workload"]["pad"] = [0, 0, 2, 2]  # same output shape, different numbers
    json.dump(side, open(tmp_path / "kernel.json", "w"))
    done = run_cli("verify", lib)
    assert done.returncode == 1 and "MISMATCH" in done.stdout


def test_compile_without_records_warns_and_names_the_config(tmp_path):
    lib = str(tmp_path / "k.so")
    done = run_cli("compile", "h=7,ci=4,co=8,k=3,layout=NCHW", "--algorithm", "direct", "--logs", str(tmp_path / "none"), "-o", lib)
    assert done.returncode == 0, done.stderr
    assert "WARNING: no tuning record" in done.stderr and "UNTUNED" in done.stderr and "tile_c" in done.stderr
    assert run_cli("verify", lib).returncode == 0


def test_generated_space_rival_tunes_and_compiles(tmp_path):
    logs, lib = str(tmp_path / "logs"), str(tmp_path / "auto.so")
    assert main(["tune", "h=6,ci=4,co=8,k=3", "--algorithm", "ms-auto", "--trials", "4", "--logs", logs,
                 "--min-repeat-ms", "5"]) == 0
    assert main(["compile", "h=6,ci=4,co=8,k=3", "--algorithm", "ms-auto", "--logs", logs, "-o", lib]) == 0
    side = json.load(open(tmp_path / "auto.json"))
    assert side["algorithm"] == "ms-auto" and side["tuned"] and side["trace"]
    assert run_cli("verify", lib).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["tune", "h=8,ci=4,co=4,k=9"], "kh: dilated kernel extent 9 is larger than the padded input"),
    (["tune", LAYER, "--trials", "0"], "--trials: must be positive"),
    (["tune", LAYER, "--algorithm", "fft"], "fft: unknown algorithm"),
    (["tune", LAYER, "--target", "riscv"], "--target: unknown target 'riscv'"),
    (["tune", LAYER, "--target", "{not json"], "--target: not valid JSON"),
    (["tune", LAYER, "--threads", "0"], "--threads: must be positive"),
    (["tune", LAYER, "--transfer-from", "/nonexistent/logs"], "--transfer-from: no such directory"),
    (["compile", "resnet18.layer7"], "no layer 'resnet18.layer7'"),
    (["verify", "/nonexistent/kernel.so"], "no such file"),
])
def test_bad_input_gives_a_clear_error(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_layers_lists_the_zoo(capsys):
    assert main(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "resnet18.layer1" in out and "h=56,w=56,ci=64,co=64,k=3,pad=1" in out and "x4" in out
