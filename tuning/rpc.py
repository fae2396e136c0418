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
import contextlib
import ctypes
import functools
import json
import os
import re
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


class RemoteLoadError(RPCError, LibraryError):
    """The device could not load a library."""


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


def on_free_port(host: str, port: int | None, start, errors):
    """`start(port)`, or `start(a free port)` when `port` is None; a free port taken by someone else
    in the meantime (an error saying "cannot bind") is retried on another, twice."""
    for attempt in range(3 if port is None else 1):
        try:
            return start(port or free_port(host))
        except errors as err:
            if port is None and attempt < 2 and "cannot bind" in str(err):
                continue
            raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Child processes that never outlive us


_CHILDREN: set[int] = set()  # process groups we started and have not stopped
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)


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
    # Runs in the child between fork and exec: no imports, no allocation-heavy work.
    _LIBC.prctl(_PR_SET_PDEATHSIG, _SIGTERM)


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
            if _reap(proc_or_pid) and not group_alive(pid):
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
        return not pid_alive(proc_or_pid)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
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


# What `python -m tvm.exec.rpc_tracker` runs, minus its extra worker process: a grandchild would
# outlive us if we were killed (only our direct child gets the death signal).
TRACKER_LAUNCHER = """
import sys
from tvm.rpc.tracker import PopenTrackerServerState
state = PopenTrackerServerState(sys.argv[1], int(sys.argv[2]), int(sys.argv[2]) + 1)
print(f"convtune-tracker listening {sys.argv[1]}:{state.port}", flush=True)
state.thread.join()
"""


@dataclass
class Tracker:
    """A TVM RPC tracker we started (TVM's tracker in a child process); `stop()` ends it."""

    host: str
    port: int
    proc: subprocess.Popen
    log_path: str
    own_log: bool = False  # a temporary log, removed by stop()

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
        own_log = log_path is None
        if own_log:
            fd, log_path = tempfile.mkstemp(prefix="convtune-tracker-", suffix=".log")
            os.close(fd)

        def start(chosen: int) -> "Tracker":
            # The tracker needs no compiler: the runtime library loads faster.
            env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
            proc = start_child([sys.executable, "-c", TRACKER_LAUNCHER, host, str(chosen)], log_path, env=env,
                               detach=detach)
            tracker = cls(host, chosen, proc, log_path)
            try:
                tracker._wait_ready(timeout)
            except RPCError:
                tracker.stop()
                raise
            tracker.own_log = own_log
            return tracker

        return on_free_port(host, port, start, RPCError)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RPCError(f"the tracker on {self.address} exited at start (code {self.proc.returncode}):\n"
                               f"{tail(self.log_path)}")
            try:
                summary(self.host, self.port, timeout=2.0)
                return
            except RPCError:
                if time.time() > deadline:
                    raise RPCError(f"the tracker on {self.address} did not answer within {timeout:.0f} s:\n"
                                   f"{tail(self.log_path)}") from None
                time.sleep(0.2)

    def wait(self) -> int:
        """Block until the tracker exits (a foreground `convtune tracker`); its exit code."""
        return self.proc.wait()

    def stop(self) -> None:
        stop_child(self.proc)
        if self.own_log:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_path)

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


def format_devices(status: dict[str, KeyStatus]) -> str:
    """A table of keys and their devices, for `convtune tracker` and friends."""
    if not status:
        return "no devices registered"
    width = max(len("key"), *(len(k) for k in status))
    lines = [f"{'key':<{width}s}  total  free  pending"]
    lines += [f"{k:<{width}s}  {s.total:5d}  {s.free:4d}  {s.pending:7d}" for k, s in status.items()]
    return "\n".join(lines)


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
        raise RPCError(f"{where}: cannot connect ({_last_line(box['error'])}); "
                       "is an RPC server running there?") from None
    return box["value"]


def _last_line(err: BaseException) -> str:
    """The useful line of a TVM error: no traceback, no `Check failed: (...) is false:` prefix."""
    lines = [l.strip() for l in str(err).strip().strip("()'\"").splitlines() if l.strip()]
    line = lines[-1] if lines else type(err).__name__
    return re.sub(r"^Check failed: \(.*?\) is false: ", "", line).rstrip("'\",)")


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
                               f"(--target {side['target'].get('name')}), but the device is {machine}: "
                               f"{_compile_hint(machine)}")
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
        run_remote = ", or run it on a device with --rpc-tracker/--rpc" if session is None else ""
        raise LibraryArchError(f"{name} is built for {arch}, but {source} is {device}: "
                               f"{_compile_hint(device)}{run_remote}")
    return arch


def _compile_hint(device: str) -> str:
    if device == "aarch64":
        return "compile it with --target aarch64 (or aarch64-a72, ...)"
    if device == "x86_64":
        return "compile it with --target x86"
    return f"compile it for {device}"


def load_remote(session, path: str):
    """Upload `path` to the device and load it there (call `check_library` first).

    A board's dlopen reports a library of another architecture as "No such file or directory":
    a failure names the library's architecture so the cause can be seen."""
    name = os.path.basename(path)
    session.upload(path, name)
    try:
        return session.load_module(name)
    except Exception as err:  # noqa: BLE001 - TVM's RPC error types vary
        raise RemoteLoadError(f"the device could not load {name}, an {elf_machine(path)} library "
                              f"({_last_line(err)}); is the device {elf_machine(path)}?") from None


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
                       f"measure on a {target.arch} device, or tune for this one ({_compile_hint(machine)})")
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
        factory = functools.partial(request, host, port, key, timeout=request_timeout,
                                    session_timeout=session_timeout)
    elif rpc:
        host, port = parse_hostport(rpc, "--rpc")
        workers = 1  # one server serves one session at a time
        rpc_key = "(direct)"  # RPCConfig insists on a key; the server wants its own (`key`)
        create = functools.partial(_direct_session, key=key or "", connect_timeout=request_timeout)
        where = f"the RPC server {host}:{port}"
        factory = functools.partial(connect, host, port, key or "", timeout=request_timeout,
                                    session_timeout=session_timeout)
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


def make_runner(args, config: MeasureConfig = MeasureConfig(), target: Target | None = None):
    """The CLI's runner from `--rpc-tracker/--rpc-key` or `--rpc` (and `--target`)."""
    if target is None:
        from .target import resolve_target  # noqa: PLC0415

        target = resolve_target(getattr(args, "target", "x86"))
    return rpc_runner(target, config, tracker=getattr(args, "rpc_tracker", None), key=getattr(args, "rpc_key", None),
                      rpc=getattr(args, "rpc", None),
                      request_timeout=getattr(args, "rpc_timeout", None) or REQUEST_TIMEOUT)


def close_runner(runner) -> None:
    """End the runner's worker processes now (they also end when this process does)."""
    pool = getattr(runner, "pool", None)
    if pool is not None:
        pool.shutdown(wait=False)
