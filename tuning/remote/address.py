"""Addresses of trackers and devices, and the one error every remote failure raises."""

from __future__ import annotations

import socket


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

