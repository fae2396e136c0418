"""The ARM path over RPC, end to end on an emulated aarch64 device (qemu-user) on 127.0.0.1.

A tracker and devices are started on free ports and always stopped (fixture finalizers; every
process of theirs is checked gone). The emulator is set up once and cached (about a minute and
250 MB the first time, apt-get included); these tests are skipped only when this machine cannot
host it (no apt-get, not root, not x86_64). Times measured here are qemu's and mean nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from schedules.workload import parse_spec
from tuning.deploy.kernel import Kernel
from tuning.deploy.library import Choice, choose, export
from tuning.deploy.verify import verify
from tuning.records import FAILED_SECONDS, LayerRecords
from tuning.remote import emulator
from tuning.remote import session as rs
from tuning.remote.address import DeviceAddress, RPCError, free_port, parse_hostport
from tuning.remote.process import group_alive
from tuning.remote.tracker import Tracker, devices, format_devices, tracker_summary
from tuning.search.measure import MeasureConfig, close_runner, rpc_runner
from tuning.search.tune import SearchOptions, tune
from tuning.target import LibraryError, elf_machine, resolve_target
from tuning.task import Task

pytestmark = [pytest.mark.slow, pytest.mark.device]  # the emulated aarch64 device

LAYER = "h=8,ci=8,co=8,k=3,pad=1"
KEY = "aarch64-test"
# Short repeats: the times are qemu's; the point is that measuring works.
QUICK = MeasureConfig(number=2, repeat=3, min_repeat_ms=10, run_timeout=30.0)
# The RPC path is under test, not the search: random traces, no cost model to train (the
# evolutionary search costs minutes of the 2 shared cores for 6 trials).
LIGHT_SEARCH = {"strategy": "replay-trace", "cost_model": "random"}


def _gone(pid: int) -> bool:
    return not group_alive(pid)


def _stop_and_check(thing) -> None:
    thing.stop()
    assert _gone(thing.pid), f"processes of group {thing.pid} survived stop()"


# -- machines ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator_paths():
    started = time.time()
    try:
        paths = emulator.setup(quiet=False)
    except emulator.EmulatorUnavailable as err:
        pytest.skip(f"no emulated aarch64 device on this machine: {err}")
    print(f"emulator ready in {time.time() - started:.0f} s")
    return paths


@pytest.fixture(scope="module")
def tracker():
    t = Tracker.start()
    assert devices(t.host, t.port) == {}
    yield t
    _stop_and_check(t)
    with pytest.raises(RPCError, match="cannot connect"):
        tracker_summary(t.host, t.port, timeout=2)


@pytest.fixture(scope="module")
def device(emulator_paths, tracker):
    d = emulator.start(tracker.address, KEY, cpu="cortex-a72", paths=emulator_paths)
    yield d
    _stop_and_check(d)


@pytest.fixture(scope="module")
def aarch64():
    return resolve_target("aarch64")


@pytest.fixture(scope="module")
def layer_tuned_on_device(device, tracker, aarch64, tmp_path_factory):
    """A small layer tuned on the emulated device through the tracker: (logs, store, task)."""
    logs = str(tmp_path_factory.mktemp("arm-logs"))
    task = Task(parse_spec(LAYER), "direct")
    runner = rpc_runner(aarch64, QUICK, DeviceAddress(tracker=tracker.address, key=KEY))
    try:
        store = tune([task], aarch64, logs, 6, SearchOptions(measure=QUICK, trials_per_iter=6, seed=1, **LIGHT_SEARCH), runner)
    finally:
        close_runner(runner)
    return logs, store, task


@pytest.fixture(scope="module")
def arm_library(layer_tuned_on_device, aarch64, tmp_path_factory):
    logs, _, task = layer_tuned_on_device
    path = str(tmp_path_factory.mktemp("arm-lib") / "conv.so")
    side = export(choose(task.workload, "direct", aarch64, logs), aarch64, path)
    return path, side


@pytest.fixture(scope="module")
def x86_library(tmp_path_factory):
    host = resolve_target("x86")
    path = str(tmp_path_factory.mktemp("x86-lib") / "conv.so")
    export(Choice(Task(parse_spec(LAYER), "direct"), None, None), host, path)
    return path


# -- addresses and unreachable places (no emulator needed) ---------------------------------------


@pytest.mark.parametrize("text, message", [
    ("localhost", "expected HOST:PORT"),
    (":9190", "expected HOST:PORT"),
    ("127.0.0.1:", "port must be a number"),
    ("127.0.0.1:abc", "port must be a number"),
    ("127.0.0.1:70000", "port must be a number"),
])
def test_bad_addresses_are_refused_clearly(text, message):
    with pytest.raises(RPCError, match=message) as err:
        parse_hostport(text, "--rpc-tracker")
    assert "--rpc-tracker" in str(err.value)


def test_addresses_parse():
    assert parse_hostport("127.0.0.1:9190") == ("127.0.0.1", 9190)
    assert parse_hostport("[::1]:9090", "--rpc") == ("::1", 9090)


def test_unreachable_tracker_fails_fast():
    port = free_port()
    started = time.time()
    with pytest.raises(RPCError, match=f"tracker 127.0.0.1:{port}: cannot connect"):
        rs.request("127.0.0.1", port, KEY, timeout=30)
    with pytest.raises(RPCError, match="cannot connect"):
        rpc_runner(resolve_target("aarch64"), QUICK, DeviceAddress(tracker=f"127.0.0.1:{port}", key=KEY))
    assert time.time() - started < 5  # TVM's own client retries for a minute


def test_unreachable_server_fails_fast():
    port = free_port()
    started = time.time()
    with pytest.raises(RPCError, match=f"RPC server 127.0.0.1:{port}"):
        rs.connect("127.0.0.1", port, timeout=10)
    assert time.time() - started < 10


def test_tracker_without_the_key_fails_fast(tracker):
    started = time.time()
    with pytest.raises(RPCError, match="no device registered under key 'no-such-board'"):
        rs.request(tracker.host, tracker.port, "no-such-board", timeout=30)
    with pytest.raises(RPCError, match="no device registered"):
        rpc_runner(resolve_target("aarch64"), QUICK, DeviceAddress(tracker=tracker.address, key="no-such-board"))
    assert time.time() - started < 5


def test_not_a_library_is_refused(tmp_path):
    bogus = tmp_path / "kernel.so"
    bogus.write_text("not a library")
    with pytest.raises(LibraryError, match="not an ELF shared library"):
        elf_machine(str(bogus))


def test_cli_options_are_checked():
    with pytest.raises(RPCError, match="needs --rpc-key"):
        rs.session(DeviceAddress(tracker="127.0.0.1:9190"))
    with pytest.raises(RPCError, match="not both"):
        rs.session(DeviceAddress(tracker="127.0.0.1:9190", key="k", rpc="127.0.0.1:9090"))


# -- the emulated device -------------------------------------------------------------------------


def test_device_reports_itself(device, tracker):
    status = devices(tracker.host, tracker.port)[KEY]
    assert status.total == 1
    assert KEY in format_devices(devices(tracker.host, tracker.port))
    sess = rs.request(tracker.host, tracker.port, KEY, timeout=30)
    info = rs.device_info(sess)
    assert info["machine"] == "aarch64" and info["emulated"] and info["cpu"] == "cortex-a72"
    assert "EMULATED" in emulator.EMULATED_NOTE and "not ARM timings" in emulator.EMULATED_NOTE


def test_busy_device_times_out(device, tracker):
    held = rs.request(tracker.host, tracker.port, KEY, timeout=30)  # one server, one session
    started = time.time()
    with pytest.raises(RPCError, match=r"no device of key .* became free within 2 s \(1 registered, all busy\)"):
        rs.request(tracker.host, tracker.port, KEY, timeout=2)
    assert time.time() - started < 6
    del held


def test_tune_on_the_emulated_device(layer_tuned_on_device, aarch64):
    logs, store, task = layer_tuned_on_device
    assert store.trial_count(task) == 6
    best = store.best(task)
    assert best is not None and 0 < best.seconds < FAILED_SECONDS
    records = [json.loads(line) for line in open(os.path.join(store.directory, "database_tuning_record.json"))]
    assert len(records) == 6
    for _, (_, run_secs, target, _) in records:
        assert target["mtriple"] == "aarch64-linux-gnu"
    assert sum(1 for _, (_, run_secs, _, _) in records if run_secs and max(run_secs) < FAILED_SECONDS) >= 4
    assert aarch64.tag in store.directory


def test_exported_library_runs_on_the_device(arm_library, tracker):
    path, side = arm_library
    assert elf_machine(path) == "aarch64"
    assert side["tuned"] and side["target"]["config"]["mtriple"] == "aarch64-linux-gnu"
    sess = rs.request(tracker.host, tracker.port, KEY, timeout=30)
    checks = verify(Kernel(rs.load_library(sess, path), side, sess.cpu(0)))
    assert checks and all(c.ok for c in checks), checks


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "spatial-pack", "winograd-f4", "indirect"])
def test_neon_default_configs_match_the_reference_on_the_device(algorithm, device, tracker, tmp_path):
    """Each template's default config for an aarch64 machine (NEON: 4 lanes, 32 registers),
    cross-compiled, loaded on the emulated device and checked against the float64 reference."""
    a72 = resolve_target("aarch64-a72")
    wl = parse_spec("h=10,w=9,ci=8,co=16,k=3,pad=1")
    task = Task(wl, algorithm, a72.machine)
    path = str(tmp_path / f"{algorithm}.so")
    side = export(Choice(task, None, None), a72, path)
    assert side["config"] == task.default_config() and side["target"]["machine"]["isa"] == "neon"
    sess = rs.request(tracker.host, tracker.port, KEY, timeout=30)
    checks = verify(Kernel(rs.load_library(sess, path, side), side, sess.cpu(0)))
    assert checks and all(c.ok for c in checks), checks


def test_x86_library_is_refused_by_the_device(x86_library, device, tracker):
    assert elf_machine(x86_library) == "x86_64"
    sess = rs.request(tracker.host, tracker.port, KEY, timeout=30)
    with pytest.raises(LibraryError, match="conv.so is built for x86_64, but the device is aarch64"):
        rs.load_library(sess, x86_library)
    # the session is still usable: nothing was uploaded or crashed
    assert rs.device_info(sess)["machine"] == "aarch64"
    # a stock server cannot say what it is: then the board's own dlopen error is explained
    with pytest.raises(LibraryError, match=r"could not load conv.so, an x86_64 library \(.*\); is the device x86_64"):
        rs.load_remote(sess, x86_library)


def test_arm_library_is_refused_here(arm_library):
    with pytest.raises(LibraryError, match="built for aarch64, but this host is x86_64.*--rpc-tracker"):
        Kernel.load(arm_library[0])


def test_runner_refuses_a_device_of_another_architecture(device, tracker):
    """The runner's first session checks the device against the target: x86 code on an ARM board
    would fail every trial."""
    with pytest.raises(RPCError, match="is aarch64, but the target x86 builds for x86_64"):
        rpc_runner(resolve_target("x86"), QUICK, DeviceAddress(tracker=tracker.address, key=KEY))


def _artifacts(target, n: int) -> list:
    """n trial libraries of the layer's default schedule, linked for the device as tuning links them
    (built here: a builder pool would start two more TVM processes on the shared cores)."""
    from tvm.s_tir import meta_schedule as ms

    from tuning.search import measure

    task = Task(parse_spec(LAYER), "direct")
    mod = task.template.apply(task.mod["main"], task.workload, None).mod
    args = ms.arg_info.ArgInfo.from_prim_func(task.func)
    paths = [measure.export_aarch64(measure.fast_build(mod, target.tvm)) for _ in range(n)]
    return [ms.runner.RunnerInput(p, "cpu", args) for p in paths]


def _run(runner, inputs) -> list:
    try:
        return [f.result() for f in runner.run(inputs)]
    finally:
        for i in inputs:
            shutil.rmtree(os.path.dirname(i.artifact_path), ignore_errors=True)


def _trial_loads(device) -> int:
    return open(device.log_path).read().count("trial.so")


def test_devices_under_one_key_measure_in_parallel(device, tracker, emulator_paths, aarch64):
    second = emulator.start(tracker.address, KEY, cpu="cortex-a53", paths=emulator_paths)
    runner = None
    try:
        runner = rpc_runner(aarch64, QUICK, DeviceAddress(tracker=tracker.address, key=KEY))
        assert runner.workers == 2
        before = _trial_loads(device), _trial_loads(second)
        results = _run(runner, _artifacts(aarch64, 4))
        assert all(r.error_msg is None and r.run_secs for r in results), [r.error_msg for r in results]
        assert _trial_loads(device) > before[0] and _trial_loads(second) > before[1]
    finally:
        if runner is not None:
            close_runner(runner)
        _stop_and_check(second)


def test_direct_server_without_tracker(emulator_paths, aarch64):
    direct = emulator.start(None, "", paths=emulator_paths)
    runner = None
    try:
        sess = rs.connect(direct.host, direct.port, timeout=30)
        assert rs.device_info(sess)["machine"] == "aarch64"
        del sess
        runner = rpc_runner(aarch64, QUICK, DeviceAddress(rpc=direct.address))
        results = _run(runner, _artifacts(aarch64, 2))
        assert all(r.error_msg is None and r.run_secs for r in results), [r.error_msg for r in results]
    finally:
        if runner is not None:
            close_runner(runner)
        _stop_and_check(direct)


def test_detached_device_is_found_and_stopped(emulator_paths, tracker):
    d = emulator.start(tracker.address, "detached-test", paths=emulator_paths, detach=True)
    try:
        assert d.port in [x.port for x in emulator.detached_devices()]
        stopped = emulator.stop_detached(port=d.port)
        assert [x.port for x in stopped] == [d.port]
        assert _gone(d.pid)
        assert d.port not in [x.port for x in emulator.detached_devices()]
    finally:
        if d.alive():
            d.stop()


def test_killed_device_ends_the_run_with_records_kept(emulator_paths, tracker, aarch64, tmp_path):
    """Kill the device while it runs its second trial: the run ends (no hang) and every trial is
    recorded, the one in flight and the ones after the kill as failed."""
    doomed = emulator.start(tracker.address, "doomed", paths=emulator_paths)
    config = MeasureConfig(number=2, repeat=3, min_repeat_ms=100, run_timeout=20.0)
    runner = rpc_runner(aarch64, config, DeviceAddress(tracker=tracker.address, key="doomed"))
    killed = threading.Event()

    def kill_during_second_trial():
        deadline = time.time() + 300
        while time.time() < deadline and not killed.is_set():
            if open(doomed.log_path).read().count("load_module") >= 2:
                doomed.stop()
                killed.set()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_during_second_trial, daemon=True)
    killer.start()
    task = Task(parse_spec("h=6,ci=4,co=8,k=3,pad=1"), "direct")
    started = time.time()
    try:
        store = tune([task], aarch64, str(tmp_path), 6,
                     SearchOptions(measure=config, trials_per_iter=6, seed=2, **LIGHT_SEARCH), runner)
    finally:
        killed.set()
        close_runner(runner)
        _stop_and_check(doomed)
    killer.join(5)
    assert time.time() - started < 240
    reloaded = LayerRecords.open(str(tmp_path), aarch64, task.workload)
    assert reloaded.trial_count(task) == 6
    assert reloaded.best(task) is not None  # the first trial's time is kept
    records = [json.loads(line) for line in open(os.path.join(store.directory, "database_tuning_record.json"))]
    failed = [r for r in records if not r[1][1] or min(r[1][1]) >= FAILED_SECONDS]
    assert len(failed) == 5
    reasons = [json.loads(line)["error"] for line in open(os.path.join(store.directory, "failures.jsonl"))]
    assert len(reasons) == 5 and sum("no device registered under key 'doomed'" in r for r in reasons) >= 3
