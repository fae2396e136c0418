"""Whole models a user brings, end to end: convtune's library against ONNX Runtime, each timed as a
user deploys it, in fresh processes of its own.

    .venv/bin/python scripts/bench_models.py resnet18 mobilenet_v3_small convnext_tiny ...
        [--logs logs] [--processes 3] [--seconds 1.5] [--json docs/bench/models-<target>.json]

Per model: a torchvision architecture with random weights (no download) and batch-norm statistics
calibrated on random data, exported to ONNX (legacy exporter, opset 17); `convtune compile
--model` with the records under --logs (none for this CPU: the untuned path a new user meets);
then rounds of fresh processes, convtune and ONNX Runtime alternating, each process timing
back-to-back inferences for --seconds after a warm-up. The table gives min / median / max of the
per-process medians; contenders whose processes disagree by more than 1.3x are flagged SPREAD. One
more process splits convtune's time by op class (the Relax VM's instrument hook). Threads: both
runtimes get the machine's cores (TVM through tuning.deploy.load, unpinned; ORT intra_op_num_threads).
Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPREAD = 1.3

EXPORT = r"""
import sys, torch, torchvision
name, path = sys.argv[1:3]
torch.manual_seed(0)
size = 299 if name == "inception_v3" else 224
kw = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
if name.startswith(("deeplabv3", "fcn", "lraspp")):
    m = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, **({"aux_loss": False} if not name.startswith("lraspp") else {}))
else:
    m = getattr(torchvision.models, name)(weights=None, **kw)
m.train()
with torch.no_grad():
    for _ in range(3):
        m(torch.randn(4, 3, size, size))
m.eval()
class Plain(torch.nn.Module):  # segmentation models return a dict
    def __init__(self, m):
        super().__init__(); self.m = m
    def forward(self, x):
        y = self.m(x)
        return y["out"] if isinstance(y, dict) else y
with torch.no_grad():
    torch.onnx.export(Plain(m), (torch.randn(1, 3, size, size),), path, dynamo=False, input_names=["x"],
                      output_names=["y"], opset_version=17)
"""

TIME_CONVTUNE = r"""
import json, sys, time, statistics
import numpy as np
from tuning.deploy.model import ModelLibrary, read_model_sidecar
path, seconds = sys.argv[1], float(sys.argv[2])
lib = ModelLibrary.load(path, read_model_sidecar(path))
x = {i["name"]: np.random.default_rng(0).uniform(-1, 1, i["shape"]).astype(i["dtype"]) for i in lib.side["inputs"]}
run = lambda: lib.run(x)
"""

TIME_ORT = r"""
import os, sys, time, statistics
import numpy as np, onnxruntime as ort
path, seconds = sys.argv[1], float(sys.argv[2])
options = ort.SessionOptions(); options.intra_op_num_threads = int(os.environ["BENCH_THREADS"])
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
x = {i.name: np.random.default_rng(0).uniform(-1, 1, i.shape).astype(np.float32) for i in session.get_inputs()}
run = lambda: session.run(None, x)
"""

LOOP = r"""
for _ in range(3):
    run()
samples, start = [], time.perf_counter()
while time.perf_counter() - start < seconds or len(samples) < 5:
    t = time.perf_counter(); run(); samples.append(time.perf_counter() - t)
print("MEDIAN_MS", statistics.median(samples) * 1e3)
"""

SPLIT = r"""
import json, sys, time, re
import numpy as np, tvm
from tvm import relax
from tuning.deploy.model import ModelLibrary, read_model_sidecar
path = sys.argv[1]
side = read_model_sidecar(path)
lib = ModelLibrary.load(path, side)
x = {i["name"]: np.random.default_rng(0).uniform(-1, 1, i["shape"]).astype(i["dtype"]) for i in side["inputs"]}
lib.run(x)
vm = lib.vm
totals, started = {}, {}
def instrument(func, symbol, before, ret, *args):
    now = time.perf_counter()
    if before:
        started[symbol] = now
    else:
        totals[symbol] = totals.get(symbol, 0.0) + now - started.pop(symbol, now)
    return 0
vm.set_instrument(instrument)
rounds = 5
for _ in range(rounds):
    lib.run(x)
print("SPLIT", json.dumps({k: v / rounds * 1e3 for k, v in totals.items()}))
"""

ORT_SPLIT = r"""
import json, os, sys, tempfile
import numpy as np, onnxruntime as ort
path = sys.argv[1]
options = ort.SessionOptions(); options.intra_op_num_threads = int(os.environ["BENCH_THREADS"])
options.enable_profiling = True
options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
x = {i.name: np.random.default_rng(0).uniform(-1, 1, i.shape).astype(np.float32) for i in session.get_inputs()}
session.run(None, x)
rounds = 5
for _ in range(rounds):
    session.run(None, x)
events = json.load(open(session.end_profiling()))
totals = {}
for e in events:  # kernel events: one per node per run, the first run (warm-up) included
    if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
        op = e.get("args", {}).get("op_name", "?")
        totals[op] = totals.get(op, 0.0) + e["dur"] / 1e3 / (rounds + 1)
print("SPLIT", json.dumps(totals))
"""

# ONNX op types of ORT's profile, in the classes convtune's split uses
ORT_CLASSES = {"Conv": "conv", "FusedConv": "conv", "NhwcFusedConv": "conv", "QLinearConv": "conv",
               "Gemm": "matmul", "MatMul": "matmul", "FusedGemm": "matmul", "FusedMatMul": "matmul",
               "MaxPool": "pooling", "AveragePool": "pooling", "GlobalAveragePool": "pooling",
               "ReduceMean": "pooling", "LayerNormalization": "layer norm", "Softmax": "softmax",
               "Concat": "concat", "Resize": "resize", "Transpose": "layout", "Reshape": "layout",
               "Flatten": "layout", "ReorderInput": "layout", "ReorderOutput": "layout"}


def coarse(cls: str) -> str:
    """convtune's op class without the algorithm: conv kernels and matmuls as 1x1 convs are "conv"."""
    return "conv" if cls.startswith("conv") or cls.startswith("matmul") else cls


def op_class(symbol: str, layer_algorithms: dict) -> str:
    if symbol.startswith("convtune_l"):
        index = int(symbol[len("convtune_l"):].split("_")[0])
        return "conv:" + layer_algorithms.get(index, "?")
    name = symbol.lower()
    for key, cls in (("matmul", "matmul (TVM)"), ("conv", "conv (TVM)"), ("layer_norm", "layer norm"),
                     ("pool", "pooling"), ("mean", "pooling"), ("erf", "activation"), ("sigmoid", "activation"),
                     ("tanh", "activation"), ("exp", "activation"), ("softmax", "softmax"), ("concat", "concat"),
                     ("resize", "resize"), ("transpose", "layout"), ("reshape", "layout")):
        if key in name:
            return cls
    return "elementwise/other"


def python() -> str:
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def child(code: str, *args: str, env: dict | None = None) -> str:
    done = subprocess.run([python(), "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return done.stdout


def median_of(stdout: str) -> float:
    return float(next(line.split()[1] for line in stdout.splitlines() if line.startswith("MEDIAN_MS")))


def summary(values: list[float]) -> dict:
    return {"min_ms": min(values), "median_ms": statistics.median(values), "max_ms": max(values),
            "processes": values, "spread": max(values) / min(values)}


def bench_model(name: str, work: str, logs: str, processes: int, seconds: float, threads: int) -> dict:
    onnx_path = os.path.join(work, f"{name}.onnx")
    if not os.path.exists(onnx_path):
        child(EXPORT, name, onnx_path)
    library = os.path.join(work, f"{name}.so")
    started = time.perf_counter()
    done = subprocess.run([python(), "-m", "tuning.cli", "compile", "--model", onnx_path, "-o", library, "--logs", logs,
                           "--threads", str(threads)],
                          capture_output=True, text=True, cwd=ROOT, timeout=1800)
    compile_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError("compile: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    side = json.load(open(os.path.splitext(library)[0] + ".json"))
    timings = {"convtune": [], "onnxruntime": []}
    for _ in range(processes):  # alternating: drift hits both alike
        timings["convtune"].append(median_of(child(TIME_CONVTUNE + LOOP, library, str(seconds))))
        timings["onnxruntime"].append(median_of(child(TIME_ORT + LOOP, onnx_path, str(seconds))))
    split_raw = json.loads(next(line[6:] for line in child(SPLIT, library).splitlines() if line.startswith("SPLIT ")))
    algorithms = {}
    # kernels are numbered per distinct workload in the sidecar's order of first appearance
    seen = []
    for layer in side["layers"]:
        key = json.dumps(layer["workload"], sort_keys=True)
        if key not in seen:
            seen.append(key)
            algorithms[len(seen) - 1] = layer["algorithm"]
    split: dict = {}
    for symbol, ms in split_raw.items():
        cls = op_class(symbol, algorithms)
        split[cls] = split.get(cls, 0.0) + ms
    ort_raw = json.loads(next(line[6:] for line in child(ORT_SPLIT, onnx_path).splitlines() if line.startswith("SPLIT ")))
    by_class: dict = {}
    for cls, ms in split.items():
        entry = by_class.setdefault(coarse(cls), {"convtune_ms": 0.0, "onnxruntime_ms": 0.0})
        entry["convtune_ms"] += ms
    for op, ms in ort_raw.items():
        cls = ORT_CLASSES.get(op, "elementwise/other")
        entry = by_class.setdefault("conv" if cls in ("conv", "matmul") else cls, {"convtune_ms": 0.0, "onnxruntime_ms": 0.0})
        entry["onnxruntime_ms"] += ms
    result = {name_: summary(v) for name_, v in timings.items()}
    ratio = result["onnxruntime"]["median_ms"] / result["convtune"]["median_ms"]
    return {"model": name, "onnx": onnx_path, "compile_s": round(compile_s, 1),
            "layers": len(side["layers"]), "tuned": sum(1 for l in side["layers"] if l.get("tuned")),
            "timings": result, "ort_over_convtune": ratio, "split_ms": dict(sorted(split.items(), key=lambda kv: -kv[1])),
            "ort_split_ms": ort_raw,
            "op_classes": dict(sorted(by_class.items(), key=lambda kv: -kv[1]["convtune_ms"]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--logs", default=os.path.join(ROOT, "logs"))
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--work", default="/tmp/convtune-bench-models")
    parser.add_argument("--json")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads of every runtime (default: the cores this process may run on, so that "
                             "`taskset -c 1` measures one core)")
    args = parser.parse_args()
    os.environ["BENCH_THREADS"] = str(args.threads)  # the children's (ORT's) thread count
    os.makedirs(args.work, exist_ok=True)
    sys.path.insert(0, ROOT)
    from tuning.target import resolve_target

    target = resolve_target("x86", threads=args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    rows = []
    print(f"| model | convtune ms (min-max over {args.processes} processes) | ONNX Runtime ms | ORT/convtune | "
          "layers (tuned) | top of convtune's split |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        try:
            row = bench_model(name, args.work, args.logs, args.processes, args.seconds, args.threads)
        except Exception as err:  # noqa: BLE001 - one model's failure is a row, not the end of the run
            print(f"| {name} | failed: {err} | | | | |", flush=True)
            rows.append({"model": name, "error": str(err)})
            continue
        rows.append(row)
        t = row["timings"]

        def cell(s):
            flag = " SPREAD" if s["spread"] > SPREAD else ""
            return f"{s['median_ms']:.2f} ({s['min_ms']:.2f}-{s['max_ms']:.2f}){flag}"

        top = ", ".join(f"{k} {v:.1f}" for k, v in list(row["split_ms"].items())[:3])
        print(f"| {name} | {cell(t['convtune'])} | {cell(t['onnxruntime'])} | {row['ort_over_convtune']:.2f}x | "
              f"{row['layers']} ({row['tuned']}) | {top} |", flush=True)
    classes: dict = {}
    for row in rows:
        for cls, entry in row.get("op_classes", {}).items():
            total = classes.setdefault(cls, {"convtune_ms": 0.0, "onnxruntime_ms": 0.0})
            total["convtune_ms"] += entry["convtune_ms"]
            total["onnxruntime_ms"] += entry["onnxruntime_ms"]
    if classes:
        print("\n| op class (summed over the models) | convtune ms | ONNX Runtime ms | ORT/convtune |")
        print("|---|---|---|---|")
        for cls, t in sorted(classes.items(), key=lambda kv: -kv[1]["convtune_ms"]):
            ratio = f"{t['onnxruntime_ms'] / t['convtune_ms']:.2f}x" if t["convtune_ms"] > 0 else "-"
            print(f"| {cls} | {t['convtune_ms']:.2f} | {t['onnxruntime_ms']:.2f} | {ratio} |")
        print("(one profiled process each: convtune's Relax VM instrument, ORT's profiler; the profilers' own "
              "overhead is in both, so read the ratios per class, not the sums against the table)")
    ratios = [r["ort_over_convtune"] for r in rows if "error" not in r]
    if ratios:
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        worst = min((r for r in rows if "error" not in r), key=lambda r: r["ort_over_convtune"])
        print(f"\ngeomean ORT/convtune {geomean:.2f}x over {len(ratios)} models; worst {worst['model']} "
              f"{worst['ort_over_convtune']:.2f}x")
    print(f"CPU {cpu}, target {target.tag}, {target.threads} threads each runtime (TVM unpinned via tuning.deploy.load; "
          f"ORT intra_op_num_threads={args.threads}); records: {args.logs}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu, "target": target.tag, "threads": target.threads, "logs": args.logs,
                       "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "models": rows,
                       "geomean_ort_over_convtune": geomean if ratios else None}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
