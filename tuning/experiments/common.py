"""What every experiment shares: the run's provenance, kernels built in memory, interleaved
timing, JSON output and matplotlib (an optional extra: without it, plots are skipped with a note).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np

from schedules.reference import random_inputs
from schedules.workload import Workload

from ..bench import Timing
from ..deploy.kernel import Kernel
from ..deploy.library import Choice, choose, in_memory_kernel
from ..environment import run_environment
from ..files import write_json_atomic
from ..target import Target
from ..task import Task

PLOT_MISSING = "matplotlib is not installed (pip install 'convtune[plot]'): no plot"


@dataclass(frozen=True)
class Preset:
    """How big a run is: `tiny` (tests: code paths only), `default` (minutes on 2 cores), `full`
    (the article's sizes, more rounds)."""

    name: str
    rounds: int  # timing rounds per kernel (median over rounds)
    min_repeat_ms: int  # each round: back-to-back calls for at least this long

    @property
    def tiny(self) -> bool:
        return self.name == "tiny"

    @property
    def full(self) -> bool:
        return self.name == "full"


PRESETS = {
    "tiny": Preset("tiny", rounds=2, min_repeat_ms=5),
    "default": Preset("default", rounds=7, min_repeat_ms=50),
    "full": Preset("full", rounds=15, min_repeat_ms=100),
}


@dataclass
class Context:
    """One experiment run: where it writes, how big it is, on what target, with which records."""

    out: str
    preset: Preset
    target: Target
    logs: str = "logs"
    command: str = ""

    def path(self, name: str) -> str:
        os.makedirs(self.out, exist_ok=True)
        return os.path.join(self.out, name)


# -- provenance ----------------------------------------------------------------------------------------
def environment(ctx: Context) -> dict:
    """Where and when the numbers were taken: stored with every experiment's JSON."""
    return {**run_environment(ctx.target, ctx.command), "preset": ctx.preset.name}


# -- kernels ---------------------------------------------------------------------------------------------
def kernel_for(wl: Workload, algorithm: str, target: Target, config: dict | None = None,
               logs: str | None = None) -> tuple[Kernel, dict]:
    """A kernel built in memory, and how it was configured: `config` if given, else the best
    record under `logs` when there is one, else the template's default config."""
    if config is None and logs is not None:
        choice = choose(wl, algorithm, target, logs)
    else:
        choice = Choice(Task(wl, algorithm), None, config)
    kernel = in_memory_kernel(choice, target, layer_name=wl.spec)
    side = kernel.side
    how = {"algorithm": algorithm, "config": side["config"],
           "source": ("tuned record" if choice.tuned else "given config" if config is not None else "default config"),
           "record_gflops": side["record"]["gflops"] if side["record"] else None,
           "timed_function": kernel.run_function}
    return kernel, how


def ready(kernel: Kernel, seed: int = 0) -> dict:
    """The kernel's tensors on random inputs, its prepare phase done (what the run phase needs)."""
    tensors = kernel.tensors(*random_inputs(kernel.workload, seed))
    kernel.prepare(tensors)
    return tensors


def time_interleaved(timers: dict, preset: Preset) -> dict[str, Timing]:
    """Seconds per call of each kernel's run function, round by round across the kernels, so
    that drift (another process, a core's clock) hits them alike; `timers`: key -> (kernel, tensors)."""
    calls = {key: kernel.timer(tensors, number=1, repeat=1, min_repeat_ms=preset.min_repeat_ms)
             for key, (kernel, tensors) in timers.items()}
    timings = {key: Timing() for key in calls}
    for fn in calls.values():  # warm-up: page faults, the thread pool, the caches
        fn()
    for _ in range(preset.rounds):
        for key, fn in calls.items():
            timings[key].samples.append(float(fn()[0]))
    return timings


def time_algorithms(ctx: "Context", wl: Workload, algorithms) -> tuple[dict, dict, dict]:
    """Each algorithm's best kernel for `wl` (its record under ctx.logs, else its default config),
    timed interleaved; returns ({algorithm: kernel}, {algorithm: Timing}, {algorithm: table row})."""
    kernels, hows = {}, {}
    for a in algorithms:
        kernels[a], hows[a] = kernel_for(wl, a, ctx.target, logs=ctx.logs)
    timings = time_interleaved({a: (k, ready(k)) for a, k in kernels.items()}, ctx.preset)
    rows = {a: {"algorithm": a, "source": hows[a]["source"], "config": hows[a]["config"],
                "timed_function": hows[a]["timed_function"], "time": timing_summary(timings[a], wl.flops)}
            for a in algorithms}
    return kernels, timings, rows


def timing_summary(timing: Timing, flops: int) -> dict:
    return dict(timing.summary(flops), samples_ms=[s * 1e3 for s in timing.samples])


# -- output ------------------------------------------------------------------------------------------------
def write_json(ctx: Context, name: str, payload: dict) -> str:
    path = ctx.path(f"{name}.json")
    return write_json_atomic(path, payload, default=_jsonable)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def pyplot():
    """matplotlib.pyplot on the file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def save_plot(ctx: Context, name: str, draw) -> dict:
    """Call `draw(plt)` (returns the figure) and save it as <name>.png; the JSON notes either the
    file (relative to the output directory) or why there is none."""
    plt = pyplot()
    if plt is None:
        print(f"note: {PLOT_MISSING}", file=sys.stderr)
        return {"plot": None, "plot_note": PLOT_MISSING}
    fig = draw(plt)
    path = ctx.path(f"{name}.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {"plot": os.path.basename(path), "plot_note": None}


def fresh(logs: str) -> None:
    """Empty records for a search: recorded trials would otherwise count and seed it."""
    if os.path.isdir(logs):
        shutil.rmtree(logs)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
