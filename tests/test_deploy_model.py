"""tuning/deploy/model/: a whole model compiled to one library. Conv chains found and fused, batch norm
folded, the rest compiled by TVM (pools scheduled), run through `convtune run`, checked against ONNX
Runtime by `convtune verify`; and models nobody tuned for: matmuls by constant weights on the 1x1 conv
kernels, activations fused, cold weights timed, `verify` that means something (scaled tolerance, NaN
where the reference has NaN, top-k agreement)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import tuning.cli as cli  # noqa: E402
from schedules.workload import parse_spec  # noqa: E402
from tuning.deploy.model import (  # noqa: E402
    DEGENERATE_SCALE,
    ModelLibrary,
    build_model,
    compare_outputs,
    random_model_inputs,
    replace_convs,
)
from tuning.graph import ops_module  # noqa: E402
from tuning.model_import import load_model  # noqa: E402

from .support.models import mlp_block, onnxruntime_outputs, small_resnet  # noqa: E402

@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return small_resnet(str(tmp_path_factory.mktemp("model") / "small_resnet.onnx"))


@pytest.mark.slow  # reads the whole model into Relax
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


@pytest.mark.slow  # reads the whole model into Relax
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


@pytest.mark.slow  # compiles a whole model
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


@pytest.mark.slow  # compiles a whole model
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


@pytest.mark.slow  # compiles a whole model
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


@pytest.mark.slow  # compiles a whole model
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


@pytest.mark.slow  # compiles a whole model
def test_prepared_weights_are_constants_not_calls(model_path, tmp_path, target):
    """Two-phase kernels call only their run function per inference: no pack_weight in main."""
    from tuning.deploy.model import plan

    graph = load_model(model_path)
    layers = plan(graph, target, str(tmp_path), "winograd-f2,direct")
    text = replace_convs(graph, layers)["main"].script(show_meta=False)
    assert "conv2d_packed" in text and "pack_weight" not in text


@pytest.mark.slow  # compiles a whole model
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


@pytest.mark.slow  # compiles a whole model
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


@pytest.mark.slow  # compiles a whole model
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


@pytest.mark.slow  # compiles a whole model
def test_bench_model_times_each_contender_in_fresh_processes(model_path, tmp_path, capsys):
    """`bench --model`: convtune's library and ONNX Runtime each in fresh processes of their own,
    alternating, the spread across processes and each runtime's threads reported."""
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


# -- models nobody tuned for ----------------------------------------------------------------------------
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


@pytest.mark.parametrize("channels, fused", [
    ((64, 32, 32, 32, 32, 32, 32), True),  # DenseNet: concat, then batch norm and relu in one function
    ((8, 24, 5), False),  # odd widths, a bare concat
])
def test_a_concat_is_one_copy_loop_per_input(target, channels, fused):
    """The concatenated axis is partitioned at the inputs' boundaries (each part a plain copy, no
    chain of selects per element: DenseNet-121's concats 123 ms an inference before, 1 thread, Zen 2);
    the per-channel constants fused after it are read as before; the result is exact."""
    import tvm
    from tvm import te, topi

    from tuning.deploy.model import loop_nest_schedule

    ins = [te.placeholder((2, 5, 3, c), name=f"x{i}") for i, c in enumerate(channels)]
    total = sum(channels)
    cat = topi.concatenate(ins, axis=3)
    args = list(ins)
    if fused:
        mean, scale = te.placeholder((1, 1, 1, total), name="mean"), te.placeholder((1, 1, 1, total), name="scale")
        cat = te.compute(cat.shape, lambda n, h, w, c: te.max((cat[n, h, w, c] - mean[0, 0, 0, c]) * scale[0, 0, 0, c],
                                                             tvm.tirx.const(0.0, "float32")), name="bn_relu")
        args += [mean, scale]
    sch = loop_nest_schedule(te.create_prim_func(args + [cat]), target.threads)
    script = sch.mod.script()
    assert script.count("_partition\"") == len(channels) and "T.parallel" in script, script
    rng = np.random.default_rng(0)
    values = [rng.standard_normal([int(d) for d in a.shape]).astype("float32") for a in args]
    want = np.concatenate(values[: len(channels)], axis=3)
    if fused:
        want = np.maximum((want - values[-2]) * values[-1], 0)
    out = tvm.runtime.tensor(np.zeros(want.shape, "float32"))
    tvm.compile(sch.mod, target=target.tvm)["main"](*[tvm.runtime.tensor(v) for v in values], out)
    np.testing.assert_array_equal(out.numpy(), want)


def test_without_records_a_large_weight_is_timed_cold_against_im2col(target, tmp_path):
    """No records: for a weight beyond the L2 the untuned rule's pick (chosen from warm timings) is
    timed with its weights flushed against im2col's default; a weight that fits the L2 is left to
    the rule without building anything."""
    from tuning.deploy.library import choose
    from tuning.deploy.model import cold_choice

    logs = str(tmp_path / "logs")
    big = parse_spec("h=14,w=14,ci=256,co=256,k=3,pad=1")  # 2.4 MB of weight; the rule: Winograd F2
    rule = choose(big, "auto", target, logs)
    assert not rule.tuned and rule.task.algorithm != "im2col"  # otherwise nothing to compare
    picked = cold_choice(big, "auto", target, logs)
    assert picked is not None and picked.task.algorithm in {rule.task.algorithm, "im2col"}
    assert cold_choice(parse_spec("h=14,w=14,ci=32,co=32,k=3,pad=1"), "auto", target, logs) is None


@pytest.mark.slow  # compiles a whole model
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
