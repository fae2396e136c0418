"""Benchmark: convtune's compiled kernel against PyTorch (oneDNN) and numpy im2col + BLAS.

All contenders run in one process, interleaved round by round (so drift hits them alike), with the
same thread count. Before each contender's turn a short pause lets the previous one's spinning
thread pool sleep, then a warm-up (a core idle for a few ms comes back at half its FMA speed);
each turn times back-to-back calls for at least `min_repeat_ms`; tables give the median over
rounds with min/max.
Two-phase kernels are timed in their run phase (weights pre-packed), as deployed engines run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from schedules.reference import random_inputs
from schedules.workload import Workload

from .deploy.library import choose, in_memory_kernel
from .environment import run_environment
from .files import write_json_atomic
from .networks import Layer
from .target import Target

PAUSE_S = 0.25
MODEL_PAUSE_S = 1.0  # a whole model: the rivals' thread pools (ORT, OpenMP) must be asleep before the next turn
WARMUP_MS = 30.0


def time_call(fn, min_repeat_ms: float) -> float:
    """Seconds per call: back-to-back calls for at least `min_repeat_ms` (one warm-up call first)."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed * 1e3 >= min_repeat_ms:
            return elapsed / calls


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self, flops: int) -> dict:
        return {"median_ms": self.median * 1e3, "min_ms": min(self.samples) * 1e3,
                "max_ms": max(self.samples) * 1e3, "gflops": flops / self.median / 1e9}


# -- rivals ------------------------------------------------------------------------------------------
# production libraries: oneDNN twice, MLAS; for int8 layers MLAS's QLinearConv and PyTorch's
# quantized conv (torch.ao's x86 engine: FBGEMM / oneDNN)
RIVALS = ("torch-nchw", "torch-channels_last", "onnxruntime", "torch-int8")
def torch_calls(wl: Workload, data: np.ndarray, weight: np.ndarray, threads: int) -> dict:
    """PyTorch's CPU conv2d (oneDNN), NCHW and channels_last; {} when torch is not installed."""
    try:
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: PLC0415
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    x = data.transpose(0, 3, 1, 2) if wl.layout == "NHWC" else data
    w = weight.transpose(3, 2, 0, 1) if wl.layout == "NHWC" else weight  # -> OIHW
    t, l, b, r = wl.pad
    if (t, l) != (b, r):  # asymmetric padding: pad once outside the timed call
        x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
        t = l = 0
    xt = torch.from_numpy(np.ascontiguousarray(x))
    wt = torch.from_numpy(np.ascontiguousarray(w))
    kwargs = dict(stride=wl.stride, padding=(t, l), dilation=wl.dilation, groups=wl.groups)
    xc, wc = xt.to(memory_format=torch.channels_last), wt.to(memory_format=torch.channels_last)

    def nchw():
        with torch.no_grad():
            F.conv2d(xt, wt, **kwargs)

    def nhwc():
        with torch.no_grad():
            F.conv2d(xc, wc, **kwargs)

    return {"torch-nchw": nchw, "torch-channels_last": nhwc}


def onnxruntime_call(wl: Workload, data: np.ndarray, weight: np.ndarray, threads: int) -> dict:
    """ONNX Runtime's CPU conv (MLAS: NCHWc kernels or im2col + SGEMM) on a one-node Conv model;
    {} when onnx or onnxruntime is not installed. ONNX's Conv is NCHW with OIHW weights."""
    try:
        import onnx  # noqa: PLC0415 - optional rivals
        import onnxruntime as ort  # noqa: PLC0415
        from onnx import TensorProto, helper  # noqa: PLC0415
    except ImportError:
        return {}
    x = np.ascontiguousarray(data.transpose(0, 3, 1, 2) if wl.layout == "NHWC" else data)
    w = np.ascontiguousarray(weight.transpose(3, 2, 0, 1) if wl.layout == "NHWC" else weight)
    t, l, b, r = wl.pad
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(wl.stride), pads=[t, l, b, r],
                            dilations=list(wl.dilation), group=wl.groups, kernel_shape=[wl.kh, wl.kw])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc layout transform
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    return {"onnxruntime": lambda: session.run(None, feed)}


def onnxruntime_int8_call(wl: Workload, data: np.ndarray, weight: np.ndarray, threads: int) -> dict:
    """ONNX Runtime's int8 conv (MLAS's quantized GEMM) on the same layer, same numbers: QLinearConv
    for a requantized output (x_scale 1, w_scale the layer's multiplier per tensor or channel,
    y_scale 1: the same requantize), ConvInteger for the int32 accumulator (its bias left out). {}
    where one ONNX node cannot say it (a dequantized output, an output type other than the input's)
    or without onnx / onnxruntime. On AVX2 without VNNI, MLAS's U8S8 kernel (vpmaddubsw) saturates
    pairs of products at int16: with full-range weights some outputs differ from ONNX's definition
    (with 7-bit weights none do: tests/test_int8.py); it is timed as it is."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional rivals
        from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415
    except ImportError:
        return {}
    q = wl.quant
    if not _int8_rival_applies(wl):  # QLinearConv writes its input's type; ConvInteger takes uint8 data
        return {}
    extra = quant_inputs(wl)
    x = np.ascontiguousarray(data.transpose(0, 3, 1, 2) if wl.layout == "NHWC" else data)
    w = np.ascontiguousarray(weight.transpose(3, 2, 0, 1) if wl.layout == "NHWC" else weight)
    t, l, b, r = wl.pad
    attrs = dict(strides=list(wl.stride), pads=[t, l, b, r], dilations=list(wl.dilation), group=wl.groups,
                 kernel_shape=[wl.kh, wl.kw])
    x_type = TensorProto.UINT8 if x.dtype == np.uint8 else TensorProto.INT8
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(extra["x_zero_point"].reshape(()), "x_zp")]
    if q.out == "int32":
        node = helper.make_node("ConvInteger", ["x", "w", "x_zp"], ["y"], **attrs)
        y_type = TensorProto.INT32
    else:
        scale = np.asarray(extra["scale"], np.float32)
        inits += [numpy_helper.from_array(np.float32(1.0).reshape(()), "one"),
                  numpy_helper.from_array(scale if scale.size > 1 else scale.reshape(()), "w_scale"),
                  numpy_helper.from_array(np.zeros(scale.shape if scale.size > 1 else (), np.int8), "w_zp"),
                  numpy_helper.from_array(extra["y_zero_point"].reshape(()), "y_zp")]
        names = ["x", "one", "x_zp", "w", "w_scale", "w_zp", "one", "y_zp"]
        if wl.epilogue.bias:
            inits.append(numpy_helper.from_array(extra["bias"], "bias"))
            names.append("bias")
        node = helper.make_node("QLinearConv", names, ["y"], **attrs)
        y_type = TensorProto.UINT8 if q.out == "uint8" else TensorProto.INT8
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", x_type, x.shape)],
                              [helper.make_tensor_value_info("y", y_type, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    return {"onnxruntime": lambda: session.run(None, feed)}


def torch_int8_call(wl: Workload, data: np.ndarray, weight: np.ndarray, threads: int) -> dict:
    """PyTorch's int8 conv (torch.ao's quantized engine "x86": FBGEMM / oneDNN) on the same layer,
    same numbers: `quantized.conv2d` (or `conv2d_relu`) on a quint8 channels_last input with
    x_scale 1, the int8 weight with w_scale the layer's multiplier (per tensor or per channel, zero
    point 0), y_scale 1 and the layer's y_zero_point: the same requantize. The int32 bias goes in
    as PyTorch takes it, float bias * w_scale (bit-identical to the reference on the layers of
    tests/test_im2col_int8.py). {} where one op cannot say the layer: the engine takes uint8
    activations only (dtype=int8, not s8s8) and writes quint8 (out=uint8); relu is the only fused
    activation; or without torch. Like MLAS, its AVX2 kernels multiply with vpmaddubsw and
    saturate int16 pair sums: with full-range weights some outputs differ from the definition (with
    7-bit weights none do); it is timed as it is. Asymmetric padding: the input padded once with the
    zero point outside the timed call (the quantized zero)."""
    if not _torch_int8_applies(wl):
        return {}
    try:
        import torch  # noqa: PLC0415 - optional rivals
    except ImportError:
        return {}
    import warnings  # noqa: PLC0415

    if "x86" not in torch.backends.quantized.supported_engines:
        return {}
    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(threads)
    extra = quant_inputs(wl)
    zp = int(extra["x_zero_point"][0])
    x = data.transpose(0, 3, 1, 2)  # NHWC -> NCHW view (channels_last below: NHWC in memory again)
    t, l, b, r = wl.pad
    if (t, l) != (b, r):
        x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=zp)
        t = l = 0
    w = torch.from_numpy(np.ascontiguousarray(weight.transpose(3, 2, 0, 1)))  # HWIO -> OIHW
    scale = np.asarray(extra["scale"], np.float64)
    with warnings.catch_warnings():  # quantized tensors are deprecated (still PyTorch's int8 conv)
        warnings.simplefilter("ignore")
        xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(x)), 1.0, zp)
        xq = xq.contiguous(memory_format=torch.channels_last)
        if wl.quant.scale == "channel":
            wq = torch._make_per_channel_quantized_tensor(w, torch.from_numpy(scale),
                                                          torch.zeros(wl.co, dtype=torch.int64), 0)
        else:
            wq = torch._make_per_tensor_quantized_tensor(w, float(scale[0]), 0)
        bias = (torch.from_numpy((extra["bias"].astype(np.float64) * scale).astype(np.float32))
                if wl.epilogue.bias else None)
        packed = torch.ops.quantized.conv2d_prepack(wq, bias, list(wl.stride), [t, l], list(wl.dilation), wl.groups)
    op = torch.ops.quantized.conv2d_relu if wl.epilogue.activation == "relu" else torch.ops.quantized.conv2d
    y_zp = int(extra["y_zero_point"][0])

    def call():
        return op(xq, packed, 1.0, y_zp)

    return {"torch-int8": call}


def _torch_int8_applies(wl: Workload) -> bool:
    """Whether one PyTorch quantized conv computes the layer (see torch_int8_call)."""
    return (wl.quantized and wl.dtype == "int8" and wl.quant.out == "uint8" and wl.layout == "NHWC"
            and wl.epilogue.activation in ("none", "relu") and not wl.epilogue.residual)


def numpy_im2col_call(wl: Workload, data: np.ndarray, weight: np.ndarray):
    """im2col with numpy, GEMM with numpy's BLAS (NHWC view of the layer)."""
    x = data if wl.layout == "NHWC" else data.transpose(0, 2, 3, 1).copy()
    w = weight if wl.layout == "NHWC" else weight.transpose(2, 3, 1, 0).copy()  # -> HWIO
    (sh, sw), (dh, dw), g = wl.stride, wl.dilation, wl.groups
    cig, cog = wl.ci // g, wl.co // g
    wmat = [w[:, :, :, i * cog:(i + 1) * cog].reshape(-1, cog) for i in range(g)]
    t, l, b, r = wl.pad

    def call():
        xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0))) if any(wl.pad) else x
        cols = np.empty((wl.n, wl.oh, wl.ow, wl.kh, wl.kw, wl.ci), np.float32)
        for kh in range(wl.kh):
            for kw in range(wl.kw):
                cols[:, :, :, kh, kw, :] = xp[:, kh * dh: kh * dh + (wl.oh - 1) * sh + 1: sh,
                                              kw * dw: kw * dw + (wl.ow - 1) * sw + 1: sw, :]
        cols = cols.reshape(wl.n * wl.oh * wl.ow, wl.kh * wl.kw, wl.ci)
        for i in range(g):
            cols[:, :, i * cig:(i + 1) * cig].reshape(-1, wl.kh * wl.kw * cig) @ wmat[i]

    return call


def blas_threads(threads: int):
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
        return threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        import contextlib  # noqa: PLC0415
        return contextlib.nullcontext()


# -- the benchmark -----------------------------------------------------------------------------------
def bench_layer(name: str, wl: Workload, target: Target, logs: str, algorithm: str = "auto",
                rounds: int = 7, min_repeat_ms: float = 100.0, rivals: bool = True) -> dict:
    choice = choose(wl, algorithm, target, logs)
    kernel = in_memory_kernel(choice, target, layer_name=name)
    data, weight = random_inputs(wl)
    tensors = kernel.tensors(data, weight, quant_inputs(wl))
    kernel.prepare(tensors)
    ours = kernel.timer(tensors, number=1, repeat=1, min_repeat_ms=int(min_repeat_ms))
    calls = {"convtune": lambda: ours()[0]}
    if rivals and wl.quantized:  # ORT's int8 conv and PyTorch's (torch.ao), where one op computes the layer
        calls.update(onnxruntime_int8_call(wl, data, weight, target.threads))
        calls.update(torch_int8_call(wl, data, weight, target.threads))
    elif rivals:
        calls.update(torch_calls(wl, data, weight, target.threads))
        calls.update(onnxruntime_call(wl, data, weight, target.threads))
        calls["numpy-im2col"] = numpy_im2col_call(wl, data, weight)
    timings = {k: Timing() for k in calls}
    with blas_threads(target.threads):
        for _ in range(rounds):
            for key, fn in calls.items():
                # A rival's thread pool keeps spinning after its calls (OpenBLAS for ~0.1 s): let it
                # go to sleep, then warm the cores up again before timing the next contender.
                time.sleep(PAUSE_S)
                if key == "convtune":
                    fn()
                    timings[key].samples.append(fn())  # TVM's own timer: seconds per call
                else:
                    time_call(fn, WARMUP_MS)
                    timings[key].samples.append(time_call(fn, min_repeat_ms))
    row = {"layer": name, "spec": wl.spec, "layout": wl.layout, "flops": wl.flops,
           "algorithm": choice.task.algorithm, "tuned": choice.tuned, "timed_function": kernel.run_function,
           "results": {k: t.summary(wl.flops) for k, t in timings.items()}}
    torch_keys = [k for k in row["results"] if k.startswith("torch")]
    if torch_keys:
        best = min(torch_keys, key=lambda k: row["results"][k]["median_ms"])
        row["onednn_best"] = best
        row["speedup_vs_onednn"] = row["results"][best]["median_ms"] / row["results"]["convtune"]["median_ms"]
    rivals = [k for k in row["results"] if k in RIVALS]
    if rivals:  # the ratio users care about: against the better of the production libraries
        best = min(rivals, key=lambda k: row["results"][k]["median_ms"])
        row["best_rival"] = best
        row["speedup_vs_best_rival"] = row["results"][best]["median_ms"] / row["results"]["convtune"]["median_ms"]
    return row


def quant_inputs(wl: Workload) -> dict | None:
    """A quantized layer's zero points and scales (its kernel cannot run without them); None for
    float32, whose epilogue arguments a benchmark leaves at zero."""
    from schedules.reference import epilogue_inputs

    return epilogue_inputs(wl) if wl.quantized else None


def environment(target: Target) -> dict:
    return run_environment(target)


def format_table(rows: list[dict], peak: float | None) -> str:
    keys = [k for k in ("convtune", *RIVALS, "numpy-im2col") if any(k in r["results"] for r in rows)]
    head = ("| layer | algorithm | " + " | ".join(f"{k} GFLOP/s (min-max ms)" for k in keys)
            + " | vs oneDNN | vs best rival | % peak |")
    lines = [head, "|" + "---|" * (len(keys) + 5)]
    for row in rows:
        cells = []
        for k in keys:
            r = row["results"].get(k)
            flag = f" SPREAD {r['spread']:.2f}x" if r and r.get("flagged") else ""
            cells.append(f"{r['gflops']:.1f} ({r['min_ms']:.3f}-{r['max_ms']:.3f}){flag}" if r else "-")
        speed = f"{row['speedup_vs_onednn']:.2f}x" if "speedup_vs_onednn" in row else "-"
        rival = f"{row['speedup_vs_best_rival']:.2f}x ({row['best_rival']})" if "best_rival" in row else "-"
        pct = f"{100 * row['results']['convtune']['gflops'] / peak:.0f}%" if peak else "-"
        tag = row["algorithm"] + ("" if row["tuned"] else " (untuned)")
        lines.append(f"| {row['layer']} | {tag} | " + " | ".join(cells) + f" | {speed} | {rival} | {pct} |")
    return "\n".join(lines)


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def write_json(path: str, payload: dict) -> None:
    write_json_atomic(path, payload)


def bar_chart(rows: list[dict], path: str, title: str) -> str | None:
    """GFLOP/s per layer, convtune next to oneDNN and numpy; None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    keys = [("convtune", "convtune"), ("onednn", "PyTorch oneDNN (better layout)"), ("numpy-im2col", "numpy im2col+BLAS")]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    width = 0.27
    for i, (key, label) in enumerate(keys):
        values = []
        for row in rows:
            k = row.get("onednn_best") if key == "onednn" else key
            values.append(row["results"][k]["gflops"] if k in row["results"] else 0)
        ax.bar([x + (i - 1) * width for x in range(len(rows))], values, width, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["layer"].split(".", 1)[-1] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("GFLOP/s (direct-conv FLOPs / median time)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- estimate ------------------------------------------------------------------------------------------
CONTENDERS = ("convtune", "torch-nchw", "torch-channels_last", "numpy-im2col")


def estimate_network(layers: list[Layer], target: Target, logs: str, algorithm: str = "auto", rounds: int = 7,
                     min_repeat_ms: float = 100.0, rivals: bool = True) -> dict:
    """Time each distinct layer (bench_layer) and sum count x median per contender.

    oneDNN's network time takes one PyTorch layout for the whole network (a deployed model is laid
    out one way), the better of the two; `onednn_per_layer_best_ms` lets each layer pick its own."""
    rows = []
    for layer in layers:
        row = bench_layer(layer.name, layer.workload, target, logs, algorithm, rounds=rounds,
                          min_repeat_ms=min_repeat_ms, rivals=rivals)
        row["count"] = layer.count
        rows.append(row)
    totals = {}
    for key in CONTENDERS:
        if all(key in r["results"] for r in rows):
            totals[key] = sum(r["count"] * r["results"][key]["median_ms"] for r in rows)
    torch_totals = {k: v for k, v in totals.items() if k.startswith("torch")}
    out = {"layers": rows, "total_ms": totals, "untuned": [r["layer"] for r in rows if not r["tuned"]]}
    if torch_totals:
        best = min(torch_totals, key=torch_totals.get)
        out["onednn_layout"] = best
        out["speedup_vs_onednn"] = torch_totals[best] / totals["convtune"]
        if all("onednn_best" in r for r in rows):
            out["onednn_per_layer_best_ms"] = sum(r["count"] * r["results"][r["onednn_best"]]["median_ms"] for r in rows)
    return out


def format_estimate(estimate: dict) -> str:
    keys = [k for k in CONTENDERS if k in estimate["total_ms"]]
    lines = [f"{'layer':32s} {'count':>5s} " + " ".join(f"{k + ' ms':>22s}" for k in keys)]
    for r in estimate["layers"]:
        tag = "" if r["tuned"] else " (untuned)"
        lines.append(f"{r['layer'] + tag:32s} {r['count']:5d} "
                     + " ".join(f"{r['results'][k]['median_ms']:22.3f}" for k in keys))
    lines.append(f"{'network (count x ms)':32s} {'':5s} " + " ".join(f"{estimate['total_ms'][k]:22.3f}" for k in keys))
    if "speedup_vs_onednn" in estimate:
        lines.append(f"convtune vs oneDNN ({estimate['onednn_layout']} throughout): "
                     f"{estimate['speedup_vs_onednn']:.2f}x")
    if estimate["untuned"]:
        lines.append(f"UNTUNED layers (default configs): {', '.join(estimate['untuned'])}")
    return "\n".join(lines)


# -- a whole model, end to end ---------------------------------------------------------------------------
def _onnx_bytes(graph) -> bytes | None:
    source = graph.source
    if source["kind"] == "onnx":
        return open(source["path"], "rb").read()
    if source["kind"] == "zoo":
        from .model_import import zoo_onnx

        return zoo_onnx(source["name"], source.get("batch", 1)).SerializeToString()
    return None


def _torch_module(graph):
    """The model as PyTorch runs it eagerly (channels_last), when it came from PyTorch."""
    import torch

    source = graph.source
    if source["kind"] == "zoo":
        import torchvision

        torch.manual_seed(0)  # tuning.model_import.zoo_onnx builds the same weights
        return getattr(torchvision.models, source["name"])(weights=None).eval()
    if source["kind"] == "pt2":
        from .model_import import load_exported_program

        return load_exported_program(source["path"], graph.trust_pickle).module()
    return None


def model_contenders(graph, inputs: dict, threads: int, tvm_trials: int | None, target: Target,
                     work_dir: str | None) -> dict:
    """The rivals that run the whole model: ONNX Runtime (MLAS, all graph optimisations), PyTorch
    eager in channels_last (oneDNN), and TVM's own pipeline (`static_shape_tuning` with
    `tvm_trials` MetaSchedule trials: import, fuse, tune every fused op, compile, Relax VM)."""
    calls, notes = {}, {}
    onnx_bytes = _onnx_bytes(graph)
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None and onnx_bytes is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        feed = dict(inputs)
        calls["onnxruntime"] = lambda: session.run(None, feed)
    try:
        module = _torch_module(graph)
    except ImportError:
        module = None
    if module is not None:
        import torch

        torch.set_num_threads(threads)
        module = module.to(memory_format=torch.channels_last)
        args = [torch.from_numpy(inputs[i["name"]]).to(memory_format=torch.channels_last) for i in graph.inputs]

        def eager():
            with torch.no_grad():
                module(*args)

        calls["torch-channels_last"] = eager
    if tvm_trials is not None and onnx_bytes is not None:
        import tempfile

        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        mod = from_onnx(onnx.load_from_string(onnx_bytes), shape_dict={i["name"]: i["shape"] for i in graph.inputs},
                        keep_params_in_input=False)
        work = work_dir or tempfile.mkdtemp(prefix="convtune-tvm-")
        started = time.perf_counter()
        mod = relax.get_pipeline("static_shape_tuning", total_trials=tvm_trials, target=target.tvm,
                                 work_dir=work)(mod)
        executable = tvm.compile(mod, target=target.tvm)
        notes["tvm-static_shape_tuning"] = {"trials": tvm_trials, "work_dir": work,
                                            "tune_and_compile_s": round(time.perf_counter() - started, 1)}
        vm = relax.VirtualMachine(executable, tvm.cpu(0))
        tvm_args = [tvm.runtime.tensor(inputs[i["name"]]) for i in graph.inputs]
        calls["tvm-static_shape_tuning"] = lambda: vm["main"](*tvm_args)
    return calls, notes


def layer_split(side: dict, target: Target, logs: str, min_repeat_ms: float = 50.0) -> list[dict]:
    """convtune's conv time layer by layer: each distinct fused layer's kernel timed alone (run
    function, prepared weights), times its count. The model's time less their sum is what the
    rest of the graph (pools, classifier, transposes) costs."""
    from schedules.reference import epilogue_inputs

    from .deploy.model import layer_choices

    out = []
    for row, count, choice in layer_choices(side, target, logs):
        wl = choice.task.workload
        kernel = in_memory_kernel(choice, target, layer_name=row["name"])
        tensors = kernel.tensors(*random_inputs(wl), epilogue_inputs(wl))
        kernel.prepare(tensors)
        timer = kernel.timer(tensors, number=1, repeat=5, min_repeat_ms=int(min_repeat_ms))
        timer()
        ms = statistics.median(timer()) * 1e3
        # The same call with its weights (and residual) flushed from the caches first: inside the
        # model the weights of all layers exceed the L3, so each layer reads its own from DRAM.
        cold = statistics.median(kernel.timer(tensors, number=1, repeat=15, min_repeat_ms=0, cold=True)()) * 1e3
        weight_bytes = sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize
                           for a in kernel.args(kernel.run_function) if a["name"] not in ("data", "out", "residual", "col"))
        out.append({"layer": row["name"], "spec": row["spec"], "algorithm": row["algorithm"], "tuned": row["tuned"],
                    "count": count, "ms": ms, "total_ms": ms * count, "cold_ms": cold,
                    "cold_total_ms": cold * count, "weight_mb": weight_bytes / 1e6,
                    "gflops": wl.flops / (ms / 1e3) / 1e9})
    return out


def bench_model(graph, target: Target, logs: str, algorithm: str = "auto", rounds: int = 7,
                min_repeat_ms: float = 200.0, tvm_trials: int | None = None, tvm_work_dir: str | None = None,
                split: bool = True) -> dict:
    """End-to-end latency of the compiled model against the rivals, interleaved round by round in
    this process, same threads, batch and inputs; then convtune's time split by layer."""
    from .deploy.model import ModelLibrary, build_model, random_model_inputs

    executable, side = build_model(graph, target, logs, algorithm)
    library = ModelLibrary(executable, side)
    inputs = random_model_inputs(side)
    ours = library.timer(inputs, number=1, repeat=1, min_repeat_ms=int(min_repeat_ms))
    calls = {"convtune": ours}
    rivals, notes = model_contenders(graph, inputs, target.threads, tvm_trials, target, tvm_work_dir)
    calls.update(rivals)
    timings = {k: Timing() for k in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            time.sleep(MODEL_PAUSE_S)
            if key == "convtune":
                fn()
                timings[key].samples.append(fn()[0])
            else:
                time_call(fn, WARMUP_MS)
                timings[key].samples.append(time_call(fn, min_repeat_ms))
    results = {k: {"median_ms": t.median * 1e3, "min_ms": min(t.samples) * 1e3, "max_ms": max(t.samples) * 1e3}
               for k, t in timings.items()}
    out = {"model": graph.label, "layers": len(side["layers"]), "distinct_layers": side["distinct_layers"],
           "untuned": side["untuned"], "results": results, "notes": notes,
           "speedup": {k: results[k]["median_ms"] / results["convtune"]["median_ms"] for k in results if k != "convtune"},
           "convtune_trials": convtune_trials(side, target, logs)}
    if split:
        out["split"] = _split(side, target, logs, results["convtune"]["median_ms"])
    return out


def _split(side: dict, target: Target, logs: str, total_ms: float) -> dict:
    """convtune's end-to-end time against its convs timed alone, warm and with cold weights."""
    rows = layer_split(side, target, logs)
    convs = sum(r["total_ms"] for r in rows)
    cold = sum(r["cold_total_ms"] for r in rows)
    return {"layers": rows, "convs_ms": convs, "rest_ms": total_ms - convs, "convs_cold_ms": cold,
            "rest_after_cold_ms": total_ms - cold, "weight_mb": sum(r["weight_mb"] * r["count"] for r in rows)}


def convtune_trials(side: dict, target: Target, logs: str) -> int:
    """Trials behind the model's kernels: the records of each distinct layer (its bare conv's
    where it was built from those), what an equal-budget rival gets."""
    from .records import LayerRecords
    from .task import tasks_for

    seen, total = set(), 0
    for row in side["layers"]:
        wl = Workload.from_dict(row["workload"])
        wl = wl.bare if row.get("record_source") == "bare conv" else wl
        if wl in seen:
            continue
        seen.add(wl)
        store = LayerRecords.existing(logs, target, wl)
        if store is not None:
            total += sum(store.trial_count(t) for t in tasks_for(wl, "auto", target.machine))
    return total


def format_model_bench(result: dict) -> str:
    lines = [f"{'contender':26s} {'median ms':>10s} {'min-max ms':>16s} {'convtune speed-up':>18s}"]
    for key, r in result["results"].items():
        ratio = "" if key == "convtune" else f"{result['speedup'][key]:.2f}x"
        flag = f"  SPREAD {r['spread']:.2f}x" if r.get("flagged") else ""
        lines.append(f"{key:26s} {r['median_ms']:10.2f} {r['min_ms']:7.2f}-{r['max_ms']:<8.2f} {ratio:>18s}{flag}")
    for key, note in result["notes"].items():
        if "unavailable" in note:
            lines.append(f"{key:26s} not run: {note['unavailable']}")
    if "tvm-static_shape_tuning" in result["notes"]:
        note = result["notes"]["tvm-static_shape_tuning"]
        lines.append(f"TVM static_shape_tuning: {note['trials']} trials ({note['tune_and_compile_s']} s to tune "
                     f"and compile); convtune's kernels come from {result['convtune_trials']} recorded trials")
    if "split" in result:
        split = result["split"]
        lines.append("")
        lines.append(f"{'convtune layer':34s} {'algorithm':>13s} {'count':>5s} {'ms each':>8s} {'GFLOP/s':>8s} "
                     f"{'ms total':>9s} {'cold ms':>8s} {'weights MB':>10s}")
        for r in sorted(split["layers"], key=lambda r: -r["total_ms"]):
            tag = "" if r["tuned"] else " (untuned)"
            lines.append(f"{r['layer'][:34 - len(tag)] + tag:34s} {r['algorithm']:>13s} {r['count']:5d} {r['ms']:8.3f} "
                         f"{r['gflops']:8.1f} {r['total_ms']:9.3f} {r['cold_total_ms']:8.3f} {r['weight_mb'] * r['count']:10.1f}")
        lines.append(f"{'convs (kernels timed alone)':34s} {'':13s} {'':5s} {'':8s} {'':8s} {split['convs_ms']:9.3f} "
                     f"{split['convs_cold_ms']:8.3f} {split['weight_mb']:10.1f}")
        lines.append(f"rest of the model: end to end - convs {split['rest_ms']:.3f} ms; - convs with cold weights "
                     f"{split['rest_after_cold_ms']:.3f} ms (pools, classifier, transposes, the VM, cold activations)")
    return "\n".join(lines)


# -- every contender in its own fresh processes ------------------------------------------------------
# A number taken inside one process can be a property of that process: beside another runtime's
# thread pool a TVM kernel ran at exactly half speed in some processes and not in others (a Zen 4,
# docs/performance.md). So each contender runs as a user deploys it, alone in a fresh process
# (convtune's library loaded from its .so through tuning.deploy.load), several processes each,
# contenders alternating; the spread across processes is reported, not averaged away.
PROCESS_SECONDS = 1.5  # timing budget of one process
SPREAD_FLAG = 1.3  # processes of one contender further apart than this are flagged
PROCESS_CONTENDERS = ("convtune", "torch-nchw", "torch-channels_last", "onnxruntime", "numpy-im2col")  # float32


def _contender_call(key: str, wl: Workload, threads: int, library: str | None):
    """(call, thread settings) of one contender, built in this (fresh) process."""
    data, weight = random_inputs(wl)
    if key == "convtune":
        import tvm  # noqa: PLC0415

        from .deploy.kernel import Kernel, read_sidecar  # noqa: PLC0415
        from .deploy.loader import load, pool_settings  # noqa: PLC0415

        kernel = Kernel(load(library), read_sidecar(library), tvm.cpu(0))
        tensors = kernel.tensors(data, weight, quant_inputs(wl))
        kernel.prepare(tensors)
        run, args = kernel.module[kernel.run_function], [tensors[a["name"]] for a in kernel.args(kernel.run_function)]
        settings = pool_settings()
        return (lambda: run(*args)), {"tvm_threads": settings["threads"], "tvm_binding": settings["binding"]}
    if key == "torch-int8":
        call = torch_int8_call(wl, data, weight, threads)[key]
        import torch  # noqa: PLC0415

        return call, {"torch_threads": torch.get_num_threads(), "torch_quantized_engine": torch.backends.quantized.engine}
    if key.startswith("torch"):
        import torch  # noqa: PLC0415

        return torch_calls(wl, data, weight, threads)[key], {"torch_threads": torch.get_num_threads()}
    if key == "onnxruntime":
        rival = onnxruntime_int8_call if wl.quantized else onnxruntime_call
        return rival(wl, data, weight, threads)[key], {"ort_intra_op_threads": threads}
    return numpy_im2col_call(wl, data, weight), {"blas_threads": threads}


MODEL_RIVALS = ("onnxruntime", "torch-channels_last")


def _model_contender_call(key: str, library: str, threads: int):
    """(call, thread settings) of one contender running a whole model, built in this (fresh)
    process from the compiled model's sidecar: convtune's library as a user loads it; a rival from
    the model's source (the ONNX file, the zoo model or the .pt2), fed the same inputs."""
    import types  # noqa: PLC0415

    from .deploy.model import ModelLibrary, random_model_inputs, read_model_sidecar  # noqa: PLC0415

    side = read_model_sidecar(library)
    inputs = random_model_inputs(side)
    if key == "convtune":
        from .deploy.loader import pool_settings  # noqa: PLC0415

        model = ModelLibrary.load(library, side)
        settings = pool_settings()
        return (lambda: model.run(inputs)), {"tvm_threads": settings["threads"], "tvm_binding": settings["binding"]}
    # what model_contenders reads of a graph: its source and its inputs (never trusted: a pickle
    # in a .pt2 makes the PyTorch rival unavailable, as it makes convtune refuse the file)
    graph = types.SimpleNamespace(source=side["source"], inputs=side["inputs"], trust_pickle=False)
    calls, _ = model_contenders(graph, inputs, threads, None, None, None)
    if key not in calls:
        raise RuntimeError(f"{key} cannot run this model (its source is {side['source'].get('kind')})")
    return calls[key], ({"ort_intra_op_threads": threads, "ort_inter_op_threads": 1} if key == "onnxruntime"
                        else {"torch_threads": threads})


def child_main(argv: list[str]) -> int:
    """`python -m tuning.bench CONTENDER SPEC THREADS SECONDS [LIBRARY]` (a layer) or
    `python -m tuning.bench model CONTENDER LIBRARY THREADS SECONDS` (a whole model): one JSON
    line, the median seconds per call over this process's timing budget and the thread settings."""
    from schedules.workload import parse_spec  # noqa: PLC0415

    if argv[0] == "model":
        key, library, threads, seconds = argv[1], argv[2], int(argv[3]), float(argv[4])
        call, settings = _model_contender_call(key, library, threads)
    else:
        key, spec, threads, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
        call, settings = _contender_call(key, parse_spec(spec), threads, argv[4] if len(argv) > 4 else None)
    with blas_threads(threads):
        time_call(call, WARMUP_MS)
        samples, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            samples.append(time_call(call, 20.0))
    import json  # noqa: PLC0415

    print(json.dumps({"seconds": statistics.median(samples), "samples": len(samples), "settings": settings}))
    return 0


def process_summary(medians_s: list[float], flops: int | None = None) -> dict:
    """min / median / max of the per-process medians; `flagged` when they disagree by more than
    SPREAD_FLAG (a process-level effect: thread pools, placement)."""
    mid = statistics.median(medians_s)
    spread = max(medians_s) / min(medians_s)
    return {"median_ms": mid * 1e3, "min_ms": min(medians_s) * 1e3, "max_ms": max(medians_s) * 1e3,
            "process_medians_ms": [m * 1e3 for m in medians_s], "spread": spread, "flagged": spread > SPREAD_FLAG,
            **({"gflops": flops / mid / 1e9} if flops is not None else {})}


def bench_layer_processes(name: str, wl: Workload, target: Target, logs: str, algorithm: str = "auto",
                          processes: int = 3, seconds: float = PROCESS_SECONDS, rivals: bool = True) -> dict:
    """`bench_layer`, each contender in `processes` fresh processes of `seconds` of timing each,
    contenders alternating process by process."""
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from .deploy.library import export  # noqa: PLC0415

    choice = choose(wl, algorithm, target, logs)
    folder = tempfile.mkdtemp(prefix="convtune-bench-")
    library = os.path.join(folder, "layer.so")
    export(choice, target, library, layer_name=name, warn=False)
    keys = ["convtune"]
    if rivals and wl.quantized:  # ORT's int8 conv (QLinearConv / ConvInteger) and PyTorch's where one op says it
        keys += ["onnxruntime"] if _available("onnxruntime") and _int8_rival_applies(wl) else []
        keys += ["torch-int8"] if _available("torch-int8") and _torch_int8_applies(wl) else []
    elif rivals:
        keys += [k for k in PROCESS_CONTENDERS[1:] if _available(k)]
    medians, settings, _ = _alternate_processes(
        keys, lambda key: [key, wl.spec, str(target.threads), str(seconds), library], processes, timeout=600)
    row = {"layer": name, "spec": wl.spec, "layout": wl.layout, "flops": wl.flops,
           "algorithm": choice.task.algorithm, "tuned": choice.tuned, "timed_function": choice.task.template.run_function,
           "processes": processes, "process_seconds": seconds, "settings": settings,
           "results": {k: process_summary(v, wl.flops) for k, v in medians.items()}}
    torch_keys = [k for k in row["results"] if k.startswith("torch")]
    if torch_keys:
        best = min(torch_keys, key=lambda k: row["results"][k]["median_ms"])
        row["onednn_best"] = best
        row["speedup_vs_onednn"] = row["results"][best]["median_ms"] / row["results"]["convtune"]["median_ms"]
    rival_keys = [k for k in row["results"] if k in RIVALS]
    if rival_keys:
        best = min(rival_keys, key=lambda k: row["results"][k]["median_ms"])
        row["best_rival"] = best
        row["speedup_vs_best_rival"] = row["results"][best]["median_ms"] / row["results"]["convtune"]["median_ms"]
    return row


def _alternate_processes(keys: list[str], child_args, processes: int, timeout: float,
                         optional: set = frozenset()) -> tuple[dict, dict, dict]:
    """Each contender in `processes` fresh `python -m tuning.bench` processes (`child_args(key)`),
    contenders alternating process by process, so that drift hits all alike: (per-process median
    seconds per contender, thread settings per contender, notes). A failing `optional` contender
    is dropped with its reason in the notes; any other failure raises."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = _child_env()
    medians, settings, notes = {k: [] for k in keys}, {}, {}
    for _ in range(processes):
        for key in [k for k in keys if k not in notes]:
            done = subprocess.run([sys.executable, "-m", "tuning.bench", *child_args(key)], capture_output=True,
                                  text=True, env=env, timeout=timeout)
            if done.returncode:
                why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                if key not in optional:
                    raise RuntimeError(f"{key}'s process failed: {why}")
                notes[key] = {"unavailable": why}
                continue
            out = json.loads(done.stdout.strip().splitlines()[-1])
            medians[key].append(out["seconds"])
            settings[key] = out["settings"]
    return medians, settings, notes


def _child_env() -> dict:
    """A child's environment as a user's process has it: no TVM variables (the loader applies the
    library's own settings), the package importable."""
    import os  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "TVM_BIND_THREADS")}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def bench_model_processes(graph, target: Target, logs: str, algorithm: str = "auto", processes: int = 3,
                          seconds: float = PROCESS_SECONDS, rivals: bool = True, split: bool = True) -> dict:
    """`bench_model` as users deploy: the model compiled to a library, then each contender in
    `processes` fresh processes of `seconds` of back-to-back inferences, contenders alternating
    process by process (convtune's library through tuning.deploy.load; ONNX Runtime and PyTorch on
    the model's source). A rival that cannot run the model is named in `notes`, not fatal."""
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from .deploy.model import export_model  # noqa: PLC0415

    library = os.path.join(tempfile.mkdtemp(prefix="convtune-bench-"), "model.so")
    side = export_model(graph, target, logs, library, algorithm)
    keys = ["convtune"] + ([k for k in MODEL_RIVALS if _model_rival_available(k, graph)] if rivals else [])
    medians, settings, notes = _alternate_processes(
        keys, lambda key: ["model", key, library, str(target.threads), str(seconds)], processes, timeout=1800,
        optional=set(keys) - {"convtune"})
    results = {k: process_summary(v) for k, v in medians.items() if k not in notes and v}
    out = {"model": graph.label, "layers": len(side["layers"]), "distinct_layers": side["distinct_layers"],
           "untuned": side["untuned"], "results": results, "notes": notes, "processes": processes,
           "process_seconds": seconds, "settings": settings, "library": library,
           "speedup": {k: results[k]["median_ms"] / results["convtune"]["median_ms"] for k in results if k != "convtune"},
           "convtune_trials": convtune_trials(side, target, logs)}
    if split:
        out["split"] = _split(side, target, logs, results["convtune"]["median_ms"])
    return out


def _int8_rival_applies(wl: Workload) -> bool:
    """Whether one QLinearConv / ConvInteger node computes the quantized layer (see onnxruntime_int8_call)."""
    q = wl.quant
    return q.out == wl.data_dtype or (q.out == "int32" and wl.data_dtype == "uint8")


def _model_rival_available(key: str, graph) -> bool:
    import importlib.util  # noqa: PLC0415

    kind = graph.source["kind"]
    if key == "onnxruntime":
        return kind in ("onnx", "zoo") and importlib.util.find_spec("onnxruntime") is not None
    return kind in ("zoo", "pt2") and importlib.util.find_spec("torch") is not None


def _available(key: str) -> bool:
    import importlib.util  # noqa: PLC0415

    need = {"torch-nchw": "torch", "torch-channels_last": "torch", "torch-int8": "torch", "onnxruntime": "onnxruntime",
            "numpy-im2col": "numpy"}[key]
    return importlib.util.find_spec(need) is not None and (key != "onnxruntime" or importlib.util.find_spec("onnx"))


def format_settings(rows: list[dict]) -> str:
    """The thread settings each contender's processes ran with, printed beside the numbers."""
    seen = {}
    for row in rows:
        for key, s in row.get("settings", {}).items():
            seen.setdefault(key, s)
    return "; ".join(f"{k}: " + ", ".join(f"{n}={v}" for n, v in s.items()) for k, s in seen.items())


if __name__ == "__main__":
    import sys

    sys.exit(child_main(sys.argv[1:]))
