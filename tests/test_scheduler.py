"""tuning/search/scheduler.py: a search shows what it does as it does it, commits every trial as it is
measured, and stops cleanly on Ctrl-C.

MetaSchedule's own gradient scheduler measured a whole warm-up round (one batch per task) before any
callback ran: a network run printed nothing and wrote no record for minutes, a kill lost it all, and
Ctrl-C inside its C++ loop ended in an internal error or a segfault."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from schedules.workload import parse_spec
from tuning.records import DB_FILES, LayerRecords, summaries
from tuning.search.scheduler import GradientPolicy, SearchInterrupted, StopFlag
from tuning.target import resolve_target
from tuning.task import Task

from .support.models import four_convs

# Four small layers, four tasks: a warm-up round of four batches before the first line, before.
LAYERS = {"k3": "h=8,ci=8,co=8,k=3,pad=1", "k1": "h=8,ci=8,co=8,k=1", "k3s2": "h=8,ci=8,co=8,k=3,stride=2,pad=1",
          "k3nopad": "h=4,ci=8,co=8,k=3"}
PROGRESS = re.compile(r"^\s*\d+/\d+ trials\s+(\S+)\s+(.*)$")  # Progress's lines: label, then what happened


# -- the policy and the flag, in this process ----------------------------------------------------------
def test_gradient_policy_warms_up_in_order_then_picks_the_largest_expected_gain():
    policy = GradientPolicy([1.0, 1.0, 4.0], seed=0)
    order = []
    for best_ms in (2.0, 1.0, 1.0):  # one batch each, in order, whatever the times
        order.append(policy.next([0, 1, 2]))
        policy.measured(order[-1], best_ms)
    assert order == [0, 1, 2]
    # Then weight x best time per batch: task 2 (run 4 times per pass) over task 0 (the slowest once).
    assert policy.next([0, 1, 2]) == 2
    assert policy.next([0, 1]) == 0  # task 2 done: the slower of the rest
    policy.measured(1, 1e9)  # a task whose trials never ran is picked last
    assert policy.next([1, 2]) == 2
    assert policy.next([]) is None


def test_sigint_in_a_search_only_sets_the_flag_and_workers_never_see_it():
    stop = StopFlag()
    with stop.deferring_sigint(announce=False):
        # A worker started now (a build or run worker) has SIGINT blocked: a terminal's Ctrl-C,
        # sent to the whole process group, cannot kill it mid-trial.
        child = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"],
                               capture_output=True, text=True, check=True)
        blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", child.stdout, re.MULTILINE).group(1), 16)
        assert blocked & (1 << (signal.SIGINT - 1))
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here, wherever Python is
        deadline = time.time() + 5
        while not stop.requested and time.time() < deadline:
            time.sleep(0.01)
        assert stop.requested
        with pytest.raises(SearchInterrupted, match="interrupted; 3 trials measured so far are in the records"):
            stop.check(3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert issubclass(SearchInterrupted, KeyboardInterrupt)  # what the CLI turns into exit 130


def test_the_cli_says_how_many_trials_an_interrupted_search_measured(monkeypatch, capsys):
    from tuning import cli

    def interrupted(args):
        raise SearchInterrupted(5)

    monkeypatch.setattr(cli, "cmd_tune", interrupted)  # the parser binds it when main() builds it
    assert cli.main(["tune", LAYERS["k3"]]) == 130
    assert "convtune tune: interrupted; 5 trials measured so far are in the records" in capsys.readouterr().err


# -- a real network search, in a child process ----------------------------------------------------------
class Tune:
    """`convtune tune --network` in a child process (its own process group), stderr read line by
    line with the time each line came."""

    def __init__(self, tmp_path, trials_total: int):
        model = str(tmp_path / "tiny.onnx")
        four_convs(model)
        self.logs = str(tmp_path / "logs")
        cmd = [sys.executable, "-m", "tuning.cli", "tune", "--network", model, "--trials-total", str(trials_total),
               "--batch", "2", "--min-repeat-ms", "1", "--no-transfer", "--seed", "1", "--logs", self.logs]
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=os.getcwd()), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.ended = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stderr:  # bytes: a carriage return would show
            with self._cond:
                self.lines.append((time.time() - self.started, raw.decode(errors="replace")))
                self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def wait_for(self, test, timeout: float) -> tuple[float, str]:
        """The first line (its time, its text) for which test(text) holds; fails showing stderr."""
        deadline = time.time() + timeout
        with self._cond:
            while True:
                for when, line in self.lines:
                    if test(line):
                        return when, line
                if self.ended or time.time() > deadline:
                    break
                self._cond.wait(timeout=max(0.0, deadline - time.time()))
        self.kill()
        pytest.fail(f"no such line within {timeout:.0f} s; stderr so far:\n{self.stderr()}")

    def stderr(self) -> str:
        with self._cond:
            return "".join(line for _, line in self.lines)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def leftovers(self, wait: float = 10.0) -> list[str]:
        """Processes still in the child's process group (its workers) once it has ended."""
        deadline = time.time() + wait
        while True:
            left = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[2]) == self.proc.pid:  # field 5: the process group
                    left.append(f"{pid} {stat.split(')')[0].split('(', 1)[1]}")
            if not left or time.time() > deadline:
                return left
            time.sleep(0.5)


def progress(line: str, label: str | None = None, what: str = "") -> bool:
    match = PROGRESS.match(line)
    return bool(match) and (label is None or match.group(1) == f"tiny.{label}") and what in match.group(2)


def layer_records(logs: str, name: str):
    wl = parse_spec(LAYERS[name])
    store = LayerRecords.existing(logs, resolve_target("x86"), wl)
    return store, Task(wl, "direct")


def all_record_lines(logs: str) -> list:
    lines = []
    for directory, _, files in os.walk(logs):
        if DB_FILES[1] in files:
            with open(os.path.join(directory, DB_FILES[1])) as f:
                lines += [json.loads(line) for line in f if line.strip()]
    return lines


@pytest.mark.slow
def test_a_network_search_shows_each_task_and_batch_as_it_goes_and_a_kill_keeps_what_was_measured(tmp_path):
    run = Tune(tmp_path, trials_total=40)
    header, _ = run.wait_for(lambda line: line.startswith("network: 4 task(s)"), timeout=60)
    # The first task's start, within a few seconds (the measurement worker starts first): before,
    # the first line came after every task's first batch.
    first, line = run.wait_for(progress, timeout=45)
    assert progress(line, "k3", "started in") and first - header < 25, run.stderr()
    _, line = run.wait_for(lambda line: progress(line, what="best"), timeout=90)
    run.kill()  # kill -9, the moment the first batch is reported
    out = run.stderr()
    assert progress(line, "k3", "best") and "\r" not in out  # a pipe gets one line per event
    lines = [line for _, line in run.lines]
    assert not any(progress(line, "k1") for line in lines[:lines.index(line)])  # one task at a time
    # The batch is on disk, usable: the records, `convtune records`' summaries, the best record.
    store, task = layer_records(run.logs, "k3")
    assert store.trial_count(task) == 2 and store.best(task) is not None
    rows = [r for r in summaries(run.logs) if r["trials"]]
    assert [(r["layer"], r["trials"]) for r in rows] == [(store.workload.spec, 2)] and rows[0]["best_ms"] > 0
    assert len(all_record_lines(run.logs)) == 2  # and nothing else was measured yet


@pytest.mark.slow
@pytest.mark.parametrize("to", ["process", "group"])  # `kill -INT pid`, and a terminal's Ctrl-C
def test_ctrl_c_mid_search_exits_130_saying_how_many_trials_are_in_the_records(tmp_path, to):
    run = Tune(tmp_path, trials_total=40)
    run.wait_for(lambda line: progress(line, what="best"), timeout=120)  # mid-search: a batch measured
    (os.killpg if to == "group" else os.kill)(run.proc.pid, signal.SIGINT)
    try:
        rc = run.proc.wait(timeout=90)
    finally:
        run.kill()
    run.wait_for(lambda line: "interrupted;" in line, timeout=10)
    out = run.stderr()
    assert rc == 130, out
    said = re.search(r"convtune tune: interrupted; (\d+) trials? measured so far (?:are|is) in the records", out)
    assert said, out
    assert "Segfault" not in out and "Traceback" not in out and "internal error" not in out
    measured = int(said.group(1))
    lines = all_record_lines(run.logs)  # every line JSON: nothing torn
    assert measured >= 2 and len(lines) == measured
    store, task = layer_records(run.logs, "k3")
    assert store.trial_count(task) >= 2 and store.best(task) is not None
    assert run.leftovers() == []
