"""Tuning efficiency: how many trials a new layer needs, cold and started from similar layers.

For each layer and seed, two searches of the same template and budget, each from empty records:

  cold       convtune's default search with no history (XGBoost from its 16th sample)
  transfer   the same, started from the records of the other layers under --logs (leave-one-out:
             the layer's own records are never read): the nearest layers' best configs adapted
             and measured first, the cost model pre-trained on their trials (tuning/transfer.py)

Reported per layer: the curve of the best GFLOP/s so far, and the trials each search needed to
come within 5% of the best known for the layer (the best of both searches and of the shipped
records under --logs).
"""

from __future__ import annotations

import os

from ..networks import resolve
from ..records import LayerRecords
from ..search.transfer import Transfer
from ..search.tune import SearchOptions, tune
from ..task import Task
from .common import Context, environment, fresh, log, save_plot, write_json
from .tuning_curves import WITHIN, draw_curves, read_curve, trials_to_reach

NAME = "transfer"
TITLE = "Tuning efficiency: cold search vs transfer from similar layers"
ALGORITHM = "direct"
LAYERS = {
    "tiny": ["h=8,w=8,ci=8,co=16,k=3,pad=1"],
    "default": ["resnet18.layer2", "resnet18.layer3", "resnet18.layer4"],
    "full": ["resnet18.layer1", "resnet18.layer2", "resnet18.layer3", "resnet18.layer4",
             "resnet18.layer2.0.conv1", "resnet18.layer3.0.conv1"],
}
# tiny: no shipped records are assumed; a neighbour is tuned first to transfer from
TINY_HISTORY = "h=16,w=16,ci=8,co=16,k=3,pad=1"
TRIALS = {"tiny": 2, "default": 24, "full": 48}
BATCH = {"tiny": 2, "default": 8, "full": 8}
SEEDS = {"tiny": (1,), "default": (1, 2), "full": (1, 2, 3)}  # each search once per seed: luck shows
VARIANTS = ("cold", "transfer")


def run(ctx: Context) -> dict:
    preset = ctx.preset.name
    trials, batch = TRIALS[preset], BATCH[preset]
    history = ctx.logs
    if ctx.preset.tiny:
        history = os.path.join(ctx.out, NAME, "history")
        fresh(history)
        _, neighbour = resolve(TINY_HISTORY)
        tune([Task(neighbour, ALGORITHM)], ctx.target, history, 4, SearchOptions(seed=1, trials_per_iter=2, quiet=True))
    layers = {}
    for spec in LAYERS[preset]:
        name, wl = resolve(spec)
        task = Task(wl, ALGORITHM)
        runs = {variant: [] for variant in VARIANTS}
        for seed in SEEDS[preset]:
            for variant in VARIANTS:
                logs = os.path.join(ctx.out, NAME, f"{variant}-seed{seed}", name.replace(",", "_").replace("=", ""))
                fresh(logs)
                log(f"transfer: {name}: {variant}, seed {seed}, {trials} trials")
                transfer = Transfer(history) if variant == "transfer" else None
                store = tune([task], ctx.target, logs, trials,
                             SearchOptions(seed=seed, trials_per_iter=batch, transfer=transfer))
                runs[variant].append({"seed": seed, "logs": os.path.relpath(store.directory, ctx.out),
                                      **read_curve(store, task, wl.flops)})
        shipped = LayerRecords.existing(ctx.logs, ctx.target, wl)
        shipped_best = shipped.best(task) if shipped else None
        known = max([c["best_gflops"] for rs in runs.values() for c in rs if c["best_gflops"]]
                    + ([shipped_best.gflops(wl)] if shipped_best else []), default=None)
        for c in (c for rs in runs.values() for c in rs):
            c["trials_to_within_5pct_of_best_known"] = trials_to_reach(c["best_so_far_gflops"], known)
            c["first_batch_best_gflops"] = max((v for v in c["best_so_far_gflops"][:batch] if v), default=None)
        layers[name] = {"spec": wl.spec, "flops": wl.flops, "best_known_gflops": known,
                        "shipped_best_gflops": shipped_best.gflops(wl) if shipped_best else None,
                        "runs": runs}
    payload = {"experiment": NAME, "title": TITLE, "environment": environment(ctx), "algorithm": ALGORITHM,
               "trials": trials, "trials_per_iteration": batch, "seeds": list(SEEDS[preset]), "within": WITHIN,
               "history": os.path.relpath(history, ctx.out) if ctx.preset.tiny else history, "layers": layers}
    payload.update(save_plot(ctx, NAME, lambda plt: draw(plt, payload)))
    write_json(ctx, NAME, payload)
    return payload


def draw(plt, payload: dict):
    layers = payload["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.8), squeeze=False)
    for ax, (name, layer) in zip(axes[0], layers.items()):
        curves = {f"{variant}, seed {c['seed']}": c for variant, rs in layer["runs"].items() for c in rs}
        draw_curves(ax, curves, "trials_to_within_5pct_of_best_known", layer["best_known_gflops"], "95% of best known")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("trials")
    axes[0][0].set_ylabel("best GFLOP/s so far")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{payload['algorithm']} template, {payload['environment']['threads']} threads; "
                 "dot: within 5% of the best known", fontsize=10)
    fig.tight_layout()
    return fig


def section(payload: dict, image: str | None) -> str:
    seeds = ", ".join(str(x) for x in payload["seeds"])
    lines = [f"## {TITLE}", "",
             f"Template `{payload['algorithm']}`, {payload['trials']} trials per search, "
             f"{payload['trials_per_iteration']} per iteration, each search from empty records, once per seed "
             f"({seeds}). `transfer` reads the records under `{payload['history']}` except the layer's own "
             "(leave-one-out): the nearest layers' best configs, adapted, form its first batch, and their trials "
             "pre-train the cost model. Best known = the best of every search and of the shipped records.", "",
             "| layer | search | seed | first batch best GFLOP/s | best GFLOP/s | trials to within 5% of best known | "
             "best known |", "|---|---|---|---|---|---|---|"]
    for name, layer in payload["layers"].items():
        for variant, rs in layer["runs"].items():
            for c in rs:
                first, best = c["first_batch_best_gflops"], c["best_gflops"]
                reach = c["trials_to_within_5pct_of_best_known"]
                lines.append(f"| {name} | {variant} | {c['seed']} | {first:.1f} | {best:.1f} | "
                             f"{reach if reach else 'not reached'} | {layer['best_known_gflops']:.1f} |"
                             if best and first else f"| {name} | {variant} | {c['seed']} | - | - | - | - |")
    lines.append("")
    if image:
        lines += [f"![{NAME}]({image})", ""]
    return "\n".join(lines)
