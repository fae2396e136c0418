"""Models nobody tuned for: matmuls by constant weights run on convtune's 1x1 conv kernels, the
transcendental ops vectorised, grouped convs on their own template, and `verify` that means
something (scaled tolerance, NaN where the reference has NaN, top-k agreement)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tuning.cli as cli  # noqa: E402
from schedules.machine import Machine  # noqa: E402
from schedules.workload import parse_spec  # noqa: E402
from tuning.deploy.library import untuned_algorithm  # noqa: E402
from tuning.deploy.model import DEGENERATE_SCALE, ModelLibrary, build_model, compare_outputs  # noqa: E402
from tuning.graph import load_model, ops_module  # noqa: E402

from .support.models import mlp_block, onnxruntime_outputs  # noqa: E402


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    return mlp_block(str(tmp_path_factory.mktemp("mlp") / "mlp.onnx"))


def test_matmuls_by_constant_weights_are_1x1_conv_chains(mlp_path):
    graph = load_model(mlp_path)
    chains = graph.chains()
    assert [c.name for c in chains] == ["block/fc1", "block/fc2"]
    # a 4-D input keeps its pixels; the bias folds in, the residual (the block's input) fuses
    assert [c.workload.spec for c in chains] == ["h=5,w=7,ci=8,co=32,k=1,bias=1",
                                                  "h=5,w=7,ci=32,co=8,k=1,bias=1,residual=1"]
    assert chains[0].shape == (1, 5, 7, 32) and chains[1].shape == (1, 5, 7, 8)
    assert [o["name"] for o in graph.outputs] == ["y", "z"]  # the file's names
    import tvm

    ops = [gv.name_hint for gv, f in ops_module(graph).functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not [name for name in ops if "matmul" in name], ops


@pytest.mark.slow  # compiles the model
def test_the_matmul_model_matches_onnxruntime_and_keeps_nan(mlp_path, target):
    executable, side = build_model(load_model(mlp_path), target, "/nonexistent-logs", quiet=True)
    assert {layer["algorithm"] for layer in side["layers"]} == {"im2col"}  # 1x1 stride 1: im2col
    library = ModelLibrary(executable, side)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 5, 7, 8)).astype(np.float32)
    x[0, 2, 3, 1] = np.nan
    ours = library.run({"x": x})
    theirs = onnxruntime_outputs(mlp_path, {"x": x})
    # ORT propagates the NaN through the matmuls to whole rows; the fast erf/tanh/sigmoid keep it
    assert np.array_equal(np.isnan(ours[0]), np.isnan(theirs[0])) and np.isnan(theirs[0]).any()
    assert np.array_equal(np.isnan(ours[1]), np.isnan(theirs[1])) and np.isnan(theirs[1]).any()
    checks = compare_outputs(side, ours, theirs)
    assert all(c.ok for c in checks), [c.describe() for c in checks]
    ours[0][0, 0, 0, 0] = np.nan  # a NaN the reference does not have
    assert not compare_outputs(side, ours, theirs)[0].ok


def test_verify_holds_a_tiny_output_to_its_own_scale():
    """An output of ~1e-14 (random weights, batch norm never calibrated): an all-zero answer must
    fail, and the check says the reference is degenerate."""
    side = {"outputs": [{"name": "y"}], "tolerance": {"relative": 1e-4}}
    reference = np.random.default_rng(0).uniform(-1e-14, 1e-14, (1, 1000))
    check = compare_outputs(side, [np.zeros((1, 1000), np.float32)], [reference])[0]
    assert not check.ok and check.degenerate and check.scale < DEGENERATE_SCALE
    good = compare_outputs(side, [reference * (1 + 1e-7)], [reference])[0]
    assert good.ok and good.topk == {"top1": 1.0, "top5": 1.0}


@pytest.mark.slow  # compiles the model
def test_verify_reports_topk_for_a_classifier(mlp_path, tmp_path, capsys):
    """The zoo-like path through the CLI: compile, then verify prints the scale and passes."""
    out = str(tmp_path / "mlp.so")
    assert cli.main(["compile", "--model", mlp_path, "-o", out, "--logs", str(tmp_path / "logs")]) == 0
    capsys.readouterr()
    assert cli.main(["verify", out]) == 0
    printed = capsys.readouterr().out
    assert "y: against ONNX Runtime" in printed and "output scale" in printed and "2/2 outputs ok" in printed


@pytest.mark.parametrize("spec,registers,expected", [
    ("h=56,w=56,ci=128,co=128,k=3,pad=1,groups=32", 16, "grouped"),  # ResNeXt
    ("h=14,w=14,ci=104,co=104,k=3,pad=1,groups=13", 32, "grouped"),  # RegNet
    ("h=28,w=28,ci=192,co=96,k=1", 16, "im2col"),  # GoogLeNet's 1x1 (spatial pack's default: 3 GFLOP/s)
    ("h=28,w=28,ci=192,co=96,k=1", 32, "im2col"),
    ("h=3136,w=1,ci=96,co=384,k=1", 16, "im2col"),  # a matmul's rows
    ("h=28,w=28,ci=32,co=32,k=3,pad=1,groups=32", 16, "depthwise"),
    ("h=28,w=28,ci=64,co=128,k=1,stride=2", 16, "indirect"),  # strided 1x1: the rule as before
])
def test_untuned_rule(spec, registers, expected):
    isa = "avx2" if registers == 16 else "avx512"
    machine = Machine(arch="x86_64", mcpu="test", isa=isa, lanes=8 if isa == "avx2" else 16, registers=registers,
                      fma_units=2, l1d=32768, l2=1 << 20, l3=32 << 20, threads=2)
    assert untuned_algorithm(parse_spec(spec), machine) == expected
