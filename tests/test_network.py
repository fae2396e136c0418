"""tuning/search/network.py: whole networks under one shared tuning budget (and its resume), records
routed to each layer's directory, a bundle that verifies, a manifest that escapes. (A model file's
conv layers, ONNX and torch.export: tests/test_model_import.py.)"""

import json
import os
import subprocess
import sys

import pytest

from schedules.workload import Workload, parse_spec
from tuning.bench import estimate_network
from tuning.deploy.bundle import (
    BundleError,
    compile_bundle,
    read_manifest,
    verify_bundle,
)
from tuning.networks import Layer
from tuning.records import LayerRecords
from tuning.search.measure import MeasureConfig
from tuning.search.network import tune_network
from tuning.search.plugins import LayerRoutedDatabase
from tuning.search.tune import SearchOptions
from tuning.target import resolve_target, set_threads
from tuning.task import Task

pytestmark = pytest.mark.slow  # tuning runs: `pytest -m "not slow"` skips them


# -- the routing database --------------------------------------------------------------------------------
def test_records_are_routed_to_their_layer(tmp_path):
    target = resolve_target("x86")
    a, b = parse_spec("h=6,ci=4,co=8,k=3"), parse_spec("h=6,ci=8,co=8,k=1")
    stores = {wl: LayerRecords.open(str(tmp_path), target, wl) for wl in (a, b)}
    ta, tb = Task(a, "direct"), Task(b, "direct")
    db = LayerRoutedDatabase([(ta.mod, stores[a]), (tb.mod, stores[b])])
    assert not db.has_workload(ta.mod)
    db.commit_workload(tb.mod)
    assert db.has_workload(tb.mod) and not db.has_workload(ta.mod)
    assert stores[b].database.has_workload(tb.mod) and not stores[a].database.has_workload(tb.mod)
    other = Task(parse_spec("h=5,ci=4,co=4,k=1"), "direct")
    assert not db.has_workload(other.mod)
    with pytest.raises(RuntimeError, match="no task of this network run"):
        db.commit_workload(other.mod)


# -- tune, resume, bundle --------------------------------------------------------------------------------
TINY = [Layer("tiny.a", parse_spec("h=8,ci=4,co=8,k=3,pad=1"), 2), Layer("tiny.b", parse_spec("h=8,ci=8,co=8,k=1"), 1)]
FAST = MeasureConfig(min_repeat_ms=5)


@pytest.fixture(scope="module")
def tuned_network(tmp_path_factory):
    target = resolve_target("x86")
    set_threads(target.threads)
    logs = str(tmp_path_factory.mktemp("logs"))
    first = tune_network(TINY, "direct", target, logs, 8, options=SearchOptions(measure=FAST, seed=5))
    return target, logs, first


def layer_records(logs, target, wl):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=os.path.join(logs, target.tag, wl.key)).get_all_tuning_records()


def test_shared_budget_goes_to_each_layers_own_records(tuned_network):
    target, logs, first = tuned_network
    counts = [len(layer_records(logs, target, l.workload)) for l in TINY]
    assert sum(counts) == 8 and min(counts) >= 1 and first.measured == 8  # one budget, both layers searched
    for l in TINY:  # each layer's directory is a layer record store `convtune tune` reads as its own
        info = json.load(open(os.path.join(logs, target.tag, l.workload.key, "task.json")))
        assert Workload.from_dict(info["workload"]) == l.workload and "direct" in info["algorithms"]
    rows = {r.layer.name: r for r in first.rows}
    assert all(r.tuned and r.algorithm == "direct" and r.gflops > 0 for r in rows.values())
    assert first.total_seconds == pytest.approx(sum(r.layer.count * r.seconds for r in first.rows))
    assert sum(first.share(r) for r in first.rows) == pytest.approx(1.0)
    table = first.table()
    assert "tiny.a" in table and "estimated conv time of the network" in table


def test_resume_measures_only_the_difference(tuned_network):
    target, logs, _ = tuned_network
    again = tune_network(TINY, "direct", target, logs, 10, options=SearchOptions(measure=FAST, seed=6, quiet=True))
    per_layer = [layer_records(logs, target, l.workload) for l in TINY]
    assert again.measured == 2 and sum(map(len, per_layer)) == 10
    assert tune_network(TINY, "direct", target, logs, 10, options=SearchOptions(measure=FAST, quiet=True)).measured == 0
    assert sum(len(layer_records(logs, target, l.workload)) for l in TINY) == 10


def test_bundle_compiles_and_verifies_in_a_fresh_process(tuned_network, tmp_path):
    target, logs, _ = tuned_network
    layers = TINY + [Layer("tiny.c", parse_spec("h=8,ci=8,co=8,k=1"), 3)]  # the same shape as tiny.b
    out = str(tmp_path / "bundle")
    manifest = compile_bundle(layers, "direct", target, logs, out, network="tiny")
    assert len(manifest["libraries"]) == 2 and not manifest["untuned"]
    entries = {e["name"]: e for e in manifest["layers"]}
    assert entries["tiny.b"]["library"] == entries["tiny.c"]["library"] and entries["tiny.c"]["count"] == 3
    assert all(os.path.basename(e["library"]) == e["library"] and e["tuned"] for e in entries.values())
    assert entries["tiny.a"]["functions"]["conv2d"]["args"][1]["shape"] == [3, 3, 4, 8]
    assert read_manifest(out) == json.loads(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "tuning.deploy.bundle", "verify", out], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(") ok") == 3 and "3/3 functions ok" in done.stdout and "tiny.c: conv2d" in done.stdout


def test_network_estimate_sums_count_times_time(tuned_network):
    target, logs, _ = tuned_network
    estimate = estimate_network(TINY, target, logs, "direct", rounds=1, min_repeat_ms=1, rivals=False)
    per_layer = [r["results"]["convtune"]["median_ms"] * r["count"] for r in estimate["layers"]]
    assert estimate["total_ms"]["convtune"] == pytest.approx(sum(per_layer)) and not estimate["untuned"]


@pytest.mark.parametrize("library, message", [
    ("../evil.so", "bare file name"),
    ("/tmp/evil.so", "bare file name"),
    ("sub/evil.so", "bare file name"),
    ("..", "bare file name"),
    ("link.so", "symlink leading out of the bundle"),
])
def test_manifest_escaping_the_bundle_is_refused(tmp_path, library, message):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "evil.so").write_bytes(b"\x7fELF")
    os.symlink(tmp_path / "evil.so", bundle / "link.so")
    entry = {"name": "x", "workload": parse_spec("h=4,ci=4,co=4,k=1").to_dict(), "library": library,
             "functions": {}, "run_function": "conv2d", "algorithm": "direct"}
    (bundle / "manifest.json").write_text(json.dumps({"manifest_version": 1, "layers": [entry],
                                                      "target": resolve_target("x86").to_dict()}))
    with pytest.raises(BundleError, match=message):
        verify_bundle(str(bundle))


def test_network_run_starts_a_new_layer_from_the_tuned_ones(tuned_network):
    """A layer new to the logs gets the adapted best configs of its tuned neighbour (tiny.a, same
    kernel and stride, twice the size) as its first trials."""
    from schedules.template import config_from_trace
    from tuning.search.transfer import History, Transfer, seed_traces

    target, logs, _ = tuned_network
    new = Layer("tiny.d", parse_spec("h=16,ci=4,co=8,k=3,pad=1"), 1)
    task = Task(new.workload, "direct")
    seeds = seed_traces(task, History.scan(logs, target, new.workload), 2)
    assert seeds
    result = tune_network([new], "direct", target, logs, 2,
                          options=SearchOptions(measure=FAST, seed=7, quiet=True, transfer=Transfer(logs)))
    assert result.measured == 2
    measured = [config_from_trace(r.trace, task.knob_names) for r in layer_records(logs, target, new.workload)]
    assert config_from_trace(seeds[0], task.knob_names) in measured
