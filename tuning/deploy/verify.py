"""Check a compiled library against the numpy reference: one-shot and prepare/run paths."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from schedules import get_algorithm
from schedules.reference import conv2d_reference, epilogue_inputs, error_bound, random_inputs
from schedules.template import config_from_trace

from ..records import Record
from ..target import LibraryError
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


def check_library(kernel: Kernel) -> None:
    """Refuse a library its sidecar does not describe: every function the algorithm's compute has
    for this workload, with exactly its arguments (name, shape, dtype, in order), named in the
    sidecar and exported by the module; raises LibraryError naming the function and argument."""
    side, wl = kernel.side, kernel.workload
    label = side.get("library") or "library"
    algorithm = side["algorithm"]
    template = get_algorithm("direct" if algorithm == "ms-auto" else algorithm)
    phases = template.functions(wl)
    named = side["functions"]
    for name in named:
        if name not in phases:
            raise LibraryError(f"{label}: its sidecar names function {name!r}, which {algorithm} does not have "
                               f"(it has {', '.join(phases)})")
    for name, phase in phases.items():
        if name not in named:
            raise LibraryError(f"{label}: its sidecar lacks {algorithm}'s function {name!r}")
        want, got = [a.to_dict() for a in phase.args], kernel.args(name)
        if [a["name"] for a in got] != [a["name"] for a in want]:
            raise LibraryError(f"{label}: {name}: the sidecar's arguments ({', '.join(a['name'] for a in got)}) are "
                               f"not {algorithm}'s ({', '.join(a['name'] for a in want)})")
        for w, g in zip(want, got):
            if (list(g["shape"]), g["dtype"]) != (w["shape"], w["dtype"]):
                raise LibraryError(f"{label}: {name}: argument {g['name']!r} is {g['dtype']}{list(g['shape'])} in the "
                                   f"sidecar, but {algorithm} computes {wl.spec} with {w['dtype']}{w['shape']}")
    if side["run_function"] != template.run_function:
        raise LibraryError(f"{label}: run_function {side['run_function']!r}, but {algorithm}'s is "
                           f"{template.run_function!r}")
    for name in named:
        try:
            kernel.module[name]
        except AttributeError:
            raise LibraryError(f"{label}: does not export {name!r}, which its sidecar names") from None


def verify(kernel: Kernel, seed: int = 0) -> list[Check]:
    """Every path of `kernel` (one-shot; prepare then run) against the float64 reference, once
    `check_library` found the library to be what its sidecar says."""
    check_library(kernel)
    wl = kernel.workload
    data, weight = random_inputs(wl, seed)
    extra = epilogue_inputs(wl, seed)
    expected = conv2d_reference(wl, data, weight, **extra)
    algorithm = kernel.side["algorithm"]
    growth = 1.0 if algorithm == "ms-auto" else get_algorithm(algorithm).error_growth(wl)
    # A quantized layer is integer arithmetic: int32 results bit-identical, requantized ones exactly
    # ONNX's; its float32 (dequantized) output is one float32 multiply of an exact integer, as the
    # reference's. Tolerance 0.
    tolerance = 0.0 if wl.quantized else error_bound(wl, data, weight, growth)
    checks = []
    paths = ["conv2d"] + ([kernel.run_function] if kernel.run_function != "conv2d" else [])
    for function in paths:
        tensors = kernel.tensors(data, weight, extra)
        tensors["out"].copyfrom(unwritten(wl))  # unwritten outputs show
        if function == "conv2d":
            kernel.call("conv2d", tensors)
        else:
            kernel.prepare(tensors)
            kernel.call(function, tensors)
        got = tensors["out"].numpy().astype(np.float64)
        err = float(np.nan_to_num(np.abs(got - expected), nan=np.inf).max())
        checks.append(Check(function, err, tolerance))
    return checks


def unwritten(wl) -> np.ndarray:
    """What the output holds before a kernel runs, so that an element it never writes shows: NaN for
    float outputs; the type's minimum for integer ones (int32: a sum these inputs never reach;
    uint8/int8: a mismatch wherever the reference is not saturated at the bottom)."""
    dtype = wl.out_dtype
    if dtype == "float32":
        return np.full(wl.out_shape, np.nan, np.float32)
    return np.full(wl.out_shape, np.iinfo(dtype).min if dtype != "uint8" else 0, dtype)


def print_checks(results: list[tuple[str, list[Check]]]) -> int:
    """One line per checked function, `label: function: max abs error ... ok|MISMATCH`, then `N/M
    functions ok`; returns the exit status (1 if any mismatched)."""
    total = ok = 0
    for label, checks in results:
        for c in checks:
            print(f"{label}: {c.function}: max abs error {c.max_error:.3g} (tolerance {c.tolerance:.3g}) "
                  f"{'ok' if c.ok else 'MISMATCH'}")
            total, ok = total + 1, ok + c.ok
    print(f"{ok}/{total} functions ok")
    return 0 if ok == total else 1


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
