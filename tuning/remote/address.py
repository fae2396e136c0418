"""Addresses of trackers and devices, and the one error every remote failure raises."""

from __future__ import annotations

import socket
from dataclasses import dataclass

REQUEST_TIMEOUT = 60.0  # waiting for a free device of a key


class RPCError(RuntimeError):
    """A tracker, device or session that cannot be reached or used; the message says which and why."""


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


@dataclass(frozen=True)
class DeviceAddress:
    """Where a remote device is and how long to wait for it: a tracker (`tracker` HOST:PORT and the
    devices' `key`) or one RPC server (`rpc` HOST:PORT, its `key` if it wants one). TVM keeps these
    in one `RPCConfig`; this is convtune's, from the CLI's `--rpc-tracker --rpc-key --rpc
    --rpc-timeout` down to the runner (tuning.search.measure) and the session (tuning.remote.session)."""

    tracker: str | None = None
    key: str | None = None
    rpc: str | None = None
    request_timeout: float = REQUEST_TIMEOUT  # seconds to wait for a free device (or a connection)

    def __bool__(self) -> bool:
        """Whether a device is named at all (no address: this machine)."""
        return bool(self.tracker or self.rpc)

    def resolve(self, purpose: str) -> tuple[str, str, int]:
        """("tracker" | "direct", host, port), refusing a combination that names no device or two."""
        if self.tracker and self.rpc:
            raise RPCError("give either --rpc-tracker (with --rpc-key) or --rpc HOST:PORT, not both")
        if self.tracker:
            if not self.key:
                raise RPCError(f"--rpc-tracker needs --rpc-key: the kind of device to {purpose}")
            return ("tracker", *parse_hostport(self.tracker, "--rpc-tracker"))
        if self.rpc:
            return ("direct", *parse_hostport(self.rpc, "--rpc"))
        raise RPCError("no device: give --rpc-tracker HOST:PORT --rpc-key KEY, or --rpc HOST:PORT")


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

