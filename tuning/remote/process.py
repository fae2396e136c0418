"""Child processes that never outlive us: trackers and emulated devices started by convtune.

Each child runs in its own process group; an attached child gets SIGTERM when this process dies
(PR_SET_PDEATHSIG) and is stopped at interpreter exit. Only processes started here are stopped.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import time

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

