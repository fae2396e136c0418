"""Spatial pack: the tile size's trade-off between halo memory and locality.

The article: cut the output into h x w tiles, copy each tile's input window (the tile plus its
(K-1)-wide halo) into a contiguous buffer, convolve it; smaller tiles are more local but copy more
halo, and one-pixel tiles degenerate to im2col. For each square tile size t (a divisor of the
output) the experiment records, from `schedules.spatial_pack`:
  predicted   `packed_tile_shape` (tile + halo) and `halo_overhead` (bytes copied into packed tiles
              over the whole layer / the input's bytes);
  allocated   the packed buffer as lowering actually allocates it (`allocated_pack_shape` of the
              scheduled TIR at `tile_config(wl, t, t)`), one per tile in flight (per thread);
  time        the median over interleaved rounds of the one-shot conv2d at that tile size (the
              other knobs at the template's defaults), with tuning/bench.py's Timing;
and, for t = 1, the bytes packed against `schedules.im2col.im2col_bytes` of the same layer.
"""

from __future__ import annotations

import math

from schedules import spatial_pack as sp
from schedules.im2col import im2col_bytes

from ..networks import resolve
from .common import (
    Context,
    environment,
    kernel_for,
    log,
    ready,
    save_plot,
    time_interleaved,
    timing_summary,
    write_json,
)

NAME = "spatial-pack"
TITLE = "Spatial pack: tile size, halo memory and speed"
ALGORITHM = "spatial-pack"
LAYERS = {"tiny": ["h=8,w=8,ci=8,co=16,k=3,pad=1"], "default": ["resnet18.layer1"],
          "full": ["resnet18.layer1", "resnet18.layer2"]}


def square_tiles(wl) -> list[int]:
    """Square tile sizes that divide both output dimensions (the search's perfect tiles)."""
    return [t for t in range(1, min(wl.oh, wl.ow) + 1) if wl.oh % t == 0 and wl.ow % t == 0]


def run(ctx: Context) -> dict:
    layers = []
    for layer in LAYERS[ctx.preset.name]:
        name, wl = resolve(layer)
        input_bytes = math.prod(wl.data_shape) * 4
        rows, timers = [], {}
        for t in square_tiles(wl):
            log(f"spatial-pack: {name} tile {t}x{t}")
            config = sp.tile_config(wl, t, t)
            predicted = sp.packed_tile_shape(wl, t, t)
            allocated = sp.allocated_pack_shape(sp.scheduled(wl, config), wl)
            tiles = wl.n * math.ceil(wl.oh / t) * math.ceil(wl.ow / t)
            overhead = sp.halo_overhead(wl, t, t)
            rows.append({"tile": [t, t], "tiles": tiles, "config": config,
                         "predicted_pack_shape": list(predicted), "predicted_pack_bytes": math.prod(predicted) * 4,
                         "allocated_pack_shape": list(allocated), "allocated_pack_bytes": math.prod(allocated) * 4,
                         "allocation_matches_prediction": tuple(allocated) == tuple(predicted),
                         "halo_overhead": overhead, "packed_bytes_per_call": overhead * input_bytes})
            kernel, _ = kernel_for(wl, ALGORITHM, ctx.target, config=config)
            timers[t] = (kernel, ready(kernel))
        timings = time_interleaved(timers, ctx.preset)
        for row in rows:
            row["time"] = timing_summary(timings[row["tile"][0]], wl.flops)
        one = next(r for r in rows if r["tile"] == [1, 1])
        layers.append({"layer": name, "spec": wl.spec, "flops": wl.flops, "input_bytes": input_bytes,
                       "im2col_bytes": im2col_bytes(wl), "one_pixel_packed_bytes": one["packed_bytes_per_call"],
                       "one_pixel_equals_im2col": math.isclose(one["packed_bytes_per_call"], im2col_bytes(wl)),
                       "rows": rows})
    payload = {"experiment": NAME, "title": TITLE, "environment": environment(ctx), "algorithm": ALGORITHM,
               "config_source": "tile_config(wl, t, t): the spatial tile fixed, the other knobs at the "
                                "template's defaults", "timed_function": "conv2d (one shot; packing is inside)",
               "layers": layers}
    payload.update(save_plot(ctx, NAME, lambda plt: draw(plt, payload)))
    write_json(ctx, NAME, payload)
    return payload


def draw(plt, payload: dict):
    fig, (memory, speed) = plt.subplots(1, 2, figsize=(12, 4))
    per_tile = memory.twinx()
    for layer in payload["layers"]:
        rows = layer["rows"]
        ts = [r["tile"][0] for r in rows]
        line, = memory.plot(ts, [r["halo_overhead"] for r in rows], "o-", label=f"{layer['layer']}: packed / input")
        per_tile.plot(ts, [r["predicted_pack_bytes"] / 1024 for r in rows], ":", color=line.get_color())
        per_tile.plot(ts, [r["allocated_pack_bytes"] / 1024 for r in rows], "s", mfc="none", color=line.get_color(),
                      label=f"{layer['layer']}: tile buffer, allocated (squares) vs predicted (dots)")
        speed.plot(ts, [r["time"]["gflops"] for r in rows], "o-", label=layer["layer"])
    memory.set_xscale("log", base=2)
    memory.set_yscale("log")
    per_tile.set_yscale("log")
    memory.set_xlabel("tile size t (t x t output pixels)")
    memory.set_ylabel("bytes packed per call / input bytes")
    per_tile.set_ylabel("one packed tile buffer (KiB)")
    memory.set_title("halo memory")
    handles = memory.get_legend_handles_labels()
    extra = per_tile.get_legend_handles_labels()
    memory.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper center",
                  bbox_to_anchor=(0.5, -0.25))
    speed.set_xscale("log", base=2)
    speed.set_xlabel("tile size t (t x t output pixels)")
    speed.set_ylabel("GFLOP/s (median)")
    speed.set_title(f"speed, {payload['environment']['threads']} threads")
    speed.legend(fontsize=8)
    for ax in (memory, speed):
        ax.grid(alpha=0.3)
    fig.suptitle("spatial pack: tile size trade-off (t = 1 is im2col)")
    fig.tight_layout()
    return fig


def section(payload: dict, image: str | None) -> str:
    lines = [f"## {TITLE}", "",
             "Square tiles of t x t output pixels (the other knobs at the template's defaults; the one-shot "
             "`conv2d` is timed, packing included). *predicted*: `packed_tile_shape` (tile + halo); *allocated*: "
             "the packed buffer in the lowered TIR (one per tile in flight, i.e. per thread); *packed/input*: "
             "`halo_overhead`, the bytes copied into packed tiles per call over the input's bytes.", ""]
    for layer in payload["layers"]:
        lines += [f"**{layer['layer']}** (`{layer['spec']}`, input {layer['input_bytes'] / 2**20:.2f} MiB)", "",
                  "| tile | tiles | predicted tile+halo | allocated | KiB per tile | packed/input | "
                  "ms (median) | GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
        for r in layer["rows"]:
            alloc = "x".join(map(str, r["allocated_pack_shape"]))
            if not r["allocation_matches_prediction"]:
                alloc += " (differs)"
            lines.append(f"| {r['tile'][0]}x{r['tile'][1]} | {r['tiles']} | "
                         f"{'x'.join(map(str, r['predicted_pack_shape']))} | {alloc} | "
                         f"{r['allocated_pack_bytes'] / 1024:.1f} | {r['halo_overhead']:.2f} | "
                         f"{r['time']['median_ms']:.3f} | {r['time']['gflops']:.1f} |")
        best = max(layer["rows"], key=lambda r: r["time"]["gflops"])
        same = "equal to" if layer["one_pixel_equals_im2col"] else "not equal to"
        lines += ["", f"Fastest tile: {best['tile'][0]}x{best['tile'][1]} ({best['time']['gflops']:.1f} GFLOP/s). "
                      f"One-pixel tiles pack {layer['one_pixel_packed_bytes'] / 2**20:.2f} MiB per call, {same} the "
                      f"im2col matrix ({layer['im2col_bytes'] / 2**20:.2f} MiB): the degenerate case is im2col.", ""]
    if image:
        lines += [f"![{NAME}]({image})", ""]
    return "\n".join(lines)
