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

Each command parses its arguments into plain values (a `Scope`, a target, `SearchOptions`, a
`DeviceAddress`), makes one call to the application layer (tuning/app.py) and prints what comes
back. Nothing below this module sees the argparse namespace.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
import warnings

from schedules.template import Unsupported
from schedules.workload import WorkloadError

from . import app, end_quiet_start, views
from .app import DEFAULT_LAYER, Machine, Scope, UsageError
from .deploy.model import untuned_warning
from .deploy.verify import print_checks
from .experiments import add_parser as add_experiment_parser
from .networks import NETWORKS
from .records import ForeignRecords, RecordsError
from .remote import emulator
from .remote.address import REQUEST_TIMEOUT, DeviceAddress, RPCError, parse_hostport
from .remote.emulator import DEFAULT_CPU, DEFAULT_KEY, EMULATED_NOTE, EmulatorError
from .remote.tracker import Tracker, devices, format_devices
from .search.measure import MeasureConfig
from .search.transfer import Transfer
from .search.tune import COST_MODELS, STRATEGIES, SearchOptions
from .target import LibraryError, TargetError
from .task import ALGORITHM_NAMES

__all__ = ["UsageError", "build_parser", "main"]


# -- from arguments to values ----------------------------------------------------------------------------
def _target(args):
    return app.resolve(Machine(args.target, args.threads, getattr(args, "force_threads", False)), args.command)


def _scope(args) -> Scope:
    return Scope.of(layer=getattr(args, "layer", None), network=getattr(args, "network", None),
                    model=getattr(args, "model", None), layout=args.layout, batch=getattr(args, "model_batch", None),
                    trust_pickle=getattr(args, "trust_pickle", False))


def _device(args) -> DeviceAddress:
    return DeviceAddress(getattr(args, "rpc_tracker", None), getattr(args, "rpc_key", None), getattr(args, "rpc", None),
                         getattr(args, "rpc_timeout", None) or REQUEST_TIMEOUT)


def _search_options(args) -> SearchOptions:
    measure = MeasureConfig(min_repeat_ms=args.min_repeat_ms, flush_cache=args.flush_cache,
                            run_timeout=args.run_timeout)
    return SearchOptions(strategy=args.strategy, cost_model=args.cost_model, measure=measure,
                         trials_per_iter=args.batch, seed=args.seed, transfer=_transfer(args))


def _transfer(args):
    if args.no_transfer:
        return None
    if args.transfer_from and not os.path.isdir(args.transfer_from):
        raise UsageError(f"--transfer-from: no such directory {args.transfer_from!r}")
    return Transfer(args.transfer_from or args.logs)


# -- commands: parse -> one call to tuning.app -> print -------------------------------------------------
def cmd_layers(args) -> int:
    reports = [app.layers_report(network, args.layout or "NHWC", args.model_batch, args.trust_pickle)
               for network in ([args.network] if args.network else NETWORKS)]
    if args.json:
        print(json.dumps(reports[0] if args.network else reports, indent=1))
    else:
        print("\n".join(views.layers_report(report) for report in reports))
    return 0


def cmd_tune(args) -> int:
    scope = _scope(args)
    if scope.kind == "layer":
        scope.layer()  # a layer that does not parse is refused before the target is resolved
    result = scope.tune(_target(args), args.logs, algorithm=args.algorithm, trials=args.trials,
                        trials_total=args.trials_total, options=_search_options(args), device=_device(args))
    said = views.tuned(result)
    if said:
        print(said)
    return 0


def cmd_compile(args) -> int:
    scope = _scope(args)
    output = None if args.output == "kernel.so" and scope.kind != "layer" else args.output
    target = _target(args)
    side = scope.compile(target, args.logs, algorithm=args.algorithm, output=output)
    warning = untuned_warning(side) if scope.kind == "model" else None
    if warning:
        print(warning, file=sys.stderr)
    print(views.compiled(scope.kind, side, target))
    return 0


def cmd_run(args) -> int:
    def opened(library) -> None:
        warning = untuned_warning(library.side)
        if warning:
            print(warning, file=sys.stderr)

    ran = app.run_model(args.library, args.input, seed=args.seed, output=args.output, opened=opened)
    if ran.random_inputs:
        print(f"no --input: running on uniform random inputs (seed {args.seed})", file=sys.stderr)
    print(views.ran(args.library, ran, args.output))
    return 0


def cmd_verify(args) -> int:
    result = app.verify(args.library, seed=args.seed, trust_pickle=args.trust_pickle, device=_device(args))
    if result.kind != "model":
        return print_checks(result.checks)
    print(views.verified_model(args.library, result))
    return 0 if result.ok else 1


def cmd_bench(args) -> int:
    scope = _scope(args) if (args.model or args.network) else None
    benched = app.bench(_target(args), args.logs, scope=scope, layers=args.layers, layout=args.layout,
                        algorithm=args.algorithm, rounds=args.rounds, min_repeat_ms=args.min_repeat_ms,
                        rivals=not args.no_rivals, processes=args.processes, process_seconds=args.process_seconds,
                        in_process=args.in_process, tvm_trials=args.tvm_trials, json_path=args.json,
                        command=" ".join(["convtune"] + sys.argv[1:]))
    print(views.benched(benched, rounds=args.rounds, min_repeat_ms=args.min_repeat_ms, processes=args.processes,
                        process_seconds=args.process_seconds, in_process=args.in_process))
    return 0


def cmd_records(args) -> int:
    rows = app.records(args.logs, _target(args) if args.target else None)
    if not rows:
        print(f"no records under {args.logs}")
    else:
        print(json.dumps(rows, indent=2) if args.json else views.records_table(rows))
    return 0


def cmd_peak(args) -> int:
    """The true FP32 peak of the ISA the target's kernels use, per thread count."""
    report = app.peak_report(_target(args), args.threads)
    print(json.dumps(report) if args.json else views.peak_report(report))
    return 0


def cmd_tracker(args) -> int:
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
    print(format_devices(devices(*parse_hostport(args.rpc_tracker))))
    return 0


def cmd_device(args) -> int:
    if args.action == "setup":
        print(f"emulated aarch64 device ready under {emulator.setup(force=args.force).base}")
        return 0
    if args.action == "list":
        for line in views.detached_devices(emulator.detached_devices()):
            print(line)
        return 0
    if args.action == "stop":
        print(f"stopped {len(emulator.stop_detached(port=args.port, key=args.key))} device(s)")
        return 0
    device = app.start_device(args.tracker, args.key, port=args.port, cpu=args.cpu, threads=args.threads,
                              detach=args.detach)
    where = f"registered with {args.tracker} as {device.key!r}" if args.tracker else f"key {device.key!r}"
    print(f"emulated aarch64 device ({args.cpu}) serving on {device.address}, {where}", flush=True)
    print(EMULATED_NOTE)
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
                   help="fresh processes per contender, contenders alternating (default 3, at least 3)")
    p.add_argument("--process-seconds", type=float, default=1.5, help="timing budget of one process (default 1.5)")
    p.add_argument("--in-process", action="store_true",
                   help="every contender in this one process, interleaved by --rounds (the old way; --tvm-trials "
                        "implies it)")
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

    add_experiment_parser(sub)
    return parser


_STOP_SIGNAL: list[int] = []  # the SIGTERM/SIGHUP that stopped this run, if one did


def _stop_on_signal(signum, _frame) -> None:
    """SIGTERM and SIGHUP stop a run as Ctrl-C does: the same unwinding, the same report of what was kept."""
    _STOP_SIGNAL.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    end_quiet_start()
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
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("\nconvtune: interrupted while starting; nothing was done", file=sys.stderr)
        return _interrupted_status()

    # A library that will not run as built (tuning/deploy/loader.py) says so in one line.
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
    saved = app.save_crash(f"convtune {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"convtune {args.command}: internal error: {type(err).__name__}: {message} ({saved})", file=sys.stderr)
    return 1


def _interrupted_status() -> int:
    return 128 + _STOP_SIGNAL[0] if _STOP_SIGNAL else 130


def _check_args(args) -> None:
    """Option values no command can run with, refused in one line before anything starts."""
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
        if isinstance(getattr(args, option, None), str):
            app.directory_path(getattr(args, option), f"--{option.replace('_', '-')}")
    if args.command == "tune":
        for option in ("trials", "batch"):
            if getattr(args, option) <= 0:
                raise UsageError(f"--{option}: must be positive, got {getattr(args, option)}")


if __name__ == "__main__":
    sys.exit(main())
