"""The peak judge: records checked against the machine's measured FP32 peak, the impossible ones
marked rejected on disk. It measures (the FMA micro-benchmark, once per process) and writes
(`rejected.json`), so it runs only where a caller that may do both passes one in: a search (its
top records) and a compile (the record it builds); a read (`records`, a summary) never does."""

from __future__ import annotations

import subprocess
import sys

from ..peak import ceiling_gflops, peak_contended, target_peak
from ..target import Target
from ..task import Task
from .errors import warn_once

PEAK_REASON = "faster than the machine's peak: re-measure"
# A record and the peak are two timings, each a few percent off on a shared 2-core VM: a sound
# kernel at 97% of the true peak must not be rejected by a peak read 4% low (seen here: 223 vs
# 220 GFLOP/s). What is refused is the impossible (a 1e-9 s record), not the excellent.
PEAK_MARGIN = 1.15


_PEAK_UNKNOWN: set[str] = set()


def peak_bound(target: Target, task: Task) -> float:
    """The highest rate, in GFLOP/s of the direct algorithm's FLOPs, a record of `task` can truly
    reach here, times how many fewer multiplications the algorithm does (Winograd): the machine's
    measured FP32 peak (tuning.peak, measured once per process) with its margin, where it was read
    on idle cores; and always at most the target's theoretical ceiling (`ceiling_gflops`), which no
    load can lower, so a forged or impossible record is refused on a busy or a remote machine too."""
    bound = ceiling_gflops(target.machine, target.threads)
    peak = None
    if target.tag not in _PEAK_UNKNOWN:
        try:
            peak = target_peak(target)
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            _PEAK_UNKNOWN.add(target.tag)
            print(f"warning: the FP32 peak cannot be measured here ({err}): records are checked against the "
                  "machine's theoretical ceiling only", file=sys.stderr)
    if peak is not None and peak_contended(target):
        # A peak read on busy cores is low: judged by it, sound records would be rejected for good.
        warn_once("warning: the FP32 peak was measured on busy cores: records are checked against the "
                   "machine's theoretical ceiling only in this run")
        peak = None
    if peak is not None:
        bound = min(bound, PEAK_MARGIN * peak)
    return bound * task.template.multiplication_saving * task.template.peak_ratio




class PeakJudge:
    """Passed to `LayerRecords` (or `choose`) by a caller allowed to measure: `bound(task)` is the
    most a record of `task` may claim here; `reject` marks one above it on disk, with a warning."""

    def __init__(self, target: Target):
        self.target = target

    def bound(self, task: Task) -> float:
        return peak_bound(self.target, task)

    def reject(self, store, task: Task, record, bound: float) -> None:
        gflops = record.gflops(task.workload)
        store.reject(record, f"{PEAK_REASON} ({gflops:.1f} GFLOP/s, the most this machine can do for "
                             f"{task.algorithm} is {bound:.1f})")
        print(f"warning: {task.algorithm} record of {task.workload.spec} rejected: {PEAK_REASON} "
              f"({gflops:.1f} GFLOP/s > {bound:.1f})", file=sys.stderr)
