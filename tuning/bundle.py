"""A network's conv kernels as one deployable bundle: a library per distinct layer + manifest.json.

    <bundle>/
        manifest.json           every layer of the model -> its library, functions, arguments
        <layer key>.so/.json    one library (and its sidecar) per distinct layer shape

Each library is what `convtune compile` builds for its layer (tuning.library: the best record over
the algorithms asked for, or the template's default config, with a loud warning, when untuned).
The manifest names libraries by bare file name inside the bundle; `verify_bundle` refuses one that
names a path (`..`, an absolute path) or a symlink leading out of the bundle, then runs every
library against the numpy reference. `python -m tuning.bundle verify <bundle>` does it in a fresh
process. `estimate_network` times each distinct layer (tuning.bench) and sums count x time for
convtune and for oneDNN (PyTorch): the network's conv time per pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import tvm

from .bench import bench_layer
from .kernel import Kernel, LibraryError
from .library import choose, export, sidecar_path
from .networks import Layer
from .records import write_json_atomic
from .target import Target, host_arch, set_threads
from .verify import Check, print_checks, verify

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class BundleError(LibraryError):
    """A bundle that cannot be trusted or used; the message names the file and the rule."""


# -- compile -------------------------------------------------------------------------------------------
def compile_bundle(layers: list[Layer], algorithm: str, target: Target, logs: str, out_dir: str,
                   network: str | None = None) -> dict:
    """Build one library per distinct layer into `out_dir` and write its manifest; returns the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    built: dict = {}  # workload -> (library file, sidecar)
    entries = []
    for layer in layers:
        wl = layer.workload
        if wl not in built:
            choice = choose(wl, algorithm, target, logs)
            library = f"{wl.key}.so"
            built[wl] = (library, export(choice, target, os.path.join(out_dir, library), layer_name=layer.name))
        library, side = built[wl]
        entries.append({
            "name": layer.name, "count": layer.count, "spec": wl.spec, "workload": wl.to_dict(),
            "library": library, "sidecar": sidecar_path(library),
            "algorithm": side["algorithm"], "tuned": side["tuned"], "config": side["config"], "record": side["record"],
            "run_function": side["run_function"], "functions": side["functions"],
        })
    untuned = [e["name"] for e in entries if not e["tuned"]]
    timed = [e for e in entries if e["tuned"]]
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "network": network,
        "algorithm": algorithm,
        "target": target.to_dict(),
        "threads": target.threads,
        "tvm": tvm.__version__,
        "libraries": sorted({e["library"] for e in entries}),
        "layers": entries,
        "untuned": untuned,
        # From the records' measured times; a partial sum when some layers are untuned.
        "estimated_conv_ms": sum(e["count"] * e["record"]["seconds"] for e in timed) * 1e3 if timed else None,
    }
    write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    if untuned:
        print(f"WARNING: {len(untuned)} of {len(entries)} layers in {out_dir} are UNTUNED (default configs): "
              f"{', '.join(untuned)}. Tune the network first for fast kernels.", file=sys.stderr)
    return manifest


# -- read and check ------------------------------------------------------------------------------------
def read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        raise BundleError(f"{out_dir}: no {MANIFEST} (not a bundle written by compile_bundle)")
    try:
        manifest = json.load(open(path))
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise BundleError(f"{path}: lacks a 'layers' list")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise BundleError(f"{path}: manifest_version {manifest.get('manifest_version')!r}, this convtune reads "
                          f"{MANIFEST_VERSION}")
    for i, entry in enumerate(manifest["layers"]):
        for key in ("name", "workload", "library", "functions", "run_function", "algorithm"):
            if key not in entry:
                raise BundleError(f"{path}: layer {i} lacks {key!r}")
        library_path(out_dir, entry["library"])
    return manifest


def library_path(out_dir: str, library) -> str:
    """The library's path inside the bundle; refuses names that would load a file from elsewhere."""
    where = os.path.join(out_dir, MANIFEST)
    if not isinstance(library, str) or not library:
        raise BundleError(f"{where}: library must be a file name, got {library!r}")
    if os.path.isabs(library) or "/" in library or "\\" in library or library in (".", ".."):
        raise BundleError(f"{where}: library {library!r} must be a bare file name inside the bundle "
                          "(no directories, no '..', no absolute path)")
    path = os.path.join(out_dir, library)
    root = os.path.realpath(out_dir)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise BundleError(f"{where}: library {library!r} is a symlink leading out of the bundle (to {real})")
    return path


def _side(manifest: dict, entry: dict) -> dict:
    """What tuning.kernel.Kernel needs, as the manifest states it (what is verified is the manifest's claim)."""
    return {"library": entry["library"], "layer": entry["name"], "workload": entry["workload"],
            "functions": entry["functions"], "run_function": entry["run_function"],
            "algorithm": entry["algorithm"], "target": manifest["target"], "threads": manifest.get("threads", 1)}


def verify_bundle(out_dir: str, seed: int = 0) -> list[tuple[str, list[Check]]]:
    """Every layer's library against the numpy reference, in this process; (layer name, checks) per layer.
    Layers sharing a library are checked once and share its result."""
    manifest = read_manifest(out_dir)
    config = manifest["target"].get("config", {})
    arch = config.get("mtriple", host_arch())
    if not arch.startswith(host_arch()):
        raise BundleError(f"{out_dir} is built for {arch}; verify it on such a device")
    set_threads(int(manifest.get("threads", 1)))
    checked: dict[str, list[Check]] = {}
    results = []
    for entry in manifest["layers"]:
        library = entry["library"]
        if library not in checked:
            path = library_path(out_dir, library)
            if not os.path.isfile(path):
                raise BundleError(f"{os.path.join(out_dir, MANIFEST)}: library {library!r} is missing")
            kernel = Kernel.load(path, _side(manifest, entry))
            checked[library] = verify(kernel, seed=seed)
        results.append((entry["name"], checked[library]))
    return results


# -- estimate ------------------------------------------------------------------------------------------
CONTENDERS = ("convtune", "torch-nchw", "torch-channels_last", "numpy-im2col")


def estimate_network(layers: list[Layer], target: Target, logs: str, algorithm: str = "auto", rounds: int = 7,
                     min_repeat_ms: float = 100.0, rivals: bool = True) -> dict:
    """Time each distinct layer (tuning.bench.bench_layer) and sum count x median per contender.

    oneDNN's network time takes one PyTorch layout for the whole network (a deployed model is laid
    out one way), the better of the two; `onednn_per_layer_best_ms` lets each layer pick its own."""
    rows = []
    for layer in layers:
        row = bench_layer(layer.name, layer.workload, target, logs, algorithm, rounds=rounds,
                          min_repeat_ms=min_repeat_ms, rivals=rivals)
        row["count"] = layer.count
        rows.append(row)
    totals = {}
    for key in CONTENDERS:
        if all(key in r["results"] for r in rows):
            totals[key] = sum(r["count"] * r["results"][key]["median_ms"] for r in rows)
    torch_totals = {k: v for k, v in totals.items() if k.startswith("torch")}
    out = {"layers": rows, "total_ms": totals, "untuned": [r["layer"] for r in rows if not r["tuned"]]}
    if torch_totals:
        best = min(torch_totals, key=torch_totals.get)
        out["onednn_layout"] = best
        out["speedup_vs_onednn"] = torch_totals[best] / totals["convtune"]
        if all("onednn_best" in r for r in rows):
            out["onednn_per_layer_best_ms"] = sum(r["count"] * r["results"][r["onednn_best"]]["median_ms"] for r in rows)
    return out


def format_estimate(estimate: dict) -> str:
    keys = [k for k in CONTENDERS if k in estimate["total_ms"]]
    lines = [f"{'layer':32s} {'count':>5s} " + " ".join(f"{k + ' ms':>22s}" for k in keys)]
    for r in estimate["layers"]:
        tag = "" if r["tuned"] else " (untuned)"
        lines.append(f"{r['layer'] + tag:32s} {r['count']:5d} "
                     + " ".join(f"{r['results'][k]['median_ms']:22.3f}" for k in keys))
    lines.append(f"{'network (count x ms)':32s} {'':5s} " + " ".join(f"{estimate['total_ms'][k]:22.3f}" for k in keys))
    if "speedup_vs_onednn" in estimate:
        lines.append(f"convtune vs oneDNN ({estimate['onednn_layout']} throughout): "
                     f"{estimate['speedup_vs_onednn']:.2f}x")
    if estimate["untuned"]:
        lines.append(f"UNTUNED layers (default configs): {', '.join(estimate['untuned'])}")
    return "\n".join(lines)


# -- fresh-process entry -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.bundle")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="run every library of a bundle against the numpy reference")
    p.add_argument("bundle")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from schedules.template import Unsupported  # noqa: PLC0415

    from .workload import WorkloadError  # noqa: PLC0415

    try:
        results = verify_bundle(args.bundle, seed=args.seed)
    except (LibraryError, WorkloadError, Unsupported) as err:
        print(f"verify: error: {err}", file=sys.stderr)
        return 2
    return print_checks(results)


if __name__ == "__main__":
    sys.exit(main())
