"""How trials are built and timed: one place for threads, repeats, timeouts and the builders.

MetaSchedule's default builder imports every tensor intrinsic (CUDA included) in each fresh worker
pool, about 7 s per trial here; building straight with tvm.tirx.build costs about a second.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import asdict, dataclass

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
from tvm.support import cc
from tvm.support.popen_pool import PopenPoolExecutor

from ..deploy.state import StateFiller, run_state
from ..remote.address import DeviceAddress, RPCError
from ..remote.session import _direct_session, _probe, _tracker_session, connect, request
from ..remote.tracker import KeyStatus, describe_keys, devices
from ..target import Target


@dataclass(frozen=True)
class MeasureConfig:
    number: int = 3  # calls per repeat
    repeat: int = 5  # repeats; the median is recorded
    min_repeat_ms: int = 50  # each repeat lasts at least this long (stable medians on 2 cores)
    flush_cache: bool = False
    build_timeout: float = 60.0
    run_timeout: float = 30.0
    builders: int = 2  # parallel build workers

    def evaluator(self) -> ms.runner.EvaluatorConfig:
        return ms.runner.EvaluatorConfig(number=self.number, repeat=self.repeat,
                                         min_repeat_ms=self.min_repeat_ms,
                                         enable_cpu_cache_flush=self.flush_cache)

    def to_dict(self) -> dict:
        return asdict(self)


def fast_build(mod: tvm.IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def export_aarch64(mod: tvm.runtime.Module) -> str:
    """Link a trial's module into an aarch64 .so on the host: a board has no compiler."""
    path = os.path.join(tempfile.mkdtemp(prefix="convtune-trial-"), "trial.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


class _UncheckedLocalBuilder(ms.builder.LocalBuilder._cls):
    """MetaSchedule's LocalBuilder without its start-up check, which starts a pool of workers (3-4 s
    on 2 cores) only to look the build and export functions up by name there: convtune passes the
    functions themselves. (Every build starts its own pool anyway.)"""

    def _sanity_check(self) -> None:
        pass


UncheckedLocalBuilder = derived_object(_UncheckedLocalBuilder)


def builder(target: Target, config: MeasureConfig) -> ms.builder.LocalBuilder:
    return UncheckedLocalBuilder(
        max_workers=config.builders, timeout_sec=config.build_timeout, f_build=fast_build,
        f_export=export_aarch64 if target.arch == "aarch64" and not target.is_host else None)


def local_runner(target: Target, config: MeasureConfig, tasks=()) -> ms.runner.LocalRunner:
    """The local runner; `tasks`' run states now, later tasks' with `add_run_state`."""
    # Runner workers inherit the environment: this is how the thread count reaches them.
    os.environ["TVM_NUM_THREADS"] = str(target.threads)
    states = run_state(tasks, target)
    return ms.runner.LocalRunner(timeout_sec=config.run_timeout, evaluator_config=config.evaluator(),
                                 cooldown_sec=0.0, f_alloc_argument=StateFiller(states) if states else None)


def add_run_state(runner: ms.runner.LocalRunner, task, target: Target) -> None:
    """Add `task`'s run state to a `local_runner`'s: building it (a host build of the kernel) is
    work for when the task starts, not for every task before the first trial. The runner sends its
    allocator to the worker with each trial, so a state added between batches reaches it."""
    states = run_state([task], target)
    if not states:
        return
    if runner.f_alloc_argument is None:
        runner.f_alloc_argument = StateFiller(states)
    else:
        runner.f_alloc_argument.states.update(states)


# -- MetaSchedule's runner on remote devices ------------------------------------------------------
def rpc_runner(target: Target, config: MeasureConfig, device: DeviceAddress, *,
               session_timeout: float | None = None, probe: bool = True):
    """MetaSchedule's RPCRunner on the remote devices at `device` (a tracker and key, or one server).

    One worker per device registered under the key, so several boards measure in parallel.
    Each trial is bounded: `device.request_timeout` to get a device, `session_timeout` (default
    `config.run_timeout`) for upload, load and timing; a trial over both is killed and recorded
    as failed, so a dead device ends a run with failed trials, not a hang.
    With `probe`, one session is opened first to fail early (unreachable, wrong architecture)
    and to learn what the device is (`runner.device_info`: an emulated one says so; the caller
    prints the emulation note then, and only then).
    """
    session_timeout = float(session_timeout or config.run_timeout)
    request_timeout, key = device.request_timeout, device.key
    kind, host, port = device.resolve("measure on")
    if kind == "tracker":
        status = devices(host, port)
        registered = status.get(key, KeyStatus(0, 0, 0)).total
        if registered == 0:
            raise RPCError(f"tracker {host}:{port}: no device registered under key {key!r}; {describe_keys(status)}")
        # Registered rather than free: a device serving a session shows as busy for a moment.
        workers = registered
        rpc_key = key
        create = functools.partial(_tracker_session, request_timeout=request_timeout)
        where = f"the device {key!r} at tracker {host}:{port}"
        factory = functools.partial(request, host, port, key, timeout=request_timeout,
                                    session_timeout=session_timeout)
    else:
        workers = 1  # one server serves one session at a time
        rpc_key = "(direct)"  # RPCConfig insists on a key; the server wants its own (`key`)
        create = functools.partial(_direct_session, key=key or "", connect_timeout=request_timeout)
        where = f"the RPC server {host}:{port}"
        factory = functools.partial(connect, host, port, key or "", timeout=request_timeout,
                                    session_timeout=session_timeout)
    info = _probe(factory, target, where) if probe else {}
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                       session_priority=1, session_timeout_sec=int(session_timeout)),
        evaluator_config=config.evaluator(), cooldown_sec=0.0, f_create_session=create, max_workers=workers)
    # RPCRunner's pool has no timeout: a device that stops answering would hang the run. Set the
    # pool's per-call timeout in place (its worker is already up); replace the pool if that changed.
    bound = request_timeout + session_timeout
    if hasattr(runner.pool, "_timeout"):
        runner.pool._timeout = bound
    else:
        untimed, runner.pool = runner.pool, PopenPoolExecutor(max_workers=workers, timeout=bound)
        untimed.shutdown(wait=False)
    runner.device_info = info
    runner.workers = workers
    return runner


def close_runner(runner) -> None:
    """End the runner's worker processes now (they also end when this process does)."""
    pool = getattr(runner, "pool", None)
    if pool is not None:
        pool.shutdown(wait=False)
