"""Sessions on remote devices: through a tracker or straight to a server, bounded in time.

Libraries are checked before they are uploaded: the ELF header's machine field against the
device's architecture (reported by `convtune.device_info` on our emulated device, else the one
the library's target was built for), so an x86 library is refused with a message, not a dlopen
error from the board.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

from tvm.rpc import base as rpc_base

from ..target import (
    LibraryArchError,
    LibraryError,
    Target,
    check_arch,
    compile_hint,
    elf_machine,
    sidecar_arch,
)
from .address import REQUEST_TIMEOUT, DeviceAddress, RPCError
from .tracker import (
    CONNECT_TIMEOUT,
    KeyStatus,
    _TrackerConnection,
    describe_keys,
    devices,
)

DEVICE_INFO = "convtune.device_info"  # registered by tuning/remote/emulator.py's device launcher


class RemoteLoadError(RPCError, LibraryError):
    """The device could not load a library."""


def request(host: str, port: int, key: str, *, timeout: float = REQUEST_TIMEOUT,
            session_timeout: float = 0, priority: int = 1):
    """A session on a device of `key`, through the tracker at host:port.

    Fails at once when no device is registered under `key`, and after `timeout` seconds when
    all of them stay busy. `session_timeout` (s, 0: none) lets the device end an overlong session.
    """
    status = devices(host, port, timeout=min(timeout, CONNECT_TIMEOUT))
    if status.get(key, KeyStatus(0, 0, 0)).total == 0:
        raise RPCError(f"tracker {host}:{port}: no device registered under key {key!r}; "
                       f"{describe_keys(status)}")
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


def session(device: DeviceAddress, session_timeout: float = 0):
    """A session on the device at `device`: through its tracker, or straight to its server."""
    kind, host, port = device.resolve("ask the tracker for")
    if kind == "tracker":
        return request(host, port, device.key, timeout=device.request_timeout, session_timeout=session_timeout)
    return connect(host, port, device.key or "", timeout=min(device.request_timeout, CONNECT_TIMEOUT),
                   session_timeout=session_timeout)


def open_session(device: DeviceAddress, side: dict | None = None):
    """A session on `device`; with a sidecar, a device that reports another architecture than the
    library's target is refused before any upload."""
    sess = session(device)
    wanted, machine = sidecar_arch(side), device_info(sess).get("machine")
    if wanted and machine and wanted != machine:
        raise LibraryArchError(f"{side.get('library', 'the library')} is built for {wanted} "
                               f"(--target {side['target'].get('name')}), but the device is {machine}: "
                               f"{compile_hint(machine)}")
    return sess


def device_info(session) -> dict:
    """What the device says about itself: {"machine", "emulated", "cpu", ...} from our emulated
    device; {} from a stock TVM server (it has no such function)."""
    try:
        return json.loads(session.get_function(DEVICE_INFO)())
    except Exception:  # noqa: BLE001 - a stock server raises "function not found"
        return {}


def load_library(session, path: str, side: dict | None = None):
    """Check `path` against the device's architecture, then upload and load it there.

    The device's architecture: what it reports (our emulated device), else the one the sidecar's
    target names (a stock server cannot tell; then the check only catches a library that does not
    match its own sidecar)."""
    device, source = device_info(session).get("machine"), "the device"
    if device is None:
        device, source = sidecar_arch(side), "the device (per the sidecar's target)"
    check_arch(path, device, source)
    return load_remote(session, path)


def load_remote(session, path: str):
    """Upload `path` and load it on the device, unchecked (`load_library` checks first).

    A board's dlopen reports a library of another architecture as "No such file or directory":
    a failure names the library's architecture so the cause can be seen."""
    arch = elf_machine(path)
    name = os.path.basename(path)
    session.upload(path, name)
    try:
        return session.load_module(name)
    except Exception as err:  # noqa: BLE001 - TVM's RPC error types vary
        raise RemoteLoadError(f"the device could not load {name}, an {arch} library "
                              f"({_last_line(err)}); is the device {arch}?") from None


# --------------------------------------------------------------------------------------------
# Session factories for MetaSchedule's RPC runner (they run in its worker processes)


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
                       f"measure on a {target.arch} device, or tune for this one ({compile_hint(machine)})")
    return info

