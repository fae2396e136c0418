"""A compiled library and its sidecar, run the way a deployed engine runs it.

The sidecar lists each function's arguments by name. `data`, `weight` and `out` are the layer's
tensors; any other argument (a packed weight, an indirection buffer) is state that the prepare
functions fill once; the run function is then called per input.
"""

from __future__ import annotations

import os

import numpy as np
import tvm

from schedules.workload import Workload, WorkloadError

from ..target import LibraryError
from .loader import load_module, load_sidecar_json, sidecar_path  # noqa: F401 - sidecar_path: kernel's callers

USER_TENSORS = ("data", "weight", "bias", "residual", "x_zero_point", "scale", "y_zero_point", "y_scale", "out")


class Kernel:
    def __init__(self, module, side: dict, device):
        self.module = module
        self.side = side
        self.device = device
        self.workload = Workload.from_dict(side["workload"])

    @classmethod
    def load(cls, path: str, side: dict | None = None) -> "Kernel":
        """Load `path` in this process. (A library for a remote device is loaded there by
        `tuning.remote.session.load_library`, then wrapped as `Kernel(module, side, session.cpu(0))`.)"""
        side = side or read_sidecar(path)
        return cls(load_module(path, side), side, tvm.cpu(0))

    @property
    def run_function(self) -> str:
        return self.side["run_function"]

    @property
    def prepare_functions(self) -> list[str]:
        names = list(self.side["functions"])
        return [n for n in names if n not in ("conv2d", self.run_function)]

    def args(self, function: str) -> list[dict]:
        return self.side["functions"][function]["args"]

    def tensors(self, data: np.ndarray, weight: np.ndarray,
                epilogue: dict[str, np.ndarray] | None = None) -> dict[str, tvm.runtime.Tensor]:
        """Every named argument, allocated on the device: the layer's tensors, the epilogue's
        (`bias`, `residual`: zeros unless given; a quantized layer's zero points and scales, which
        must be given, in the shapes its Quant wants); state starts as zeros."""
        if self.workload.quantized:
            self.workload.check_quant_inputs(epilogue or {})
        dtypes = {a["name"]: a["dtype"] for fn in self.side["functions"] for a in self.args(fn)}
        out = {"data": tvm.runtime.tensor(data, self.device), "weight": tvm.runtime.tensor(weight, self.device)}
        for name, array in (epilogue or {}).items():
            array = np.asarray(array)
            if name in dtypes:  # a per-tensor value given as a scalar, an int64 bias: the kernel's types
                array = np.ascontiguousarray(array.reshape(-1) if array.shape == () else array, dtypes[name])
            out[name] = tvm.runtime.tensor(array, self.device)
        for fn in self.side["functions"]:
            for arg in self.args(fn):
                if arg["name"] not in out:
                    out[arg["name"]] = tvm.runtime.tensor(np.zeros(arg["shape"], arg["dtype"]), self.device)
        return out

    def call(self, function: str, tensors: dict) -> None:
        self.module[function](*[tensors[a["name"]] for a in self.args(function)])

    def prepare(self, tensors: dict) -> None:
        for fn in self.prepare_functions:
            self.call(fn, tensors)

    def timer(self, tensors: dict, number: int, repeat: int, min_repeat_ms: int, cold: bool = False):
        """Seconds per call of the run function; `cold`: every argument but the first (the input)
        flushed from the caches before each repeat, as a layer's weights are inside a model whose
        weights exceed the last-level cache."""
        f = self.module.time_evaluator(self.run_function, self.device, number=number, repeat=repeat,
                                       min_repeat_ms=min_repeat_ms,
                                       f_preproc="cache_flush_cpu_non_first_arg" if cold else "")
        args = [tensors[a["name"]] for a in self.args(self.run_function)]
        return lambda: f(*args).results


def read_sidecar(library_path: str) -> dict:
    path, side = load_sidecar_json(library_path)
    lib = side.get("library") if isinstance(side, dict) else None
    if lib and (not isinstance(lib, str) or os.path.basename(lib) != lib):
        raise LibraryError(f"{path}: 'library' must be a file name beside the sidecar, got {lib!r}")
    check_sidecar(side, path)
    return side


def check_sidecar(side, where: str) -> None:
    """Refuse a sidecar (or a bundle manifest's layer entry, `where` naming it) whose fields a
    library cannot be run by: one line naming the field and what it must be."""
    if not isinstance(side, dict):
        raise LibraryError(f"{where}: not a JSON object")
    for key in ("workload", "functions", "run_function", "target", "algorithm"):
        if key not in side:
            raise LibraryError(f"{where}: sidecar lacks {key!r}")

    def refuse(field: str, rule: str):
        raise LibraryError(f"{where}: {field}: {rule}")

    if not isinstance(side["workload"], dict):
        refuse("workload", "must be a dict of the layer's fields (n, h, w, ci, co, kh, kw, ...)")
    try:
        Workload.from_dict(side["workload"])
    except (WorkloadError, TypeError, ValueError) as err:
        refuse("workload", str(err))
    functions = side["functions"]
    if not isinstance(functions, dict) or not functions:
        refuse("functions", 'must be a dict {name: {"args": [{name, shape, dtype}, ...]}}')
    for name, function in functions.items():
        args = function.get("args") if isinstance(function, dict) else None
        if not isinstance(args, list):
            refuse(f"functions.{name}", 'must be {"args": [{name, shape, dtype}, ...]}')
        for i, arg in enumerate(args):
            if not (isinstance(arg, dict) and isinstance(arg.get("name"), str) and isinstance(arg.get("dtype"), str)
                    and isinstance(arg.get("shape"), list)
                    and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in arg["shape"])):
                refuse(f"functions.{name}.args[{i}]", "must be {name: string, shape: [int, ...], dtype: string}")
            try:
                np.dtype(arg["dtype"])
            except TypeError:
                refuse(f"functions.{name}.args[{i}]", f"unknown dtype {arg['dtype']!r}")
    if "conv2d" not in functions:
        refuse("functions", "lacks conv2d (every library exports it)")
    if not isinstance(side["run_function"], str) or side["run_function"] not in functions:
        refuse("run_function", f"{side['run_function']!r} is not one of its functions ({', '.join(functions)})")
    if not isinstance(side["algorithm"], str):
        refuse("algorithm", f"must be an algorithm's name, got {side['algorithm']!r}")
    if not isinstance(side["target"], dict) or not isinstance(side["target"].get("config", {}), dict):
        refuse("target", "must be a dict {name, config: {...}, threads, ...}")
    threads = side.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0:
        refuse("threads", f"must be a positive integer, got {threads!r}")
