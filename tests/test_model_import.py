"""tuning/model_import.py: a model file's conv layers. Real models as a newcomer meets them: static
shapes recovered from legacy ONNX exports, readable layer names that agree across exporters,
`convtune layers FILE`, tables that fit, logs that read; ONNX and torch.export layers against
their own numerics."""

import io
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from schedules.reference import conv2d_reference
from schedules.workload import parse_spec
from tuning import model_import
from tuning.cli import main
from tuning.model_import import ModelError, from_onnx, from_torch, load_network
from tuning.networks import Layer
from tuning.tables import table

onnx = pytest.importorskip("onnx", reason="onnx is an optional extra: pip install onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _weight(name, shape):
    return numpy_helper.from_array(np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32), name)


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _model(nodes, inits, x_shape, name="m"):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def chunk_model(batch=1):
    """shufflenet_v2's `x1, x2 = x.chunk(2, dim=1)` as the legacy exporter writes it: Slice bounds
    computed from Shape (Gather, Div: beyond ONNX's data propagation), the second half into a Conv."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["channels"], axis=0),
        helper.make_node("Div", ["channels", "two"], ["half"]),
        helper.make_node("Unsqueeze", ["half", "axis0"], ["half_v"]),
        helper.make_node("Slice", ["x", "zero_v", "half_v", "one_v"], ["x1"]),
        helper.make_node("Slice", ["x", "half_v", "end_v", "one_v"], ["x2"]),
        helper.make_node("Conv", ["x2", "w"], ["y2"], name="/stage2/stage2.0/branch2/branch2.0/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["x1", "y2"], ["out"], axis=1),
    ]
    inits = [_weight("w", (4, 4, 3, 3)), _ints("one", 1), _ints("two", 2), _ints("axis0", [0]), _ints("zero_v", [0]),
             _ints("one_v", [1]), _ints("end_v", [2**62])]
    return _model(nodes, inits, [batch, 8, 6, 6], "chunk")


def aspp_model():
    """deeplabv3's ASPP pooling branch: a Resize sized from Shape(x), concatenated with a conv branch
    and fed to the projection Conv."""
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["branch0"], name="/classifier/classifier.0/convs/convs.0/convs.0.0/Conv"),
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w1"], ["pooled_c"], name="/classifier/classifier.0/convs/convs.1/convs.1.1/Conv"),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "two_v", "four_v"], ["hw"]),
        helper.make_node("Shape", ["pooled_c"], ["pshape"]),
        helper.make_node("Slice", ["pshape", "zero_v", "two_v"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["pooled_c", "", "", "sizes"], ["up"], mode="linear"),
        helper.make_node("Concat", ["branch0", "up"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wp"], ["out"], name="/classifier/classifier.0/project/project.0/Conv"),
    ]
    inits = [_weight("w0", (4, 4, 1, 1)), _weight("w1", (4, 4, 1, 1)), _weight("wp", (4, 8, 1, 1)),
             _ints("zero_v", [0]), _ints("two_v", [2]), _ints("four_v", [4])]
    return _model(nodes, inits, [1, 4, 10, 12], "aspp")


# -- static shapes recovered ---------------------------------------------------------------------------
def test_chunk_slice_with_computed_bounds_gets_static_shapes(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # folding alone recovers it, no onnxruntime needed
    (layer,) = from_onnx(chunk_model())
    assert layer.name == "chunk.stage2.0.branch2.0"
    assert layer.workload == parse_spec("h=6,w=6,ci=4,co=4,k=3,pad=1")


def test_resize_sized_from_shape_into_concat_gets_static_shapes(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    layers = {l.name: l.workload for l in from_onnx(aspp_model())}
    assert layers["aspp.classifier.0.project.0"] == parse_spec("h=10,w=12,ci=8,co=4,k=1")
    assert layers["aspp.classifier.0.convs.0.0"] == parse_spec("h=10,w=12,ci=4,co=4,k=1")
    assert layers["aspp.classifier.0.convs.1.1"] == parse_spec("h=1,w=1,ci=4,co=4,k=1")


def test_onnxruntime_reads_what_folding_cannot(monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(model_import, "_fold_shape_arithmetic", lambda onnx, model, shapes: (model, 0))
    (layer,) = from_onnx(chunk_model())
    assert layer.workload == parse_spec("h=6,w=6,ci=4,co=4,k=3,pad=1")
    assert "running the model once with onnxruntime" in capsys.readouterr().err


def test_shapes_that_stay_dynamic_are_refused_per_layer_with_the_fix(monkeypatch):
    with pytest.raises(ModelError) as err:
        from_onnx(chunk_model(batch="N"))
    message = str(err.value)
    assert "Conv '/stage2/stage2.0/branch2/branch2.0/Conv'" in message and "'N'" in message
    # the flag that fixes it (once it named `--batch`, which is trials per batch on the CLI)
    assert "--model-batch N" in message and " --batch" not in message
    assert from_onnx(chunk_model(batch="N"), batch=3)[0].workload.n == 3

    monkeypatch.setattr(model_import, "_fold_shape_arithmetic", lambda onnx, model, shapes: (model, 0))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelError, match=r"1 Conv node\(s\) without a static input shape: Conv '/stage2.*"
                                         r"dynamo=True.*pip install onnxruntime"):
        from_onnx(chunk_model())


# -- convtune layers FILE ------------------------------------------------------------------------------
def test_layers_command_reads_an_onnx_file(tmp_path, capsys):
    path = str(tmp_path / "aspp.onnx")
    onnx.save(aspp_model(), path)
    assert main(["layers", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: 3 distinct conv layers, 3 in all")
    assert "aspp.classifier.0.project.0" in out and "h=10,w=12,ci=8,co=4,k=1" in out and "spatial-pack" in out
    assert main(["layers", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    project = next(l for l in report["layers"] if l["name"] == "aspp.classifier.0.project.0")
    assert report["network"] == path and report["distinct"] == 3
    assert project["count"] == 1 and project["out"] == [10, 12] and "im2col" in project["algorithms"]
    assert project["mflops"] == pytest.approx(2 * 10 * 12 * 4 * 8 / 1e6)


def test_layers_command_without_a_file_lists_the_zoo_as_json(capsys):
    assert main(["layers", "--json"]) == 0
    assert [r["network"] for r in json.loads(capsys.readouterr().out)][:2] == ["resnet18", "resnet50"]
    assert main(["layers", "nosuch.onnx"]) == 2
    assert "no such file" in capsys.readouterr().err


# -- names ---------------------------------------------------------------------------------------------
def test_onnx_names_module_paths_else_position_and_shape():
    scoped = helper.make_node("Conv", ["x", "w"], ["a"], name="node_conv2d")
    helper.set_metadata_props(scoped, {"pkg.torch.onnx.name_scopes": repr(["", "features", "features.3", "conv2d"])})
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y0"], name="/features/features.1/block/block.0/block.0.0/Conv"),
        scoped,
        helper.make_node("Conv", ["x", "w"], ["b"], name="/Conv"),  # the root module: no path
        helper.make_node("Conv", ["b", "w2"], ["c"], name="Conv_7", strides=[2, 2], group=2),
        helper.make_node("Conv", ["c", "w3"], ["d"], name="head"),  # a hand-given name is kept
        helper.make_node("Add", ["d", "d"], ["out"]),
    ]
    # distinct shapes per node, so that none is merged into another
    model = _model(nodes, [_weight("w", (4, 4, 1, 1)), _weight("w2", (8, 2, 3, 3)), _weight("w3", (2, 8, 1, 1))],
                   [1, 4, 8, 8], "net")
    names = [l.name for l in from_onnx(model)]
    assert names == ["net.features.1.block.0.0", "net.conv3.3x3s2g2.4-8", "net.head"]  # the first three: one shape

    same = _model([helper.make_node("Conv", ["x", "w"], ["a"], name="/features/features.1/Conv"),
                   helper.make_node("Conv", ["x", "w"], ["b"], name="/features/features.2/Conv"),
                   helper.make_node("Add", ["a", "b"], ["out"])], [_weight("w", (4, 4, 1, 1))], [1, 4, 8, 8], "net")
    assert [(l.name, l.count) for l in from_onnx(same)] == [("net.features.1", 2)]
    assert model_import.onnx_module_path(scoped) == "features.3"


def test_two_exports_of_one_model_name_their_layers_alike(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is optional and heavy: pip install torch==2.13.0")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.block = nn.Sequential(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                                     nn.ReLU()), nn.Conv2d(c, 2 * c, 1))

        def forward(self, x):
            return self.block(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()), Block(8))
            self.w = nn.Parameter(torch.randn(4, 16, 1, 1))

        def forward(self, x):
            return nn.functional.conv2d(self.features(x), self.w)  # in the root module: no module path

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 16, 16)
    path = str(tmp_path / "net.onnx")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False)
    from_legacy_onnx = [(l.name, l.workload) for l in load_network(path)]
    from_export = [(l.name, l.workload) for l in from_torch(torch.export.export(model, (x,)), network="net")]
    assert from_legacy_onnx == from_export
    assert [name for name, _ in from_export] == ["net.features.0.0", "net.features.1.block.0.0",
                                                 "net.features.1.block.1", "net.conv3.1x1.16-4"]


def test_a_module_run_at_two_sizes_keeps_two_names():
    layers = model_import._layers("m", [("m.conv", parse_spec("h=8,ci=4,co=4,k=1")),
                                        ("m.conv", parse_spec("h=4,ci=4,co=4,k=1")),
                                        ("m.conv", parse_spec("h=8,ci=4,co=4,k=1"))], [], "conv")
    assert [(l.name, l.count) for l in layers] == [("m.conv", 2), ("m.conv_2", 1)]


# -- output that fits ----------------------------------------------------------------------------------
def test_table_columns_fit_their_contents():
    text = table(["layer", "ms", "share"], [["resnet18.layer1", "0.5", "40.0%"], ["a", "12.25", "-"]])
    assert text.splitlines() == ["layer               ms  share",
                                 "resnet18.layer1    0.5  40.0%",
                                 "a                12.25      -"]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        table(["a", "b", "c"], [["1", "2"]])


def test_network_table_fits_long_layer_names():
    from tuning.search.network import LayerResult, NetworkResult
    from tuning.target import resolve_target

    long = "deeplabv3.backbone.layer4.2.conv2.with.a.very.long.module.path"
    rows = [LayerResult(Layer(long, parse_spec("h=8,ci=4,co=8,k=3,pad=1"), 2), "winograd-f4", 1e-4, 12),
            LayerResult(Layer("net.b", parse_spec("h=8,ci=8,co=8,k=1"), 1), "direct", None, 0)]
    result = NetworkResult(resolve_target("x86"), rows, untuned=["net.b"])
    lines = result.table().splitlines()
    header, first, second = lines[:3]
    assert first.startswith(long + "  winograd-f4") and "direct (untuned)" in second
    assert header.index("share") + len("share") == len(first) == len(second)  # right-aligned, same width
    assert "1 untuned layer(s)" in lines[-1]


def _progress(stream):
    from tuning.search.plugins import Progress

    task = SimpleNamespace(workload=parse_spec("h=8,ci=4,co=8,k=3"), algorithm="direct")
    return Progress([task], 4, stream=stream)


def test_progress_in_a_log_is_one_line_per_batch():
    log = io.StringIO()  # not a terminal
    progress = _progress(log)
    progress.report(0, [1e-4, None])
    progress.report(0, [5e-5, 2e-4])
    progress.end()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    assert lines[0].strip().startswith("2/4 trials") and "failed 1" in lines[1] and lines[1].strip().startswith("4/4")


def test_progress_on_a_terminal_redraws_one_line():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    progress = _progress(term)
    progress.report(0, [1e-4])
    progress.report(0, [1e-4])
    progress.end()
    assert term.getvalue().count("\r[") == 2 and term.getvalue().endswith("\n") and term.getvalue().count("\n") == 1


def test_budget_warning_names_the_flag_and_the_tasks_left_without_a_trial():
    from tuning.search.tune import budget_warning

    assert budget_warning(3, ["a", "b", "c"], 10, 7) is None
    warning = budget_warning(2, ["net.a", "net.b", "net.c", "net.d"], 10, 8)
    assert "2 get no trial: net.c, net.d" in warning and "raise --trials-total to at least 12" in warning
    assert "raise --trials" in budget_warning(1, ["direct", "im2col"], None, 0)
    many = budget_warning(0, [f"l{i}" for i in range(9)], 9, 9)
    assert "l0, l1, l2, l3, l4, l5 and 3 more" in many


# -- an untuned bundle warns once ----------------------------------------------------------------------
def test_untuned_bundle_warns_once_with_the_count(monkeypatch, tmp_path, capsys):
    from tuning.deploy import bundle
    from tuning.target import resolve_target

    calls = []

    def fake_export(choice, target, path, layer_name=None, warn=True):
        calls.append(warn)
        return {"algorithm": choice.task.algorithm, "tuned": False, "config": {}, "record": None,
                "run_function": "conv2d", "functions": {}}

    monkeypatch.setattr(bundle, "export", fake_export)
    layers = [Layer("net.a", parse_spec("h=8,ci=4,co=8,k=3,pad=1"), 2), Layer("net.b", parse_spec("h=8,ci=8,co=8,k=1")),
              Layer("net.c", parse_spec("h=8,ci=8,co=8,k=1"), 3)]
    manifest = bundle.compile_bundle(layers, "direct", resolve_target("x86"), str(tmp_path / "logs"),
                                     str(tmp_path / "out"), network="net")
    err = capsys.readouterr().err
    assert calls == [False, False]  # one library per distinct shape, none warning on its own
    assert err.count("WARNING") == 1 and "3 of 3 layers" in err and '"untuned"' in err and "manifest.json" in err
    assert "net.a" not in err and manifest["untuned"] == ["net.a", "net.b", "net.c"]


# -- files are data: nothing in a model file runs or reaches the terminal raw -------------------------
class _WritesMarker:
    """A pickle payload: unpickling it writes the marker file (what a crafted .pt2 would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path):
    open(path, "w").close()
    return None


def _malicious_pt2(tmp_path, marker):
    """A .pt2-shaped zip whose sample inputs are a torch.save-style archive with a `__reduce__`
    payload in data.pkl (built by hand: no torch needed to make the attack)."""
    import pickle
    import zipfile

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("model/data.pkl", pickle.dumps(_WritesMarker(marker), protocol=2))
        z.writestr("model/version", "3\n")
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/archive_format", "pt2")
        z.writestr("evil/archive_version", "0")
        z.writestr("evil/data/sample_inputs/model.pt", inner.getvalue())
        z.writestr("evil/data/opaque.pkl", pickle.dumps(_WritesMarker(marker), protocol=2))
    return str(path)


def _real_pt2_with_payload(tmp_path, marker):
    """A genuine torch.export.save archive whose sample inputs are replaced by a torch.save
    archive carrying the payload: torch.export.load runs it (its weights_only load fails, and it
    retries with plain pickle)."""
    import zipfile

    torch = pytest.importorskip("torch")
    program = torch.export.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),))
    clean = tmp_path / "clean.pt2"
    torch.export.save(program, str(clean))
    payload = io.BytesIO()
    torch.save(_WritesMarker(marker), payload)
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, payload.getvalue() if info.filename.endswith("sample_inputs/model.pt") else data)
    return str(path)


def test_a_real_pt2_with_a_payload_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = _real_pt2_with_payload(tmp_path, marker)
    assert main(["layers", path]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert len(err.splitlines()) == 1 and "sample_inputs/model.pt" in err and "--trust-pickle" in err


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@pytest.mark.parametrize("command", [["layers", "{path}"], ["compile", "--model", "{path}", "-o", "{out}"]])
def test_a_pt2_with_a_pickle_payload_is_refused_before_anything_is_unpickled(tmp_path, capsys, command):
    marker = tmp_path / "marker"
    path = _malicious_pt2(tmp_path, marker)
    argv = [a.format(path=path, out=tmp_path / "k.so") for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert ("--trust-pickle" if _has_torch() else "needs torch") in err  # without torch nothing is read at all


def test_verify_reads_the_pt2_a_sidecar_names_as_untrusted(tmp_path):
    from tuning.deploy.model import reference_outputs

    marker = tmp_path / "marker"
    side = {"model": "m", "source": {"kind": "pt2", "path": _malicious_pt2(tmp_path, marker)}, "inputs": []}
    with pytest.raises(ModelError, match="--trust-pickle" if _has_torch() else "needs torch"):
        reference_outputs(side, {})
    assert not marker.exists()


def test_a_real_torch_export_archive_loads_without_trust():
    torch = pytest.importorskip("torch")
    program = torch.export.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),))
    buffer_path = io.BytesIO()
    torch.export.save(program, buffer_path)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pt2") as f:
        f.write(buffer_path.getvalue())
        f.flush()
        layers = load_network(f.name)
    assert [l.workload.co for l in layers] == [4]


def test_names_from_a_model_file_reach_the_terminal_escaped(tmp_path, capsys):
    name = "/evil\x1b[31m\nconvtune: error: fake\x1b]0;title\x07/Conv"
    nodes = [helper.make_node("Conv", ["x", "w"], ["out"], name=name, pads=[1, 1, 1, 1])]
    path = str(tmp_path / "names.onnx")
    onnx.save(_model(nodes, [_weight("w", (4, 4, 3, 3))], [1, 4, 6, 6]), path)
    assert main(["layers", path]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\nconvtune: error: fake" not in out and "\\x1b[31m\\nconvtune: error: fake" in out


def test_an_opset_newer_than_onnx_knows_is_refused(tmp_path, capsys):
    nodes = [helper.make_node("Conv", ["x", "w"], ["out"], pads=[1, 1, 1, 1])]
    model = _model(nodes, [_weight("w", (4, 4, 3, 3))], [1, 4, 6, 6])
    model.opset_import[0].version = 99
    path = str(tmp_path / "future.onnx")
    onnx.save(model, path)
    for argv in (["layers", path], ["compile", "--model", path, "-o", str(tmp_path / "m.so")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "opset 99" in err and "opset_version <=" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.so").exists()


# -- from test_network.py: ONNX ------------------------------------------------------------------------------------------------
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


@pytest.mark.slow  # was in test_network.py, all slow
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


@pytest.mark.slow  # was in test_network.py, all slow
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


@pytest.mark.slow  # was in test_network.py, all slow
def test_missing_optional_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without onnx looks like
    with pytest.raises(ModelError, match="pip install onnx"):
        load_network("model.onnx")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModelError, match=r"pip install torch==2\.13\.0"):
        load_network("model.pt2")


@pytest.mark.slow  # was in test_network.py, all slow
def test_load_network_names_and_files(tmp_path):
    assert [l.name for l in load_network("resnet18")][:2] == ["resnet18.conv1", "resnet18.layer1"]
    with pytest.raises(ModelError, match="neither a zoo network"):
        load_network("resnet19")
    (tmp_path / "model.tflite").write_bytes(b"")
    with pytest.raises(ModelError, match="unknown model format '.tflite'"):
        load_network(str(tmp_path / "model.tflite"))


# -- from test_network.py: PyTorch ---------------------------------------------------------------------------------------------
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


@pytest.mark.slow  # was in test_network.py, all slow
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


@pytest.mark.slow  # was in test_network.py, all slow
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


@pytest.mark.slow
def test_a_zoo_model_exports_beside_a_working_torchvision(tmp_path):
    """`--model resnet18` exports torchvision's architecture; the schemas convtune defines for a
    torchvision whose extension cannot load must not be defined before one that can (a duplicate
    registration aborts the process). In a child: an abort would kill the test run."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    import subprocess
    import sys

    code = ("from tuning.model_import import zoo_onnx; m = zoo_onnx('resnet18', 1); "
            "print(sum(n.op_type == 'Conv' for n in m.graph.node))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "20"  # ResNet-18's convs, the downsamples included
