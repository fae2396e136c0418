"""The command line's contract: what it refuses, what it says, and what its help promises."""

from __future__ import annotations

import argparse
import os
import re
import signal
from pathlib import Path

import pytest

import tuning.cli as cli
from schedules.template import Unsupported
from schedules.workload import parse_spec
from tuning.target import host_cores
from tuning.task import algorithm_names

from .support.checks import one_line_error

LAYER = "h=8,ci=8,co=8,k=3,pad=1"


def test_a_typo_in_an_algorithm_list_is_refused(capsys):
    """`direct,winogard` once tuned direct alone, silently."""
    assert cli.main(["tune", "h=8,ci=8,co=8,k=3,pad=1", "--algorithm", "direct,winogard", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "winogard: unknown algorithm" in err
    with pytest.raises(Unsupported, match="winogard: unknown algorithm"):
        algorithm_names("direct,winogard")


def test_the_docstring_lists_every_command():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    listed = set(re.findall(r"^  (\w+) ", cli.__doc__, re.M))
    assert set(commands) == listed


def test_defaults_come_from_the_dataclasses_they_configure():
    from tuning.search.measure import MeasureConfig
    from tuning.search.tune import SearchOptions

    args = cli.build_parser().parse_args(["tune"])
    measure, options = MeasureConfig(), SearchOptions()
    assert (args.min_repeat_ms, args.run_timeout, args.flush_cache) == (
        measure.min_repeat_ms, measure.run_timeout, measure.flush_cache)
    assert (args.batch, args.strategy, args.cost_model) == (options.trials_per_iter, options.strategy,
                                                             options.cost_model)


def test_peak_json(capsys):
    assert cli.main(["peak", "--json", "--threads", "1"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["isa"] in ("avx512", "avx2", "sse", "neon") and float(report["gflops"]["1"]) > 0


def test_peak_of_a_cross_target_is_unknown(capsys):
    assert cli.main(["peak", "--target", "aarch64-a72", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["isa"] == "neon" and set(report["gflops"].values()) == {None}


# -- outputs convtune can write and verify can load --------------------------------------------------
@pytest.mark.parametrize("output, says", [("k.json", "must end in .so"), ("noext", "must end in .so"),
                                          ("k.tar", "must end in .so"), ("existing_dir.so", "is a directory"),
                                          ("a_file/k.so", "is not a directory")])
def test_compile_refuses_an_output_it_cannot_write_as_a_library(tmp_path, capsys, output, says):
    (tmp_path / "existing_dir.so").mkdir()
    (tmp_path / "a_file").write_text("x")
    assert cli.main(["compile", "h=8,ci=8,co=8,k=3,pad=1", "--logs", str(tmp_path / "logs"),
                     "-o", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "existing_dir.so"]


def test_run_refuses_an_unwritable_output_before_running(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert cli.main(["run", str(tmp_path / "m.so"), "--output", str(tmp_path / "a_file" / "y.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a directory" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, says", [
    (["tune", "h=8,ci=8,co=8,k=3,pad=1", "--trials", "2"], "apt-get install gcc"),
    (["compile", "h=8,ci=8,co=8,k=3,pad=1", "--target", "aarch64"], "convtune device setup"),
])
def test_no_compiler_is_refused_before_any_trial(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    logs = tmp_path / "logs"
    assert cli.main(argv + ["--logs", str(logs), "-o" if argv[0] == "compile" else "--seed",
                            str(tmp_path / "k.so") if argv[0] == "compile" else "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not logs.exists()  # nothing recorded


# -- stopping, and readers that leave ----------------------------------------------------------------
def test_a_reader_that_leaves_ends_the_command_quietly(monkeypatch, capsys):
    import os
    import sys

    read, write = os.pipe()
    os.close(read)  # `| head -1` has exited
    pipe = os.fdopen(write, "w")
    monkeypatch.setattr(sys, "stdout", pipe)
    try:
        assert cli.main(["layers", "resnet50"]) == 141
    finally:
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_ctrl_c_while_starting_is_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["layers"]) == 130
    err = capsys.readouterr().err.strip()
    assert "interrupted" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_as_ctrl_c_does(monkeypatch, capsys, name):
    import os
    import signal

    def killed(args):
        os.kill(os.getpid(), getattr(signal, name))
        return 0

    monkeypatch.setattr(cli, "cmd_layers", killed)
    assert cli.main(["layers"]) == 128 + getattr(signal, name)
    err = capsys.readouterr().err.strip()
    assert f"{name}: interrupted; every trial measured so far is in the records" in err
    assert signal.getsignal(getattr(signal, name)) is not cli._stop_on_signal  # restored


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1"])
def test_a_seed_out_of_range_is_refused(capsys, seed):
    assert cli.main(["tune", "h=8,ci=8,co=8,k=3,pad=1", "--seed", seed]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seed: must be in 0.." in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("threads, says", [(64, "more than this machine's"), ("abc", "must be a positive integer"),
                                           (0, "must be a positive integer")])
def test_a_sidecar_thread_count_this_machine_cannot_run_is_refused(tmp_path, capsys, threads, says):
    import json

    assert cli.main(["compile", "h=8,ci=8,co=8,k=3,pad=1", "--algorithm", "direct", "--logs", str(tmp_path / "logs"),
                     "-o", str(tmp_path / "k.so")]) == 0
    side = json.load(open(tmp_path / "k.json"))
    side["threads"] = threads
    (tmp_path / "k.json").write_text(json.dumps(side))
    capsys.readouterr()
    assert cli.main(["verify", str(tmp_path / "k.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def small_model_library(tmp_path_factory):
    """The small test model compiled once (untuned) for the `run` tests."""
    from .support.models import small_resnet

    root = tmp_path_factory.mktemp("run_model")
    model = small_resnet(str(root / "small_resnet.onnx"))
    library = str(root / "model.so")
    assert cli.main(["compile", "--model", model, "-o", library, "--logs", str(root / "logs")]) == 0
    return library


def _write_bad_input(kind: str, path: str) -> None:
    import numpy as np

    if kind == "strings":
        np.save(path, np.array(["a", "b"]))
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "npz":  # an archive under a .npy name
        with open(path, "wb") as f:
            np.savez(f, input=np.zeros((1, 3, 12, 12), np.float32))
    elif kind == "complex":
        np.save(path, np.ones((1, 3, 12, 12), np.complex64))


@pytest.mark.slow  # compiles a model (the module's fixture)
@pytest.mark.parametrize("kind, says", [("strings", "not numbers"), ("empty", "is empty"),
                                        ("npz", "is an .npz archive"), ("complex", "complex values")])
def test_run_refuses_an_input_file_that_is_not_a_real_array(small_model_library, tmp_path, capsys, kind, says):
    """Each once crashed with a traceback (empty, .npz) or ran on something else (complex cast to real)."""
    path = str(tmp_path / "x.npy")
    _write_bad_input(kind, path)
    capsys.readouterr()
    assert cli.main(["run", small_model_library, "--input", path]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]  # untuned
    assert len(lines) == 1 and lines[0].startswith("convtune run: error:") and says in lines[0]


@pytest.mark.parametrize("target, says", [
    ('{"kind": "llvm", "mcpu": "nonexistentcpu"}', "mcpu 'nonexistentcpu' is not a CPU LLVM knows"),
    ('{"kind": "llvm", "mcpu": "znver33"}', "did you mean znver3"),
    ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a99"}', "for aarch64-linux-gnu"),
])
def test_an_unknown_mcpu_is_refused(tmp_path, capsys, target, says):
    """TVM once built generic code for it, filed under logs/x86_64-nonexistentcpu-t2."""
    assert cli.main(["compile", "h=8,ci=8,co=8,k=3,pad=1", "--target", target, "--logs", str(tmp_path / "logs"),
                     "-o", str(tmp_path / "k.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "llvm_get_cpu_archlist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "k.so").exists()


@pytest.mark.parametrize("command", ["layers", "compile"])
def test_a_model_batch_for_a_fixed_batch_is_refused(tmp_path, capsys, command):
    """--model-batch 4 on a model whose batch is fixed at 1 was once ignored: a batch-1 library."""
    from .support.models import small_resnet

    path = small_resnet(str(tmp_path / "fixed.onnx"))  # batch fixed at 1
    argv = [command, path] if command == "layers" else [command, "--model", path, "-o", str(tmp_path / "m.so"),
                                                        "--logs", str(tmp_path / "logs")]
    assert cli.main(argv + ["--model-batch", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the model's batch is fixed at 1; --model-batch applies to a symbolic batch" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "m.so").exists()
    assert cli.main(["layers", path, "--model-batch", "1"]) == 0  # its own batch: harmless


def test_records_of_another_tvm_version_are_listed_as_set_aside(tmp_path, capsys, monkeypatch):
    """`convtune records` once listed them as usable; compile never applies them."""
    import json

    import tvm

    from tuning.records import summaries

    from .support.checks import host_target
    from .support.records import write_record

    logs, target = str(tmp_path), host_target()
    ours = write_record(logs, target, parse_spec("h=8,ci=8,co=8,k=3,pad=1"))
    theirs = write_record(logs, target, parse_spec("h=8,ci=8,co=16,k=3,pad=1"))
    task_json = Path(theirs.directory) / "task.json"
    task_json.write_text(json.dumps(dict(json.loads(task_json.read_text()), tvm="0.26.0")))
    rows = {r["layer"]: (r["usable"], r["tvm"]) for r in summaries(logs)}
    assert sorted(rows.values()) == [(False, "0.26.0"), (True, tvm.__version__)]
    capsys.readouterr()
    assert cli.main(["records", "--logs", logs]) == 0
    out = capsys.readouterr().out.splitlines()
    marked = [line for line in out if "TVM 0.26.0 records: set aside" in line]
    assert len(marked) == 1 and "co=16" in marked[0]
    assert not any("set aside" in line for line in out if "co=8," in line)
    assert "made with another TVM" in out[-1]
    assert Path(ours.directory).is_dir()


# -- options refused in one line ----------------------------------------------------------------------
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


# -- never a traceback ---------------------------------------------------------------------------------
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


@pytest.mark.slow  # two fresh convtune processes
def test_a_broken_torch_install_leaves_every_command_working(tmp_path):
    """TVM imports torch first thing and forgives only ImportError: a torch whose shared library
    is missing (OSError) killed every command, --help included. Now: one warning, the command runs,
    and what needs torch says it is unavailable."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise OSError("libtorch_cpu.so: cannot open shared object file")\n')
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{os.getcwd()}")
    done = subprocess.run([sys.executable, "-m", "tuning.cli", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and "usage: convtune" in done.stdout, done.stderr
    assert done.stderr.count("\n") == 1 and "torch is installed but cannot be imported" in done.stderr
    done = subprocess.run([sys.executable, "-m", "tuning.cli", "layers", str(tmp_path / "m.pt2")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow  # a fresh convtune process
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_device_is_one_line_not_an_internal_error():
    import os
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "tuning.cli", "layers", "resnet18"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "convtune layers: error: No space left on device (writing the output); free some space and run it again "
        "(records already measured are kept)"]


@pytest.mark.parametrize("signum, delay", [(signal.SIGINT, 0.3), (signal.SIGINT, 1.5), (signal.SIGTERM, 0.8)])
def test_a_signal_while_starting_is_one_line(signum, delay):
    """Ctrl-C in the first seconds lands inside `import torch` / `import tvm`, before the CLI's
    own handling: one line and 128 + the signal, not someone else's traceback."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-m", "tuning.cli", "layers", "resnet18"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    child.send_signal(signum)
    err = child.communicate(timeout=120)[1]
    assert child.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"convtune: {signal.Signals(signum).name} while starting; nothing was run"]
