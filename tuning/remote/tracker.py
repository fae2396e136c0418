"""The RPC tracker: a TVM tracker in a child process, and its client protocol with timeouts.

A board runs `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`; the tracker hands
each request a free board of that key, so several boards under one key measure in parallel.
TVM's own client retries an unreachable tracker for a minute and waits forever for a busy key, so
the tracker protocol (JSON over TCP) is spoken here with socket timeouts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from tvm.rpc import base as rpc_base

from .address import RPCError, on_free_port
from .process import start_child, stop_child, tail

CONNECT_TIMEOUT = 10.0  # reaching a tracker or a server


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
                if "cannot bind" in tail(self.log_path):
                    raise RPCError(self._taken())
                raise RPCError(f"the tracker on {self.address} exited at start (code {self.proc.returncode}):\n"
                               f"{tail(self.log_path)}")
            try:
                tracker_summary(self.host, self.port, timeout=2.0)
            except RPCError:
                if time.time() > deadline:
                    raise RPCError(f"the tracker on {self.address} did not answer within {timeout:.0f} s:\n"
                                   f"{tail(self.log_path)}") from None
                time.sleep(0.2)
                continue
            # Something answered on the port; it is ours only if our child lives and says it bound
            # that very port (TVM's tracker moves to the next port when the asked one is taken, and
            # another tracker already there answers for it).
            if self.proc.poll() is None and self._says_listening():
                return
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop_quietly()
                raise RPCError(self._taken())
            time.sleep(0.2)

    def _taken(self) -> str:
        # "cannot bind": on_free_port retries a port it picked itself on these words
        return (f"cannot bind port {self.port} on {self.host}: it is taken (another tracker, or another program, "
                "listens there); stop it, or pass another --port")

    def _says_listening(self) -> bool:
        try:
            with open(self.log_path, errors="replace") as f:
                return f"convtune-tracker listening {self.host}:{self.port}\n" in f.read()
        except OSError:
            return False

    def stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            stop_child(self.proc)

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


def tracker_summary(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> dict:
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
    info = tracker_summary(host, port, timeout)
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


def describe_keys(status: dict[str, KeyStatus]) -> str:
    live = {k: s for k, s in status.items() if s.total}
    if not live:
        return "the tracker has no devices at all"
    return "registered: " + ", ".join(f"{k} ({s.total} device(s), {s.free} free)" for k, s in live.items())

