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
    ("h=28,w=28,ci=64,co=128,k=1,stride=2", 16, "im2col"),  # strided 1x1 (was indirect before 6 x 16)
    ("h=56,w=56,ci=64,co=128,k=3,pad=1,stride=2", 16, "im2col"),
    ("h=28,w=28,ci=64,co=128,k=3,pad=1,stride=2", 32, "spatial-pack"),
    ("h=56,w=56,ci=64,co=64,k=3,pad=1", 16, "winograd-f4"),
    ("h=14,w=14,ci=256,co=256,k=3,pad=1", 16, "winograd-f2"),  # F4 pads 14 to 16 (50 against 104 GFLOP/s)
    ("h=7,w=7,ci=512,co=512,k=3,pad=1", 16, "im2col"),
    ("h=224,w=224,ci=3,co=64,k=7,pad=3,stride=2", 16, "direct"),
])
def test_untuned_rule(spec, registers, expected):
    isa = "avx2" if registers == 16 else "avx512"
    machine = Machine(arch="x86_64", mcpu="test", isa=isa, lanes=8 if isa == "avx2" else 16, registers=registers,
                      fma_units=2, l1d=32768, l2=1 << 20, l3=32 << 20, threads=2)
    assert untuned_algorithm(parse_spec(spec), machine) == expected


def _max_pool(shape, window, stride, pad, ceil):
    """A legalised NHWC max pool as the model pipeline meets it (Relax's LegalizeOps)."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.nn.max_pool2d(x, window, stride, pad, ceil_mode=ceil, layout="NHWC")))
    mod = relax.transform.LegalizeOps()(bb.get())
    return next(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)).with_attr("global_symbol", "main")


def _max_pool_reference(x, window, stride, pad, ceil):
    n, h, w, c = x.shape
    size = [(-(-(d + 2 * pad - window) // stride) if ceil else (d + 2 * pad - window) // stride) + 1 for d in (h, w)]
    padded = np.full((n, h + 2 * pad + stride, w + 2 * pad + stride, c), -np.inf, x.dtype)
    padded[:, pad:pad + h, pad:pad + w] = x
    out = np.full((n, *size, c), -np.inf, x.dtype)
    for i in range(window):
        for j in range(window):
            out = np.maximum(out, padded[:, i:i + stride * size[0]:stride, j:j + stride * size[1]:stride])
    return out


@pytest.mark.parametrize("shape, window, stride, pad, ceil", [
    ((1, 9, 11, 24), 3, 1, 1, False),  # GoogLeNet's inception pool branch
    ((2, 13, 13, 16), 3, 2, 0, True),  # SqueezeNet's, ceil mode: a partial window at the edge
    ((1, 7, 7, 12), 2, 2, 0, False),
])
def test_max_pools_run_parallel_and_vectorised(target, shape, window, stride, pad, ceil):
    """Pools are scheduled, not left as TVM's plain loops: the pixels shared between the threads,
    the channels a vector, the window inside it (GoogLeNet's 28 x 28 x 192 pool: 0.65 ms on one thread
    -> 0.057 ms, Zen 3)."""
    import tvm

    from tuning.deploy.model import loop_nest_schedule

    sch = loop_nest_schedule(_max_pool(shape, window, stride, pad, ceil), target.threads)
    script = sch.mod.script()
    assert "T.parallel" in script and "T.vectorized" in script, script
    lib = tvm.compile(sch.mod, target=target.tvm)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    want = _max_pool_reference(x, window, stride, pad, ceil)
    out = tvm.runtime.tensor(np.zeros(want.shape, "float32"))
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), want)  # a max is exact


def test_im2col_pads_the_pixels_to_whole_register_tiles(target):
    """Pixel counts without a factor 3 (14 x 14 = 196) are computed as whole 6-row tiles (198) for a
    6 x 16 micro-kernel; a one-vector-wide N (CO = 1000, SqueezeNet's classifier on 13 x 13 = 169
    pixels) stays unpadded with 13 rows; the padded rows are never copied out (the output is exact)."""
    from schedules.im2col import gemm_rows
    from tuning.task import Task

    avx2 = Machine.from_target({"kind": "llvm", "mcpu": "haswell"}, 2, host=False)
    odd = parse_spec("h=13,w=13,ci=512,co=1000,k=1")
    assert gemm_rows(odd) == 169 and Task(odd, "im2col", avx2).default_config()["tile_m"][-1] == 13
    even = parse_spec("h=14,w=14,ci=64,co=64,k=1")
    assert gemm_rows(even) == 198 and Task(even, "im2col", avx2).default_config()["tile_m"][-1] == 6
    assert gemm_rows(parse_spec("h=56,w=56,ci=64,co=64,k=1")) == 3144  # 4 tiles a block, +0.3%


def test_without_records_a_large_weight_is_timed_cold_against_im2col(target, tmp_path):
    """No records: for a weight beyond the L2 the untuned rule's pick (chosen from warm timings) is
    timed with its weights flushed against im2col's default; a weight that fits the L2 is left to
    the rule without building anything."""
    from tuning.deploy.library import choose
    from tuning.deploy.model import cold_choice

    logs = str(tmp_path / "logs")
    big = parse_spec("h=7,w=7,ci=512,co=512,k=3,pad=1")  # 9.4 MB of weight
    rule = choose(big, "auto", target, logs)
    assert not rule.tuned and rule.task.algorithm != "im2col"  # otherwise nothing to compare
    picked = cold_choice(big, "auto", target, logs)
    assert picked is not None and picked.task.algorithm in {rule.task.algorithm, "im2col"}
    assert cold_choice(parse_spec("h=14,w=14,ci=32,co=32,k=3,pad=1"), "auto", target, logs) is None


def test_hardswish_and_silu_fuse_into_the_conv_and_match_onnxruntime(tmp_path, target):
    """HardSwish and x * sigmoid(x) after a conv are its epilogue, not passes of their own (nor,
    for HardSwish's clip, a transpose each side); a conv whose output is read elsewhere too keeps
    its activation apart. NaN stays NaN as in ORT."""
    import tvm

    from .support.models import swish_block

    path = swish_block(str(tmp_path / "swish.onnx"))
    graph = load_model(path)
    assert [c.workload.epilogue.activation for c in graph.chains()] == ["hardswish", "silu", "none"]
    ops = [gv.name_hint for gv, f in ops_module(graph).functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    # what is left to TVM: the input's transpose, and the third conv's sigmoid, multiply and relu
    # with the outputs' transposes to NCHW: three fused ops, no clip, no divide
    assert not [name for name in ops if "clip" in name or "divide" in name or "maximum" in name], ops
    assert len(ops) == 3, ops
    executable, side = build_model(graph, target, "/nonexistent-logs", quiet=True)
    library = ModelLibrary(executable, side)
    x = np.random.default_rng(3).uniform(-4, 4, (1, 3, 11, 9)).astype(np.float32)
    x[0, 1, 5, 4] = np.nan
    ours, theirs = library.run({"x": x}), onnxruntime_outputs(path, {"x": x})
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(b).any()
    checks = compare_outputs(side, ours, theirs)
    assert all(c.ok for c in checks), [c.describe() for c in checks]
