"""Im2col's memory: the unfolded matrix against the input, over kernel sizes and strides.

The article: the (OH*OW) x (KH*KW*IC) matrix holds about KH*KW copies of the input (stride 1), and a
1x1 stride-1 layer needs no copy at all. Three figures per layer ("same" padding, k // 2):
  formula     `schedules.im2col.im2col_bytes` (0 when the copy is skipped), against the input's bytes;
  allocated   the intermediate buffers of the one-shot `conv2d` as lowering allocates them (read from
              the lowered TIR: the im2col matrix, the packed weight, the GEMM's tile), and the `col`
              workspace argument of the two-phase run function;
  measured    the growth of the process's peak resident memory while the one-shot `conv2d` runs once,
              in a fresh subprocess with its inputs already resident: the peak is reset just before
              the call (/proc/self/clear_refs, VmHWM), or, where that is not allowed, read from
              resource.getrusage's ru_maxrss (a lower bound then); the JSON says which.
The direct algorithm (which copies only a padded input) is measured the same way for comparison.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import tvm

from schedules.im2col import col_per_block, im2col_bytes, skips_copy
from schedules.spatial_pack import allocated_buffers
from schedules.workload import parse_spec

from ..deploy.kernel import sidecar_path
from ..deploy.library import Choice, schedule_functions, sidecar
from ..files import write_json_atomic
from ..task import Task
from .common import Context, environment, log, save_plot, write_json

NAME = "im2col-memory"
TITLE = "Im2col memory: the unfolded matrix against the input"
KERNELS = {"tiny": (1, 3), "default": (1, 3, 5, 7), "full": (1, 3, 5, 7)}
STRIDES = {"tiny": (1,), "default": (1, 2), "full": (1, 2)}
BASE = {"tiny": ["h=32,w=32,ci=32,co=16"], "default": ["h=56,w=56,ci=64,co=64"],
        "full": ["h=56,w=56,ci=64,co=64", "h=28,w=28,ci=128,co=128"]}
# NCHW first: Caffe's layout, in which convtune unfolds the whole matrix as the article describes;
# NHWC layers whose input outweighs their weight unfold a block's rows at a time
# (schedules.im2col.col_per_block): their rows show what that saves.
LAYOUTS = {"tiny": ("NCHW", "NHWC"), "default": ("NCHW", "NHWC"), "full": ("NCHW", "NHWC")}
BYTES = {"float32": 4, "int32": 4}
MMAP_THRESHOLD = 64 << 10


def run(ctx: Context) -> dict:
    with tempfile.TemporaryDirectory(prefix="convtune-im2col-memory-") as workdir:
        rows = measure(ctx, workdir)
    payload = {"experiment": NAME, "title": TITLE, "environment": environment(ctx),
               "padding": "same (k // 2)", "rows": rows,
               "rss_method": rows[0]["im2col"]["rss"]["method"] if rows else None}
    payload.update(save_plot(ctx, NAME, lambda plt: draw(plt, payload)))
    write_json(ctx, NAME, payload)
    return payload


def measure(ctx: Context, workdir: str) -> list[dict]:
    rows, probes = [], []
    for base in BASE[ctx.preset.name]:
        for layout in LAYOUTS[ctx.preset.name]:
            for stride in STRIDES[ctx.preset.name]:
                for k in KERNELS[ctx.preset.name]:
                    wl = parse_spec(f"{base},k={k},stride={stride},pad={k // 2}", layout=layout)
                    log(f"im2col-memory: {wl.spec} {layout}")
                    row, libraries = describe_layer(ctx, wl, workdir)
                    rows.append(row)
                    probes += [(row[algorithm], library) for algorithm, library in libraries.items()]
    # Each probe is a fresh process (a peak is per process); they do not disturb one another's
    # peaks, so they run side by side.
    log(f"im2col-memory: {len(probes)} peak-memory probes")
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda probe: rss_growth(probe[1], "conv2d", ctx.target.threads), probes)
        for (entry, _), result in zip(probes, results):
            entry["rss"] = result
    return rows


def describe_layer(ctx: Context, wl, workdir: str) -> tuple[dict, dict[str, str]]:
    """The layer's row (formula and allocated figures), and the one-shot libraries to probe."""
    input_bytes = math.prod(wl.data_shape) * BYTES[wl.dtype]
    col = im2col_bytes(wl)
    row = {"spec": wl.spec, "layout": wl.layout, "k": wl.kh, "stride": wl.stride[0], "pad": wl.pad[0],
           "input_bytes": input_bytes, "output_bytes": math.prod(wl.out_shape) * BYTES[wl.dtype],
           "im2col_bytes": col, "ratio": col / input_bytes, "kh_kw": wl.kh * wl.kw,
           "copy_skipped": skips_copy(wl), "unfolded_per_block": col_per_block(wl)}
    libraries = {}
    for algorithm in ("im2col", "direct"):
        choice = Choice(Task(wl, algorithm), None, None)
        scheduled = schedule_functions(choice)
        buffers = allocated_buffers(tvm.IRModule({"conv2d": scheduled["conv2d"]}))
        allocations = {name: math.prod(shape) * BYTES[wl.dtype] for name, shape in buffers.items()}
        library = os.path.join(workdir, f"{algorithm}-{wl.key}.so")
        tvm.compile(scheduled, target=ctx.target.tvm).export_library(library)
        side = sidecar(choice, ctx.target, os.path.basename(library), wl.spec)
        write_json_atomic(sidecar_path(library), side)
        entry = {"one_shot_allocations": allocations, "one_shot_allocated_bytes": sum(allocations.values())}
        if algorithm == "im2col":
            run_args = side["functions"][side["run_function"]]["args"]
            entry["col_argument_bytes"] = sum(math.prod(a["shape"]) * BYTES[a["dtype"]]
                                              for a in run_args if a["name"] == "col")
        row[algorithm] = entry
        libraries[algorithm] = library
    return row, libraries


# -- peak memory, measured in a fresh process -------------------------------------------------------------
def rss_growth(library: str, function: str, threads: int) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # A fixed mmap threshold: every buffer of 64 KiB or more is fresh memory, not heap pages that
    # the interpreter freed earlier and that are resident already (which would hide the growth).
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD),
               PYTHONPATH=root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    code = f"from tuning.experiments.im2col_memory import rss_probe; rss_probe({library!r}, {function!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory probe failed for {library}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def rss_probe(library: str, function: str) -> None:
    """In a subprocess: load `library`, make `function`'s arguments resident (random data), then
    call it once and print the growth of the peak RSS as JSON."""
    import gc  # noqa: PLC0415
    import resource  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from tuning.deploy.kernel import read_sidecar  # noqa: PLC0415

    side = read_sidecar(library)
    module = tvm.runtime.load_module(library)
    rng = np.random.default_rng(0)
    tensors, hosts = [], []  # the host copies stay alive: their memory is not recycled by the call
    for arg in side["functions"][function]["args"]:
        hosts.append(np.empty(arg["shape"], arg["dtype"]))
        rng.random(out=hosts[-1], dtype=np.float32)  # in place: no float64 temporary raises the peak
        tensors.append(tvm.runtime.tensor(hosts[-1], tvm.cpu(0)))
    gc.collect()
    if _reset_peak():
        method = ("VmHWM reset through /proc/self/clear_refs just before the call; growth = VmHWM after - VmRSS "
                  f"before (MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD})")
        before = _status_kib("VmRSS")
        module[function](*tensors)
        peak = _status_kib("VmHWM")
    else:
        method = ("resource.getrusage ru_maxrss after - before the call (a lower bound: the earlier peak may hide "
                  f"part; MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD})")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        module[function](*tensors)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"method": method, "before_kib": before, "peak_kib": peak,
                      "growth_bytes": max(0, peak - before) * 1024}))


# -- plot and report ------------------------------------------------------------------------------------
def draw(plt, payload: dict):
    rows = payload["rows"]
    strides = sorted({r["stride"] for r in rows})
    fig, axes = plt.subplots(1, len(strides), figsize=(5.5 * len(strides), 4), squeeze=False)
    first = rows[0]["spec"].split(",k=")[0] if rows else ""
    for ax, stride in zip(axes[0], strides):
        mine = [r for r in rows if r["stride"] == stride and r["layout"] == rows[0]["layout"]
                and r["spec"].startswith(first)]
        ks = [r["k"] for r in mine]
        ax.plot(ks, [r["ratio"] for r in mine], "o-", label="im2col matrix (formula)")
        ax.plot(ks, [r["im2col"]["rss"]["growth_bytes"] / r["input_bytes"] for r in mine], "s--",
                label="im2col one-shot: peak RSS growth")
        ax.plot(ks, [r["direct"]["rss"]["growth_bytes"] / r["input_bytes"] for r in mine], "^:",
                label="direct one-shot: peak RSS growth")
        ax.plot(ks, [r["kh_kw"] / stride ** 2 for r in mine], color="grey", lw=0.8, label="KH*KW / stride^2")
        ax.set_xticks(ks)
        ax.set_xlabel("kernel size k (k x k, same padding)")
        ax.set_ylabel("bytes / input bytes")
        ax.set_ylim(bottom=0)
        ax.set_title(f"stride {stride}")
        ax.legend(fontsize=8)
    fig.suptitle(f"im2col memory, {first} ({rows[0]['layout'] if rows else ''})")
    return fig


def _mib(value: float) -> str:
    return f"{value / 2**20:.2f}"


def _startup_kib(payload: dict) -> str:
    """RSS growth beyond the allocated buffers, over every measured run: the run-time's start-up."""
    extra = [r[a]["rss"]["growth_bytes"] - r[a]["one_shot_allocated_bytes"] for r in payload["rows"]
             for a in ("im2col", "direct") if (r[a].get("rss") or {}).get("growth_bytes") is not None]
    return f"{min(extra) / 1024:.0f}-{max(extra) / 1024:.0f} KiB beyond the buffers here" if extra else "not measured"


def section(payload: dict, image: str | None) -> str:
    lines = [f"## {TITLE}", "",
             "The article: the im2col matrix holds about KH*KW copies of the input (stride 1), and a 1x1 "
             "stride-1 convolution needs no copy. *formula*: `schedules.im2col.im2col_bytes`; *allocated*: the "
             "one-shot `conv2d`'s intermediate buffers in the lowered TIR (im2col matrix + packed weight + GEMM "
             "tile); *RSS*: the growth of the peak resident memory while the one-shot `conv2d` runs once, in a "
             f"fresh process ({payload.get('rss_method')}); it also holds the first call's run-time start-up (the "
             f"thread pool: {_startup_kib(payload)}). `col arg`: the two-phase run function's workspace "
             "argument. Padding is \"same\" (k // 2). MiB throughout.", "",
             "| layer | layout | input | im2col (formula) | ratio | KH*KW | col arg | im2col allocated | "
             "im2col RSS growth | direct allocated | direct RSS growth |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        col = "none (no copy)" if r["copy_skipped"] else _mib(r["im2col_bytes"])
        lines.append(
            f"| {r['spec']} | {r['layout']} | {_mib(r['input_bytes'])} | {col} | {r['ratio']:.2f} | {r['kh_kw']} | "
            f"{_mib(r['im2col']['col_argument_bytes'])} | {_mib(r['im2col']['one_shot_allocated_bytes'])} | "
            f"{_mib(r['im2col']['rss']['growth_bytes'])} | {_mib(r['direct']['one_shot_allocated_bytes'])} | "
            f"{_mib(r['direct']['rss']['growth_bytes'])} |")
    lines.append("")
    skipped = [r["spec"] for r in payload["rows"] if r["copy_skipped"]]
    if skipped:
        lines += [f"No im2col copy (the input is the GEMM operand as it lies): {', '.join(skipped)}.", ""]
    if image:
        lines += [f"![{NAME}]({image})", ""]
    return "\n".join(lines)
