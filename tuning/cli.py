"""convtune's command line.

  layers      the conv layers of a network: zoo name, .onnx or .pt2 file
  tune        search a layer's (or a network's) schedules, record every trial
  compile     build the best record into a shared library + sidecar (a bundle with --network,
              one library for a whole model with --model)
  run         run a compiled model on inputs from .npy files, write its outputs (.npz)
  verify      run a library or a bundle against the numpy float64 reference (a model: against
              ONNX Runtime)
  bench       time the best kernels against the rivals, in one run (--model: end to end)
  records     best record per layer and algorithm
  peak        the machine's FP32 peak for the ISA the kernels use
  tracker     run a TVM RPC tracker
  devices     devices registered with a tracker
  device      an emulated aarch64 RPC device: setup, start, stop, list
  experiment  the article's experiments (see `convtune experiment --help`)

The CLI wires the rooms together: search (tuning/search/), deploy (tuning/deploy/) and remote
(tuning/remote/) never import each other's CLI-facing pieces; a remote library is loaded by
tuning.remote.session and handed to tuning.deploy's Kernel here.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys

DEFAULT_LAYER = "resnet18.layer1"  # h=56,w=56,ci=64,co=64,k=3,pad=1


class UsageError(Exception):
    pass


def _target(args):
    from .target import host_cores, resolve_target, set_threads

    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"--threads: must be positive, got {args.threads}")
    target = resolve_target(args.target, args.threads)
    # More threads than cores share cores: every timing suffers. `records` only picks a directory.
    if (target.is_host and target.threads > host_cores() and args.command != "records"
            and not getattr(args, "force_threads", False)):
        given = "--threads" if args.threads else "the target's num-cores"
        raise UsageError(f"{given}: {target.threads} threads on this machine's {host_cores()} cores would share "
                         "cores and spoil every timing; pass --force-threads to use them anyway")
    if args.command in ("tune", "compile", "bench"):
        _check_compiler(target)
    if target.is_host:
        set_threads(target.threads)
    return target


def _check_compiler(target) -> None:
    """Every trial and every library is linked by a C compiler: without it a tune would record each
    trial as a failed build, and export dies in TVM with a TypeError. Refused before anything runs."""
    import shutil

    compiler = target.cross_compiler or "gcc"
    if shutil.which(compiler) is None:
        fix = ("convtune device setup (or apt-get install gcc-aarch64-linux-gnu)" if target.cross_compiler
               else "apt-get install gcc")
        raise UsageError(f"no {compiler} on PATH: kernels for {target.tag} are linked with it; {fix}")


def _layer(args):
    from .networks import resolve

    return resolve(args.layer, args.layout)


# -- commands -----------------------------------------------------------------------------------------
def cmd_layers(args) -> int:
    from .model_import import load_network
    from .networks import NETWORKS
    from .tables import table

    reports = []
    for network in [args.network] if args.network else NETWORKS:
        layers = load_network(network, args.layout or "NHWC", batch=args.model_batch, trust_pickle=args.trust_pickle)
        reports.append(_layers_report(network, layers))
    if args.json:
        print(json.dumps(reports[0] if args.network else reports, indent=1))
        return 0
    for report in reports:
        print(f"{report['network']}: {report['distinct']} distinct conv layers, {report['in_all']} in all, "
              f"{report['gflops']:.2f} GFLOPs")
        rows = [[l["name"], f"x{l['count']}", l["spec"], f"{l['out'][0]}x{l['out'][1]}", f"{l['mflops']:.1f}",
                 _short_algorithms(l["algorithms"])] for l in report["layers"]]
        print(table(["layer", "count", "shape", "out", "MFLOPs", "algorithms"], rows, align="<><<><", indent="  "))
    return 0


def _layers_report(network: str, layers) -> dict:
    """What `convtune layers` shows of one network, as JSON-ready data."""
    from schedules import applicable

    return {
        "network": network,
        "distinct": len(layers),
        "in_all": sum(l.count for l in layers),
        "gflops": sum(l.count * l.workload.flops for l in layers) / 1e9,
        "layers": [{"name": l.name, "count": l.count, "spec": l.workload.spec, "workload": l.workload.to_dict(),
                    "out": [l.workload.oh, l.workload.ow], "mflops": l.workload.flops / 1e6,
                    "algorithms": [a.name for a in applicable(l.workload)]} for l in layers],
    }


def _short_algorithms(names: list[str]) -> str:
    """`winograd-f2, winograd-f4, winograd-f6` -> `winograd-f2/f4/f6`: a family once."""
    out: list[str] = []
    for name in names:
        family, _, variant = name.rpartition("-")
        if family and out and out[-1].startswith(family + "-"):
            out[-1] += f"/{variant}"
        else:
            out.append(name)
    return " ".join(out)


def cmd_tune(args) -> int:
    from .search.tune import tune
    from .task import tasks_for

    if args.trials <= 0:
        raise UsageError(f"--trials: must be positive, got {args.trials}")
    if args.batch <= 0:
        raise UsageError(f"--batch: must be positive, got {args.batch}")
    if args.model:
        args.algorithm = args.algorithm or "auto"
        return _tune_model(args)
    if args.network:
        args.algorithm = args.algorithm or "direct"
        return _tune_network(args)
    name, wl = _layer(args)
    if args.algorithm is None:  # direct's compute is float32: an int8 layer gets the int8 templates
        args.algorithm = "auto" if wl.quantized else "direct"
    target = _target(args)
    tasks = tasks_for(wl, args.algorithm, target.machine)
    options = _search_options(args)
    runner = _rpc_runner(args, target, options.measure)
    shared = (f" ({args.trials * len(tasks)} shared: the task scheduler gives more to those still improving)"
              if len(tasks) > 1 else "")
    print(f"tuning {name} ({wl.spec}, {wl.layout}) on {target.tag}: {', '.join(t.algorithm for t in tasks)}, "
          f"{args.trials} trials per algorithm{shared}, {target.threads} threads, logs in {args.logs}", file=sys.stderr)
    store = tune(tasks, target, args.logs, args.trials, options, runner)
    print_tune_table(store, tasks, target, runner)
    return 0


def _tune_network(args) -> int:
    from .model_import import load_network
    from .search.network import tune_network

    layers = load_network(args.network, args.layout or "NHWC", batch=args.model_batch,
                          trust_pickle=args.trust_pickle)
    target = _target(args)
    total = args.trials_total or args.trials * len(layers)
    options = _search_options(args)
    runner = _rpc_runner(args, target, options.measure)
    print(f"tuning {len(layers)} distinct conv layers of {args.network} ({sum(l.count for l in layers)} in all) on "
          f"{target.tag} with {args.algorithm}: {total} trials in all, shared by the gradient task scheduler",
          file=sys.stderr)
    tune_network(layers, args.algorithm, target, args.logs, total, options=options, runner=runner)
    _print_emulated_note(runner)
    return 0


def _tune_model(args) -> int:
    from .search.model import tune_model

    graph = _model(args)
    target = _target(args)
    total = args.trials_total or args.trials * len(graph.layers())
    options = _search_options(args)
    runner = _rpc_runner(args, target, options.measure)
    tune_model(graph, args.algorithm, target, args.logs, total, options=options, runner=runner)
    _print_emulated_note(runner)
    return 0


def _search_options(args):
    from .search.measure import MeasureConfig
    from .search.tune import SearchOptions

    measure = MeasureConfig(min_repeat_ms=args.min_repeat_ms, flush_cache=args.flush_cache,
                            run_timeout=args.run_timeout)
    return SearchOptions(strategy=args.strategy, cost_model=args.cost_model, measure=measure,
                         trials_per_iter=args.batch, seed=args.seed, transfer=_transfer(args))


def _transfer(args):
    from .search.transfer import Transfer

    if args.no_transfer:
        return None
    source = args.transfer_from or args.logs
    if args.transfer_from and not os.path.isdir(args.transfer_from):
        raise UsageError(f"--transfer-from: no such directory {args.transfer_from!r}")
    return Transfer(source)


def print_tune_table(store, tasks, target, runner=None) -> None:
    """The closing table of a layer's tune: per algorithm, trials, best time, GFLOP/s, % of peak."""
    from .peak import target_peak

    wl = tasks[0].workload
    peak = target_peak(target) if runner is None else None
    print(f"{'algorithm':>14s} {'trials':>7s} {'best ms':>9s} {'GFLOP/s':>9s} {'% peak':>7s}")
    for task in tasks:
        best = store.best(task)
        trials = store.trial_count(task)
        if best is None:
            print(f"{task.algorithm:>14s} {trials:7d} {'-':>9s} {'-':>9s} {'-':>7s}")
            continue
        pct = f"{100 * best.gflops(wl) / peak:6.0f}%" if peak else "      -"
        why = ""
        if peak and best.gflops(wl) > peak:  # never a figure above the peak without saying why
            why = ("  (effective: fewer multiplications than direct)" if task.template.multiplication_saving > 1
                   else "  (above the measured peak, within its noise margin: re-measure before trusting it)")
        print(f"{task.algorithm:>14s} {trials:7d} {best.seconds * 1e3:9.3f} {best.gflops(wl):9.1f} {pct}{why}")
    if peak:
        print(f"(FP32 {target.machine.isa} peak of this machine at {target.threads} threads, measured: "
              f"{peak:.0f} GFLOP/s)")
    _print_emulated_note(runner)


def _print_emulated_note(runner) -> None:
    """Times from an emulated device say nothing about a board: said when, and only when, the
    device reported itself emulated (a real board's times stand as measured)."""
    if runner is not None and getattr(runner, "device_info", {}).get("emulated"):
        from .remote.emulator import EMULATED_NOTE

        print(EMULATED_NOTE)


def _model(args):
    from .graph import load_model

    return load_model(args.model, args.layout or "NHWC", batch=args.model_batch, trust_pickle=args.trust_pickle)


def _output_path(path: str, what: str, suffix: str | None = None) -> str:
    """`path` as a file convtune can write, else UsageError with the fix: the right suffix (`-o
    k.json` would have the library overwritten by its own sidecar; `.tar` or no suffix write files
    verify cannot load), not a directory, in a directory (not under a file) we may write."""
    if suffix and not path.endswith(suffix):
        raise UsageError(f"{what} {path}: must end in {suffix} (e.g. {what} {os.path.splitext(path)[0]}{suffix})")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a directory; give a file path in it "
                         f"(e.g. {what} {os.path.join(path, 'out' + (suffix or ''))})")
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{what} {path}: {path if os.path.exists(path) else probe} is not writable; "
                         "give a path you can write")
    return path


def cmd_compile(args) -> int:
    from .deploy.library import choose, export

    if args.model:
        if args.output != "kernel.so":
            _output_path(args.output, "-o", ".so")
        from .deploy.model import export_model, untuned_warning

        graph = _model(args)
        target = _target(args)
        out = args.output if args.output != "kernel.so" else f"build/{os.path.splitext(os.path.basename(args.model))[0]}.so"
        print(f"compiling {args.model}: {len(graph.chains())} convs and matmuls ({len(graph.layers())} distinct) with convtune's "
              f"kernels, the rest with TVM, for {target.tag} ...", file=sys.stderr)
        side = export_model(graph, target, args.logs, out, args.algorithm)
        warning = untuned_warning(side)
        if warning:
            print(warning, file=sys.stderr)
        algorithms = {}
        for row in side["layers"]:
            algorithms[row["algorithm"]] = algorithms.get(row["algorithm"], 0) + 1
        print(f"wrote {out} and {os.path.splitext(out)[0]}.json: {side['model']}, {len(side['layers'])} layers "
              f"({', '.join(f'{n} {a}' for a, n in sorted(algorithms.items(), key=lambda kv: -kv[1]))}), "
              f"{len(side['layers']) - len(side['untuned'])} tuned; other ops: {side['other_ops']}; "
              f"{side['compile_seconds']:.0f} s")
        return 0
    if args.network:
        from .deploy.bundle import compile_bundle
        from .model_import import load_network

        layers = load_network(args.network, args.layout or "NHWC", batch=args.model_batch,
                          trust_pickle=args.trust_pickle)
        out_dir = args.output if args.output != "kernel.so" else f"build/{os.path.basename(args.network)}"
        manifest = compile_bundle(layers, args.algorithm, _target(args), args.logs, out_dir, network=args.network)
        print(f"wrote bundle {out_dir}: {len(manifest['layers'])} layers, manifest.json"
              + (f"; {len(manifest['untuned'])} UNTUNED (their names: \"untuned\" in manifest.json)"
                 if manifest.get("untuned") else ""))
        return 0

    _output_path(args.output, "-o", ".so")
    name, wl = _layer(args)
    target = _target(args)
    choice = choose(wl, args.algorithm, target, args.logs)
    side = export(choice, target, args.output, layer_name=name)
    state = (f"tuned: {side['record']['gflops']:.1f} GFLOP/s measured" if side["tuned"] else "UNTUNED default config")
    print(f"wrote {args.output} and {os.path.splitext(args.output)[0]}.json: {name}, {side['algorithm']}, "
          f"{target.tag}, {state}; functions: {', '.join(side['functions'])}")
    return 0


def _model_library(path: str):
    from .deploy.model import ModelLibrary, read_model_sidecar

    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    side = read_model_sidecar(path)
    _sidecar_threads(path, side)  # refused in one line before the loader applies it
    return ModelLibrary.load(path, side)  # with the sidecar's threads, unpinned (tuning/deploy/loader.py)


def _sidecar_threads(path: str, side: dict) -> int:
    """The sidecar's thread count, if this machine can run it: a positive integer, no more than its cores
    (more threads than cores share them, and every call slows)."""
    from .target import host_cores

    threads = side.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UsageError(f"{path}: sidecar \"threads\": must be a positive integer, got {threads!r}; "
                         "restore the sidecar or compile again")
    if threads > host_cores():
        raise UsageError(f"{path}: sidecar \"threads\": {threads}, more than this machine's {host_cores()} cores; "
                         f"compile again with --threads {host_cores()} (or set \"threads\" to at most {host_cores()})")
    return threads


def _is_model(path: str) -> bool:
    from .deploy.kernel import sidecar_path

    try:
        with open(sidecar_path(path)) as f:
            return json.load(f).get("kind") == "model"
    except (OSError, ValueError, AttributeError):
        return False


def _read_input_array(text: str, path: str):
    """One `--input` file as a real numeric array, else UsageError: np.load alone accepts (or dies
    on) things a model cannot take, and a complex array would be cast to its real part silently."""
    import zipfile

    import numpy as np

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


def cmd_run(args) -> int:
    import time

    import numpy as np

    from .deploy.model import random_model_inputs, untuned_warning

    if args.output:
        _output_path(args.output, "--output", ".npz")  # before the run, not after it
    library = _model_library(args.library)
    side = library.side
    warning = untuned_warning(side)
    if warning:
        print(warning, file=sys.stderr)
    names = library.input_names
    inputs = {}
    for text in args.input or []:
        name, path = text.split("=", 1) if "=" in text and not os.path.exists(text) else (None, text)
        if name is None:
            if len(names) != 1:
                raise UsageError(f"--input {text}: the model has {len(names)} inputs ({', '.join(names)}): "
                                 "give each as --input NAME=PATH")
            name = names[0]
        if name not in names:
            raise UsageError(f"--input {text}: the model has no input {name!r} (it has {', '.join(names)})")
        inputs[name] = _read_input_array(text, path)
    if not args.input:
        inputs = random_model_inputs(side, args.seed)
        print(f"no --input: running on uniform random inputs (seed {args.seed})", file=sys.stderr)
    started = time.perf_counter()
    outputs = library.run(inputs)
    elapsed = time.perf_counter() - started
    out = {spec["name"]: value for spec, value in zip(side["outputs"], outputs)}
    if args.output:
        from .files import write_arrays_atomic

        write_arrays_atomic(args.output, out)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in out.items())
    print(f"ran {args.library} in {elapsed * 1e3:.1f} ms (first call, {side['threads']} threads): {shapes}"
          + (f"; wrote {args.output}" if args.output else ""))
    return 0


def verify_model(path: str, seed: int = 0, trust_pickle: bool = False) -> int:
    from .deploy.model import compare_outputs, first_diverging_layer, random_model_inputs, reference_outputs

    library = _model_library(path)
    side = library.side
    inputs = random_model_inputs(side, seed)
    ours = library.run(inputs)
    engine, theirs = reference_outputs(side, inputs, trust_pickle)
    checks = compare_outputs(side, ours, theirs)
    for c in checks:
        print(f"{path}: {c.output}: against {engine}: {c.describe()} ({side['tolerance']['why']}) "
              f"{'ok' if c.ok else 'MISMATCH'}")
    ok = sum(c.ok for c in checks)
    print(f"{ok}/{len(checks)} outputs ok ({len(side['layers'])} layers, {side['model']})")
    if ok == len(checks):
        return 0
    print(first_diverging_layer(side, seed))
    return 1


def cmd_verify(args) -> int:
    from .deploy.kernel import Kernel, read_sidecar
    from .deploy.verify import print_checks, verify

    if not os.path.exists(args.library):
        raise UsageError(f"{args.library}: no such file")
    if os.path.isfile(args.library) and _is_model(args.library):
        return verify_model(args.library, args.seed, args.trust_pickle)
    if os.path.isdir(args.library):
        from .deploy.bundle import verify_bundle

        return print_checks(verify_bundle(args.library, seed=args.seed))
    side = read_sidecar(args.library)
    session = _rpc_session(args, side)
    if session is None:
        from .target import host_arch, sidecar_arch

        arch = sidecar_arch(side)
        if arch and arch != host_arch():
            raise UsageError(f"{args.library} is built for {arch}; run it on such a device with --rpc-tracker/--rpc")
        _sidecar_threads(args.library, side)
        kernel = Kernel.load(args.library, side)  # with the sidecar's threads, unpinned
    else:
        from .remote.session import load_library

        kernel = Kernel(load_library(session, args.library, side), side, session.cpu(0))
    return print_checks([(args.library, verify(kernel, seed=args.seed))])


def cmd_bench(args) -> int:
    from .bench import (
        SPREAD_FLAG,
        bar_chart,
        bench_layer,
        environment,
        format_settings,
        format_table,
        geomean,
        write_json,
    )
    from .networks import NETWORKS, network_layers, resolve

    target = _target(args)
    if args.model:
        from .bench import bench_model, format_model_bench

        result = bench_model(_model(args), target, args.logs, args.algorithm, rounds=args.rounds,
                             min_repeat_ms=max(args.min_repeat_ms, 200.0), tvm_trials=args.tvm_trials)
        print(format_model_bench(result))
        env = environment(target)
        print(f"\nCPU {env['cpu']}, {target.tag}, {target.threads} threads, batch as the model's input; median of "
              f"{args.rounds} rounds, interleaved, each >= {max(args.min_repeat_ms, 200.0):.0f} ms of calls")
        if args.json:
            write_json(args.json, {"command": " ".join(["convtune"] + sys.argv[1:]), "environment": env, **result})
            print(f"wrote {args.json}")
        return 0
    if args.network:
        from .bench import estimate_network, format_estimate
        from .model_import import load_network

        estimate = estimate_network(load_network(args.network, args.layout or "NHWC", batch=args.model_batch,
                                                 trust_pickle=args.trust_pickle),
                                    target, args.logs,
                                    args.algorithm, rounds=args.rounds, min_repeat_ms=args.min_repeat_ms,
                                    rivals=not args.no_rivals)
        print(format_estimate(estimate))
        if args.json:
            write_json(args.json, {"command": " ".join(["convtune"] + sys.argv[1:]), "environment": environment(target),
                                   **estimate})
            print(f"wrote {args.json}")
        return 0
    items = []
    for text in args.layers:
        if text in NETWORKS:
            items += [(l.name, l.workload) for l in network_layers(text, args.layout or "NHWC")]
        else:
            items.append(resolve(text, args.layout))
    env = environment(target)
    if not args.in_process and args.processes < 3:
        raise UsageError(f"--processes: at least 3 (the spread across processes is the point), got {args.processes}")
    rows = []
    for name, wl in items:
        print(f"benchmarking {name} ...", file=sys.stderr)
        if args.in_process:
            rows.append(bench_layer(name, wl, target, args.logs, args.algorithm, rounds=args.rounds,
                                    min_repeat_ms=args.min_repeat_ms, rivals=not args.no_rivals))
        else:
            from .bench import bench_layer_processes

            rows.append(bench_layer_processes(name, wl, target, args.logs, args.algorithm, processes=args.processes,
                                              seconds=args.process_seconds, rivals=not args.no_rivals))
    table = format_table(rows, env["fp32_peak_gflops"])
    ratios = [r["speedup_vs_onednn"] for r in rows if "speedup_vs_onednn" in r]
    rival_ratios = [r["speedup_vs_best_rival"] for r in rows if "speedup_vs_best_rival" in r]
    print(table)
    peak = env["fp32_peak_gflops"]
    how = (f"median of {args.rounds} rounds in this process, each >= {args.min_repeat_ms:.0f} ms of back-to-back calls"
           if args.in_process else
           f"each contender in {args.processes} fresh processes ({args.process_seconds:g} s of calls each, "
           f"contenders alternating): median (min-max) of the per-process medians; SPREAD: processes disagree "
           f"by more than {SPREAD_FLAG}x")
    print(f"\nCPU {env['cpu']}, {env['isa']} kernels for {target.tag}; FP32 {env['isa']} peak ({target.threads} "
          f"threads, measured): {f'{peak:.0f} GFLOP/s' if peak else 'unknown'}; {how}.")
    if any(wl.quantized for _, wl in items):
        print("int8 layers: the rate is GOPS (an integer multiply-add counts 2 ops, as a float one 2 FLOPs), its "
              "% against the FP32 peak; no int8 rivals are run yet.")
    if not args.in_process:
        print(f"threads: {format_settings(rows)}")
    if ratios:
        print(f"geomean speed-up over oneDNN (the better PyTorch layout per layer): {geomean(ratios):.2f}x")
    if rival_ratios:
        print(f"geomean speed-up over the better of oneDNN and ONNX Runtime per layer: {geomean(rival_ratios):.2f}x; "
              f"worst layer {min(rival_ratios):.2f}x")
    if args.json:
        write_json(args.json, {"command": " ".join(["convtune"] + sys.argv[1:]), "environment": env, "layers": rows,
                               "geomean_speedup_vs_onednn": geomean(ratios) if ratios else None,
                               "geomean_speedup_vs_best_rival": geomean(rival_ratios) if rival_ratios else None})
        chart = bar_chart(rows, os.path.splitext(args.json)[0] + ".png", " ".join(args.layers))
        print(f"wrote {args.json}" + (f" and {chart}" if chart else ""))
    return 0


def cmd_records(args) -> int:
    from .records import summaries

    target = _target(args) if args.target else None
    rows = summaries(args.logs, target)
    if not rows:
        print(f"no records under {args.logs}")
        return 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'target':22s} {'layer':50s} {'algorithm':>13s} {'trials':>6s} {'best ms':>9s} {'GFLOP/s':>8s}")
    for r in rows:
        ms_ = f"{r['best_ms']:9.3f}" if r["best_ms"] else f"{'-':>9s}"
        gf = f"{r['gflops']:8.1f}" if r["gflops"] else f"{'-':>8s}"
        layer = r["layer"] + ("" if r["layout"] == "NHWC" else f" [{r['layout']}]")
        note = "" if r["usable"] else f"  TVM {r['tvm']} records: set aside"
        print(f"{r['target']:22s} {layer:50s} {r['algorithm']:>13s} {r['trials']:6d} {ms_} {gf}{note}")
    if not all(r["usable"] for r in rows):
        import tvm

        print(f"records marked 'set aside' were made with another TVM; this is TVM {tvm.__version__}, which does "
              "not apply them: move them out of --logs and tune again")
    return 0


# -- RPC wiring (tuning/remote/ and the runner in tuning/search/measure.py) -------------------------------
def _rpc_runner(args, target, config):
    if not (getattr(args, "rpc_tracker", None) or getattr(args, "rpc", None)):
        if not target.is_host:
            raise UsageError(f"--target {target.name}: not this machine; measure on a device with "
                             "--rpc-tracker HOST:PORT --rpc-key KEY (or --rpc HOST:PORT)")
        return None
    if args.rpc_tracker and not args.rpc_key:
        raise UsageError("--rpc-tracker needs --rpc-key (the devices' key at the tracker)")
    from .search.measure import make_runner

    return make_runner(args, config, target)


def _rpc_session(args, side):
    if not (getattr(args, "rpc_tracker", None) or getattr(args, "rpc", None)):
        return None
    if args.rpc_tracker and not args.rpc_key:
        raise UsageError("--rpc-tracker needs --rpc-key (the devices' key at the tracker)")
    from .remote.session import open_session

    return open_session(args, side)


def cmd_peak(args) -> int:
    """The true FP32 peak of the ISA the target's kernels use, per thread count."""
    from .peak import cpu_model, target_peak

    target = _target(args)
    counts = [args.threads] if args.threads else sorted({1, target.threads})
    gflops = {str(t): target_peak(target, t) for t in counts}
    report = {"isa": target.machine.isa, "cpu": cpu_model(), "target": target.tag,
              "fma_units": target.machine.fma_units, "lanes": target.machine.lanes, "gflops": gflops}
    if args.json:
        print(json.dumps(report))
        return 0
    if None in gflops.values():
        print(f"{target.tag}: peak unknown here ({target.machine.isa} kernels for another machine; "
              "measure it on that machine with `convtune peak`)")
        return 0
    print(f"FP32 peak of {report['cpu']}, {target.machine.isa} ({target.machine.lanes} lanes, "
          f"{target.machine.fma_units} FMA unit(s) per core) for {target.tag}:")
    for t, value in gflops.items():
        print(f"  {t} thread(s): {value:7.1f} GFLOP/s")
    return 0


def cmd_tracker(args) -> int:
    from .remote.tracker import Tracker

    if not 0 < args.port < 65536:
        raise UsageError(f"--port: must be a port number in 1..65535, got {args.port}")
    tracker = Tracker.start(host=args.host, port=args.port, detach=args.detach)
    print(f"RPC tracker on {tracker.address} (pid {tracker.pid}); register devices with "
          f"`convtune device start --tracker {tracker.address}`", flush=True)
    if args.detach:
        return 0
    try:
        return tracker.wait()
    finally:
        tracker.stop()


def cmd_devices(args) -> int:
    from .remote.address import parse_hostport
    from .remote.tracker import devices, format_devices

    host, port = parse_hostport(args.rpc_tracker)
    print(format_devices(devices(host, port)))
    return 0


def cmd_device(args) -> int:
    from .remote import emulator

    if args.action == "setup":
        paths = emulator.setup(force=args.force)
        print(f"emulated aarch64 device ready under {paths.base}")
        return 0
    if args.action == "list":
        for d in emulator.detached_devices():
            print(f"pid {d.pid}  {d.address}  key {d.key}  cpu {d.cpu}  tracker {d.tracker or '-'}  log {d.log_path}")
        return 0
    if args.action == "stop":
        stopped = emulator.stop_detached(port=args.port, key=args.key)
        print(f"stopped {len(stopped)} device(s)")
        return 0
    key = args.key or emulator.DEFAULT_KEY
    emulator.setup(quiet=True)
    device = emulator.start(args.tracker, key, port=args.port, cpu=args.cpu, threads=args.threads or 1,
                            detach=args.detach)
    where = f"registered with {args.tracker} as {key!r}" if args.tracker else f"key {key!r}"
    print(f"emulated aarch64 device ({args.cpu}) serving on {device.address}, {where}", flush=True)
    print(emulator.EMULATED_NOTE)
    if args.detach:
        print("stop it with `convtune device stop`")
        return 0
    try:
        return device.proc.wait()
    finally:
        device.stop()


# -- parser -------------------------------------------------------------------------------------------
def _add_common(p, layer=True):
    if layer:
        p.add_argument("layer", nargs="?", default=DEFAULT_LAYER,
                       help=f"zoo name (see `convtune layers`) or spec like h=56,ci=64,co=64,k=3,pad=1 "
                            f"(default {DEFAULT_LAYER})")
    p.add_argument("--layout", choices=["NHWC", "NCHW"], type=str.upper, default=None,
                   help="tensor layout (default: the spec's, else NHWC)")
    p.add_argument("--target", default="x86", help="x86 (this CPU), aarch64[-a53|-a72|-a76|-n1], or a TVM target JSON dict")
    p.add_argument("--threads", type=int, default=None, help="threads to measure and run with (default: all cores)")
    p.add_argument("--force-threads", action="store_true", help="allow --threads above this machine's core count")
    p.add_argument("--logs", default="logs", help="records directory (default: ./logs)")


def _add_model(p, what: str) -> None:
    p.add_argument("--model", metavar="FILE|ZOO", help=f"{what}: an .onnx or .pt2 file, or a zoo model "
                                                       "(resnet18, resnet50, mobilenet_v2: torchvision, random weights)")
    p.add_argument("--model-batch", type=int, default=None, metavar="N",
                   help="the batch size of an ONNX model (--model or --network) whose input batch is symbolic")
    _add_trust_pickle(p)


def _add_trust_pickle(p) -> None:
    p.add_argument("--trust-pickle", action="store_true",
                   help="read a .pt2 whose pickled objects torch's restricted loader refuses (they can run code: "
                        "only for files you trust)")


def _add_rpc(p):
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure/run on devices registered with this tracker")
    p.add_argument("--rpc-key", help="device key at the tracker")
    p.add_argument("--rpc", metavar="HOST:PORT", help="a device's RPC server, without a tracker")
    p.add_argument("--rpc-timeout", type=float, default=None, help="seconds to wait for a free device (default 60)")


def build_parser() -> argparse.ArgumentParser:
    from .search.measure import MeasureConfig
    from .search.tune import COST_MODELS, STRATEGIES, SearchOptions
    from .task import ALGORITHM_NAMES

    measure, search = MeasureConfig(), SearchOptions()  # the CLI's defaults are theirs

    algos = ", ".join(ALGORITHM_NAMES)
    parser = argparse.ArgumentParser(prog="convtune", description="Auto-tune 2-D convolutions for a CPU with TVM.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="the distinct conv layers of a network (zoo, .onnx, .pt2): counts, shapes, "
                                      "FLOPs, the algorithms that fit")
    p.add_argument("network", nargs="?", metavar="NAME|FILE",
                   help="a zoo network, an .onnx file or a torch.export .pt2 file (default: every zoo network)")
    p.add_argument("--layout", choices=["NHWC", "NCHW"], type=str.upper, default=None)
    p.add_argument("--json", action="store_true", help="print the same as JSON (a list without NAME|FILE)")
    p.add_argument("--model-batch", type=int, default=None, metavar="N",
                   help="the batch size of an ONNX model whose input batch is symbolic")
    _add_trust_pickle(p)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("tune", help="search a layer's schedules and record every trial")
    _add_common(p)
    p.add_argument("--algorithm", default=None, help=f"{algos}, a family (winograd) or auto (every one that fits); "
                                                     "default direct (an int8 layer: auto), auto with --model")
    p.add_argument("--trials", type=int, default=64, help="trials per algorithm, counting recorded ones (resume)")
    p.add_argument("--network", metavar="NAME|FILE", help="tune every conv layer of a zoo network, an .onnx or a "
                                                          "torch.export .pt2 file, under one budget")
    _add_model(p, "tune a model's conv workloads (epilogues fused) and its other ops under one budget")
    p.add_argument("--trials-total", type=int, default=None, help="--network/--model: the shared budget "
                                                                  "(default: --trials x distinct layers)")
    p.add_argument("--strategy", choices=STRATEGIES, default=search.strategy)
    p.add_argument("--cost-model", choices=COST_MODELS, default=search.cost_model)
    p.add_argument("--min-repeat-ms", type=int, default=measure.min_repeat_ms,
                   help="each timed repeat lasts at least this long")
    p.add_argument("--batch", type=int, default=search.trials_per_iter,
                   help="trials measured per search iteration (records are written, and the cost model "
                        "retrained, after each)")
    p.add_argument("--flush-cache", action="store_true", default=measure.flush_cache,
                   help="flush the CPU caches before each repeat")
    p.add_argument("--run-timeout", type=float, default=measure.run_timeout,
                   help="seconds one trial may run before it is failed")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-transfer", action="store_true",
                   help="start cold: no configs or cost-model data from similar layers' records")
    p.add_argument("--transfer-from", metavar="LOGS", default=None,
                   help="records of similar layers to start from (default: --logs)")
    _add_rpc(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("compile", help="build a layer's best record into a shared library + sidecar JSON")
    _add_common(p)
    p.add_argument("--algorithm", default="auto", help=f"{algos}, or auto (the fastest recorded)")
    p.add_argument("-o", "--output", default="kernel.so", help="library path (a directory with --network)")
    p.add_argument("--network", metavar="NAME|FILE", help="a bundle: every conv layer of a network, + manifest.json")
    _add_model(p, "one library for the whole model: convtune's kernels (epilogues fused) and TVM for the rest")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a compiled model (compile --model) on .npy inputs; write its outputs")
    p.add_argument("library")
    p.add_argument("--input", action="append", metavar="[NAME=]PATH",
                   help="an input as a .npy file (NAME= when the model has several); none: random inputs")
    p.add_argument("--output", metavar="PATH.npz", help="write the outputs here, by name")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs when no --input is given")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="run a compiled library (or a bundle directory) against the numpy reference; "
                                      "a model library against ONNX Runtime")
    p.add_argument("library")
    p.add_argument("--seed", type=int, default=0)
    _add_trust_pickle(p)
    _add_rpc(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("bench", help="time the best kernels against PyTorch (oneDNN) and numpy im2col+BLAS")
    p.add_argument("layers", nargs="*", default=[DEFAULT_LAYER], help="layers or network names")
    _add_common(p, layer=False)
    p.add_argument("--algorithm", default="auto")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-repeat-ms", type=float, default=100.0)
    p.add_argument("--no-rivals", action="store_true")
    p.add_argument("--processes", type=int, default=3, metavar="N",
                   help="layers: fresh processes per contender, contenders alternating (default 3, at least 3)")
    p.add_argument("--process-seconds", type=float, default=1.5, help="timing budget of one process (default 1.5)")
    p.add_argument("--in-process", action="store_true",
                   help="layers: every contender in this one process, interleaved by --rounds (the old way)")
    p.add_argument("--network", metavar="NAME|FILE", help="estimated network conv time: count x per-layer medians")
    _add_model(p, "end-to-end latency of the compiled model against ONNX Runtime, PyTorch and TVM")
    p.add_argument("--tvm-trials", type=int, default=None, metavar="N",
                   help="--model: also TVM's static_shape_tuning pipeline with N MetaSchedule trials (0: untuned)")
    p.add_argument("--json", help="write the results here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("peak", help="the FP32 peak of the ISA the target's kernels use (widest FMA, per thread count)")
    p.add_argument("--target", default="x86", help="x86 (this CPU), or a TVM target JSON dict (e.g. mcpu haswell)")
    p.add_argument("--threads", type=int, default=None, help="one thread count (default: 1 and the target's)")
    p.add_argument("--force-threads", action="store_true", help="allow --threads above this machine's core count")
    p.add_argument("--json", action="store_true", help="print {isa, cpu, gflops: {threads: GFLOP/s}}")
    p.set_defaults(func=cmd_peak)

    p = sub.add_parser("tracker", help="run a TVM RPC tracker (127.0.0.1 unless --host says otherwise)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9190)
    p.add_argument("--detach", action="store_true", help="leave it running in the background")
    p.set_defaults(func=cmd_tracker)

    p = sub.add_parser("devices", help="devices registered with a tracker, per key")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", default="127.0.0.1:9190")
    p.set_defaults(func=cmd_devices)

    from .remote.emulator import DEFAULT_CPU, DEFAULT_KEY

    p = sub.add_parser("device", help="an emulated aarch64 RPC device (qemu-user): setup, start, stop, list")
    p.add_argument("action", choices=["setup", "start", "stop", "list"])
    p.add_argument("--tracker", metavar="HOST:PORT", help="register with this tracker")
    p.add_argument("--key", default=None, help=f"device key (default {DEFAULT_KEY})")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--cpu", default=DEFAULT_CPU, help="qemu CPU model: cortex-a53, cortex-a72, cortex-a76, neoverse-n1, max")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--detach", action="store_true", help="leave it running; `convtune device stop` ends it")
    p.add_argument("--force", action="store_true", help="setup: rebuild the cached sysroot")
    p.set_defaults(func=cmd_device)

    p = sub.add_parser("records", help="best record per layer and algorithm")
    p.add_argument("--logs", default="logs")
    p.add_argument("--target", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_records)

    from .experiments import add_parser as add_experiment_parser

    add_experiment_parser(sub)
    return parser


_STOP_SIGNAL: list[int] = []  # the SIGTERM/SIGHUP that stopped this run, if one did


def _stop_on_signal(signum, _frame) -> None:
    """SIGTERM and SIGHUP stop a run as Ctrl-C does: the same unwinding, the same report of what was kept."""
    _STOP_SIGNAL.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = {signum: signal.signal(signum, _stop_on_signal) for signum in (signal.SIGTERM, signal.SIGHUP)}
    _STOP_SIGNAL.clear()
    try:
        status = _main(argv)
        sys.stdout.flush()  # a reader that left shows here, inside the handler below
        return status
    except BrokenPipeError:
        # `convtune layers | head -1`: the reader left; stop quietly, as other unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv: list[str] | None) -> int:
    import signal

    try:
        parser = build_parser()  # imports TVM: seconds in which a Ctrl-C must not give a traceback
        args = parser.parse_args(argv)
        from schedules.template import Unsupported
        from schedules.workload import WorkloadError

        from .records import ForeignRecords, RecordsError
        from .remote.address import RPCError
        from .remote.emulator import EmulatorError
        from .target import LibraryError, TargetError
    except KeyboardInterrupt:
        print("\nconvtune: interrupted while starting; nothing was done", file=sys.stderr)
        return _interrupted_status()

    # A library that will not run as built (tuning/deploy/loader.py) says so in one line.
    import warnings

    warnings.formatwarning = lambda message, category, *rest: f"convtune {args.command}: warning: {message}\n"
    try:
        _check_args(args)
        return args.func(args)
    except BrokenPipeError:
        raise  # main's: no message can reach a reader that left
    except (UsageError, WorkloadError, TargetError, Unsupported, LibraryError, ForeignRecords, RecordsError,
            RPCError, EmulatorError) as err:
        print(f"convtune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # A search's interrupt (tuning.search.scheduler.SearchInterrupted) says how many trials it measured.
        said = str(err) or "interrupted; every trial measured so far is in the records"
        if _STOP_SIGNAL:
            said = f"{signal.Signals(_STOP_SIGNAL[0]).name}: {said}"
        print(f"\nconvtune {args.command}: {said}", file=sys.stderr)
        return _interrupted_status()
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _internal_error(args, argv, err)
        # A full disk (or `> /dev/full`): the user's to fix, not a crash to report.
        where = f" ({err.filename})" if err.filename else " (writing the output)"
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit
        except OSError:
            pass
        print(f"convtune {args.command}: error: {err.strerror}{where}; free some space and run it again "
              "(records already measured are kept)", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - never a traceback: one line, the traceback in a file
        return _internal_error(args, argv, err)


def _internal_error(args, argv, err: BaseException) -> int:
    """Never a traceback: one line, the traceback in a file."""
    message = next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:300]
    print(f"convtune {args.command}: internal error: {type(err).__name__}: {message} ({_save_crash(argv)})",
          file=sys.stderr)
    return 1


def _interrupted_status() -> int:
    return 128 + _STOP_SIGNAL[0] if _STOP_SIGNAL else 130


def _check_args(args) -> None:
    """Option values no command can run with, refused in one line before anything starts."""
    import math

    for option, rule, ok in (("run_timeout", "a number of seconds > 0", lambda v: v > 0),
                             ("rpc_timeout", "a number of seconds > 0", lambda v: v > 0),
                             ("min_repeat_ms", "a number of milliseconds >= 0", lambda v: v >= 0)):
        value = getattr(args, option, None)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise UsageError(f"--{option.replace('_', '-')}: must be {rule}, got {value:g}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**31:
        raise UsageError(f"--seed: must be in 0..{2**31 - 1}, got {seed}")
    batch = getattr(args, "model_batch", None)
    if batch is not None and batch <= 0:
        raise UsageError(f"--model-batch: must be a positive batch size, got {batch}")
    for option in ("logs", "transfer_from"):
        path = getattr(args, option, None)
        if not isinstance(path, str):
            continue
        # the path, or the nearest of its parents that exists, must be a directory
        probe = os.path.abspath(path)
        while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            what = "is" if probe == os.path.abspath(path) else f"is under {probe}, which is"
            raise UsageError(f"--{option.replace('_', '-')}: {path} {what} not a directory")


def _save_crash(argv) -> str:
    """The current exception's traceback, in $CONVTUNE_CACHE (default ~/.cache/convtune)/crash-*.log."""
    import time
    import traceback

    root = os.environ.get("CONVTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "convtune")
    path = os.path.join(root, f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        os.makedirs(root, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"convtune {' '.join(sys.argv[1:] if argv is None else argv)}\n\n{traceback.format_exc()}")
    except OSError as err:
        return f"traceback not saved: {path}: {err.strerror}"
    return f"traceback in {path}"


if __name__ == "__main__":
    sys.exit(main())
