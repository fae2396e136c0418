"""One library for a whole model: convtune's kernels for its convs, TVM for everything else.

    graph (tuning.graph: BN folded, NHWC, conv chains found)
      -> every conv chain replaced by a `call_tir` of convtune's best kernel for that workload,
         its epilogue fused (bias, residual, relu/clip), its weight prepared at compile time
         (packed panels, Winograd-transformed weights, indirection tables become constants of the
         library: nothing is re-packed per call, nor at load)
      -> the rest legalised and fused by Relax (pools, the classifier, adds that no conv absorbed,
         the layout transposes at the graph's ends), then scheduled: MetaSchedule's records for
         those fused ops where `tune --model` made some (logs/<target>/model-ops), else dlight's
         CPU rules (GEMV, reductions) and a parallel + vectorised loop nest for the rest, so that
         nothing runs as a serial, unvectorised loop
      -> one shared library (Relax VM executable) and a sidecar `<library>.json`.

The sidecar says what the library computes and how it was built: inputs and outputs (names,
shapes, dtypes), target, threads, and per conv layer the algorithm, whether it was tuned (and
from whose record), and the verification tolerance that follows from the algorithms' error growth.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir

from ..files import publish_library
from ..graph import ConvChain, ModelGraph, legalize_passes, ops_directory, replace_chains
from ..target import LibraryError, Target
from .kernel import load_sidecar_json, sidecar_path
from .library import Choice, choose, in_memory_kernel, schedule_functions, write_library
from .loader import load_module

MODEL_SIDECAR_VERSION = 1
# Relative tolerance of a whole model against ONNX Runtime, per unit of the worst layer's error
# growth: a float32 network of ~20-50 layers on random weights agrees with another float32
# engine to ~1e-5 of its output's scale; Winograd layers multiply their error by their growth.
MODEL_RTOL = 1e-4
OPAQUE = 8  # relax's OpPatternKind.kOpaque: FuseOps never merges a kernel with its neighbours


@dataclass
class LayerPlan:
    """One distinct conv workload of the model: what will be built for it."""

    name: str  # the first chain's name
    choice: Choice
    chains: list[ConvChain]

    @property
    def workload(self):
        return self.choice.task.workload


def plan(graph: ModelGraph, target: Target, logs: str, algorithm: str = "auto", cold: bool | None = None,
         stream=None) -> list[LayerPlan]:
    """What to build per distinct workload. `cold` (default: on this host, when the model's weights
    exceed the last-level cache): among each layer's best record per algorithm, the one fastest with
    its weights flushed from the caches, as every layer's are inside such a model; records are timed
    warm, and an algorithm that re-reads its weights (direct on a 7x7 map: 1.2 ms warm, 2.2 ms cold
    on ResNet-18's layer4 here, im2col's packed panels 1.1 / 1.2) is not the fastest in the model."""
    plans: dict = {}
    for chain in graph.chains():
        wl = chain.workload
        if wl not in plans:
            plans[wl] = LayerPlan(chain.name, choose(wl, algorithm, target, logs), [])
        plans[wl].chains.append(chain)
    layers = list(plans.values())
    if cold is None:
        weights = sum(c.weight.nbytes for c in graph.chains())
        cold = target.is_host and target.machine.l3 > 0 and weights > target.machine.l3
    if cold:
        started = time.perf_counter()
        changed = 0
        for layer in layers:
            best = cold_choice(layer.workload, algorithm, target, logs)
            if best is not None and best.task.algorithm != layer.choice.task.algorithm:
                layer.choice = best
                changed += 1
        if stream is not None:
            print(f"cold-weight check: {changed} of {len(layers)} layers changed algorithm "
                  f"({time.perf_counter() - started:.0f} s)", file=stream)
    return layers


COLD_REPEATS = 15


def cold_choice(wl, algorithm: str, target: Target, logs: str) -> Choice | None:
    """The layer's best record per algorithm (its own, else its bare conv's), each built and timed
    with its weights flushed before every call; the fastest. Without records, the untuned rule's
    pick against im2col's default for a weight larger than the L2. None when there is nothing to
    choose between."""
    import statistics

    from schedules.reference import epilogue_inputs, random_inputs

    from ..task import tasks_for

    candidates = []
    for algo in dict.fromkeys(t.algorithm for t in tasks_for(wl, algorithm, target.machine)):
        if algo == "ms-auto":
            continue
        choice = choose(wl, algo, target, logs)
        # im2col's packed panels stream the weight once per block: under cold weights its default
        # config is a candidate even untuned (ResNet-18's layer4 3x3: 1.2 ms cold, direct's 2.2)
        if choice.tuned or algo == "im2col":
            candidates.append(choice)
    if not any(c.tuned for c in candidates):
        # No records: the untuned rule's pick (read off warm layers) against im2col's default,
        # where the weight outgrows the L2 and so is read from far away on every call. Winograd's
        # transformed weight is 1.8x (F2) to 4x (F4) the weight: ResNet-18's layer4 on F2 ran at
        # 38 GFLOP/s inside the model, 96 alone (Zen 3, untuned).
        weight = wl.co * (wl.ci // wl.groups) * wl.kh * wl.kw * 4
        rule = choose(wl, algorithm, target, logs)
        if weight <= target.machine.l2 or rule.task.algorithm == "im2col" or rule.task.generated:
            return None
        candidates = [rule] + [c for c in candidates if c.task.algorithm == "im2col"]
    if len(candidates) < 2:
        return None
    timed = []
    for choice in candidates:
        kernel = in_memory_kernel(choice, target, "cold check")
        tensors = kernel.tensors(*random_inputs(wl), epilogue_inputs(wl))
        kernel.prepare(tensors)
        timer = kernel.timer(tensors, number=1, repeat=COLD_REPEATS, min_repeat_ms=0, cold=True)
        timed.append((statistics.median(timer()), choice))
    return min(timed, key=lambda t: t[0])[1]


def _host() -> Target:
    return Target("host", {"kind": "llvm"}, 1)


def _prepared(layer: LayerPlan) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """The per-call prepare functions (those that read the input, e.g. indirect's zero-row input
    copy) and, per chain, the state its once-only prepare functions build from its weight."""
    task = layer.choice.task
    template = task.template
    if task.generated or template.run_function == "conv2d":
        return [], [{} for _ in layer.chains]
    phases = template.functions(task.workload)
    prepare = [n for n in phases if n not in ("conv2d", template.run_function)]
    per_call = [n for n in prepare if any(a.name == "data" and not a.written for a in phases[n].args)]
    once = [n for n in prepare if n not in per_call]
    # Built for this host whatever the target: a prepare function is a pure data transform, so
    # its result does not depend on the CPU that computes it.
    kernel = in_memory_kernel(Choice(task, None, None), _host(), "prepare")
    states = []
    for chain in layer.chains:
        data = np.zeros(task.workload.data_shape, np.float32)
        tensors = kernel.tensors(data, chain.weight.astype(np.float32))
        for name in once:
            kernel.call(name, tensors)
        written = {a.name for n in once for a in phases[n].args if a.written}
        states.append({name: tensors[name].numpy() for name in written})
    return per_call, states


def _kernel_functions(layer: LayerPlan, index: int) -> dict[str, tvm.tirx.PrimFunc]:
    """The scheduled run function (and per-call prepare functions) of a layer, named per layer."""
    funcs = {}
    for name, func in schedule_functions(layer.choice).functions.items():
        symbol = f"convtune_l{index}_{name.name_hint}"
        funcs[name.name_hint] = (func.with_attr("global_symbol", symbol).with_attr("tirx.is_scheduled", True)
                                 .with_attr("op_pattern", OPAQUE))
    return funcs


def replace_convs(graph: ModelGraph, layers: list[LayerPlan]) -> tvm.IRModule:
    """The graph with each conv chain computed by its layer's kernel (see the module docstring)."""
    by_chain, globals_ = {}, {}
    for index, layer in enumerate(layers):
        per_call, states = _prepared(layer)
        funcs = _kernel_functions(layer, index)
        for chain, state in zip(layer.chains, states):
            by_chain[id(chain)] = (layer, index, state, per_call, funcs)

    def emit(builder, chain: ConvChain, value):
        layer, index, state, per_call, funcs = by_chain[id(chain)]
        task = layer.choice.task
        phases = task.template.functions(task.workload)
        wl = task.workload

        def viewed(expr, shape):  # a matmul's operands as the 1x1 conv's NHWC tensors
            return builder.emit(relax.op.reshape(expr, shape)) if chain.shape is not None else expr

        values = {"data": viewed(value(chain.data), wl.data_shape), "weight": relax.const(chain.weight, "float32")}
        if chain.bias is not None:
            values["bias"] = relax.const(chain.bias, "float32")
        if chain.residual is not None:
            values["residual"] = viewed(value(chain.residual), wl.out_shape)
        for name, array in state.items():
            values[name] = relax.const(array)

        def call(name: str):
            if (index, name) not in globals_:
                globals_[(index, name)] = builder.add_func(funcs[name], f"convtune_l{index}_{name}")
            args = phases[name].args
            outputs = [a for a in args if a.written]
            types = [relax.TensorType(a.shape, a.dtype) for a in outputs]
            return relax.call_tir(globals_[(index, name)], relax.Tuple([values[a.name] for a in args if not a.written]),
                                  types[0] if len(types) == 1 else types), outputs

        for name in per_call:  # e.g. indirect's input copy with its zero row, per input
            expr, outputs = call(name)
            values[outputs[0].name] = builder.emit(expr)
        expr, outputs = call(task.template.run_function if state or per_call else "conv2d")
        if len(outputs) > 1:  # a workspace (im2col's matrix) beside the output
            expr = relax.TupleGetItem(builder.emit(expr), [a.name for a in outputs].index("out"))
        if chain.shape is not None:
            expr = relax.op.reshape(builder.emit(expr), chain.shape)
        return expr

    return replace_chains(graph, emit)


# -- the rest of the model --------------------------------------------------------------------
def _rest_pipeline(target: Target, ops_records: str | None) -> tvm.transform.Pass:
    """Relax's CPU pipeline, with the fused non-conv ops scheduled before lowering."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from ..records import open_database

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        with target.tvm:
            mod = tvm.transform.Sequential(legalize_passes())(mod)
            if ops_records:
                database = open_database(ops_records)
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase(ops_records)(mod)
            mod = default_schedules(mod, target)
            mod = tvm.transform.Sequential(cpu_generic.dataflow_lower_passes(target.tvm)
                                           + cpu_generic.finalize_passes(target.tvm))(mod)
        return mod

    return pipeline


def default_schedules(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Every PrimFunc nothing scheduled yet (no kernel, no record): `loop_nest_schedule` (pools,
    the classifier, elementwise ops, transposes), else dlight's CPU reduction rule (global pooling).
    dlight's CPU GEMV rule reads the classifier's [K, N] weight across rows: ResNet-18's 512 x 1000
    took 0.28 ms with it, 0.04 ms streaming the rows in vectors (each PrimFunc of `ops_module`
    built alone and timed by TVM's time_evaluator, 2 threads, Zen 4)."""
    from tvm.s_tir import dlight

    rules = [dlight.cpu.Reduction()]
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and func.attrs.get("tirx.is_scheduled", False):
            continue
        sch = loop_nest_schedule(func, target.threads)
        for rule in rules if sch is None else []:
            try:
                sch = rule.apply(func, target.tvm, False)
            except Exception:  # noqa: BLE001 - a rule that does not fit may raise instead of returning None
                sch = None
            if sch is not None:
                sch = sch[0] if isinstance(sch, list) else sch
                break
        if sch is not None:
            updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def loop_nest_schedule(func: tvm.tirx.PrimFunc, threads: int) -> s_tir.Schedule | None:
    """Elementwise ops, pools, transposes: injective producers inlined, then each remaining block's
    leading data-parallel loops fused and run in parallel, its innermost data-parallel loop
    vectorised when contiguous and short (the channel axis in NHWC). None if it does not apply."""
    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - no root block: leave the function alone
        return None
    params = list(func.params)
    for block in blocks[:-1]:
        try:
            writes = sch.get(block).writes
            if not any(w.source.same_as(p) for w in writes for p in params):
                sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a reduction or an unsafe inline: it stays a block
            pass
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        try:
            iters = sch.get(block).iter_vars
            loops = sch.get_loops(block)
            if len(loops) != len(iters):
                continue
            spatial = 0
            while spatial < len(iters) and int(iters[spatial].iter_type) == 0:
                spatial += 1
            if spatial == 0:
                continue
            inner = loops[spatial - 1] if spatial > 1 else None
            extent = int(sch.get(inner).extent) if inner is not None else 0
            outer = 1
            for loop in loops[: spatial - 1]:
                outer *= int(sch.get(loop).extent)
            chunks = [c for c in range(8, 257, 8) if extent % c == 0 and extent // c >= 2 * threads]
            if inner is not None and outer < 4 * threads and chunks:
                # Too few outer iterations to share (a batch-1 classifier: 1 x 1000): the channel
                # loop itself is split between the threads, each streaming its columns of the weight.
                chunk = chunks[-1]
                split, inner = sch.split(inner, [None, chunk])
                loops = sch.get_loops(block)
                spatial += 1
                extent = chunk
            vectorisable = inner is not None and 4 <= extent <= 1024 and extent % 4 == 0
            reductions = len(loops) - spatial
            # Parallel first: once the reduction is decomposed, its init block leaves the fused
            # loop without the compact dataflow `parallel` requires (it refused, and GoogLeNet's
            # 3x3 max pools ran on one thread, unvectorised: 0.65 ms for 28 x 28 x 192).
            parallel = loops[: spatial - 1] if vectorisable else loops[:spatial]
            if parallel:
                sch.parallel(sch.fuse(*parallel) if len(parallel) > 1 else parallel[0])
            if not vectorisable:
                continue
            loops = sch.get_loops(block)
            inner = loops[len(loops) - reductions - 1]
            lanes = 16 if extent % 16 == 0 else 8 if extent % 8 == 0 else 4
            if reductions:
                # A reduction over a window (max pool): the window loops go outside the channel
                # loop, so the channels are the contiguous vector and the window a few vector maxes.
                # One vector of channels at a time, the window inside it: the running max stays
                # in a register across the window (window outside all the channels, it was read
                # and written back per tap: 0.148 ms against 0.057 for GoogLeNet's 28x28x192
                # pool). The init stays in the block (decomposed, neither part passes
                # `vectorize`'s dataflow check): a test on the window loops, uniform per vector.
                outer_c, vector = sch.split(inner, [None, lanes])
                sch.reorder(outer_c, *loops[len(loops) - reductions:], vector)
            else:
                _, vector = sch.split(inner, [None, lanes])
            sch.vectorize(vector)
        except Exception:  # noqa: BLE001 - an unusual nest keeps TVM's plain loops
            continue
    return sch


# -- build, export, load ----------------------------------------------------------------------
def tolerance(layers: list[LayerPlan]) -> float:
    growth = max([1.0] + [1.0 if layer.choice.task.generated else
                          layer.choice.task.template.error_growth(layer.workload) for layer in layers])
    return MODEL_RTOL * growth


def build_model(graph: ModelGraph, target: Target, logs: str, algorithm: str = "auto",
                quiet: bool = False) -> tuple[object, dict]:
    """The model compiled for `target`: (Relax executable, sidecar)."""
    started = time.perf_counter()
    layers = plan(graph, target, logs, algorithm, stream=None if quiet else sys.stderr)
    mod = replace_convs(graph, layers)
    ops_records = ops_directory(logs, target)
    has_ops = os.path.exists(os.path.join(ops_records, "database_tuning_record.json"))
    executable = tvm.compile(mod, target=target.tvm, relax_pipeline=_rest_pipeline(target, ops_records if has_ops else None))
    side = model_sidecar(graph, layers, target, has_ops, time.perf_counter() - started)
    return executable, side


def model_sidecar(graph: ModelGraph, layers: list[LayerPlan], target: Target, ops_tuned: bool, seconds: float) -> dict:
    rows = []
    for layer in layers:
        choice = layer.choice
        for chain in layer.chains:
            rows.append({
                "index": chain.index, "name": chain.name, "spec": chain.workload.spec,
                "workload": chain.workload.to_dict(), "algorithm": choice.task.algorithm,
                "tuned": choice.tuned, "record_source": choice.source or ("own" if choice.tuned else None),
                "record_seconds": choice.record.seconds if choice.tuned else None,
                "config": (choice.config if choice.config is not None
                           else None if choice.task.generated else choice.task.default_config()),
                "trace": str(choice.record.trace) if choice.tuned and choice.task.generated else None,
            })
    rows.sort(key=lambda r: r["index"])
    return {
        "kind": "model",
        "model_sidecar_version": MODEL_SIDECAR_VERSION,
        "model": graph.label,
        "source": graph.source,
        "layout": graph.layout,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "target": target.to_dict(),
        "threads": target.threads,
        "tvm": tvm.__version__,
        "layers": rows,
        "distinct_layers": len(layers),
        "untuned": [r["name"] for r in rows if not r["tuned"]],
        "other_ops": "MetaSchedule records" if ops_tuned else "default schedules (dlight CPU rules, parallel loops)",
        "tolerance": {"relative": tolerance(layers),
                      "why": f"{MODEL_RTOL:g} x the largest error growth of the model's algorithms"},
        "compile_seconds": round(seconds, 1),
    }


def export_model(graph: ModelGraph, target: Target, logs: str, path: str, algorithm: str = "auto") -> dict:
    executable, side = build_model(graph, target, logs, algorithm)
    side["library"] = os.path.basename(path)
    publish_library(path, lambda tmp: write_library(executable, target, tmp), sidecar_path(path), side)
    return side


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
        from ..model_import import import_torch, load_exported_program

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
        from ..graph import zoo_onnx

        model = zoo_onnx(source["name"], source.get("batch", 1)).SerializeToString()
    else:
        model = source["path"]
        if not os.path.exists(model):
            raise LibraryError(f"the model the library was compiled from, {model}, is gone: verify compares with it")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(side.get("threads", 1))
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
        checks.append(ModelCheck(spec["name"], err, tolerance, scale, special, _topk_agreement(a64, b64)))
    return checks


def layer_choices(side: dict, target: Target, logs: str | None = None) -> list[tuple[dict, int, Choice]]:
    """Each distinct conv layer of a model sidecar, in model order, with its count and what was built
    for it (the sidecar's algorithm and config). A generated-space layer (its trace lives in the
    records) is looked up in `logs`, or left out without them."""
    from schedules.workload import Workload

    from ..task import Task

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
    from .verify import verify

    target = Target("host", side["target"]["config"], int(side.get("threads", 1)))
    for row, _, choice in layer_choices(side, target):
        kernel = in_memory_kernel(choice, target, "layer check", row["name"])
        failed = [c for c in verify(kernel, seed=seed) if not c.ok]
        if failed:
            return (f"the first layer that diverges: {row['name']} ({row['spec']}, {row['algorithm']}): "
                    + "; ".join(f"{c.function} max error {c.max_error:.3g} > {c.tolerance:.3g}" for c in failed))
    return ("every conv kernel matches the float64 reference on its own: the divergence is in the ops TVM "
            "compiles around them")
