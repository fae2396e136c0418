"""What the command line prints: the application layer's results (tuning/app.py) as text.

Each function takes a result, exactly as `tuning.app` returns it, and gives back the lines a
command prints (joined with newlines); nothing here measures, reads a file or writes one. The
command line (tuning/cli.py) prints them; a script that wants the same text calls the same function.
"""

from __future__ import annotations

import os

import tvm

from .app import is_emulated
from .bench import SPREAD_FLAG, format_estimate, format_model_bench, format_settings, format_table, geomean
from .remote.emulator import EMULATED_NOTE
from .tables import table


def _lines(*lines: str | None) -> str:
    return "\n".join(line for line in lines if line is not None)


# -- layers ---------------------------------------------------------------------------------------------
def short_algorithms(names: list[str]) -> str:
    """`winograd-f2, winograd-f4, winograd-f6` -> `winograd-f2/f4/f6`: a family once."""
    out: list[str] = []
    for name in names:
        family, _, variant = name.rpartition("-")
        if family and out and out[-1].startswith(family + "-"):
            out[-1] += f"/{variant}"
        else:
            out.append(name)
    return " ".join(out)


def layers_report(report: dict) -> str:
    """One network's `convtune layers` table (app.layers_report)."""
    rows = [[l["name"], f"x{l['count']}", l["spec"], f"{l['out'][0]}x{l['out'][1]}", f"{l['mflops']:.1f}",
             short_algorithms(l["algorithms"])] for l in report["layers"]]
    return _lines(f"{report['network']}: {report['distinct']} distinct conv layers, {report['in_all']} in all, "
                  f"{report['gflops']:.2f} GFLOPs",
                  table(["layer", "count", "shape", "out", "MFLOPs", "algorithms"], rows, align="<><<><", indent="  "))


# -- tune -----------------------------------------------------------------------------------------------
def emulated_note(runner) -> str | None:
    """Times from an emulated device say nothing about a board: said when, and only when, the
    device reported itself emulated (a real board's times stand as measured)."""
    return EMULATED_NOTE if is_emulated(runner) else None


def tune_table(result) -> str:
    """The closing table of a layer's tune (app.Tuned): per algorithm, trials, best time, GFLOP/s, % of peak."""
    target, peak = result.target, result.peak
    lines = [f"{'algorithm':>14s} {'trials':>7s} {'best ms':>9s} {'GFLOP/s':>9s} {'% peak':>7s}"]
    for row in result.rows:
        if row["seconds"] is None:
            lines.append(f"{row['algorithm']:>14s} {row['trials']:7d} {'-':>9s} {'-':>9s} {'-':>7s}")
            continue
        pct = f"{100 * row['gflops'] / peak:6.0f}%" if peak else "      -"
        why = f"  ({row['why']})" if row["why"] else ""
        lines.append(f"{row['algorithm']:>14s} {row['trials']:7d} {row['seconds'] * 1e3:9.3f} {row['gflops']:9.1f} "
                     f"{pct}{why}")
    if peak:
        lines.append(f"(FP32 {target.machine.isa} peak of this machine at {target.threads} threads, measured: "
                     f"{peak:.0f} GFLOP/s)")
    return _lines(*lines, emulated_note(result.runner))


def tuned(result) -> str | None:
    """What a tune (app.Tuned) says when it is done: a layer's table; a network's or a model's table
    was printed by the search as it ran, so only the note of an emulated device, if any."""
    return tune_table(result) if result.scope.kind == "layer" else emulated_note(result.runner)


# -- compile, run, verify -------------------------------------------------------------------------------
def compiled(kind: str, side: dict, target) -> str:
    """What `compile` wrote (Scope.compile's sidecar or manifest, with its `output`)."""
    out = side["output"]
    if kind == "model":
        algorithms: dict[str, int] = {}
        for row in side["layers"]:
            algorithms[row["algorithm"]] = algorithms.get(row["algorithm"], 0) + 1
        return (f"wrote {out} and {os.path.splitext(out)[0]}.json: {side['model']}, {len(side['layers'])} layers "
                f"({', '.join(f'{n} {a}' for a, n in sorted(algorithms.items(), key=lambda kv: -kv[1]))}), "
                f"{len(side['layers']) - len(side['untuned'])} tuned; other ops: {side['other_ops']}; "
                f"{side['compile_seconds']:.0f} s")
    if kind == "network":
        return (f"wrote bundle {out}: {len(side['layers'])} layers, manifest.json"
                + (f"; {len(side['untuned'])} UNTUNED (their names: \"untuned\" in manifest.json)"
                   if side.get("untuned") else ""))
    state = f"tuned: {side['record']['gflops']:.1f} GFLOP/s measured" if side["tuned"] else "UNTUNED default config"
    return (f"wrote {out} and {os.path.splitext(out)[0]}.json: {side['layer']}, {side['algorithm']}, "
            f"{target.tag}, {state}; functions: {', '.join(side['functions'])}")


def ran(library: str, result, output: str | None) -> str:
    """What `run` did (app.Ran)."""
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in result.outputs.items())
    return (f"ran {library} in {result.seconds * 1e3:.1f} ms (first call, {result.side['threads']} threads): {shapes}"
            + (f"; wrote {output}" if output else ""))


def verified_model(library: str, result) -> str:
    """A model library against its reference engine (app.Verified of kind "model")."""
    side = result.side
    lines = [f"{library}: {c.output}: against {result.engine}: {c.describe()} ({side['tolerance']['why']}) "
             f"{'ok' if c.ok else 'MISMATCH'}" for c in result.model_checks]
    ok = sum(c.ok for c in result.model_checks)
    return _lines(*lines, f"{ok}/{len(result.model_checks)} outputs ok ({len(side['layers'])} layers, {side['model']})",
                  None if result.ok else result.diverging)


# -- bench ----------------------------------------------------------------------------------------------
def benched(result, *, rounds: int, min_repeat_ms: float, processes: int, process_seconds: float,
            in_process: bool) -> str:
    """What `bench` measured (app.Benched): a model end to end, a network's estimate or the layers'
    table, and the JSON it wrote; the options say how it was measured."""
    if result.kind == "model":
        text = _lines(format_model_bench(result.result), model_bench_how(result, rounds, min_repeat_ms))
    elif result.kind == "network":
        text = format_estimate(result.result)
    else:
        text = layer_bench(result, rounds=rounds, min_repeat_ms=min_repeat_ms, processes=processes,
                           process_seconds=process_seconds, in_process=in_process)
    return _lines(text, wrote(result) if result.json_path else None)


def model_bench_how(benched, rounds: int, min_repeat_ms: float) -> str:
    """How a model's end-to-end times were taken (app.Benched of kind "model")."""
    result, env, target = benched.result, benched.env, benched.target
    if "processes" in result:
        return (f"\nCPU {env['cpu']}, {target.tag}, {target.threads} threads, batch as the model's input; each "
                f"contender in {result['processes']} fresh processes ({result['process_seconds']:g} s of inferences "
                f"each, contenders alternating): median (min-max) of the per-process medians; SPREAD: processes "
                f"disagree by more than {SPREAD_FLAG}x\nthreads: {format_settings([result])}")
    return (f"\nCPU {env['cpu']}, {target.tag}, {target.threads} threads, batch as the model's input; median of "
            f"{rounds} rounds in this process, interleaved, each >= {max(min_repeat_ms, 200.0):.0f} ms of calls")


def layer_bench(benched, *, rounds: int, min_repeat_ms: float, processes: int, process_seconds: float,
                in_process: bool) -> str:
    """Layers against the rivals (app.Benched of kind "layer"): the table, how it was measured, geomeans."""
    rows, env, target = benched.result, benched.env, benched.target
    ratios = [r["speedup_vs_onednn"] for r in rows if "speedup_vs_onednn" in r]
    rival_ratios = [r["speedup_vs_best_rival"] for r in rows if "speedup_vs_best_rival" in r]
    peak = env["fp32_peak_gflops"]
    how = (f"median of {rounds} rounds in this process, each >= {min_repeat_ms:.0f} ms of back-to-back calls"
           if in_process else
           f"each contender in {processes} fresh processes ({process_seconds:g} s of calls each, "
           f"contenders alternating): median (min-max) of the per-process medians; SPREAD: processes disagree "
           f"by more than {SPREAD_FLAG}x")
    return _lines(
        format_table(rows, peak),
        f"\nCPU {env['cpu']}, {env['isa']} kernels for {target.tag}; FP32 {env['isa']} peak ({target.threads} "
        f"threads, measured): {f'{peak:.0f} GFLOP/s' if peak else 'unknown'}; {how}.",
        "int8 layers: the rate is GOPS (an integer multiply-add counts 2 ops, as a float one 2 FLOPs), its "
        "% against the FP32 peak; the rival is ONNX Runtime's QLinearConv / ConvInteger (MLAS int8)."
        if any(wl.quantized for _, wl in benched.items) else None,
        None if in_process else f"threads: {format_settings(rows)}",
        f"geomean speed-up over oneDNN (the better PyTorch layout per layer): {geomean(ratios):.2f}x"
        if ratios else None,
        f"geomean speed-up over the better of oneDNN and ONNX Runtime per layer: {geomean(rival_ratios):.2f}x; "
        f"worst layer {min(rival_ratios):.2f}x" if rival_ratios else None)


def wrote(benched) -> str:
    """The JSON (and the chart) a bench wrote."""
    return f"wrote {benched.json_path}" + (f" and {benched.chart}" if benched.chart else "")


# -- records, peak, devices -----------------------------------------------------------------------------
def records_table(rows: list[dict]) -> str:
    """`convtune records` (app.records): the best record per layer and algorithm."""
    lines = [f"{'target':22s} {'layer':50s} {'algorithm':>13s} {'trials':>6s} {'best ms':>9s} {'GFLOP/s':>8s}"]
    for r in rows:
        ms_ = f"{r['best_ms']:9.3f}" if r["best_ms"] else f"{'-':>9s}"
        gf = f"{r['gflops']:8.1f}" if r["gflops"] else f"{'-':>8s}"
        layer = r["layer"] + ("" if r["layout"] == "NHWC" else f" [{r['layout']}]")
        note = "" if r["usable"] else f"  TVM {r['tvm']} records: set aside"
        lines.append(f"{r['target']:22s} {layer:50s} {r['algorithm']:>13s} {r['trials']:6d} {ms_} {gf}{note}")
    if not all(r["usable"] for r in rows):
        lines.append(f"records marked 'set aside' were made with another TVM; this is TVM {tvm.__version__}, which "
                     "does not apply them: move them out of --logs and tune again")
    return _lines(*lines)


def peak_report(report: dict) -> str:
    """`convtune peak` (app.peak_report): the FP32 peak per thread count, or why it is unknown here."""
    if None in report["gflops"].values():
        return (f"{report['target']}: peak unknown here ({report['isa']} kernels for another machine; "
                "measure it on that machine with `convtune peak`)")
    return _lines(f"FP32 peak of {report['cpu']}, {report['isa']} ({report['lanes']} lanes, "
                  f"{report['fma_units']} FMA unit(s) per core) for {report['target']}:",
                  *(f"  {t} thread(s): {value:7.1f} GFLOP/s" for t, value in report["gflops"].items()))


def detached_devices(found: list) -> list[str]:
    """`convtune device list`: a line per detached emulated device."""
    return [f"pid {d.pid}  {d.address}  key {d.key}  cpu {d.cpu}  tracker {d.tracker or '-'}  log {d.log_path}"
            for d in found]
