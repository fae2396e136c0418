"""Whole networks: conv layers from ONNX and torch.export, one shared tuning budget (and its
resume), records routed to each layer's directory, a bundle that verifies, a manifest that escapes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from schedules.reference import conv2d_reference
from schedules.workload import Workload, parse_spec
from tuning.bench import estimate_network
from tuning.deploy.bundle import (
    BundleError,
    compile_bundle,
    read_manifest,
    verify_bundle,
)
from tuning.model_import import ModelError, from_onnx, from_torch, load_network
from tuning.networks import Layer
from tuning.records import LayerRecords
from tuning.search.measure import MeasureConfig
from tuning.search.network import tune_network
from tuning.search.plugins import LayerRoutedDatabase
from tuning.search.tune import SearchOptions
from tuning.target import resolve_target, set_threads
from tuning.task import Task

pytestmark = pytest.mark.slow  # tuning runs: `pytest -m "not slow"` skips them


# -- ONNX ------------------------------------------------------------------------------------------------
def tiny_onnx(batch="N"):
    """stem (asymmetric pads) -> relu -> block x2 (same shape) -> grouped SAME_UPPER stride 2 -> SAME_LOWER."""
    onnx = pytest.importorskip("onnx", reason="onnx is an optional extra: pip install onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["a"], name="stem", pads=[1, 0, 2, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w_block"], ["c"], name="block.0", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w_block"], ["d"], name="block.1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w_group"], ["e"], name="grouped", group=4, strides=[2, 2],
                         auto_pad="SAME_UPPER"),
        helper.make_node("Conv", ["e", "w_lower"], ["y"], name="lower", kernel_shape=[2, 2], auto_pad="SAME_LOWER"),
    ]
    inits = [weight("w_stem", (8, 4, 3, 3)), weight("w_block", (8, 8, 3, 3)), weight("w_group", (8, 2, 3, 3)),
             weight("w_lower", (4, 8, 2, 2))]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 9, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_layers_merged_counted_and_padded_as_onnx_means(tmp_path):
    onnx, model = tiny_onnx(batch=1)
    path = str(tmp_path / "tiny.onnx")
    onnx.save(model, path)
    layers = load_network(path)  # NHWC by default
    assert [(l.name, l.count, l.workload.spec) for l in layers] == [
        ("tiny.stem", 1, "h=9,w=10,ci=4,co=8,k=3,pad=1x0x2x1"),  # ONNX (top, left, bottom, right)
        ("tiny.block.0", 2, "h=10,w=9,ci=8,co=8,k=3,pad=1"),
        ("tiny.grouped", 1, "h=10,w=9,ci=8,co=8,k=3,stride=2,pad=0x1x1x1,groups=4"),  # SAME_UPPER: extra at the end
        ("tiny.lower", 1, "h=5,w=5,ci=8,co=4,k=2,pad=1x1x0x0"),  # SAME_LOWER: extra at the start
    ]
    assert all(l.workload.layout == "NHWC" for l in layers)

    # Each extracted workload computes what ONNX's own reference evaluator computes for that node.
    from onnx.reference import ReferenceEvaluator

    nchw = {l.name: l.workload for l in from_onnx(model, layout="NCHW")}
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for name in ("a", "c", "d", "e"):  # every intermediate, to check each node on its own input
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    x = np.random.default_rng(1).uniform(-1, 1, (1, 4, 9, 10)).astype(np.float32)
    v = dict(zip("acdey", ReferenceEvaluator(probe).run(list("acdey"), {"x": x})))
    for layer, data, w, expected in (("tiny.stem", x, "w_stem", v["a"]),
                                     ("tiny.block.0", np.maximum(v["a"], 0), "w_block", v["c"]),
                                     ("tiny.block.0", v["c"], "w_block", v["d"]),  # block.1, merged
                                     ("tiny.grouped", v["d"], "w_group", v["e"]),
                                     ("tiny.lower", v["e"], "w_lower", v["y"])):
        got = conv2d_reference(nchw[layer], data, weights[w])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=layer)


def test_onnx_refusals():
    onnx, model = tiny_onnx()
    with pytest.raises(ModelError, match="dynamic shape .*'N'.*--model-batch N"):
        from_onnx(model)
    assert from_onnx(model, batch=2)[0].workload.n == 2
    from onnx import TensorProto, helper

    conv1d = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="c1d")], "one_d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(ModelError, match="Conv 'c1d' is a 1-D convolution.*2-D convolutions only"):
        from_onnx(helper.make_model(conv1d))


def test_missing_optional_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without onnx looks like
    with pytest.raises(ModelError, match="pip install onnx"):
        load_network("model.onnx")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModelError, match=r"pip install torch==2\.13\.0"):
        load_network("model.pt2")


def test_load_network_names_and_files(tmp_path):
    assert [l.name for l in load_network("resnet18")][:2] == ["resnet18.conv1", "resnet18.layer1"]
    with pytest.raises(ModelError, match="neither a zoo network"):
        load_network("resnet19")
    (tmp_path / "model.tflite").write_bytes(b"")
    with pytest.raises(ModelError, match="unknown model format '.tflite'"):
        load_network(str(tmp_path / "model.tflite"))


# -- PyTorch ---------------------------------------------------------------------------------------------
def tiny_torch():
    torch = pytest.importorskip("torch", reason="torch is optional and heavy: pip install torch==2.13.0")

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.blocks = torch.nn.Sequential(Block(8), Block(8))
            self.dw = torch.nn.Conv2d(8, 8, 4, padding="same", groups=8)  # even kernel: asymmetric "same"
            self.pw = torch.nn.Conv2d(8, 16, 1, dilation=1)

        def forward(self, x):
            return self.pw(self.dw(self.blocks(self.stem(x))))

    torch.manual_seed(0)
    return torch, Tiny().eval()


def test_torch_export_layers_match_torch_numerics(tmp_path):
    torch, model = tiny_torch()
    x = torch.randn(1, 3, 17, 16)
    layers = from_torch(model, (x,), layout="NCHW")
    assert [(l.name, l.count, l.workload.spec) for l in layers] == [
        ("tiny.stem", 1, "h=17,w=16,ci=3,co=8,k=3,stride=2,pad=1,layout=NCHW"),
        ("tiny.blocks.0.conv", 2, "h=9,w=8,ci=8,co=8,k=3,pad=1,layout=NCHW"),
        ("tiny.dw", 1, "h=9,w=8,ci=8,co=8,k=4,pad=1x1x2x2,groups=8,layout=NCHW"),
        ("tiny.pw", 1, "h=9,w=8,ci=8,co=16,k=1,layout=NCHW"),
    ]
    # PyTorch's "same" for an even kernel pads one more at the end: the workload says so too.
    with torch.no_grad():
        feature = model.blocks(model.stem(x))
        expected = torch.nn.functional.conv2d(feature, model.dw.weight, padding="same", groups=8).numpy()
    got = conv2d_reference(layers[2].workload, feature.numpy(), model.dw.weight.detach().numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    # A saved program (torch.export.save) loads by file name, in the layout asked for.
    path = str(tmp_path / "tiny.pt2")
    torch.export.save(torch.export.export(model, (x,)), path)
    from_file = load_network(path, layout="NHWC")
    assert [(l.count, l.workload) for l in from_file] == [(l.count, l.workload.with_layout("NHWC")) for l in layers]


def test_torch_refusals():
    torch, model = tiny_torch()
    batch = torch.export.Dim("batch", min=2, max=8)
    program = torch.export.export(model, (torch.randn(2, 3, 17, 16),), dynamic_shapes=({0: batch},))
    with pytest.raises(ModelError, match="stem .*dynamic shape"):
        from_torch(program)

    class OneD(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv1d(3, 4, 3)

        def forward(self, x):
            return self.c(x)

    with pytest.raises(ModelError, match="c .*1-D convolution.*2-D convolutions only"):
        from_torch(OneD(), (torch.randn(1, 3, 10),))


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
def tuned(tmp_path_factory):
    target = resolve_target("x86")
    set_threads(target.threads)
    logs = str(tmp_path_factory.mktemp("logs"))
    first = tune_network(TINY, "direct", target, logs, 8, options=SearchOptions(measure=FAST, seed=5))
    return target, logs, first


def layer_records(logs, target, wl):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=os.path.join(logs, target.tag, wl.key)).get_all_tuning_records()


def test_shared_budget_goes_to_each_layers_own_records(tuned):
    target, logs, first = tuned
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


def test_resume_measures_only_the_difference(tuned):
    target, logs, _ = tuned
    again = tune_network(TINY, "direct", target, logs, 10, options=SearchOptions(measure=FAST, seed=6, quiet=True))
    per_layer = [layer_records(logs, target, l.workload) for l in TINY]
    assert again.measured == 2 and sum(map(len, per_layer)) == 10
    assert tune_network(TINY, "direct", target, logs, 10, options=SearchOptions(measure=FAST, quiet=True)).measured == 0
    assert sum(len(layer_records(logs, target, l.workload)) for l in TINY) == 10


def test_bundle_compiles_and_verifies_in_a_fresh_process(tuned, tmp_path):
    target, logs, _ = tuned
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


def test_network_estimate_sums_count_times_time(tuned):
    target, logs, _ = tuned
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


def test_network_run_starts_a_new_layer_from_the_tuned_ones(tuned):
    """A layer new to the logs gets the adapted best configs of its tuned neighbour (tiny.a, same
    kernel and stride, twice the size) as its first trials."""
    from schedules.template import config_from_trace
    from tuning.search.transfer import History, Transfer, seed_traces

    target, logs, _ = tuned
    new = Layer("tiny.d", parse_spec("h=16,ci=4,co=8,k=3,pad=1"), 1)
    task = Task(new.workload, "direct")
    seeds = seed_traces(task, History.scan(logs, target, new.workload), 2)
    assert seeds
    result = tune_network([new], "direct", target, logs, 2,
                          options=SearchOptions(measure=FAST, seed=7, quiet=True, transfer=Transfer(logs)))
    assert result.measured == 2
    measured = [config_from_trace(r.trace, task.knob_names) for r in layer_records(logs, target, new.workload)]
    assert config_from_trace(seeds[0], task.knob_names) in measured
