"""Winograd: fewer multiplications per output, the speed-up they buy here, the accuracy they cost.

Three figures per tile size m of F(m x m, 3 x 3):
  multiplications per output in 2-D, (m+2)^2 / m^2 (`schedules.winograd.multiplications_per_output`),
      against direct convolution's 9: 2.25x, 4x, 5.06x fewer for m = 2, 4, 6;
  the measured speed-up over direct on 3x3 layers: the run phase (weights transformed once, as an
      engine runs it) against direct's conv2d, interleaved rounds, medians; each kernel at its best
      record in the logs when it has one, else at the template's default config (the JSON and the
      report say which, per kernel);
  the float32 error against a float64 reference (numpy): max and mean |error| over several random
      inputs (uniform in [-1, 1]), and their ratios to direct convolution's float32 error on the same
      inputs (the growth of error with m that `error_growth` bounds).
"""

from __future__ import annotations

import numpy as np

from schedules import get_algorithm
from schedules.reference import conv2d_reference, random_inputs
from schedules.winograd import ERROR_GROWTH, KERNEL, TILES, multiplications_per_output

from ..networks import resolve
from .common import Context, environment, log, save_plot, time_algorithms, write_json

NAME = "winograd"
TITLE = "Winograd: multiplications, speed-up and numerical error"
LAYERS = {"tiny": ["h=8,w=8,ci=8,co=16,k=3,pad=1"], "default": ["resnet18.layer1", "resnet18.layer3"],
          "full": ["resnet18.layer1", "resnet18.layer2", "resnet18.layer3", "resnet18.layer4", "vgg16.conv3",
                   "vgg16.conv5"]}
SEEDS = {"tiny": 2, "default": 3, "full": 10}
ALGORITHMS = ["direct"] + [f"winograd-f{m}" for m in TILES]


def run(ctx: Context) -> dict:
    multiplications = [{"m": 1, "name": "direct", "per_output": multiplications_per_output(1),
                        "reduction": KERNEL * KERNEL / multiplications_per_output(1)}]
    multiplications += [{"m": m, "name": f"F({m}x{m},3x3)", "per_output": multiplications_per_output(m),
                         "reduction": KERNEL * KERNEL / multiplications_per_output(m)} for m in TILES]
    layers = []
    for layer in LAYERS[ctx.preset.name]:
        name, wl = resolve(layer)
        log(f"winograd: {name}")
        kernels, timings, timed = time_algorithms(ctx, wl, ALGORITHMS)
        errors = measure_errors(wl, kernels, SEEDS[ctx.preset.name])
        rows = [dict(timed[a], speedup_over_direct=timings["direct"].median / timings[a].median, error=errors[a],
                     error_growth_bound=get_algorithm(a).error_growth(wl)) for a in ALGORITHMS]
        layers.append({"layer": name, "spec": wl.spec, "flops": wl.flops, "rows": rows})
    payload = {"experiment": NAME, "title": TITLE, "environment": environment(ctx), "logs": ctx.logs,
               "multiplications": multiplications, "seeds": SEEDS[ctx.preset.name],
               "error_growth_table": {f"winograd-f{m}": g for m, g in ERROR_GROWTH.items()},
               "inputs": "uniform in [-1, 1] (schedules.reference.random_inputs), seeds 0..N-1",
               "layers": layers}
    payload.update(save_plot(ctx, NAME, lambda plt: draw(plt, payload)))
    write_json(ctx, NAME, payload)
    return payload


def measure_errors(wl, kernels: dict, seeds: int) -> dict:
    """Per algorithm: max and mean |out - float64 reference| over `seeds` random inputs (the run
    path: prepare, then the run function), and the ratios to direct's on the same inputs."""
    found = {a: {"max": [], "mean": []} for a in kernels}
    for seed in range(seeds):
        data, weight = random_inputs(wl, seed)
        expected = conv2d_reference(wl, data, weight)
        for algorithm, kernel in kernels.items():
            tensors = kernel.tensors(data, weight)
            kernel.prepare(tensors)
            kernel.call(kernel.run_function, tensors)
            err = np.abs(tensors["out"].numpy().astype(np.float64) - expected)
            found[algorithm]["max"].append(float(err.max()))
            found[algorithm]["mean"].append(float(err.mean()))
    direct_max, direct_mean = max(found["direct"]["max"]), float(np.mean(found["direct"]["mean"]))
    out = {}
    for algorithm, e in found.items():
        worst, mean = max(e["max"]), float(np.mean(e["mean"]))
        out[algorithm] = {"max_abs": worst, "mean_abs": mean, "per_seed_max": e["max"], "per_seed_mean": e["mean"],
                          "max_ratio_to_direct": worst / direct_max if direct_max else None,
                          "mean_ratio_to_direct": mean / direct_mean if direct_mean else None}
    return out


def draw(plt, payload: dict):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    mults = payload["multiplications"]
    labels = [m["name"] for m in mults]
    bars = axes[0].bar(labels, [m["reduction"] for m in mults], color="tab:grey", label="fewer multiplications")
    axes[0].bar_label(bars, fmt="%.2fx", fontsize=8)
    axes[0].set_ylabel("x fewer multiplications per output than direct")
    axes[0].set_title("multiplications (2-D, arithmetic)")
    width = 0.8 / max(1, len(payload["layers"]))
    for i, layer in enumerate(payload["layers"]):
        rows = layer["rows"]
        xs = [j + (i - (len(payload["layers"]) - 1) / 2) * width for j in range(len(rows))]
        b = axes[1].bar(xs, [r["speedup_over_direct"] for r in rows], width, label=layer["layer"])
        axes[1].bar_label(b, fmt="%.2f", fontsize=7)
        axes[2].plot(range(len(rows)), [r["error"]["max_ratio_to_direct"] for r in rows], "o-",
                     label=f"{layer['layer']} max")
        axes[2].plot(range(len(rows)), [r["error"]["mean_ratio_to_direct"] for r in rows], "s--",
                     label=f"{layer['layer']} mean")
    names = [r["algorithm"] for r in payload["layers"][0]["rows"]] if payload["layers"] else []
    for ax in axes[1:]:
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.legend(fontsize=7)
    axes[1].axhline(1.0, color="black", lw=0.8)
    axes[1].set_ylabel("speed-up over direct (median time)")
    axes[1].set_title(f"measured, {payload['environment']['threads']} threads")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("float32 |error| / direct's")
    axes[2].set_title(f"error vs float64, {payload['seeds']} random inputs")
    fig.suptitle("Winograd F(m x m, 3 x 3)")
    return fig


def section(payload: dict, image: str | None) -> str:
    lines = [f"## {TITLE}", "",
             "Multiplications per output of 2-D F(m x m, 3 x 3) in its GEMMs, (m+2)^2/m^2, against direct "
             "convolution's 9 (`schedules.winograd.multiplications_per_output`):", "",
             "| algorithm | multiplications per output | fewer than direct |", "|---|---|---|"]
    for m in payload["multiplications"]:
        lines.append(f"| {m['name']} | {m['per_output']:.2f} | {m['reduction']:.2f}x |")
    lines += ["", "Measured: Winograd's run phase (weights transformed once) against direct's conv2d, median "
                  "of interleaved rounds; error against the float64 reference over "
                  f"{payload['seeds']} random inputs ({payload['inputs']}), as max and mean |error| and their "
                  "ratios to direct's float32 error on the same inputs. *config*: the best record in "
                  f"`{payload['logs']}/` when the layer has one, else the template's default.", ""]
    for layer in payload["layers"]:
        lines += [f"**{layer['layer']}** (`{layer['spec']}`)", "",
                  "| algorithm | config | ms (median) | GFLOP/s (direct-equivalent) | speed-up over direct | "
                  "max abs error | mean abs error | max / direct's | mean / direct's |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in layer["rows"]:
            e = r["error"]
            lines.append(f"| {r['algorithm']} | {r['source']} | {r['time']['median_ms']:.3f} | "
                         f"{r['time']['gflops']:.1f} | {r['speedup_over_direct']:.2f}x | {e['max_abs']:.3g} | "
                         f"{e['mean_abs']:.3g} | {e['max_ratio_to_direct']:.2f} | {e['mean_ratio_to_direct']:.2f} |")
        lines.append("")
    if image:
        lines += [f"![{NAME}]({image})", ""]
    return "\n".join(lines)
