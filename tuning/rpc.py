"""Remote devices over TVM RPC: a tracker, sessions on boards, and MetaSchedule's RPC runner.

A board runs `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`; the tracker hands
each request a free board of that key, so several boards under one key measure in parallel.
Without a tracker a client connects straight to one server (`--rpc HOST:PORT`).

Everything here is bounded in time: TVM's own client retries an unreachable tracker for a minute
and waits forever for a busy key, so the tracker protocol (JSON over TCP) is spoken here with
socket timeouts, and MetaSchedule's runner pool gets a per-trial timeout it lacks by default.

Libraries are checked before they are uploaded: the ELF header's machine field against the
device's architecture (reported by `convtune.device_info` on our emulated device, else the one
the library's target was built for), so an x86 library is refused with a message, not a dlopen
error from the board.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from tvm.rpc import base as rpc_base

from .kernel import LibraryError
from .measure import MeasureConfig
from .target import Target, host_arch

DEVICE_INFO = "convtune.device_info"  # registered by tuning/emulator.py's device launcher
CONNECT_TIMEOUT = 10.0  # reaching a tracker or a server
REQUEST_TIMEOUT = 60.0  # waiting for a free device of a key


class RPCError(RuntimeError):
    pass


class LibraryArchError(RPCError, LibraryError):
    """A library built for another architecture than the device's."""


# --------------------------------------------------------------------------------------------
# Addresses


def parse_hostport(text: str, what: str = "--rpc-tracker") -> tuple[str, int]:
    """`HOST:PORT` (or `[IPv6]:PORT`) -> (host, port), with an error that names the option."""
    text = (text or "").strip()
    example = f"{what} 127.0.0.1:9190"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise RPCError(f"{what}: expected HOST:PORT, got {text!r} (e.g. {example})")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RPCError(f"{what}: port must be a number in 1..65535, got {port!r} in {text!r}")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it; a race with another process is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Child processes that never outlive us


_CHILDREN: set[int] = set()  # process groups we started and have not stopped


def start_child(argv: list[str], log_path: str, env: dict | None = None, detach: bool = False) -> subprocess.Popen:
    """Start `argv` in its own process group, output to `log_path`.

    Not detached: the child gets SIGTERM when this process dies (PR_SET_PDEATHSIG, even on
    SIGKILL) and is killed at interpreter exit. Detached: it outlives us (`convtune device start`).
    Start attached children from the main thread: the death signal follows the starting thread.
    """
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True,
                            preexec_fn=None if detach else _die_with_parent)
    log.close()
    if not detach:
        _CHILDREN.add(proc.pid)
    return proc


def _die_with_parent() -> None:
    import ctypes  # noqa: PLC0415 - runs in the child between fork and exec

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_child(proc_or_pid, grace: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after `grace` seconds, reap it."""
    pid = proc_or_pid if isinstance(proc_or_pid, int) else proc_or_pid.pid
    _CHILDREN.discard(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:  # not ours (a reused pid): leave it alone
            return
        deadline = time.time() + grace
        while time.time() < deadline:
            if _reap(proc_or_pid) and not _group_alive(pid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    _reap(proc_or_pid)


def _reap(proc_or_pid) -> bool:
    """True when the group leader has exited (reaped if it is our child)."""
    if isinstance(proc_or_pid, subprocess.Popen):
        return proc_or_pid.poll() is not None
    try:
        done, _ = os.waitpid(proc_or_pid, os.WNOHANG)
        return done != 0
    except ChildProcessError:  # not our child: alive while /proc has it (and not a zombie)
        return not _pid_alive(proc_or_pid)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # killpg(0) also succeeds for zombies; look for a live member
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, IndexError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@atexit.register
def _stop_all_children() -> None:
    for pid in list(_CHILDREN):
        stop_child(pid, grace=2.0)


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------------------------
# The tracker


@dataclass
class Tracker:
    """A tracker we started (`python -m tvm.exec.rpc_tracker`); `stop()` ends it and its workers."""

    host: str
    port: int
    proc: subprocess.Popen
    log_path: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0,
              log_path: str | None = None, detach: bool = False) -> "Tracker":
        """Start a tracker on `host:port` (a free port when None) and wait until it answers."""
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="convtune-tracker-", suffix=".log")
            os.close(fd)
        if port is None:
            port = free_port(host)
        argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host,
                "--port", str(port), "--port-end", str(port + 1)]
        proc = start_child(argv, log_path, detach=detach)
        tracker = cls(host, port, proc, log_path)
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                tracker.stop()
                raise RPCError(f"the tracker on {host}:{port} exited at start (code {proc.returncode}):\n"
                               f"{tail(log_path)}")
            try:
                summary(host, port, timeout=2.0)
                return tracker
            except RPCError:
                if time.time() > deadline:
                    tracker.stop()
                    raise RPCError(f"the tracker on {host}:{port} did not answer within {timeout:.0f} s:\n"
                                   f"{tail(log_path)}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        stop_child(self.proc)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _TrackerConnection:
    """The tracker's client protocol with socket timeouts (TVM's TrackerSession has none)."""

    def __init__(self, host: str, port: int, timeout: float):
        self.where = f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout:
            raise RPCError(f"tracker {self.where}: no answer within {timeout:.0f} s") from None
        except OSError as err:
            raise RPCError(f"tracker {self.where}: cannot connect ({err.strerror or err}); "
                           f"is a tracker running there? (`convtune tracker`)") from None
        try:
            self.sock.sendall(struct.pack("<i", rpc_base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", rpc_base.recvall(self.sock, 4))[0]
        except (OSError, struct.error) as err:
            self.close()
            raise RPCError(f"tracker {self.where}: handshake failed ({err})") from None
        if magic != rpc_base.RPC_TRACKER_MAGIC:
            self.close()
            raise RPCError(f"{self.where} is not a TVM RPC tracker")

    def call(self, message: list, timeout: float):
        self.sock.settimeout(timeout)
        rpc_base.sendjson(self.sock, message)
        return rpc_base.recvjson(self.sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def summary(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> dict:
    """The tracker's raw summary: {"queue_info": {key: {free, pending}}, "server_info": [...]}."""
    with _TrackerConnection(host, port, timeout) as conn:
        try:
            value = conn.call([rpc_base.TrackerCode.SUMMARY], timeout)
        except (OSError, ValueError) as err:
            raise RPCError(f"tracker {host}:{port}: no summary ({err})") from None
    if value[0] != rpc_base.TrackerCode.SUCCESS:
        raise RPCError(f"tracker {host}:{port}: summary failed: {value}")
    return value[1]


@dataclass(frozen=True)
class KeyStatus:
    total: int  # servers registered under the key
    free: int  # of those, waiting for a session now
    pending: int  # requests waiting for one


def devices(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> dict[str, KeyStatus]:
    """Devices registered with the tracker, per key."""
    info = summary(host, port, timeout)
    totals: dict[str, int] = {}
    for server in info.get("server_info", []):
        key = server.get("key", "").split(":", 1)[-1]
        totals[key] = totals.get(key, 0) + 1
    keys = set(totals) | set(info.get("queue_info", {}))
    return {k: KeyStatus(totals.get(k, 0), info["queue_info"].get(k, {}).get("free", 0),
                         info["queue_info"].get(k, {}).get("pending", 0)) for k in sorted(keys)}


def free_devices(host: str, port: int, key: str, timeout: float = CONNECT_TIMEOUT) -> int:
    return devices(host, port, timeout).get(key, KeyStatus(0, 0, 0)).free


def wait_for_devices(host: str, port: int, key: str, count: int = 1, timeout: float = 60.0,
                     alive=None) -> KeyStatus:
    """Wait until `count` devices are registered under `key` (and `alive()` stays true)."""
    deadline = time.time() + timeout
    while True:
        status = devices(host, port).get(key, KeyStatus(0, 0, 0))
        if status.total >= count:
            return status
        if alive is not None and not alive():
            raise RPCError(f"the device for key {key!r} exited before it registered with {host}:{port}")
        if time.time() > deadline:
            raise RPCError(f"tracker {host}:{port}: {status.total} device(s) under key {key!r} after "
                           f"{timeout:.0f} s, expected {count}")
        time.sleep(0.5)


def _describe_keys(status: dict[str, KeyStatus]) -> str:
    live = {k: s for k, s in status.items() if s.total}
    if not live:
        return "the tracker has no devices at all"
    return "registered: " + ", ".join(f"{k} ({s.total} device(s), {s.free} free)" for k, s in live.items())


# --------------------------------------------------------------------------------------------
# Sessions


def request(host: str, port: int, key: str, *, timeout: float = REQUEST_TIMEOUT,
            session_timeout: float = 0, priority: int = 1):
    """A session on a device of `key`, through the tracker at host:port.

    Fails at once when no device is registered under `key`, and after `timeout` seconds when
    all of them stay busy. `session_timeout` (s, 0: none) lets the device end an overlong session.
    """
    status = devices(host, port, timeout=min(timeout, CONNECT_TIMEOUT))
    if status.get(key, KeyStatus(0, 0, 0)).total == 0:
        raise RPCError(f"tracker {host}:{port}: no device registered under key {key!r}; "
                       f"{_describe_keys(status)}")
    started = time.time()
    with _TrackerConnection(host, port, min(timeout, CONNECT_TIMEOUT)) as conn:
        try:
            value = conn.call([rpc_base.TrackerCode.REQUEST, key, "", priority], timeout)
        except socket.timeout:
            # Closing the connection withdraws the request: the tracker skips closed requesters.
            total = status[key].total
            raise RPCError(f"tracker {host}:{port}: no device of key {key!r} became free within "
                           f"{timeout:.0f} s ({total} registered, all busy)") from None
        except (OSError, ValueError) as err:
            raise RPCError(f"tracker {host}:{port}: request for {key!r} failed ({err})") from None
    if value[0] != rpc_base.TrackerCode.SUCCESS:
        raise RPCError(f"tracker {host}:{port}: request for {key!r} refused: {value}")
    url, server_port, matchkey = value[1]
    left = max(timeout - (time.time() - started), CONNECT_TIMEOUT)
    return connect(url, server_port, key=matchkey, timeout=left, session_timeout=session_timeout)


def connect(host: str, port: int, key: str = "", *, timeout: float = CONNECT_TIMEOUT,
            session_timeout: float = 0):
    """A session on the RPC server at host:port (no tracker); bounded by `timeout` seconds."""
    from tvm import rpc  # noqa: PLC0415

    return _bounded(lambda: rpc.connect(host, port, key, session_timeout=session_timeout), timeout,
                    f"RPC server {host}:{port}",
                    "no session within {t:.0f} s (is it serving another client?)")


def _bounded(fn, timeout: float, where: str, late: str):
    """fn() in a daemon thread; an RPCError when it raises or takes longer than `timeout`."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - passed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RPCError(f"{where}: {late.format(t=timeout)}")
    if "error" in box:
        message = str(box["error"]).strip().splitlines()
        raise RPCError(f"{where}: cannot connect ({message[-1] if message else box['error']!r})") from None
    return box["value"]


def session(*, tracker: str | None = None, key: str | None = None, rpc: str | None = None,
            timeout: float = REQUEST_TIMEOUT, session_timeout: float = 0):
    """A session from CLI options: `--rpc-tracker H:P --rpc-key K` or `--rpc H:P [--rpc-key K]`."""
    if tracker and rpc:
        raise RPCError("give either --rpc-tracker (with --rpc-key) or --rpc HOST:PORT, not both")
    if tracker:
        if not key:
            raise RPCError("--rpc-tracker needs --rpc-key: the kind of device to ask the tracker for")
        host, port = parse_hostport(tracker, "--rpc-tracker")
        return request(host, port, key, timeout=timeout, session_timeout=session_timeout)
    if rpc:
        host, port = parse_hostport(rpc, "--rpc")
        return connect(host, port, key or "", timeout=min(timeout, CONNECT_TIMEOUT), session_timeout=session_timeout)
    raise RPCError("no device: give --rpc-tracker HOST:PORT --rpc-key KEY, or --rpc HOST:PORT")


def open_session(args, side: dict | None = None):
    """The CLI's session (`args.rpc_tracker`, `args.rpc_key`, `args.rpc`); with a sidecar, a device
    that reports another architecture than the library's target is refused before any upload."""
    sess = session(tracker=getattr(args, "rpc_tracker", None), key=getattr(args, "rpc_key", None),
                   rpc=getattr(args, "rpc", None), timeout=getattr(args, "rpc_timeout", None) or REQUEST_TIMEOUT)
    wanted, machine = _target_arch(side), device_info(sess).get("machine")
    if wanted and machine and wanted != machine:
        raise LibraryArchError(f"{side.get('library', 'the library')} is built for {wanted} "
                               f"({side['target'].get('name')}), but the device is {machine}")
    return sess


def device_info(session) -> dict:
    """What the device says about itself: {"machine", "emulated", "cpu", ...} from our emulated
    device; {} from a stock TVM server (it has no such function)."""
    try:
        return json.loads(session.get_function(DEVICE_INFO)())
    except Exception:  # noqa: BLE001 - a stock server raises "function not found"
        return {}


# --------------------------------------------------------------------------------------------
# Libraries and architectures

_ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm", 62: "x86_64",
                 183: "aarch64", 243: "riscv64"}


def elf_machine(path: str) -> str:
    """The architecture a shared library was built for, from its ELF header (`e_machine`)."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError as err:
        raise LibraryArchError(f"{path}: cannot read ({err.strerror})") from None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise LibraryArchError(f"{path}: not an ELF shared library (a .so built by `convtune compile`)")
    order = "<" if header[5] == 1 else ">"
    machine = struct.unpack(order + "H", header[18:20])[0]
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def _target_arch(side: dict | None) -> str | None:
    if not side:
        return None
    config = side.get("target", {}).get("config", {})
    triple = config.get("mtriple", "")
    if not triple:
        return "x86_64" if config.get("kind") == "llvm" else None
    return triple.split("-")[0]


def check_library(path: str, session=None, side: dict | None = None) -> str:
    """Refuse a library the device cannot load; returns its architecture.

    The device's architecture: what it reports (our emulated device), else this host's when
    there is no session, else the architecture the sidecar's target names (a stock server cannot
    tell; then the check only catches a library that does not match its own sidecar)."""
    arch = elf_machine(path)
    name = os.path.basename(path)
    if session is None:
        device, source = host_arch(), "this host"
    else:
        device = device_info(session).get("machine")
        source = "the device"
        if device is None:
            device, source = _target_arch(side), "the device (per the sidecar's target)"
    if device and arch != device:
        hint = ("compile it with --target aarch64 (or aarch64-a72, ...)" if device == "aarch64"
                else "compile it with --target x86" if device == "x86_64" else f"compile it for {device}")
        run_remote = " or run it on a device with --rpc-tracker/--rpc" if session is None else ""
        raise LibraryArchError(f"{name} is built for {arch}, but {source} is {device}: {hint}{run_remote}")
    return arch


# --------------------------------------------------------------------------------------------
# MetaSchedule's runner


def _tracker_session(rpc_config, request_timeout: float):
    """f_create_session for RPCRunner (runs in its worker processes): a bounded tracker request."""
    return request(rpc_config.tracker_host, int(rpc_config.tracker_port), rpc_config.tracker_key,
                   timeout=request_timeout, session_timeout=rpc_config.session_timeout_sec,
                   priority=rpc_config.session_priority)


def _direct_session(rpc_config, key: str, connect_timeout: float):
    """f_create_session for `--rpc HOST:PORT`: straight to the server, no tracker."""
    return connect(rpc_config.tracker_host, int(rpc_config.tracker_port), key, timeout=connect_timeout,
                   session_timeout=rpc_config.session_timeout_sec)


def _probe(session_factory, target: Target, where: str) -> dict:
    sess = session_factory()
    try:
        info = device_info(sess)
    finally:
        del sess  # ends the session: the device serves one at a time
    machine = info.get("machine")
    if machine and machine != target.arch:
        raise RPCError(f"{where} is {machine}, but the target {target.name} builds for {target.arch}: "
                       f"use --target {'aarch64' if machine == 'aarch64' else 'x86' if machine == 'x86_64' else '...'} "
                       "or a device of the right kind")
    return info


def rpc_runner(target: Target, config: MeasureConfig = MeasureConfig(), *, tracker: str | None = None,
               key: str | None = None, rpc: str | None = None, session_timeout: float | None = None,
               request_timeout: float = REQUEST_TIMEOUT, probe: bool = True, quiet: bool = False):
    """MetaSchedule's RPCRunner on remote devices: `tracker="H:P", key=K` or `rpc="H:P"`.

    One worker per device registered under the key, so several boards measure in parallel.
    Each trial is bounded: `request_timeout` to get a device, `session_timeout` (default
    `config.run_timeout`) for upload, load and timing; a trial over both is killed and recorded
    as failed, so a dead device ends a run with failed trials, not a hang.
    With `probe`, one session is opened first to fail early (unreachable, wrong architecture)
    and to learn whether the device is emulated (`runner.device_info`).
    """
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
    from tvm.support.popen_pool import PopenPoolExecutor  # noqa: PLC0415

    session_timeout = float(session_timeout or config.run_timeout)
    if tracker and rpc:
        raise RPCError("give either --rpc-tracker (with --rpc-key) or --rpc HOST:PORT, not both")
    if tracker:
        if not key:
            raise RPCError("--rpc-tracker needs --rpc-key: the kind of device to measure on")
        host, port = parse_hostport(tracker, "--rpc-tracker")
        status = devices(host, port)
        registered = status.get(key, KeyStatus(0, 0, 0)).total
        if registered == 0:
            raise RPCError(f"tracker {host}:{port}: no device registered under key {key!r}; {_describe_keys(status)}")
        # Registered rather than free: a device serving a session shows as busy for a moment.
        workers = registered
        rpc_key = key
        create = functools.partial(_tracker_session, request_timeout=request_timeout)
        where = f"the device {key!r} at tracker {host}:{port}"
        factory = functools.partial(request, host, port, key, timeout=request_timeout, session_timeout=session_timeout)
        bound = request_timeout + session_timeout
    elif rpc:
        host, port = parse_hostport(rpc, "--rpc")
        workers = 1  # one server serves one session at a time
        rpc_key = "(direct)"  # RPCConfig insists on a key; the server wants its own (`key`)
        create = functools.partial(_direct_session, key=key or "", connect_timeout=request_timeout)
        where = f"the RPC server {host}:{port}"
        factory = functools.partial(connect, host, port, key or "", timeout=request_timeout,
                                    session_timeout=session_timeout)
        bound = request_timeout + session_timeout
    else:
        raise RPCError("no device: give --rpc-tracker HOST:PORT --rpc-key KEY, or --rpc HOST:PORT")
    info = _probe(factory, target, where) if probe else {}
    if info.get("emulated") and not quiet:
        from .emulator import EMULATED_NOTE  # noqa: PLC0415

        print(EMULATED_NOTE, file=sys.stderr)
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                       session_priority=1, session_timeout_sec=int(session_timeout)),
        evaluator_config=config.evaluator(), cooldown_sec=0.0, f_create_session=create, max_workers=workers)
    # RPCRunner's pool has no timeout: a device that stops answering would hang the run.
    untimed = runner.pool
    runner.pool = PopenPoolExecutor(max_workers=workers, timeout=bound)
    untimed.shutdown(wait=False)
    runner.device_info = info
    runner.workers = workers
    return runner


def make_runner(args, config: MeasureConfig = MeasureConfig(), target: Target | None = None):
    """The CLI's runner from `--rpc-tracker/--rpc-key` or `--rpc` (and `--target`)."""
    if target is None:
        from .target import resolve_target  # noqa: PLC0415

        target = resolve_target(getattr(args, "target", "x86"))
    return rpc_runner(target, config, tracker=getattr(args, "rpc_tracker", None), key=getattr(args, "rpc_key", None),
                      rpc=getattr(args, "rpc", None), request_timeout=getattr(args, "rpc_timeout", None) or REQUEST_TIMEOUT)


def close_runner(runner) -> None:
    """End the runner's worker processes now (they also end when this process does)."""
    pool = getattr(runner, "pool", None)
    if pool is not None:
        pool.shutdown(wait=False)
