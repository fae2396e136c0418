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
RIVALS = ("torch-nchw", "torch-channels_last", "onnxruntime")  # production libraries: oneDNN twice, MLAS
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
    tensors = kernel.tensors(data, weight)
    kernel.prepare(tensors)
    ours = kernel.timer(tensors, number=1, repeat=1, min_repeat_ms=int(min_repeat_ms))
    calls = {"convtune": lambda: ours()[0]}
    if rivals:
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
            cells.append(f"{r['gflops']:.1f} ({r['min_ms']:.3f}-{r['max_ms']:.3f})" if r else "-")
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
