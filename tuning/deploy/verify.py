"""Check a compiled library against the numpy reference: one-shot and prepare/run paths."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from schedules import get_algorithm
from schedules.reference import conv2d_reference, error_bound, random_inputs
from schedules.template import config_from_trace

from ..records import Record
from .kernel import Kernel
from .library import Choice, in_memory_kernel


@dataclass
class Check:
    function: str
    max_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_error)) and self.max_error <= self.tolerance


def verify(kernel: Kernel, seed: int = 0) -> list[Check]:
    wl = kernel.workload
    data, weight = random_inputs(wl, seed)
    expected = conv2d_reference(wl, data, weight)
    algorithm = kernel.side["algorithm"]
    growth = 1.0 if algorithm == "ms-auto" else get_algorithm(algorithm).error_growth(wl)
    tolerance = error_bound(wl, data, weight, growth)
    checks = []
    paths = ["conv2d"] + ([kernel.run_function] if kernel.run_function != "conv2d" else [])
    for function in paths:
        tensors = kernel.tensors(data, weight)
        tensors["out"].copyfrom(np.full(wl.out_shape, np.nan, np.float32))  # unwritten outputs show
        if function == "conv2d":
            kernel.call("conv2d", tensors)
        else:
            kernel.prepare(tensors)
            kernel.call(function, tensors)
        got = tensors["out"].numpy().astype(np.float64)
        err = float(np.nan_to_num(np.abs(got - expected), nan=np.inf).max())
        checks.append(Check(function, err, tolerance))
    return checks


def print_checks(results: list[tuple[str, list[Check]]]) -> int:
    """One line per checked function, `label: function: max abs error ... ok|MISMATCH`; returns the
    exit status (1 if any mismatched)."""
    failed = False
    for label, checks in results:
        for c in checks:
            print(f"{label}: {c.function}: max abs error {c.max_error:.3g} (tolerance {c.tolerance:.3g}) "
                  f"{'ok' if c.ok else 'MISMATCH'}")
            failed |= not c.ok
    return 1 if failed else 0


def check_top_records(store, task, target, k: int = 3) -> Record | None:
    """Check the fastest records of `task` against the reference, fastest first, until one passes;
    failures are marked rejected so a schedule that computes garbage never becomes the best.
    MetaSchedule itself times candidates but never looks at their output."""
    for record in store.top(task, k):
        config = None if task.generated else config_from_trace(record.trace, task.knob_names)
        choice = Choice(task, record, config)
        try:
            kernel = in_memory_kernel(choice, target, "check")
            failures = [c for c in verify(kernel) if not c.ok]
            reason = "; ".join(f"{c.function} max error {c.max_error:.3g} > {c.tolerance:.3g}" for c in failures)
        except Exception as err:  # noqa: BLE001 - a record that no longer builds is as bad as a wrong one
            reason = f"does not build or run: {err}"
        if not reason:
            return record
        store.reject(record, reason)
        print(f"warning: {task.algorithm} record rejected by the reference check: {reason}", file=sys.stderr)
    return None
