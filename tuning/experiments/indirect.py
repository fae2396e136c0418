"""Indirect convolution against im2col: the indirection buffer's memory, and the run phases' speed.

Memory, as input channels grow on one spatial shape: the indirection buffer holds N*OH*OW*KH*KW
int32 row references (+ one zero row of IC floats), the im2col matrix N*OH*OW*KH*KW*IC floats, so
the buffer is about IC times smaller and its overhead over the input shrinks as KH*KW/IC
(`schedules.indirect.indirection_bytes` vs `schedules.im2col.im2col_bytes`). Each figure is
checked against the arguments the algorithms really declare (the `indirection` state argument and
the input buffer's zero row; the `col` workspace argument).

Time, on layers that need an im2col copy (3x3 padded, strided): each algorithm's run phase
(weights packed, indirection buffer built once; for im2col the run phase includes unfolding the
input), interleaved rounds, medians; each kernel at its best record in the logs when there is one,
else at the default config.
"""

from __future__ import annotations

import math

from schedules import im2col as im2col_module
from schedules import indirect as indirect_module
from schedules.workload import parse_spec

from ..networks import resolve
from .common import Context, environment, log, save_plot, time_algorithms, write_json

NAME = "indirect"
TITLE = "Indirect convolution: indirection buffer vs im2col matrix"
SWEEP_BASE = {"tiny": "h=8,w=8,co=16,k=3,pad=1", "default": "h=56,w=56,co=64,k=3,pad=1",
              "full": "h=56,w=56,co=64,k=3,pad=1"}
CHANNELS = {"tiny": (1, 4, 16), "default": tuple(2 ** i for i in range(10)), "full": tuple(2 ** i for i in range(12))}
LAYERS = {"tiny": ["h=8,w=8,ci=8,co=16,k=3,pad=1", "h=8,w=8,ci=8,co=16,k=3,stride=2,pad=1"],
          "default": ["resnet18.layer1", "resnet18.layer2.0.conv1", "resnet18.layer3"],
          "full": ["resnet18.layer1", "resnet18.layer2.0.conv1", "resnet18.layer2", "resnet18.layer3",
                   "resnet18.layer4", "mobilenet_v1.conv0", "resnet18.conv1"]}
ALGORITHMS = ("im2col", "indirect")


def _declared_bytes(phase_args, names) -> int:
    return sum(math.prod(a.shape) * 4 for a in phase_args if a.name in names)


def memory_row(wl) -> dict:
    input_bytes = math.prod(wl.data_shape) * 4
    col = im2col_module.im2col_bytes(wl)
    ind = indirect_module.indirection_bytes(wl)
    # What the algorithms declare: the indirection table, plus the one extra (zero) row of the
    # input buffer; the im2col matrix passed as the `col` workspace argument.
    run = indirect_module.functions(wl)["conv2d_packed"].args
    table = _declared_bytes(run, ("indirection",))
    zero_row = _declared_bytes(run, ("input_buffer",)) - input_bytes
    declared_col = _declared_bytes(im2col_module.functions(wl)["conv2d_packed"].args, ("col",))
    return {"ci": wl.ci, "spec": wl.spec, "input_bytes": input_bytes, "im2col_bytes": col,
            "indirection_bytes": ind, "declared_indirection_bytes": table + zero_row,
            "declared_col_bytes": declared_col, "unfolded_per_block": im2col_module.col_per_block(wl), "im2col_over_indirection": col / ind,
            "indirection_over_input": ind / input_bytes, "im2col_over_input": col / input_bytes}


def run(ctx: Context) -> dict:
    preset = ctx.preset.name
    sweep = [memory_row(parse_spec(f"{SWEEP_BASE[preset]},ci={ci}")) for ci in CHANNELS[preset]]
    layers = []
    for layer in LAYERS[preset]:
        name, wl = resolve(layer)
        log(f"indirect: {name}")
        _, timings, timed = time_algorithms(ctx, wl, ALGORITHMS)
        rows = [timed[a] for a in ALGORITHMS]
        layers.append({"layer": name, "spec": wl.spec, "flops": wl.flops, "memory": memory_row(wl), "rows": rows,
                       "indirect_speedup_over_im2col": timings["im2col"].median / timings["indirect"].median})
    payload = {"experiment": NAME, "title": TITLE, "environment": environment(ctx), "logs": ctx.logs,
               "sweep_base": SWEEP_BASE[preset], "sweep": sweep, "layers": layers,
               "timed": "run phases: indirect conv2d_packed (input in its buffer, table built, weights packed "
                        "beforehand); im2col conv2d_packed (weights packed beforehand; unfolds the input on every "
                        "call into the preallocated col)"}
    payload.update(save_plot(ctx, NAME, lambda plt: draw(plt, payload)))
    write_json(ctx, NAME, payload)
    return payload


def draw(plt, payload: dict):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sweep = payload["sweep"]
    ci = [r["ci"] for r in sweep]
    axes[0].plot(ci, [r["im2col_bytes"] / 2**20 for r in sweep], "o-", label="im2col matrix")
    axes[0].plot(ci, [r["indirection_bytes"] / 2**20 for r in sweep], "s-", label="indirection buffer")
    axes[0].plot(ci, [r["input_bytes"] / 2**20 for r in sweep], ":", color="grey", label="input")
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("input channels IC")
    axes[0].set_ylabel("MiB")
    axes[0].set_title(f"memory ({payload['sweep_base']})")
    axes[0].legend(fontsize=8)
    layers = payload["layers"]
    width = 0.38
    for offset, algorithm in zip((-width / 2, width / 2), ALGORITHMS):
        values = [next(r for r in l["rows"] if r["algorithm"] == algorithm)["time"]["gflops"] for l in layers]
        bars = axes[1].bar([i + offset for i in range(len(layers))], values, width, label=algorithm)
        axes[1].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[1].set_xticks(range(len(layers)), [l["layer"] for l in layers], rotation=15, fontsize=8)
    axes[1].set_ylabel("GFLOP/s (median, run phase)")
    axes[1].set_title(f"speed, {payload['environment']['threads']} threads")
    axes[1].legend(fontsize=8)
    fig.suptitle("indirect convolution vs im2col")
    return fig


def section(payload: dict, image: str | None) -> str:
    lines = [f"## {TITLE}", "",
             "Memory as the input channels grow on one spatial shape "
             f"(`{payload['sweep_base']}`): `schedules.indirect.indirection_bytes` (int32 row references + the "
             "zero row) against `schedules.im2col.im2col_bytes`; *declared* is what the algorithms' arguments "
             "actually take. MiB.", "",
             "| IC | input | im2col matrix | declared col | indirection buffer | declared | im2col / indirection | "
             "indirection / input | im2col / input |", "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["sweep"]:
        lines.append(f"| {r['ci']} | {r['input_bytes'] / 2**20:.3f} | {r['im2col_bytes'] / 2**20:.3f} | "
                     f"{r['declared_col_bytes'] / 2**20:.3f} | {r['indirection_bytes'] / 2**20:.3f} | "
                     f"{r['declared_indirection_bytes'] / 2**20:.3f} | {r['im2col_over_indirection']:.1f} | "
                     f"{r['indirection_over_input']:.3f} | {r['im2col_over_input']:.2f} |")
    lines += ["", f"Time ({payload['timed']}); *config*: the best record in `{payload['logs']}/` when the layer "
                  "has one, else the template's default.", "",
              "| layer | im2col config | im2col ms | im2col GFLOP/s | indirect config | indirect ms | "
              "indirect GFLOP/s | indirect speed-up | memory: im2col / indirection |",
              "|---|---|---|---|---|---|---|---|---|"]
    for l in payload["layers"]:
        r = {row["algorithm"]: row for row in l["rows"]}
        lines.append(f"| {l['layer']} (`{l['spec']}`) | {r['im2col']['source']} | "
                     f"{r['im2col']['time']['median_ms']:.3f} | "
                     f"{r['im2col']['time']['gflops']:.1f} | {r['indirect']['source']} | "
                     f"{r['indirect']['time']['median_ms']:.3f} | {r['indirect']['time']['gflops']:.1f} | "
                     f"{l['indirect_speedup_over_im2col']:.2f}x | {l['memory']['im2col_over_indirection']:.1f} |")
    lines.append("")
    if image:
        lines += [f"![{NAME}]({image})", ""]
    return "\n".join(lines)
