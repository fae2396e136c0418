"""A network's conv kernels as one deployable bundle: a library per distinct layer + manifest.json.

    <bundle>/
        manifest.json           every layer of the model -> its library, functions, arguments
        <layer key>.so/.json    one library (and its sidecar) per distinct layer shape

Each library is what `convtune compile` builds for its layer (tuning.deploy.library: the best record over
the algorithms asked for, or the template's default config, with a loud warning, when untuned).
The manifest names libraries by bare file name inside the bundle; `verify_bundle` refuses one that
names a path (`..`, an absolute path) or a symlink leading out of the bundle, then runs every
library against the numpy reference. `python -m tuning.deploy.bundle verify <bundle>` does it in a fresh
process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import tvm

from schedules.template import Unsupported
from schedules.workload import WorkloadError

from ..files import write_json_atomic
from ..networks import Layer
from ..target import Target, host_arch, sidecar_arch
from .kernel import Kernel, LibraryError, check_sidecar, sidecar_path
from .library import choose, export
from .verify import Check, print_checks, verify

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class BundleError(LibraryError):
    """A bundle that cannot be trusted or used; the message names the file and the rule."""


# -- compile -------------------------------------------------------------------------------------------
def compile_bundle(layers: list[Layer], algorithm: str, target: Target, logs: str, out_dir: str,
                   network: str | None = None, judge=None) -> dict:
    """Build one library per distinct layer into `out_dir` and write its manifest; returns the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    # The old manifest goes before any library is rebuilt, the new one comes after the last: a run
    # killed in between leaves no manifest (verify refuses the bundle), never one naming libraries
    # this run did not build.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out_dir, MANIFEST))
    built: dict = {}  # workload -> (library file, sidecar)
    entries = []
    for layer in layers:
        wl = layer.workload
        if wl not in built:
            choice = choose(wl, algorithm, target, logs, judge)
            library = f"{wl.key}.so"
            built[wl] = (library, export(choice, target, os.path.join(out_dir, library), layer_name=layer.name,
                                          warn=False))
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
        print(f"WARNING: {len(untuned)} of {len(entries)} layers in {out_dir} are UNTUNED (the templates' default "
              f"configs; their names: \"untuned\" in {os.path.join(out_dir, MANIFEST)}). Tune the network first "
              "(`convtune tune --network ...`) for fast kernels.", file=sys.stderr)
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
    if not manifest["layers"]:
        raise BundleError(f"{path}: 'layers' is empty: a bundle has at least one layer (compile it again)")
    if not isinstance(manifest.get("target"), dict):
        raise BundleError(f"{path}: lacks a 'target' dict")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise BundleError(f"{path}: manifest_version {manifest.get('manifest_version')!r}, this convtune reads "
                          f"{MANIFEST_VERSION}")
    for i, entry in enumerate(manifest["layers"]):
        if not isinstance(entry, dict):
            raise BundleError(f"{path}: layer {i} is not a JSON object")
        for key in ("name", "workload", "library", "functions", "run_function", "algorithm"):
            if key not in entry:
                raise BundleError(f"{path}: layer {i} lacks {key!r}")
        library_path(out_dir, entry["library"])
        check_sidecar(_side(manifest, entry), f"{path}: layer {i}")
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
    """What tuning.deploy.kernel.Kernel needs, as the manifest states it (what is verified is the manifest's claim)."""
    return {"library": entry["library"], "layer": entry["name"], "workload": entry["workload"],
            "functions": entry["functions"], "run_function": entry["run_function"],
            "algorithm": entry["algorithm"], "target": manifest["target"], "threads": manifest.get("threads", 1)}


def verify_bundle(out_dir: str, seed: int = 0) -> list[tuple[str, list[Check]]]:
    """Every layer's library against the numpy reference, in this process; (layer name, checks) per layer.
    Layers sharing a library are checked once and share its result."""
    manifest = read_manifest(out_dir)
    arch = sidecar_arch(manifest)
    if arch and arch != host_arch():
        raise BundleError(f"{out_dir} is built for {arch}; verify it on such a device")
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


# -- fresh-process entry -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.deploy.bundle")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="run every library of a bundle against the numpy reference")
    p.add_argument("bundle")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        results = verify_bundle(args.bundle, seed=args.seed)
    except (LibraryError, WorkloadError, Unsupported) as err:
        print(f"verify: error: {err}", file=sys.stderr)
        return 2
    return print_checks(results)


if __name__ == "__main__":
    sys.exit(main())
