"""Each algorithm's best record on a few layers, next to oneDNN, measured in one run.

    python scripts/bench_algorithms.py [--logs logs] [--json docs/bench/algorithms.json] LAYER...

Layers default to three of ResNet-18's: 56x56 3x3 64->64, 56x56 3x3 stride-2 64->128, 1x1 stride-2.
Algorithms without a record for a layer are skipped (they would be untuned defaults).
"""

from __future__ import annotations

import argparse
import os
import sys

from tuning.bench import bench_layer, environment, write_json
from tuning.networks import resolve
from tuning.records import LayerRecords
from tuning.target import resolve_target, set_threads
from tuning.task import ALGORITHM_NAMES, tasks_for

DEFAULT = ["resnet18.layer1", "resnet18.layer2.0.conv1", "resnet18.layer2.0.downsample"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", nargs="*", default=DEFAULT)
    parser.add_argument("--logs", default="logs")
    parser.add_argument("--json", default="docs/bench/algorithms.json")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    target = resolve_target("x86")
    set_threads(target.threads)
    env = environment(target)
    rows = []
    for text in args.layers:
        name, wl = resolve(text)
        store = LayerRecords.existing(args.logs, target, wl)
        tuned = [t.algorithm for t in tasks_for(wl, ",".join(ALGORITHM_NAMES)) if store and store.best(t)]
        for i, algorithm in enumerate(tuned):
            print(f"{name}: {algorithm}", file=sys.stderr)
            row = bench_layer(name, wl, target, args.logs, algorithm, rounds=args.rounds, rivals=(i == 0))
            rows.append(row)
    peak = env["fp32_peak_gflops"]
    print("| layer | algorithm | trials-tuned GFLOP/s (median, min-max ms) | % peak | oneDNN best layout GFLOP/s | vs oneDNN |")
    print("|---|---|---|---|---|---|")
    onednn = {}
    for row in rows:
        if "onednn_best" in row:
            onednn[row["layer"]] = row["results"][row["onednn_best"]]
    for row in rows:
        r = row["results"]["convtune"]
        o = onednn.get(row["layer"])
        rival = f"{o['gflops']:.1f} | {o['median_ms'] / r['median_ms']:.2f}x" if o else "- (no PyTorch) | -"
        print(f"| {row['layer']} | {row['algorithm']} | {r['gflops']:.1f} ({r['min_ms']:.3f}-{r['max_ms']:.3f}) | "
              f"{100 * r['gflops'] / peak:.0f}% | {rival} |")
    write_json(args.json, {"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "environment": env,
                           "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
