"""Tuning curves: best GFLOP/s against trials for one layer, three ways of searching.

  template + XGBoost   the direct template's knobs, evolutionary search guided by XGBoost (convtune's default)
  template + random    the same space and search, the cost model replaced by random scores
  ms-auto + XGBoost    MetaSchedule's generated (Ansor-style) space over the same compute

Each search runs from empty records in its own logs directory under the output directory
(`<out>/tuning-curves/<variant>/`, wiped first), with the same trial budget, seed and measurement
settings. The curves are read back from the records in the order they were written (the database
appends one line per trial): the best valid time so far after each trial (failed trials and records
that the reference check rejected never count). Reported: the best GFLOP/s of each search, and how
many trials each needed to come within 5% of its own best and of the best of all three.
"""

from __future__ import annotations

import json
import os

from tvm.s_tir import meta_schedule as ms

from ..networks import resolve
from ..peak import target_peak
from ..records import DB_FILES, LayerRecords, median_seconds, trace_id
from ..search.tune import SearchOptions, tune
from ..task import Task
from .common import Context, environment, fresh, log, save_plot, write_json

NAME = "tuning-curves"
TITLE = "Tuning curves: XGBoost vs random search vs MetaSchedule's generated space"
LAYER = {"tiny": "h=8,w=8,ci=8,co=16,k=3,pad=1", "default": "resnet18.layer3", "full": "resnet18.layer1"}
TRIALS = {"tiny": 2, "default": 32, "full": 128}
BATCH = {"tiny": 2, "default": 8, "full": 16}  # trials per search iteration (cost model retrained after each)
SEED = 1
WITHIN = 0.05
# variant -> (algorithm, cost model)
VARIANTS = {
    "template-xgb": ("direct", "xgb"),
    "template-random": ("direct", "random"),
    "ms-auto-xgb": ("ms-auto", "xgb"),
}


def run(ctx: Context) -> dict:
    preset = ctx.preset.name
    name, wl = resolve(LAYER[preset])
    trials = TRIALS[preset]
    curves = {}
    for variant, (algorithm, cost_model) in VARIANTS.items():
        logs = os.path.join(ctx.out, NAME, variant)
        fresh(logs)
        log(f"tuning-curves: {variant}: {name}, {trials} trials")
        task = Task(wl, algorithm)
        store = tune([task], ctx.target, logs, trials,
                     SearchOptions(cost_model=cost_model, seed=SEED, trials_per_iter=BATCH[preset]))
        curves[variant] = {"algorithm": algorithm, "cost_model": cost_model,
                           "logs": os.path.relpath(store.directory, ctx.out),
                           **read_curve(store, task, wl.flops)}
    overall = max((c["best_gflops"] for c in curves.values() if c["best_gflops"]), default=None)
    for c in curves.values():
        c["trials_to_within_5pct_of_own_best"] = trials_to_reach(c["best_so_far_gflops"], c["best_gflops"])
        c["trials_to_within_5pct_of_overall_best"] = trials_to_reach(c["best_so_far_gflops"], overall)
    payload = {"experiment": NAME, "title": TITLE, "environment": environment(ctx), "layer": name, "spec": wl.spec,
               "flops": wl.flops, "trials": trials, "trials_per_iteration": BATCH[preset], "seed": SEED,
               "strategy": "evolutionary", "within": WITHIN, "overall_best_gflops": overall,
               "fp32_peak_gflops": target_peak(ctx.target), "curves": curves}
    payload.update(save_plot(ctx, NAME, lambda plt: draw(plt, payload)))
    write_json(ctx, NAME, payload)
    return payload


def read_curve(store: LayerRecords, task: Task, flops: int) -> dict:
    """Every trial of `task` in the order the database appended it: its median time (None when it
    failed or was rejected by the reference check) and the best GFLOP/s so far."""
    directory = store.directory
    workload_file, record_file = (os.path.join(directory, name) for name in DB_FILES)
    workloads = [ms.database.Workload.from_json(json.loads(line)) for line in open(workload_file) if line.strip()]
    rejected = store.rejected()
    seconds, best, best_so_far, rejected_count = [], None, [], 0
    for line in open(record_file):
        if not line.strip():
            continue
        index, body = json.loads(line)
        record = ms.database.TuningRecord.from_json(body, workloads[index])
        median = median_seconds(record.run_secs)
        if median is not None and trace_id(record.trace) in rejected:
            median, rejected_count = None, rejected_count + 1
        seconds.append(median)
        if median is not None:
            gflops = flops / median / 1e9
            best = gflops if best is None else max(best, gflops)
        best_so_far.append(best)
    return {"trial_seconds": seconds, "best_so_far_gflops": best_so_far, "best_gflops": best,
            "trials_recorded": len(seconds), "failed": sum(s is None for s in seconds) - rejected_count,
            "rejected": rejected_count}


def trials_to_reach(curve: list, target: float | None) -> int | None:
    """The first trial (1-based) whose best-so-far is within WITHIN of `target`; None if never."""
    if not target:
        return None
    for i, value in enumerate(curve, start=1):
        if value is not None and value >= (1 - WITHIN) * target:
            return i
    return None


def draw_curves(ax, curves: dict, reach_key: str, reference: float | None, reference_label: str, label=None):
    """Best-so-far step curves, a dot where each came within 5% (`reach_key`), and the 95% line."""
    for variant, c in curves.items():
        ys = [v if v is not None else float("nan") for v in c["best_so_far_gflops"]]
        line, = ax.step(range(1, len(ys) + 1), ys, where="post", label=label(variant, c) if label else variant)
        reach = c[reach_key]
        if reach:
            ax.plot([reach], [ys[reach - 1]], "o", color=line.get_color())
    if reference:
        ax.axhline((1 - WITHIN) * reference, color="grey", ls=":", lw=0.8, label=reference_label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)


def draw(plt, payload: dict):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    draw_curves(ax, payload["curves"], "trials_to_within_5pct_of_own_best", payload["overall_best_gflops"],
                "95% of the overall best", label=lambda variant, c: f"{variant} (best {c['best_gflops'] or 0:.1f})")
    ax.set_xlabel("trials (in the order measured)")
    ax.set_ylabel("best GFLOP/s so far")
    layer = payload["layer"] if payload["layer"] == payload["spec"] else f"{payload['layer']} ({payload['spec']})"
    ax.set_title(f"{layer}, {payload['environment']['threads']} threads; dot: within 5% of its own best",
                 fontsize=10)
    ax.legend(fontsize=8)
    return fig


def section(payload: dict, image: str | None) -> str:
    lines = [f"## {TITLE}", "",
             f"Layer {payload['layer']} (`{payload['spec']}`, {payload['flops'] / 1e6:.0f} MFLOP); "
             f"{payload['trials']} trials per search, "
             f"{payload['trials_per_iteration']} per iteration, evolutionary search, seed {payload['seed']}, each "
             "from empty records in its own logs directory; curves read from the records in the order they were "
             "written (failed and rejected trials never count). FP32 peak measured on this machine at "
             f"{payload['environment']['threads']} threads: {payload['fp32_peak_gflops']:.0f} GFLOP/s.", "",
             "| search | best GFLOP/s | % of peak | trials to within 5% of its best | "
             "trials to within 5% of the overall best | failed | rejected |", "|---|---|---|---|---|---|---|"]
    for variant, c in payload["curves"].items():
        best = c["best_gflops"]
        pct = f"{100 * best / payload['fp32_peak_gflops']:.0f}%" if best else "-"
        own = c["trials_to_within_5pct_of_own_best"]
        overall = c["trials_to_within_5pct_of_overall_best"]
        lines.append(f"| {variant} | {best:.1f} | {pct} | {own if own else '-'} | "
                     f"{overall if overall else 'not reached'} | {c['failed']} | {c['rejected']} |"
                     if best else f"| {variant} | - | - | - | - | {c['failed']} | {c['rejected']} |")
    lines.append("")
    if image:
        lines += [f"![{NAME}]({image})", ""]
    return "\n".join(lines)
