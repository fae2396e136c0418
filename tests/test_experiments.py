"""The article's experiments at tiny sizes: each runs, its JSON holds what the report needs, the
cache-miss measurement counts the kernel itself, and the report is generated from the JSONs alone.
(Code paths only: the numbers of a tiny run on shared cores mean nothing.)"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import pytest
import tvm
from tvm import te

from schedules.workload import parse_spec
from tuning.experiments import (
    NAMES,
    add_parser,
    cachesim,
    command_line,
    module,
    report,
    run,
)
from tuning.experiments.tuning_curves import trials_to_reach
from tuning.records import LayerRecords
from tuning.task import Task

pytestmark = pytest.mark.slow  # tuning runs: `pytest -m "not slow"` skips them

HAVE_VALGRIND = cachesim.valgrind_path() is not None
NO_VALGRIND = "valgrind is not installed (apt-get install -y valgrind): no cache simulation"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("experiments") / "experiments")


def run_tiny(name: str, out: str) -> dict:
    payloads, errors = run([name], out=out, preset="tiny", threads=2, logs=os.path.join(out, "no-logs"),
                           command=f"pytest {name}")
    assert not errors, errors
    assert set(payloads) == {name}
    payload = json.load(open(os.path.join(out, f"{name}.json")))
    env = payload["environment"]
    for key in ("date", "command", "cpu", "machine", "threads", "tvm", "preset"):
        assert env[key], key
    assert env["threads"] == 2 and env["preset"] == "tiny" and env["command"] == f"pytest {name}"
    if payload["plot"]:
        assert os.path.getsize(os.path.join(out, payload["plot"])) > 0
    else:
        assert payload["plot_note"]
    return payload


# -- the cache-miss measurement --------------------------------------------------------------------------
def _export(tmp_path, name: str, inputs: list, output) -> str:
    func = te.create_prim_func([*inputs, output]).with_attr("global_symbol", name)
    target = cachesim.cachesim_target(_host())
    path = str(tmp_path / f"{name}.so")
    tvm.compile(tvm.IRModule({name: func}), target=target.tvm).export_library(path)
    return path


def _host():
    from tuning.target import resolve_target

    return resolve_target("x86", 1)


@pytest.mark.skipif(not HAVE_VALGRIND, reason=NO_VALGRIND)
def test_cachesim_counts_the_kernel_itself(tmp_path):
    """A kernel streaming 4 MiB misses L1 once per 64-byte line; one re-reading 1 KiB almost never.
    The access counts are the kernel's own: the driver's setup (which writes both arrays) is not in
    them."""
    n, small, rows = 1 << 20, 256, 2048
    a = te.placeholder((n,), "float32", name="a")
    streamed = te.compute((n,), lambda i: a[i] * 2.0, name="b")
    stream = _export(tmp_path, "stream", [a], streamed)
    s = te.placeholder((small,), "float32", name="s")
    k = te.reduce_axis((0, small), name="k")
    reused = te.compute((rows,), lambda i: te.sum(s[k] * i.astype("float32"), axis=k), name="r")
    reuse = _export(tmp_path, "reuse", [s], reused)

    hot = cachesim.simulate(reuse, {"s": ((small,), "float32"), "r": ((rows,), "float32")}, [],
                            ("reuse", ["s", "r"]), workdir=str(tmp_path / "reuse"))
    cold = cachesim.simulate(stream, {"a": ((n,), "float32"), "b": ((n,), "float32")}, [],
                             ("stream", ["a", "b"]), workdir=str(tmp_path / "stream"))
    assert cold["l1_miss_rate"] > 0.03, cold["l1_miss_rate"]
    assert hot["l1_miss_rate"] < 0.01, hot["l1_miss_rate"]
    assert cold["l1_miss_rate"] > 10 * hot["l1_miss_rate"]
    # Only the kernel: it reads n floats and writes n (vector width w: n / w accesses of each).
    reads, writes = cold["counts"]["Dr"], cold["counts"]["Dw"]
    assert writes <= reads * 1.05 and n // 16 <= reads <= n * 1.05, (reads, writes)
    # Every line of the 4 MiB input and output missed once (64-byte lines: 16 floats).
    misses = cold["counts"]["D1mr"] + cold["counts"]["D1mw"]
    assert 0.95 * 2 * n / 16 <= misses <= 1.2 * 2 * n / 16, misses
    assert "D1 cache" in cold["caches"] and cold["kernel_share_of_collected_instructions"] > 0.9


def test_cachesim_target_has_no_avx512():
    target = cachesim.cachesim_target(_host())
    assert target.config["mattr"] == ["-avx512f"] and target.threads == 1


def test_perf_csv_parsing():
    text = ("123456,,L1-dcache-loads,1000,100.00,,\n"
            "789,,L1-dcache-load-misses,1000,100.00,0.64,of all L1-dcache accesses\n")
    assert cachesim.parse_perf_csv(text) == {"L1-dcache-loads": 123456, "L1-dcache-load-misses": 789}
    with pytest.raises(RuntimeError):
        cachesim.parse_perf_csv("<not supported>,,L1-dcache-loads,0,100.00,,\n")


# -- each experiment at a tiny size ------------------------------------------------------------------------
def test_layout(out):
    p = run_tiny("layout", out)
    assert {r["layout"] for r in p["rows"]} == {"NCHW", "NHWC"}
    rows = {r["layout"]: r for r in p["rows"]}
    # 1x1 stride 1: the NHWC GEMM reads the input as it lies; NCHW's 7x7 = 49 pixels are padded to
    # whole vectors, so it copies (the workspace argument reaches the cache driver too)
    assert rows["NHWC"]["copy_skipped"] and rows["NHWC"]["im2col_bytes"] == 0
    assert not rows["NCHW"]["copy_skipped"] and rows["NCHW"]["im2col_bytes"] > 0
    for r in p["rows"]:
        assert r["time"]["median_ms"] > 0 and r["time_simulated_build"]["gflops"] > 0
        if HAVE_VALGRIND:
            c = r["cachesim"]
            assert 0 <= c["l1_miss_rate"] < 1 and c["per_call"]["Dr"] > 0 and c["function"] == "conv2d_packed"
        else:
            assert r["cachesim"] is None and "apt-get install -y valgrind" in p["valgrind_note"]
    if HAVE_VALGRIND:
        assert "D1 cache" in p["simulated_caches"] and p["cache_tool"].startswith("valgrind")
        # the article's kernel: the tiny layer's 49 pixels are not whole 4x4 blocks (skipped), the
        # IC sweep runs in both layouts
        art = p["article_kernel"]
        assert art["rows"] == [] and {s["layout"] for s in art["ic_sweep"]} == {"NCHW", "NHWC"}
        assert all(0 <= s["l1_miss_rate"] < 1 and s["hw"] == 64 for s in art["ic_sweep"])  # warm: may be 0


def test_im2col_memory(out):
    p = run_tiny("im2col-memory", out)
    rows = {(r["k"], r["stride"]): r for r in p["rows"] if r["layout"] == "NCHW"}  # the whole matrix
    one, three = rows[(1, 1)], rows[(3, 1)]
    assert one["copy_skipped"] and one["im2col_bytes"] == 0 and one["im2col"]["col_argument_bytes"] == 0
    assert three["ratio"] == pytest.approx(9.0)  # same padding, stride 1: KH*KW copies
    assert three["im2col"]["one_shot_allocations"]["im2col"] == three["im2col_bytes"]
    assert three["im2col"]["col_argument_bytes"] == three["im2col_bytes"]
    # The measured peak grows by at least the matrix (1.1 MiB here; a page is 4 KiB).
    growth = three["im2col"]["rss"]["growth_bytes"]
    assert growth >= 0.9 * three["im2col_bytes"], (growth, three["im2col_bytes"])
    assert growth > one["im2col"]["rss"]["growth_bytes"] + 0.5 * three["im2col_bytes"]
    assert p["rss_method"]
    # NHWC unfolds a block's rows at a time: no workspace argument, an allocation of a few rows
    nhwc = {(r["k"], r["stride"]): r for r in p["rows"] if r["layout"] == "NHWC"}[(3, 1)]
    assert nhwc["unfolded_per_block"] and nhwc["im2col"]["col_argument_bytes"] == 0
    assert 0 < nhwc["im2col"]["one_shot_allocations"]["im2col"] < nhwc["im2col_bytes"] / 8


def test_spatial_pack(out):
    p = run_tiny("spatial-pack", out)
    (layer,) = p["layers"]
    tiles = [r["tile"][0] for r in layer["rows"]]
    assert tiles == [1, 2, 4, 8]
    assert all(r["allocation_matches_prediction"] for r in layer["rows"])
    overheads = [r["halo_overhead"] for r in layer["rows"]]
    assert overheads == sorted(overheads, reverse=True)  # smaller tiles copy more halo
    assert layer["one_pixel_equals_im2col"]  # the degenerate case
    assert all(r["time"]["gflops"] > 0 for r in layer["rows"])


def test_winograd(out):
    p = run_tiny("winograd", out)
    assert [round(m["reduction"], 2) for m in p["multiplications"]] == [1.0, 2.25, 4.0, 5.06]
    (layer,) = p["layers"]
    rows = {r["algorithm"]: r for r in layer["rows"]}
    assert set(rows) == {"direct", "winograd-f2", "winograd-f4", "winograd-f6"}
    assert rows["direct"]["speedup_over_direct"] == 1.0
    assert all(r["source"] == "default config" for r in rows.values())  # the logs dir is empty
    terms = 3 * 3 * 8  # KH*KW*CI products per output; inputs in [-1, 1]
    for name, r in rows.items():
        assert r["error"]["max_abs"] > 0 and len(r["error"]["per_seed_max"]) == p["seeds"]
        # within the tests' float32 bound (schedules.reference.error_bound) times the algorithm's growth
        assert r["error"]["max_abs"] <= 8 * r["error_growth_bound"] * terms * np.finfo(np.float32).eps, name
    assert rows["winograd-f6"]["error"]["mean_abs"] > rows["winograd-f2"]["error"]["mean_abs"]


def test_indirect(out):
    p = run_tiny("indirect", out)
    sweep = p["sweep"]
    assert [r["ci"] for r in sweep] == sorted(r["ci"] for r in sweep)
    for r in sweep:
        assert r["declared_indirection_bytes"] == r["indirection_bytes"]
        assert r["declared_col_bytes"] == (0 if r["unfolded_per_block"] else r["im2col_bytes"])
    ratios = [r["im2col_over_indirection"] for r in sweep]
    assert ratios == sorted(ratios) and ratios[-1] > 0.9 * sweep[-1]["ci"]  # about IC times smaller
    assert len(p["layers"]) == 2 and all(l["indirect_speedup_over_im2col"] > 0 for l in p["layers"])
    assert {r["timed_function"] for l in p["layers"] for r in l["rows"]} == {"conv2d_packed"}


def test_tuning_curves(out):
    p = run_tiny("tuning-curves", out)
    assert set(p["curves"]) == {"template-xgb", "template-random", "ms-auto-xgb"}
    for variant, c in p["curves"].items():
        assert c["trials_recorded"] == p["trials"], variant
        curve = [v for v in c["best_so_far_gflops"] if v is not None]
        assert curve == sorted(curve) and c["best_gflops"] == curve[-1]
        assert c["trials_to_within_5pct_of_own_best"] is not None
        assert os.path.isdir(os.path.join(out, c["logs"]))  # its own records, under the output directory
    assert p["overall_best_gflops"] == max(c["best_gflops"] for c in p["curves"].values())


def test_transfer(out):
    """Both searches of the tiny layer ran their budget from empty records; the transfer search read
    the neighbour tuned for it, never the layer's own records."""
    p = run_tiny("transfer", out)
    (name, layer), = p["layers"].items()
    wl = parse_spec(layer["spec"])
    assert set(layer["runs"]) == {"cold", "transfer"}
    for variant, runs in layer["runs"].items():
        assert [c["seed"] for c in runs] == p["seeds"], variant
        for c in runs:
            assert c["trials_recorded"] == p["trials"], variant
            # the curve read from the record file's lines agrees with the database's own ranking
            store = LayerRecords(os.path.join(out, c["logs"]), _host(), wl)
            assert c["best_gflops"] == pytest.approx(store.best(Task(wl, "direct")).gflops(wl))
            reach = c["trials_to_within_5pct_of_best_known"]
            assert reach is None or 1 <= reach <= p["trials"]
    assert os.path.isdir(os.path.join(out, p["history"]))


def test_trials_to_reach():
    assert trials_to_reach([None, 10.0, 10.0, 96.0, 100.0], 100.0) == 4
    assert trials_to_reach([10.0, 20.0], 100.0) is None
    assert trials_to_reach([], None) is None


# -- the report -------------------------------------------------------------------------------------------
def test_report_from_the_jsons(out, tmp_path):
    """Runs after the experiments above (file order): the report is rebuilt from copies of their JSON
    files alone, each section with its own run's provenance; a missing JSON leaves its section
    saying how to make it."""
    present = [n for n in NAMES if os.path.exists(os.path.join(out, f"{n}.json"))]
    assert present, "run the experiment tests first"
    copy = tmp_path / "docs" / "experiments"
    copy.mkdir(parents=True)
    for name in present:
        shutil.copy(os.path.join(out, f"{name}.json"), copy)
        payload = json.load(open(os.path.join(out, f"{name}.json")))
        if payload.get("plot"):
            shutil.copy(os.path.join(out, payload["plot"]), copy)
    path = report.write(str(copy), str(tmp_path / "docs" / "experiments.md"))
    text = open(path).read()
    for name in NAMES:
        title = module(name).TITLE
        assert f"## {title}" in text
        if name in present:
            assert f"`pytest {name}`" in text  # the run that made the numbers
        else:
            assert f"`convtune experiment {name}`" in text
    for line in text.splitlines():
        if line.startswith("!["):
            image = line.split("(", 1)[1].rstrip(")")
            assert image.startswith("experiments/") and os.path.exists(tmp_path / "docs" / image)
    # the same text as the report the runs regenerated beside their output directory
    assert open(out + ".md").read() == text


def test_report_without_valgrind_or_matplotlib(out, tmp_path):
    """A machine without valgrind (no cache figures) or without matplotlib (no plot) still gets its
    section, saying what is missing and how to install it."""
    path = os.path.join(out, "layout.json")
    payload = json.load(open(path)) if os.path.exists(path) else run_tiny("layout", out)
    for row in payload["rows"]:
        row["cachesim"] = None
    payload.update(cache_tool=None, simulated_caches=None, valgrind=None, valgrind_note=cachesim.VALGRIND_MISSING,
                   plot=None, plot_note="matplotlib is not installed")
    directory = tmp_path / "experiments"
    directory.mkdir()
    (directory / "layout.json").write_text(json.dumps(payload))
    text = report.render(str(directory), str(tmp_path / "experiments.md"))
    assert "apt-get install -y valgrind" in text and "*No plot: matplotlib is not installed.*" in text
    assert "![layout]" not in text
    from tuning.experiments import layout
    from tuning.experiments.common import pyplot

    plt = pyplot()
    if plt is not None:  # the plot itself copes with the missing figures
        plt.close(layout.draw(plt, payload))


def test_report_with_no_runs(tmp_path):
    text = report.render(str(tmp_path / "empty"), str(tmp_path / "empty.md"))
    assert text.count("Not run yet") == len(NAMES)


def test_command_line():
    parser = argparse.ArgumentParser(prog="convtune")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["experiment", "spatial-pack", "--full", "--out", "x/y", "--threads", "1"])
    assert (args.name, args.full, args.out, args.threads) == ("spatial-pack", True, "x/y", 1)
    assert command_line(args) == "convtune experiment spatial-pack --full --out x/y --threads 1"
    assert parser.parse_args(["experiment", "all"]).out == os.path.join("docs", "experiments")
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "nonsense"])
