"""A model's library at run time: its sidecar read and checked, the library loaded and run (Relax
VM), and its outputs checked against another engine (ONNX Runtime, or PyTorch for a .pt2); where
they disagree, the first conv layer that diverges from the float64 reference."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from schedules.workload import Workload

from ...model_import import import_torch, load_exported_program, zoo_onnx
from ...target import LibraryError, Target
from ...task import Task
from ..kernel import load_sidecar_json
from ..library import Choice, choose, in_memory_kernel
from ..loader import load_module
from ..verify import verify
from .build import QUANT_STEPS


def is_model_sidecar(side) -> bool:
    return isinstance(side, dict) and side.get("kind") == "model"


class ModelLibrary:
    """A compiled model loaded in this process, run through the Relax VM."""

    def __init__(self, executable, side: dict, device=None):
        self.side = side
        self.device = device or tvm.cpu(0)
        self.vm = relax.VirtualMachine(executable, self.device)

    @classmethod
    def load(cls, path: str, side: dict, threads: int | None = None) -> "ModelLibrary":
        return cls(load_module(path, side, threads), side)

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.side["inputs"]]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = []
        for spec in self.side["inputs"]:
            if spec["name"] not in inputs:
                raise LibraryError(f"input {spec['name']!r} not given (the model takes "
                                   f"{', '.join(i['name'] + str(i['shape']) for i in self.side['inputs'])})")
            array = np.ascontiguousarray(inputs[spec["name"]], dtype=spec["dtype"])
            if list(array.shape) != spec["shape"]:
                raise LibraryError(f"input {spec['name']!r} has shape {list(array.shape)}, the model takes {spec['shape']}")
            args.append(tvm.runtime.tensor(array, self.device))
        result = self.vm["main"](*args)
        # one output: a tensor; several: a tuple of them
        items = [result] if hasattr(result, "numpy") else list(result)
        return [r.numpy() for r in items]

    def timer(self, inputs: dict[str, np.ndarray], number: int = 1, repeat: int = 20, min_repeat_ms: int = 50):
        args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[s["name"]], dtype=s["dtype"]), self.device)
                for s in self.side["inputs"]]
        self.vm.set_input("main", *args)
        f = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat,
                                   min_repeat_ms=min_repeat_ms)
        return lambda: list(f("main").results)


def random_model_inputs(side: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i["name"]: rng.uniform(-1, 1, i["shape"]).astype(i["dtype"]) for i in side["inputs"]}


def untuned_warning(side: dict) -> str | None:
    names = side["untuned"]
    if not names:
        return None
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return (f"WARNING: {len(names)} of {len(side['layers'])} layers (convs and matmuls as 1x1 convs) have no tuning record on "
            f"{side['target']['tag']} and use their template's UNTUNED default config: {shown}. "
            "Run `convtune tune --model ...` first for fast kernels.")


# -- reading and checking a model library -----------------------------------------------------------
def read_model_sidecar(path: str) -> dict:
    """The sidecar of a model library, checked for the fields `run` and `verify` use."""
    side_path, side = load_sidecar_json(path)
    if not is_model_sidecar(side):
        raise LibraryError(f"{side_path}: not a model sidecar (no \"kind\": \"model\")")
    for key, kind in (("inputs", list), ("outputs", list), ("layers", list), ("target", dict), ("source", dict),
                      ("tolerance", dict)):
        if not isinstance(side.get(key), kind):
            raise LibraryError(f"{side_path}: {key}: missing or not a {kind.__name__}")
    for i, spec in enumerate(side["inputs"] + side["outputs"]):
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("shape"), list)
                and all(isinstance(d, int) and d > 0 for d in spec["shape"]) and isinstance(spec.get("dtype"), str)):
            raise LibraryError(f"{side_path}: inputs/outputs[{i}]: must be {{name, shape: [int > 0, ...], dtype}}")
    return side


def reference_outputs(side: dict, inputs: dict[str, np.ndarray],
                      trust_pickle: bool = False) -> tuple[str, list[np.ndarray]]:
    """The model run by another engine on the same inputs: ONNX Runtime for ONNX and zoo models
    (the zoo model rebuilt with the same seed), PyTorch for a torch.export program. The sidecar
    is data: the program it names is read as any user's .pt2 is (its pickles checked)."""
    source = side["source"]
    if source.get("kind") == "pt2":
        if not isinstance(source.get("path"), str):
            raise LibraryError(f"{side.get('model', 'the sidecar')}: source.path: missing or not a string")
        program = load_exported_program(source["path"], trust_pickle)
        torch = import_torch()
        with torch.no_grad():
            result = program.module()(*[torch.from_numpy(inputs[i["name"]]) for i in side["inputs"]])
        items = result if isinstance(result, (list, tuple)) else [result]
        return "PyTorch", [r.numpy() for r in items]
    try:
        import onnxruntime as ort
    except ImportError:
        raise LibraryError("verify compares a model with ONNX Runtime: pip install onnxruntime") from None
    if source.get("kind") == "zoo":
        model = zoo_onnx(source["name"], source.get("batch", 1)).SerializeToString()
    else:
        model = source["path"]
        if not os.path.exists(model):
            raise LibraryError(f"the model the library was compiled from, {model}, is gone: verify compares with it")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(side.get("threads", 1))
    if "quantized" in side:
        # The model's definition (each QuantizeLinear, DequantizeLinear and float op as ONNX
        # defines it), not ONNX Runtime's fused QLinearConv: on AVX2 without VNNI its U8S8 kernel
        # multiplies with vpmaddubsw, whose int16 pair sums saturate (the reason for its
        # reduce_range option), and it differed from the definition by up to 16 output steps on
        # a random 4-conv model (Zen 3).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return "ONNX Runtime", session.run(None, {n: inputs[n] for n in names})


@dataclass
class ModelCheck:
    output: str
    max_error: float
    tolerance: float
    scale: float = 1.0  # the reference output's largest finite magnitude
    special_mismatch: int = 0  # elements where NaN/Inf of one engine is not the other's
    topk: dict | None = None  # classifier outputs: {"top1": agreement, "top5": agreement}

    @property
    def ok(self) -> bool:
        return (bool(np.isfinite(self.max_error)) and self.max_error <= self.tolerance
                and self.special_mismatch == 0)

    @property
    def degenerate(self) -> bool:
        """A reference this small says nothing about the model (random weights with batch-norm
        statistics never calibrated: outputs ~1e-14, where an all-zero output would agree)."""
        return self.scale < DEGENERATE_SCALE

    def describe(self) -> str:
        parts = [f"max abs error {self.max_error:.3g} (tolerance {self.tolerance:.3g}, output scale {self.scale:.3g})"]
        if self.special_mismatch:
            parts.append(f"{self.special_mismatch} NaN/Inf elements differ")
        if self.topk:
            parts.append(", ".join(f"{k} agreement {v:.0%}" for k, v in self.topk.items()))
        if self.degenerate:
            parts.append("WARNING: the reference output is ~0; the comparison means little (calibrate the "
                         "model's batch-norm statistics, or give real weights)")
        return "; ".join(parts)


DEGENERATE_SCALE = 1e-6


def _topk_agreement(a: np.ndarray, b: np.ndarray) -> dict | None:
    """Top-1 / top-5 agreement per row for a classifier's [N, classes] output (classes >= 10)."""
    if a.ndim != 2 or a.shape[1] < 10 or not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)):
        return None
    ours, theirs = np.argsort(-a, axis=1), np.argsort(-b, axis=1)
    top1 = float(np.mean(ours[:, 0] == theirs[:, 0]))
    top5 = float(np.mean([len(set(o[:5]) & set(t[:5])) / 5 for o, t in zip(ours, theirs)]))
    return {"top1": top1, "top5": top5}


def compare_outputs(side: dict, ours: list[np.ndarray], theirs: list[np.ndarray]) -> list[ModelCheck]:
    """Each output against the reference engine's: the error relative to the output's own scale
    (no floor: an output of 1e-14 is held to 1e-14's digits, so an all-zero output fails it); NaN
    and Inf where the reference has them, and only there (ONNX Runtime propagates NaN)."""
    if len(ours) != len(theirs):
        raise LibraryError(f"the library returns {len(ours)} outputs, the reference {len(theirs)}")
    checks = []
    for spec, a, b in zip(side["outputs"], ours, theirs):
        if a.shape != b.shape:
            raise LibraryError(f"output {spec['name']}: shape {a.shape}, the reference's is {b.shape}")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(b64)
        special = int(np.sum(~finite & ~((np.isnan(a64) & np.isnan(b64)) | (a64 == b64)))
                      + np.sum(finite & ~np.isfinite(a64)))
        both = finite & np.isfinite(a64)
        scale = float(np.abs(b64[finite]).max()) if finite.any() else 0.0
        err = float(np.abs(a64[both] - b64[both]).max()) if both.any() else 0.0
        tolerance = side["tolerance"]["relative"] * scale if scale > 0 else 0.0
        step = side["tolerance"].get("quantization_step", {}).get(spec["name"])
        if isinstance(step, (int, float)) and step > 0:
            # one step of the output's scale; float32's rounding of the dequantized values on top
            tolerance += QUANT_STEPS * step * (1 + 1e-5)
        checks.append(ModelCheck(spec["name"], err, tolerance, scale, special, _topk_agreement(a64, b64)))
    return checks


def layer_choices(side: dict, target: Target, logs: str | None = None) -> list[tuple[dict, int, Choice]]:
    """Each distinct conv layer of a model sidecar, in model order, with its count and what was built
    for it (the sidecar's algorithm and config). A generated-space layer (its trace lives in the
    records) is looked up in `logs`, or left out without them."""
    counts: dict = {}
    for row in side["layers"]:
        counts.setdefault(row["spec"], [row, 0])[1] += 1
    out = []
    for row, count in counts.values():
        wl = Workload.from_dict(row["workload"])
        task = Task(wl, row["algorithm"], target.machine)
        if task.generated:
            if logs is not None:
                out.append((row, count, choose(wl, row["algorithm"], target, logs)))
            continue
        out.append((row, count, Choice(task, None, row["config"])))
    return out


def first_diverging_layer(side: dict, seed: int = 0) -> str:
    """Where a mismatching model goes wrong: each distinct conv layer's kernel, rebuilt in memory
    from the sidecar's algorithm and config, against the float64 reference, in the model's order.
    Names the first that fails; else says the convs are right and the rest of the graph is not."""
    target = Target("host", side["target"]["config"], int(side.get("threads", 1)))
    for row, _, choice in layer_choices(side, target):
        kernel = in_memory_kernel(choice, target, "layer check", row["name"])
        failed = [c for c in verify(kernel, seed=seed) if not c.ok]
        if failed:
            return (f"the first layer that diverges: {row['name']} ({row['spec']}, {row['algorithm']}): "
                    + "; ".join(f"{c.function} max error {c.max_error:.3g} > {c.tolerance:.3g}" for c in failed))
    return ("every conv kernel matches the float64 reference on its own: the divergence is in the ops TVM "
            "compiles around them")
