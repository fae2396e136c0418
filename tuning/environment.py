"""Where and when a number was taken: stored beside every benchmark, experiment and peak reading.

One description of the run, so that every JSON convtune writes names the same facts the same
way: the CPU model (from /proc/cpuinfo), the machine the kernels were scheduled for (ISA, lanes,
registers, FMA units, caches), threads, the true peak of that ISA here, and the versions.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import numpy as np
import tvm

from .peak import cpu_model, target_peak
from .target import Target


def git_commit() -> str | None:
    """This checkout's commit, `+modified` when tracked files differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+modified" if dirty.stdout.strip() else "")


def torch_version() -> str | None:
    try:
        import torch  # noqa: PLC0415 - an optional rival
    except ImportError:
        return None
    return torch.__version__


def run_environment(target: Target, command: str | None = None) -> dict:
    """The run's description; `fp32_peak_gflops` is None for a target that is not this machine."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "target": target.to_dict(),
        "isa": target.machine.isa,
        "threads": target.threads,
        "fp32_peak_gflops": target_peak(target),
        "tvm": tvm.__version__,
        "torch": torch_version(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "convtune_commit": git_commit(),
    }
