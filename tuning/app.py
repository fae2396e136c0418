"""convtune's application layer: what each command does, between parsing and printing.

A `Scope` is what a command works on: one layer, a network's distinct conv layers, or a whole
model. Each command is one call here, with plain values (a `Target`, a logs directory, a
`SearchOptions`, a `DeviceAddress`), returning what the caller prints:

    scope = Scope.of(layer="resnet18.layer1")                 # or network=..., model=...
    target = resolve(Machine("x86", threads=None), "tune")
    result = scope.tune(target, "logs", algorithm="direct", trials=64, options=SearchOptions())

The command line (tuning/cli.py) parses arguments into these values and prints what comes back;
the benchmarks and the experiments can call the same functions. Nothing here reads `argparse`.
Progress that must be seen before a long call returns (what is being tuned, compiled) goes to
`say`, stderr by default.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass, field

import numpy as np

from schedules import applicable

from .bench import (
    bar_chart,
    bench_layer,
    bench_layer_processes,
    bench_model,
    bench_model_processes,
    estimate_network,
    geomean,
    write_json,
)
from .bench import environment as bench_environment
from .deploy.bundle import compile_bundle, verify_bundle
from .deploy.kernel import Kernel, read_sidecar, sidecar_path
from .deploy.library import choose, export
from .deploy.model import (
    ModelLibrary,
    compare_outputs,
    export_model,
    first_diverging_layer,
    random_model_inputs,
    read_model_sidecar,
    reference_outputs,
)
from .deploy.verify import verify as verify_kernel
from .files import write_arrays_atomic
from .model_import import load_model, load_network
from .networks import NETWORKS, network_layers
from .networks import resolve as resolve_layer
from .peak import cpu_model, target_peak
from .records import PeakJudge, summaries
from .remote import emulator
from .remote.address import DeviceAddress
from .remote.session import load_library, open_session
from .search.measure import rpc_runner
from .search.model import tune_model
from .search.network import tune_network
from .search.tune import SearchOptions, tune
from .target import Target, host_arch, host_cores, resolve_target, set_threads, sidecar_arch
from .task import tasks_for

DEFAULT_LAYER = "resnet18.layer1"  # h=56,w=56,ci=64,co=64,k=3,pad=1


class UsageError(Exception):
    """A request no command can carry out as given; the message says what to give instead."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# -- the machine a command runs for -------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """What `--target`, `--threads` and `--force-threads` ask for, before it is resolved."""

    target: str = "x86"
    threads: int | None = None
    force_threads: bool = False


def resolve(machine: Machine, command: str) -> Target:
    """The target for `command`, refused where it cannot run here: a thread count that is not
    positive, more threads than cores (`records` only picks a directory), no C compiler for a
    command that builds. On this machine, the thread count is applied."""
    if machine.threads is not None and machine.threads <= 0:
        raise UsageError(f"--threads: must be positive, got {machine.threads}")
    target = resolve_target(machine.target, machine.threads)
    # More threads than cores share cores: every timing suffers.
    if target.is_host and target.threads > host_cores() and command != "records" and not machine.force_threads:
        given = "--threads" if machine.threads else "the target's num-cores"
        raise UsageError(f"{given}: {target.threads} threads on this machine's {host_cores()} cores would share "
                         "cores and spoil every timing; pass --force-threads to use them anyway")
    if command in ("tune", "compile", "bench"):
        check_compiler(target)
    if target.is_host:
        set_threads(target.threads)
    return target


def check_compiler(target: Target) -> None:
    """Every trial and every library is linked by a C compiler: without it a tune would record each
    trial as a failed build, and export dies in TVM with a TypeError. Refused before anything runs."""
    compiler = target.cross_compiler or "gcc"
    if shutil.which(compiler) is None:
        fix = ("convtune device setup (or apt-get install gcc-aarch64-linux-gnu)" if target.cross_compiler
               else "apt-get install gcc")
        raise UsageError(f"no {compiler} on PATH: kernels for {target.tag} are linked with it; {fix}")


def runner_for(device: DeviceAddress, target: Target, options: SearchOptions):
    """The runner that measures on `device` (None: this machine's local runner)."""
    if not device:
        if not target.is_host:
            raise UsageError(f"--target {target.name}: not this machine; measure on a device with "
                             "--rpc-tracker HOST:PORT --rpc-key KEY (or --rpc HOST:PORT)")
        return None
    _check_device(device)
    return rpc_runner(target, options.measure, device)


def _check_device(device: DeviceAddress) -> None:
    if device.tracker and not device.key:
        raise UsageError("--rpc-tracker needs --rpc-key (the devices' key at the tracker)")


# -- what a command works on ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """One layer (a zoo name or a spec), a network (its distinct conv layers: a zoo network, an
    .onnx or .pt2 file) or a model (one library for the whole graph)."""

    kind: str  # "layer" | "network" | "model"
    source: str
    layout: str | None = None
    batch: int | None = None  # an ONNX model's batch, where its input batch is symbolic
    trust_pickle: bool = False

    @classmethod
    def of(cls, layer: str | None = None, network: str | None = None, model: str | None = None,
           **how) -> "Scope":
        """The scope a command names: `model` first, then `network`, else `layer` (default: DEFAULT_LAYER)."""
        if model:
            return cls("model", model, **how)
        if network:
            return cls("network", network, **how)
        return cls("layer", layer or DEFAULT_LAYER, **how)

    # -- reading it --------------------------------------------------------------------------------
    def layer(self):
        """(name, workload) of a layer scope."""
        return resolve_layer(self.source, self.layout)

    def layers(self):
        """A network's distinct conv layers."""
        return load_network(self.source, self.layout or "NHWC", batch=self.batch, trust_pickle=self.trust_pickle)

    def graph(self):
        """A model as a Relax graph."""
        return load_model(self.source, self.layout or "NHWC", batch=self.batch, trust_pickle=self.trust_pickle)

    # -- commands ----------------------------------------------------------------------------------
    def tune(self, target: Target, logs: str, *, algorithm: str | None, trials: int, trials_total: int | None = None,
             options: SearchOptions = SearchOptions(), device: DeviceAddress = DeviceAddress(),
             say=_stderr) -> "Tuned":
        """Search the scope's schedules and record every trial. `algorithm` None: direct for a layer
        or network (an int8 layer, a network with one: auto, direct's compute being float32), auto for a model."""
        if trials <= 0:
            raise UsageError(f"--trials: must be positive, got {trials}")
        if self.kind == "model":
            algorithm = algorithm or "auto"
            graph = self.graph()
            total = trials_total or trials * len(graph.layers())
            runner = runner_for(device, target, options)
            tune_model(graph, algorithm, target, logs, total, options=options, runner=runner)
            return Tuned(self, target, runner)
        if self.kind == "network":
            layers = self.layers()
            # a QDQ model's layers are int8: direct's compute is float32
            algorithm = algorithm or ("auto" if any(l.workload.quantized for l in layers) else "direct")
            total = trials_total or trials * len(layers)
            runner = runner_for(device, target, options)
            say(f"tuning {len(layers)} distinct conv layers of {self.source} ({sum(l.count for l in layers)} in all) "
                f"on {target.tag} with {algorithm}: {total} trials in all, shared by the gradient task scheduler")
            tune_network(layers, algorithm, target, logs, total, options=options, runner=runner)
            return Tuned(self, target, runner)
        name, wl = self.layer()
        # direct's compute is float32: an int8 layer gets the int8 templates
        algorithm = algorithm or ("auto" if wl.quantized else "direct")
        tasks = tasks_for(wl, algorithm, target.machine)
        runner = runner_for(device, target, options)
        shared = (f" ({trials * len(tasks)} shared: the task scheduler gives more to those still improving)"
                  if len(tasks) > 1 else "")
        say(f"tuning {name} ({wl.spec}, {wl.layout}) on {target.tag}: {', '.join(t.algorithm for t in tasks)}, "
            f"{trials} trials per algorithm{shared}, {target.threads} threads, logs in {logs}")
        store = tune(tasks, target, logs, trials, options, runner)
        peak = target_peak(target) if runner is None else None
        return Tuned(self, target, runner, rows=_tune_rows(store, tasks, peak), peak=peak)

    def compile(self, target: Target, logs: str, *, algorithm: str = "auto", output: str | None = None,
                say=_stderr) -> dict:
        """Build the best records, judged against the machine's measured peak (a compile may measure):
        a library + sidecar (a layer), a bundle directory (a network), one library for the whole model. `output` None: kernel.so, build/<network>, build/<model>.so.
        Returns the sidecar (the manifest of a bundle), with `output` set to where it was written."""
        if self.kind == "model":
            if output is not None:
                output_path(output, "-o", ".so")
            graph = self.graph()
            out = output or f"build/{os.path.splitext(os.path.basename(self.source))[0]}.so"
            say(f"compiling {self.source}: {len(graph.chains())} convs and matmuls ({len(graph.layers())} distinct) "
                f"with convtune's kernels, the rest with TVM, for {target.tag} ...")
            return {**export_model(graph, target, logs, out, algorithm, judge=PeakJudge(target)), "output": out}
        if self.kind == "network":
            out_dir = output or f"build/{os.path.basename(self.source)}"
            manifest = compile_bundle(self.layers(), algorithm, target, logs, out_dir, network=self.source,
                                      judge=PeakJudge(target))
            return {**manifest, "output": out_dir}
        out = output_path(output or "kernel.so", "-o", ".so")
        name, wl = self.layer()
        choice = choose(wl, algorithm, target, logs, PeakJudge(target))
        return {**export(choice, target, out, layer_name=name), "output": out, "layer": name}

    def bench(self, target: Target, logs: str, *, algorithm: str = "auto", rounds: int = 5,
              min_repeat_ms: float = 100.0, rivals: bool = True, processes: int = 3, process_seconds: float = 1.5,
              in_process: bool = False, tvm_trials: int | None = None, say=_stderr) -> dict:
        """Time the scope's kernels against the rivals: a model end to end (each contender in fresh
        processes; in this one with `in_process` or TVM's pipeline as a rival), a network's estimate
        (count x per-layer medians), a layer (see `bench_layers` for several)."""
        if self.kind == "model":
            if in_process or tvm_trials is not None:  # TVM's pipeline is tuned and run in this process
                return bench_model(self.graph(), target, logs, algorithm, rounds=rounds,
                                   min_repeat_ms=max(min_repeat_ms, 200.0), tvm_trials=tvm_trials)
            if processes < 3:
                raise UsageError(f"--processes: at least 3 (the spread across processes is the point), got {processes}")
            return bench_model_processes(self.graph(), target, logs, algorithm, processes=processes,
                                         seconds=process_seconds, rivals=rivals)
        if self.kind == "network":
            return estimate_network(self.layers(), target, logs, algorithm, rounds=rounds,
                                    min_repeat_ms=min_repeat_ms, rivals=rivals)
        return bench_layers([self.layer()], target, logs, algorithm=algorithm, rounds=rounds,
                            min_repeat_ms=min_repeat_ms, rivals=rivals, processes=processes,
                            process_seconds=process_seconds, in_process=in_process, say=say)[0]

    def records(self, logs: str, target: Target | None = None) -> list[dict]:
        """The best record per layer and algorithm of this scope's workloads under `logs`."""
        if self.kind == "layer":
            specs = {self.layer()[1].spec}
        else:
            specs = {l.workload.spec for l in (self.graph().layers() if self.kind == "model" else self.layers())}
        return [r for r in summaries(logs, target) if r["layer"] in specs]


@dataclass
class Tuned:
    """What a tune did: for a layer, per algorithm (trials, best seconds, GFLOP/s, % of peak, why a
    figure is above the peak) and the peak; a network's or a model's table is printed by the search."""

    scope: Scope
    target: Target
    runner: object = None
    rows: list[dict] = field(default_factory=list)
    peak: float | None = None

    @property
    def emulated(self) -> bool:
        """Whether the times come from an emulated device (they say nothing about a board)."""
        return is_emulated(self.runner)


def is_emulated(runner) -> bool:
    return runner is not None and bool(getattr(runner, "device_info", {}).get("emulated"))


def _tune_rows(store, tasks, peak: float | None) -> list[dict]:
    wl = tasks[0].workload
    rows = []
    for task in tasks:
        best = store.best(task)
        row = {"algorithm": task.algorithm, "trials": store.trial_count(task), "seconds": None, "gflops": None,
               "why": ""}
        if best is not None:
            row.update(seconds=best.seconds, gflops=best.gflops(wl))
            if peak and best.gflops(wl) > peak:  # never a figure above the peak without saying why
                row["why"] = ("effective: fewer multiplications than direct" if task.template.multiplication_saving > 1
                              else "above the measured peak, within its noise margin: re-measure before trusting it")
        rows.append(row)
    return rows


# -- several layers ------------------------------------------------------------------------------------
def layer_items(texts: list[str], layout: str | None) -> list[tuple[str, object]]:
    """(name, workload) of each text: a zoo network's layers, else one layer (zoo name or spec)."""
    items = []
    for text in texts:
        if text in NETWORKS:
            items += [(l.name, l.workload) for l in network_layers(text, layout or "NHWC")]
        else:
            items.append(resolve_layer(text, layout))
    return items


def bench_layers(items: list[tuple[str, object]], target: Target, logs: str, *, algorithm: str = "auto",
                 rounds: int = 5, min_repeat_ms: float = 100.0, rivals: bool = True, processes: int = 3,
                 process_seconds: float = 1.5, in_process: bool = False, say=_stderr) -> list[dict]:
    """One row per (name, workload) (`layer_items`): the best kernel against the rivals, each contender
    in fresh processes (or all in this one, `in_process`)."""
    if not in_process and processes < 3:
        raise UsageError(f"--processes: at least 3 (the spread across processes is the point), got {processes}")
    rows = []
    for name, wl in items:
        say(f"benchmarking {name} ...")
        if in_process:
            rows.append(bench_layer(name, wl, target, logs, algorithm, rounds=rounds, min_repeat_ms=min_repeat_ms,
                                    rivals=rivals))
        else:
            rows.append(bench_layer_processes(name, wl, target, logs, algorithm, processes=processes,
                                              seconds=process_seconds, rivals=rivals))
    return rows


@dataclass
class Benched:
    """What `bench` measured: a model's end-to-end result, a network's estimate, or a row per layer
    (`result`, of `kind` "model" | "network" | "layer"); the run's environment (a network's only when
    written to JSON); the layers benched; the JSON (and the chart) written, if asked."""

    kind: str
    target: Target
    result: object
    env: dict | None = None
    items: list = field(default_factory=list)
    json_path: str | None = None
    chart: str | None = None


def bench(target: Target, logs: str, *, scope: Scope | None = None, layers: list[str] = (DEFAULT_LAYER,),
          layout: str | None = None, algorithm: str = "auto", rounds: int = 5, min_repeat_ms: float = 100.0,
          rivals: bool = True, processes: int = 3, process_seconds: float = 1.5, in_process: bool = False,
          tvm_trials: int | None = None, json_path: str | None = None, command: str | None = None,
          say=_stderr) -> Benched:
    """`convtune bench`: a model or a network (`scope`), else `layers` (zoo layers, zoo networks, specs)
    against the rivals; with `json_path`, the results written there with the environment and
    `command` (layers: a bar chart beside it)."""
    how = dict(algorithm=algorithm, rounds=rounds, min_repeat_ms=min_repeat_ms, rivals=rivals)
    if scope is not None and scope.kind == "model":
        result = scope.bench(target, logs, tvm_trials=tvm_trials, processes=processes,
                             process_seconds=process_seconds, in_process=in_process, say=say, **how)
        benched = Benched("model", target, result, bench_environment(target))
        payload = {"command": command, "environment": benched.env, **result}
    elif scope is not None:
        result = scope.bench(target, logs, say=say, **how)
        benched = Benched("network", target, result, bench_environment(target) if json_path else None)
        payload = {"command": command, "environment": benched.env, **result}
    else:
        items = layer_items(list(layers), layout)
        env = bench_environment(target)
        rows = bench_layers(items, target, logs, processes=processes, process_seconds=process_seconds,
                            in_process=in_process, say=say, **how)
        benched = Benched("layer", target, rows, env, items)
        ratios = [r["speedup_vs_onednn"] for r in rows if "speedup_vs_onednn" in r]
        rival_ratios = [r["speedup_vs_best_rival"] for r in rows if "speedup_vs_best_rival" in r]
        payload = {"command": command, "environment": env, "layers": rows,
                   "geomean_speedup_vs_onednn": geomean(ratios) if ratios else None,
                   "geomean_speedup_vs_best_rival": geomean(rival_ratios) if rival_ratios else None}
    if json_path:
        write_json(json_path, payload)
        benched.json_path = json_path
        if benched.kind == "layer":
            benched.chart = bar_chart(benched.result, os.path.splitext(json_path)[0] + ".png", " ".join(layers))
    return benched


def layers_report(network: str, layout: str = "NHWC", batch: int | None = None, trust_pickle: bool = False) -> dict:
    """What `convtune layers` shows of one network, as JSON-ready data."""
    layers = Scope("network", network, layout, batch, trust_pickle).layers()
    return {
        "network": network,
        "distinct": len(layers),
        "in_all": sum(l.count for l in layers),
        "gflops": sum(l.count * l.workload.flops for l in layers) / 1e9,
        "layers": [{"name": l.name, "count": l.count, "spec": l.workload.spec, "workload": l.workload.to_dict(),
                    "out": [l.workload.oh, l.workload.ow], "mflops": l.workload.flops / 1e6,
                    "algorithms": [a.name for a in applicable(l.workload)]} for l in layers],
    }


def records(logs: str, target: Target | None = None) -> list[dict]:
    """The best record per layer and algorithm under `logs` (one target's, given one)."""
    return summaries(logs, target)


def peaks(target: Target, threads: int | None = None) -> dict[str, float | None]:
    """The FP32 peak of the ISA the target's kernels use, per thread count (1 and the target's)."""
    return {str(t): target_peak(target, t) for t in ([threads] if threads else sorted({1, target.threads}))}


def peak_report(target: Target, threads: int | None = None) -> dict:
    """What `convtune peak` shows: the ISA the target's kernels use, this CPU, and the peak per thread count."""
    gflops = peaks(target, threads)
    return {"isa": target.machine.isa, "cpu": cpu_model(), "target": target.tag,
            "fma_units": target.machine.fma_units, "lanes": target.machine.lanes, "gflops": gflops}


def start_device(tracker: str | None, key: str | None = None, *, port: int | None = None,
                 cpu: str = emulator.DEFAULT_CPU, threads: int = 1, detach: bool = False) -> emulator.Device:
    """An emulated aarch64 RPC device (set up first, quietly, if it never was), registered with
    `tracker` as `key` (default emulator.DEFAULT_KEY)."""
    emulator.setup(quiet=True)
    return emulator.start(tracker, key or emulator.DEFAULT_KEY, port=port, cpu=cpu, threads=threads or 1,
                          detach=detach)


# -- paths a command writes ----------------------------------------------------------------------------
def output_path(path: str, what: str, suffix: str | None = None) -> str:
    """`path` as a file convtune can write, else UsageError with the fix: the right suffix (`-o
    k.json` would have the library overwritten by its own sidecar; `.tar` or no suffix write files
    verify cannot load), not a directory, in a directory (not under a file) we may write."""
    if suffix and not path.endswith(suffix):
        raise UsageError(f"{what} {path}: must end in {suffix} (e.g. {what} {os.path.splitext(path)[0]}{suffix})")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a directory; give a file path in it "
                         f"(e.g. {what} {os.path.join(path, 'out' + (suffix or ''))})")
    probe = _existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(probe):
        raise UsageError(f"{what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{what} {path}: {path if os.path.exists(path) else probe} is not writable; "
                         "give a path you can write")
    return path


def directory_path(path: str, what: str) -> str:
    """`path` as a directory convtune may read and write (`--logs`): it, or the nearest of its parents
    that exists, must be a directory; else UsageError."""
    probe = _existing(os.path.abspath(path))
    if not os.path.isdir(probe):
        where = "is" if probe == os.path.abspath(path) else f"is under {probe}, which is"
        raise UsageError(f"{what}: {path} {where} not a directory")
    return path


def _existing(path: str) -> str:
    """`path`, or the nearest of its parents that exists."""
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def save_crash(command: str) -> str:
    """The exception being handled, with `command`, in $CONVTUNE_CACHE (default ~/.cache/convtune)/crash-*.log;
    says where (or why it could not)."""
    root = os.environ.get("CONVTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "convtune")
    path = os.path.join(root, f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        os.makedirs(root, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{command}\n\n{traceback.format_exc()}")
    except OSError as err:
        return f"traceback not saved: {path}: {err.strerror}"
    return f"traceback in {path}"


# -- compiled libraries: run and verify ------------------------------------------------------------------
def sidecar_threads(path: str, side: dict) -> int:
    """The sidecar's thread count, if this machine can run it: a positive integer, no more than its cores
    (more threads than cores share them, and every call slows)."""
    threads = side.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UsageError(f"{path}: sidecar \"threads\": must be a positive integer, got {threads!r}; "
                         "restore the sidecar or compile again")
    if threads > host_cores():
        raise UsageError(f"{path}: sidecar \"threads\": {threads}, more than this machine's {host_cores()} cores; "
                         f"compile again with --threads {host_cores()} (or set \"threads\" to at most {host_cores()})")
    return threads


def model_library(path: str) -> ModelLibrary:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    side = read_model_sidecar(path)
    sidecar_threads(path, side)  # refused in one line before the loader applies it
    return ModelLibrary.load(path, side)  # with the sidecar's threads, unpinned (tuning/deploy/loader.py)


def is_model(path: str) -> bool:
    try:
        with open(sidecar_path(path)) as f:
            return json.load(f).get("kind") == "model"
    except (OSError, ValueError, AttributeError):
        return False


def read_input_array(text: str, path: str) -> np.ndarray:
    """One `--input` file as a real numeric array, else UsageError: np.load alone accepts (or dies
    on) things a model cannot take, and a complex array would be cast to its real part silently."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise UsageError(f"--input {text}: {path} is empty; save the input with numpy.save(path, array)")
    if os.path.isfile(path) and zipfile.is_zipfile(path):  # an .npz archive, whatever its name
        raise UsageError(f"--input {text}: {path} is an .npz archive, not one array; save each input "
                         "with numpy.save(path, array) and give it as --input NAME=PATH")
    try:
        array = np.load(path)  # allow_pickle=False: object arrays are refused here, not unpickled
    except (OSError, ValueError, EOFError) as err:
        raise UsageError(f"--input {text}: cannot read {path} as a .npy array: {err}") from None
    if not isinstance(array, np.ndarray):
        raise UsageError(f"--input {text}: {path} is not a single .npy array; save it with numpy.save(path, array)")
    if array.dtype.kind == "c":
        raise UsageError(f"--input {text}: {path} holds complex values ({array.dtype}); the model takes real "
                         "numbers: give the real part (numpy.save(path, array.real)) if that is what you mean")
    if array.dtype.kind not in "biuf":  # strings, bytes, datetimes, structured records
        raise UsageError(f"--input {text}: {path} holds {array.dtype} values, not numbers; "
                         "save a numeric array (e.g. float32) with numpy.save")
    return array


def model_inputs(names: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    """`--input [NAME=]PATH` values as the model's inputs by name (NAME may be left out of one input)."""
    inputs = {}
    for text in texts:
        name, path = text.split("=", 1) if "=" in text and not os.path.exists(text) else (None, text)
        if name is None:
            if len(names) != 1:
                raise UsageError(f"--input {text}: the model has {len(names)} inputs ({', '.join(names)}): "
                                 "give each as --input NAME=PATH")
            name = names[0]
        if name not in names:
            raise UsageError(f"--input {text}: the model has no input {name!r} (it has {', '.join(names)})")
        inputs[name] = read_input_array(text, path)
    return inputs


@dataclass
class Ran:
    """What `run` did: the outputs by name, the first call's seconds, the library's sidecar."""

    outputs: dict
    seconds: float
    side: dict
    random_inputs: bool


def run_model(path: str, inputs: list[str] | None = None, *, seed: int = 0, output: str | None = None,
              opened=None) -> Ran:
    """Run a compiled model once on `--input` files (none: random inputs of `seed`); write the outputs
    to `output` (.npz) if given. `opened(library)` is called once the library is loaded."""
    if output:
        output_path(output, "--output", ".npz")  # before the run, not after it
    library = model_library(path)
    if opened is not None:
        opened(library)
    arrays = model_inputs(library.input_names, inputs or [])
    if not inputs:
        arrays = random_model_inputs(library.side, seed)
    started = time.perf_counter()
    values = library.run(arrays)
    elapsed = time.perf_counter() - started
    out = {spec["name"]: value for spec, value in zip(library.side["outputs"], values)}
    if output:
        write_arrays_atomic(output, out)
    return Ran(out, elapsed, library.side, not inputs)


@dataclass
class Verified:
    """What `verify` found: `checks` (label, [Check]) of layer libraries, or a model's `model_checks`
    against `engine`, and where a failing model first diverges."""

    kind: str  # "kernel" | "bundle" | "model"
    checks: list = field(default_factory=list)
    model_checks: list = field(default_factory=list)
    engine: str | None = None
    side: dict | None = None
    diverging: str | None = None

    @property
    def ok(self) -> bool:
        checks = self.model_checks if self.kind == "model" else [c for _, cs in self.checks for c in cs]
        return all(c.ok for c in checks)


def verify(path: str, *, seed: int = 0, trust_pickle: bool = False,
           device: DeviceAddress = DeviceAddress()) -> Verified:
    """Run a library against the numpy float64 reference (a bundle directory: each of its layers; a
    model library: against ONNX Runtime), on this machine or on `device`."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isfile(path) and is_model(path):
        return verify_model(path, seed, trust_pickle)
    if os.path.isdir(path):
        return Verified("bundle", checks=verify_bundle(path, seed=seed))
    side = read_sidecar(path)
    if not device:
        arch = sidecar_arch(side)
        if arch and arch != host_arch():
            raise UsageError(f"{path} is built for {arch}; run it on such a device with --rpc-tracker/--rpc")
        sidecar_threads(path, side)
        kernel = Kernel.load(path, side)  # with the sidecar's threads, unpinned
    else:
        _check_device(device)
        session = open_session(device, side)
        kernel = Kernel(load_library(session, path, side), side, session.cpu(0))
    return Verified("kernel", checks=[(path, verify_kernel(kernel, seed=seed))])


def verify_model(path: str, seed: int = 0, trust_pickle: bool = False) -> Verified:
    library = model_library(path)
    side = library.side
    inputs = random_model_inputs(side, seed)
    ours = library.run(inputs)
    engine, theirs = reference_outputs(side, inputs, trust_pickle)
    result = Verified("model", model_checks=compare_outputs(side, ours, theirs), engine=engine, side=side)
    if not result.ok:
        result.diverging = first_diverging_layer(side, seed)
    return result
