"""Every algorithm's UNTUNED default config on every conv layer of ResNet-18 and MobileNet-v1, next to
the rivals (PyTorch oneDNN in both layouts, ONNX Runtime's MLAS), measured in one run.

    python scripts/untuned_survey.py [--target T] [--json docs/bench/untuned-<isa>.json] [NETWORK...]

`--report FILE.json` prints an earlier survey's table with today's rule. No records are read (an empty logs directory): this is what a user gets before tuning, and the data
behind `tuning.deploy.library.untuned_algorithm`, the rule `compile` uses without records. For an
AVX2 build on an AVX-512 host run it as
    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/untuned_survey.py --target '{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}'
so that oneDNN is held to AVX2 too (MLAS has no such switch: its numbers are its own best ISA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from schedules import ALGORITHMS
from schedules.machine import Machine
from schedules.workload import Workload, parse_spec
from tuning.bench import RIVALS, bench_layer, environment, geomean, write_json
from tuning.deploy.library import untuned_algorithm
from tuning.networks import distinct_layers, network_layers
from tuning.target import resolve_target, set_threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="*", default=["resnet18", "mobilenet_v1"])
    parser.add_argument("--target", default="x86")
    parser.add_argument("--json", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-repeat-ms", type=float, default=40.0)
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier survey (today's rule)")
    args = parser.parse_args()
    if args.report:
        report(json.load(open(args.report)))
        return 0
    target = resolve_target(args.target)
    set_threads(target.threads)
    env = environment(target)
    env["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    empty = tempfile.mkdtemp(prefix="convtune-no-records-")
    layers = distinct_layers([layer for net in args.networks for layer in network_layers(net)])
    rows = []
    for layer in layers:
        wl = layer.workload
        algorithms = [a.name for a in ALGORITHMS.values() if a.supports(wl) is None]
        results, rivals = {}, {}
        for i, name in enumerate(algorithms):
            print(f"{layer.name}: {name}", file=sys.stderr, flush=True)
            row = bench_layer(layer.name, wl, target, empty, name, rounds=args.rounds,
                              min_repeat_ms=args.min_repeat_ms, rivals=(i == 0))
            results[name] = row["results"]["convtune"]
            if i == 0:
                rivals = {k: v for k, v in row["results"].items() if k in RIVALS}
        best_ours = min(results, key=lambda k: results[k]["median_ms"])
        rows.append({"layer": layer.name, "spec": wl.spec, "count": layer.count, "flops": wl.flops,
                     "algorithms": results, "rivals": rivals, "fastest_algorithm": best_ours})
    payload = {"command": " ".join(["python"] + sys.argv), "environment": env, "layers": rows,
               "rounds": args.rounds, "min_repeat_ms": args.min_repeat_ms}
    payload["summary"] = report(payload)
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def report(payload: dict) -> dict:
    """The table of a survey's JSON, with the algorithm today's rule (untuned_algorithm) chooses
    looked up among the algorithms measured in that run; returns the summary ratios."""
    env, table = payload["environment"], payload["layers"]
    machine = Machine.from_dict(env["target"]["machine"])
    for e in table:
        e["chosen_algorithm"] = chosen = untuned_algorithm(Workload.from_dict(parse_spec(e["spec"]).to_dict()), machine)
        rivals = e["rivals"]
        if rivals:
            best = min(rivals, key=lambda k: rivals[k]["median_ms"])
            onednn = min((k for k in rivals if k.startswith("torch")), key=lambda k: rivals[k]["median_ms"])
            ours = e["algorithms"][chosen]["median_ms"]
            e["best_rival"] = best
            e["chosen_vs_best_rival"] = rivals[best]["median_ms"] / ours
            e["chosen_vs_onednn"] = rivals[onednn]["median_ms"] / ours
            e["fastest_vs_best_rival"] = rivals[best]["median_ms"] / e["algorithms"][e["fastest_algorithm"]]["median_ms"]
    peak = env["fp32_peak_gflops"]
    print(f"\nCPU {env['cpu']}, {machine.isa} kernels for {env['target']['tag']}, oneDNN ISA cap "
          f"{env.get('onednn_max_cpu_isa') or 'none'}, {env['threads']} threads, {machine.isa} peak {peak:.0f} GFLOP/s; "
          f"UNTUNED default configs; median of {payload.get('rounds', 3)} rounds >= "
          f"{payload.get('min_repeat_ms', 40):.0f} ms; `{payload['command']}` ({env['date']})")
    print("| layer | fastest default (GFLOP/s) | chosen without records (GFLOP/s) | oneDNN best | MLAS | "
          "chosen vs oneDNN | chosen vs best rival |")
    print("|---|---|---|---|---|---|---|")
    for e in table:
        f, c = e["fastest_algorithm"], e["chosen_algorithm"]
        onednn = max((v["gflops"] for k, v in e["rivals"].items() if k.startswith("torch")), default=0.0)
        mlas = e["rivals"].get("onnxruntime", {}).get("gflops", 0.0)
        print(f"| {e['layer']} | {f} ({e['algorithms'][f]['gflops']:.1f}) | {c} ({e['algorithms'][c]['gflops']:.1f}) | "
              f"{onednn:.1f} | {mlas:.1f} | {e.get('chosen_vs_onednn', 0):.2f}x | {e.get('chosen_vs_best_rival', 0):.2f}x |")
    summary = {}
    for key in ("chosen_vs_onednn", "chosen_vs_best_rival", "fastest_vs_best_rival"):
        values = [e[key] for e in table if key in e]
        if values:
            summary[key] = {"geomean": geomean(values), "min": min(values)}
            print(f"{key}: geomean {geomean(values):.2f}x, worst {min(values):.2f}x")
    return summary


if __name__ == "__main__":
    sys.exit(main())
