"""A whole model compiled to one library: conv chains found and fused, batch norm folded, the rest
compiled by TVM, run through `convtune run`, checked against ONNX Runtime by `convtune verify`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import tuning.cli as cli  # noqa: E402
from tuning.deploy.model import ModelLibrary, build_model, random_model_inputs, replace_convs  # noqa: E402
from tuning.graph import ops_module  # noqa: E402
from tuning.model_import import load_model  # noqa: E402

from .support.models import onnxruntime_outputs, small_resnet  # noqa: E402

pytestmark = pytest.mark.slow  # every test here compiles a whole model: `pytest -m "not slow"` skips them


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return small_resnet(str(tmp_path_factory.mktemp("model") / "small_resnet.onnx"))


def test_chains_carry_their_epilogues_and_names(model_path):
    graph = load_model(model_path)
    chains = graph.chains()
    # the classifier's Gemm (a constant weight) is a 1x1 conv over its one row
    assert [c.name for c in chains] == ["stem/conv", "block/conv", "head/conv", "matmul0.1x16x10"]
    specs = [c.workload.spec for c in chains]
    assert specs == ["h=12,w=12,ci=3,co=8,k=3,pad=1,bias=1,act=relu",  # conv + bias + BN + relu
                     "h=12,w=12,ci=8,co=8,k=3,pad=1,bias=1,residual=1,act=relu",
                     "h=6,w=6,ci=8,co=16,k=1,bias=1,act=relu6", "h=1,w=1,ci=16,co=10,k=1,bias=1"]
    assert chains[3].shape == (1, 10) and all(c.shape is None for c in chains[:3])
    assert chains[1].residual is not None and chains[0].residual is None
    # nothing of the batch norm or the Clip is left outside the kernels
    import tvm

    ops = sorted(gv.name_hint for gv, f in ops_module(graph).functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert not [name for name in ops if any(w in name for w in ("subtract", "divide", "maximum", "minimum", "relu",
                                                                     "batch_norm", "conv"))], ops
    assert "max_pool2d" in ops and "mean" in ops


def test_batch_norm_folds_exactly(model_path):
    """conv(x, w) + b, then (. - mean) / sqrt(var + eps) * gamma + beta, equals conv(x, w') + b'
    with w', b' folded in float64: the folded conv alone against ONNX Runtime's first Relu."""
    import onnx

    graph = load_model(model_path)
    stem = graph.chains()[0]
    model = onnx.load(model_path)
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info("r1", onnx.TensorProto.FLOAT, None))
    x = random_model_inputs({"inputs": graph.inputs})
    path = model_path.replace(".onnx", "_r1.onnx")
    onnx.save(model, path)
    expected = onnxruntime_outputs(path, x)[0].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    from schedules.reference import conv2d_reference

    data = x["input"].transpose(0, 2, 3, 1)
    got = conv2d_reference(stem.workload, data, stem.weight, bias=stem.bias)
    assert np.abs(got - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())


def test_untuned_model_compiles_runs_and_matches_onnxruntime(model_path, tmp_path, capsys):
    library = str(tmp_path / "out" / "model.so")
    assert cli.main(["compile", "--model", model_path, "-o", library, "--logs", str(tmp_path / "logs")]) == 0
    captured = capsys.readouterr()
    # no records: loud, with the count and the names, and it still builds
    assert "WARNING: 4 of 4 layers (convs and matmuls as 1x1 convs) have no tuning record" in captured.err
    assert "stem/conv" in captured.err
    side = json.load(open(str(tmp_path / "out" / "model.json")))
    assert side["kind"] == "model" and side["untuned"] == ["stem/conv", "block/conv", "head/conv", "matmul0.1x16x10"]
    assert side["inputs"] == [{"name": "input", "shape": [1, 3, 12, 12], "dtype": "float32"}]
    assert [r["workload"].get("epilogue", {}).get("residual", False) for r in side["layers"]] == [False, True, False, False]

    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)
    np.save(str(tmp_path / "x.npy"), x)
    out = str(tmp_path / "y.npz")
    assert cli.main(["run", library, "--input", str(tmp_path / "x.npy"), "--output", out]) == 0
    got = np.load(out)["logits"]
    expected = onnxruntime_outputs(model_path, {"input": x})[0]
    assert got.shape == (1, 10)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

    capsys.readouterr()
    assert cli.main(["verify", library]) == 0
    said = capsys.readouterr().out
    assert "against ONNX Runtime" in said and "1/1 outputs ok" in said


def test_a_model_that_differs_from_its_source_fails_verify(model_path, tmp_path, capsys):
    """The sidecar points at another model of the same shapes (other weights): MISMATCH, exit 1,
    and the layer check says whether a kernel or the rest of the graph diverges."""
    library = str(tmp_path / "model.so")
    assert cli.main(["compile", "--model", model_path, "-o", library, "--logs", str(tmp_path / "logs")]) == 0
    other = small_resnet(str(tmp_path / "other.onnx"), seed=1)
    side_path = str(tmp_path / "model.json")
    side = json.load(open(side_path))
    side["source"]["path"] = other
    json.dump(side, open(side_path, "w"))
    capsys.readouterr()
    assert cli.main(["verify", library]) == 1
    said = capsys.readouterr().out
    assert "MISMATCH" in said and "0/1 outputs ok" in said
    assert "every conv kernel matches the float64 reference" in said


def test_run_refuses_inputs_it_cannot_take(model_path, tmp_path, capsys):
    library = str(tmp_path / "model.so")
    assert cli.main(["compile", "--model", model_path, "-o", library, "--logs", str(tmp_path / "logs")]) == 0
    np.save(str(tmp_path / "bad.npy"), np.zeros((1, 3, 8, 8), np.float32))
    capsys.readouterr()
    assert cli.main(["run", library, "--input", str(tmp_path / "bad.npy")]) == 2
    assert "input 'input' has shape [1, 3, 8, 8], the model takes [1, 3, 12, 12]" in capsys.readouterr().err
    assert cli.main(["run", library, "--input", "nope=" + str(tmp_path / "bad.npy")]) == 2
    assert "has no input 'nope'" in capsys.readouterr().err
    os.remove(str(tmp_path / "model.json"))
    assert cli.main(["run", library]) == 2
    assert "no sidecar" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "spatial-pack", "winograd-f2", "indirect"])
def test_every_algorithm_serves_a_model(model_path, tmp_path, target, algorithm):
    """Each algorithm where it fits (direct elsewhere), epilogues fused, prepared weights as
    constants (im2col's panels, Winograd's transformed weights, indirect's table), against ORT."""
    graph = load_model(model_path)
    executable, side = build_model(graph, target, str(tmp_path), algorithm=f"{algorithm},direct")
    used = {row["algorithm"] for row in side["layers"]}
    assert algorithm in used
    library = ModelLibrary(executable, side)
    x = random_model_inputs(side, seed=5)
    got = library.run(x)[0]
    expected = onnxruntime_outputs(model_path, x)[0]
    assert np.abs(got - expected).max() <= side["tolerance"]["relative"] * np.abs(expected).max()


def test_prepared_weights_are_constants_not_calls(model_path, tmp_path, target):
    """Two-phase kernels call only their run function per inference: no pack_weight in main."""
    from tuning.deploy.model import plan

    graph = load_model(model_path)
    layers = plan(graph, target, str(tmp_path), "winograd-f2,direct")
    text = replace_convs(graph, layers)["main"].script(show_meta=False)
    assert "conv2d_packed" in text and "pack_weight" not in text


def test_a_model_in_nchw_keeps_onnx_layout(model_path, tmp_path, target):
    """--layout NCHW: no transposes, NCHW kernels (OIHW weights), the same answer."""
    graph = load_model(model_path, "NCHW")
    # the convs keep ONNX's layout; the classifier's matmul is a 1x1 conv over rows (NHWC is its own)
    assert all(c.workload.layout == ("NHWC" if c.shape else "NCHW") for c in graph.chains())
    assert "permute_dims" not in graph.mod["main"].script(show_meta=False)
    executable, side = build_model(graph, target, str(tmp_path))
    x = random_model_inputs(side, seed=2)
    got = ModelLibrary(executable, side).run(x)[0]
    expected = onnxruntime_outputs(model_path, x)[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_a_symbolic_batch_is_refused_naming_the_flag_that_fixes_it(tmp_path, capsys):
    """The refusal once named `--batch`, which the CLI has only for trials per batch."""
    path = small_resnet(str(tmp_path / "dynamic.onnx"), batch="N")
    assert cli.main(["layers", path]) == 2
    assert "--model-batch N" in capsys.readouterr().err
    assert cli.main(["layers", path, "--model-batch", "2", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {layer["workload"]["n"] for layer in listed["layers"]} == {2}
    assert cli.main(["compile", "--model", path, "-o", str(tmp_path / "m.so"), "--logs", str(tmp_path)]) == 2
    assert "--model-batch N" in capsys.readouterr().err
    assert cli.main(["compile", "--model", path, "--model-batch", "0", "-o", str(tmp_path / "m.so")]) == 2
    assert "--model-batch: must be a positive batch size" in capsys.readouterr().err
    library = str(tmp_path / "m.so")
    assert cli.main(["compile", "--model", path, "--model-batch", "2", "-o", library, "--logs", str(tmp_path)]) == 0
    side = json.load(open(str(tmp_path / "m.json")))
    assert side["inputs"][0]["shape"] == [2, 3, 12, 12]


def test_an_input_named_as_a_legacy_export_names_it_verifies(model_path, tmp_path, capsys):
    """`input.1` (torch.onnx's legacy exporter): Relax sanitises the parameter to `input_1`; the
    sidecar keeps the file's name, which ONNX Runtime and `run --input NAME=` know."""
    import onnx

    model = onnx.load(model_path)
    for value in model.graph.input:
        if value.name == "input":
            value.name = "input.1"
    for node in model.graph.node:
        node.input[:] = ["input.1" if name == "input" else name for name in node.input]
    path = str(tmp_path / "legacy.onnx")
    onnx.save(model, path)
    library = str(tmp_path / "legacy.so")
    assert cli.main(["compile", "--model", path, "-o", library, "--logs", str(tmp_path / "logs")]) == 0
    assert json.load(open(tmp_path / "legacy.json"))["inputs"][0]["name"] == "input.1"
    capsys.readouterr()
    assert cli.main(["verify", library]) == 0
    assert "1/1 outputs ok" in capsys.readouterr().out


def test_bench_model_times_each_contender_in_fresh_processes(model_path, tmp_path, capsys):
    """`bench --model`: convtune's library and ONNX Runtime each in fresh processes of their own,
    alternating, the spread across processes and each runtime's threads reported (issue 26)."""
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--model", model_path, "--processes", "3", "--process-seconds", "0.2",
                     "--logs", str(tmp_path / "logs"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.load(open(out))
    assert result["processes"] == 3 and set(result["results"]) >= {"convtune", "onnxruntime"}
    for r in result["results"].values():
        assert len(r["process_medians_ms"]) == 3 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    assert result["settings"]["convtune"]["tvm_binding"].startswith("unpinned")
    assert result["settings"]["onnxruntime"]["ort_intra_op_threads"] >= 1
    assert "fresh processes" in printed and "threads: convtune: tvm_threads=" in printed
    # the library it timed is the one a user gets: it loads and runs outside this process too
    assert os.path.exists(result["library"]) and result["split"]["layers"]
