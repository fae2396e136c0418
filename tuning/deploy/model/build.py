"""Building a model's library: convtune's kernels for its convs, TVM for everything else.

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

import numpy as np
import tvm
from tvm import relax, s_tir

from ...files import publish_library
from ...graph import ConvChain, ModelGraph, chain_input, chain_output, legalize_passes, ops_directory, replace_chains
from ...records import open_database
from ...target import Target
from ...task import Task
from ..kernel import sidecar_path
from ..library import Choice, in_memory_kernel, schedule_functions, write_library
from .plan import LayerPlan, plan

MODEL_SIDECAR_VERSION = 1
# Relative tolerance of a whole model against ONNX Runtime, per unit of the worst layer's error
# growth: a float32 network of ~20-50 layers on random weights agrees with another float32
# engine to ~1e-5 of its output's scale; Winograd layers multiply their error by their growth.
MODEL_RTOL = 1e-4
# A quantized model's outputs against ONNX Runtime: within this many steps of each output's
# quantization scale (plus the float tolerance). See docs/quantized.md.
QUANT_STEPS = 1.0
OPAQUE = 8  # relax's OpPatternKind.kOpaque: FuseOps never merges a kernel with its neighbours

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
    # its result does not depend on the CPU that computes it. Scheduled for the generic host too:
    # a template that tensorizes for the task's machine (direct-int8's AVX2 vpmaddwd) aborts LLVM
    # on a generic x86-64.
    host = _host()
    kernel = in_memory_kernel(Choice(Task(task.workload, task.algorithm, host.machine), None, None), host, "prepare")
    states = []
    wl = task.workload
    for chain in layer.chains:
        data = np.zeros(wl.data_shape, wl.data_dtype)
        # an int8 layer's kernel wants its zero points and scales even where only the weight is read
        tensors = kernel.tensors(data, chain.weight.astype(wl.weight_dtype),
                                 chain.kernel_inputs() if wl.quantized else None)
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

        values = {"data": viewed(chain_input(builder, chain, value), wl.data_shape),
                  "weight": relax.const(chain.weight, wl.weight_dtype)}
        if chain.bias is not None:
            values["bias"] = relax.const(chain.bias, "int32" if wl.quantized else "float32")
        inputs = chain.kernel_inputs()
        for name, shape, dtype in wl.quant_args:  # an int8 conv's zero points and scales
            values[name] = relax.const(np.asarray(inputs[name]).reshape(shape).astype(dtype), dtype)
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
        return chain_output(builder, chain, expr)

    return replace_chains(graph, emit)


# -- the rest of the model --------------------------------------------------------------------
def _rest_pipeline(target: Target, ops_records: str | None) -> tvm.transform.Pass:
    """Relax's CPU pipeline, with the fused non-conv ops scheduled before lowering."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

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


def concat_axis(sch: s_tir.Schedule, block) -> tuple[int, list[int]] | None:
    """(axis, each input's extent along it) when `block` concatenates buffers it reads into the
    one it writes, maybe with elementwise work fused after it (DenseNet's concat, batch norm,
    relu): the inputs are the reads shaped as the output but along one axis, whose extents there
    add up to the output's; the other reads (per-channel constants) are left as they are."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1 or len(stmt.reads) < 2 or len(stmt.iter_vars) != len(sch.get_loops(block)):
        return None
    try:
        shapes = [[int(d) for d in r.source.shape] for r in stmt.reads]
        target = [int(d) for d in stmt.writes[0].source.shape]
    except TypeError:  # a symbolic extent
        return None
    for axis in range(len(target)):
        parts = [shape[axis] for shape in shapes if len(shape) == len(target) and shape[axis] < target[axis]
                 and shape[:axis] + shape[axis + 1:] == target[:axis] + target[axis + 1:]]
        if len(parts) >= 2 and sum(parts) == target[axis]:
            return axis, parts
    return None


def schedule_concat(sch: s_tir.Schedule, block, axis: int, extents: list[int]) -> None:
    """A concatenation, one copy loop per input. Legalised, it is one loop over the output whose
    every element picks its input through a chain of selects (DenseNet-121 concatenates up to 32
    feature maps: every element tested 32 times, vectors of loads from every input blended, 118 ms
    an inference, 1 thread, Zen 2). The loop along the concatenated axis is partitioned at the
    inputs' boundaries, where each part's select folds away into a plain copy that LLVM vectorises;
    the loops outside it run in parallel."""
    loops = sch.get_loops(block)
    outer = loops[:axis]
    sch.loop_partition(loops[axis], extents[:-1])  # the last part takes the rest
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


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
    remaining = sch.get_child_blocks(sch.get_sblock("root"))
    concat = concat_axis(sch, remaining[0]) if len(remaining) == 1 else None
    if concat is not None:
        saved = sch.copy()
        try:
            schedule_concat(sch, remaining[0], *concat)
            return sch
        except Exception:  # noqa: BLE001 - a nest loop_partition refuses: the generic schedule
            sch = saved
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
                quiet: bool = False, judge=None) -> tuple[object, dict]:
    """The model compiled for `target`: (Relax executable, sidecar); `judge`: see `choose`."""
    started = time.perf_counter()
    layers = plan(graph, target, logs, algorithm, stream=None if quiet else sys.stderr, judge=judge)
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
    tolerance_ = {"relative": tolerance(layers),
                  "why": f"{MODEL_RTOL:g} x the largest error growth of the model's algorithms"}
    quantization = graph.quantization
    if quantization is not None and quantization.any:
        # A quantized model's outputs are dequantized integers: two engines that round one
        # product differently (a tie, a multiplier computed in another order) differ by whole
        # steps of the output's scale. One step per output is the bound (QUANT_STEPS).
        tolerance_["quantization_step"] = dict(quantization.output_steps)
        tolerance_["why"] += (f"; a quantized output: {QUANT_STEPS:g} quantization step (its DequantizeLinear's "
                              "scale), against ONNX Runtime with its graph optimisations off")
    side = {
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
        "tolerance": tolerance_,
        "compile_seconds": round(seconds, 1),
    }
    if quantization is not None and quantization.any:
        side["quantized"] = {"int8_layers": sum(1 for r in rows if r["workload"].get("dtype", "float32") != "float32"),
                             "float_ops": quantization.float_ops}
    return side


def export_model(graph: ModelGraph, target: Target, logs: str, path: str, algorithm: str = "auto",
                 judge=None) -> dict:
    executable, side = build_model(graph, target, logs, algorithm, judge=judge)
    side["library"] = os.path.basename(path)
    publish_library(path, lambda tmp: write_library(executable, target, tmp), sidecar_path(path), side)
    return side

