"""Check a compiled library against the numpy reference: one-shot and prepare/run paths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schedules import get_algorithm
from schedules.reference import conv2d_reference, error_bound, random_inputs

from .kernel import Kernel


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
