"""tuning/quantized.py: quantized ONNX models (QDQ, as ONNX Runtime's quantize_static writes them)
compile to int8 kernels: the chains are int8 workloads with the file's zero points and scales, the
compiled model equals ONNX Runtime within one quantization step of its output, and its convs run
as direct-int8 / depthwise-int8.

The models are built here: a random 4-conv network on a 12x12 input (a 3x3 conv, a depthwise 3x3,
a pointwise conv whose output joins a residual add, ReLUs, a 3x3 stride-2 conv), quantized with a
calibration reader over random data, U8S8 and S8S8, per tensor and per channel.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402

from tuning import cli  # noqa: E402
from tuning.deploy.model import (  # noqa: E402
    ModelLibrary,
    build_model,
    compare_outputs,
    random_model_inputs,
    reference_outputs,
)
from tuning.model_import import load_model  # noqa: E402
from tuning.model_import import ModelError  # noqa: E402

INPUT = (1, 3, 12, 12)


def float_model(path: str, seed: int = 0) -> str:
    """conv1 3x3 -> relu -> depthwise 3x3 -> relu -> pointwise 1x1 -> + relu1 (residual) -> relu ->
    conv4 3x3 stride 2: every kind of conv chain a quantized CNN has, on a 12x12 input."""
    rng = np.random.default_rng(seed)

    def weight(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8, name="depthwise"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pointwise"),
        helper.make_node("Add", ["c3", "r1"], ["a"], name="residual"),
        helper.make_node("Relu", ["a"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv4"),
    ]
    weights = [weight("w1", (8, 3, 3, 3)), weight("b1", (8,), 0.1), weight("w2", (8, 1, 3, 3)),
               weight("b2", (8,), 0.1), weight("w3", (8, 8, 1, 1)), weight("b3", (8,), 0.1),
               weight("w4", (4, 8, 3, 3)), weight("b4", (4,), 0.1)]
    graph = helper.make_graph(nodes, "qdq_test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


class RandomData(CalibrationDataReader):
    def __init__(self, seed: int = 1, batches: int = 8):
        rng = np.random.default_rng(seed)
        self.batches = iter([{"x": rng.uniform(-1, 1, INPUT).astype(np.float32)} for _ in range(batches)])

    def get_next(self):
        return next(self.batches, None)


ACTIVATIONS = {"U8S8": QuantType.QUInt8, "S8S8": QuantType.QInt8}


def quantized_model(tmp_path, kind: str = "U8S8", per_channel: bool = False, **options) -> str:
    source = float_model(str(tmp_path / "float.onnx"))
    path = str(tmp_path / f"{kind}{'_pc' if per_channel else ''}.onnx")
    quantize_static(source, path, RandomData(), quant_format=QuantFormat.QDQ, activation_type=ACTIVATIONS[kind],
                    weight_type=QuantType.QInt8, per_channel=per_channel, **options)
    return path


def initializers(path: str) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def compiled_against_onnxruntime(graph, target, tmp_path, seed: int = 0):
    executable, side = build_model(graph, target, str(tmp_path / "logs"), quiet=True)
    library = ModelLibrary(executable, side)
    inputs = random_model_inputs(side, seed)
    _, theirs = reference_outputs(side, inputs)
    return side, library.run(inputs), theirs


CASES = [("U8S8", False), ("U8S8", True), ("S8S8", False), ("S8S8", True)]


# -- (a) the chains are int8 workloads with the file's integers ---------------------------------------
@pytest.mark.parametrize("kind,per_channel", CASES)
def test_chains_are_int8_workloads_with_the_files_scales(tmp_path, kind, per_channel, capsys):
    path = quantized_model(tmp_path, kind, per_channel)
    chains = load_model(path).chains()
    values = initializers(path)
    assert [c.name for c in chains] == ["conv1", "depthwise", "pointwise", "conv4"]
    # the conv outputs ONNX Runtime quantized (each conv's output tensor keeps its float name)
    outputs = {"conv1": "r1", "depthwise": "r2", "pointwise": "c3", "conv4": "y"}
    inputs = {"conv1": "x", "depthwise": "r1", "pointwise": "r2", "conv4": "r3"}
    weights = {"conv1": "w1", "depthwise": "w2", "pointwise": "w3", "conv4": "w4"}
    for chain in chains:
        wl = chain.workload
        assert wl.dtype == ("int8" if kind == "U8S8" else "s8s8"), chain.name
        assert wl.quant.out == ("uint8" if kind == "U8S8" else "int8")
        assert wl.quant.scale == ("channel" if per_channel else "tensor")
        assert wl.epilogue.bias and not wl.epilogue.residual
        assert wl.layout == "NHWC" and wl.groups == (8 if chain.name == "depthwise" else 1)
        # the requantize multiplier, from the file's own initializers: x_scale * w_scale / y_scale
        x_scale = values[f"{inputs[chain.name]}_scale"]
        w_scale = values[f"{weights[chain.name]}_scale"].reshape(-1)
        y_scale = values[f"{outputs[chain.name]}_scale"]
        expected = (np.float32(x_scale) * w_scale.astype(np.float32)) / np.float32(y_scale)
        got = chain.kernel_inputs()
        np.testing.assert_array_equal(got["scale"], expected.astype(np.float32))
        assert got["x_zero_point"].dtype == np.dtype(wl.data_dtype)
        assert int(got["x_zero_point"][0]) == int(values[f"{inputs[chain.name]}_zero_point"])
        assert int(got["y_zero_point"][0]) == int(values[f"{outputs[chain.name]}_zero_point"])
        # the int8 weight (HWIO) and the int32 bias are the file's integers, not re-quantized floats
        w_q = values[f"{weights[chain.name]}_quantized"]
        np.testing.assert_array_equal(chain.weight, w_q.transpose(2, 3, 1, 0))
        assert chain.weight.dtype == np.int8
        bias_name = "b" + weights[chain.name][1:]
        np.testing.assert_array_equal(chain.bias, values[f"{bias_name}_quantized"])
    # the residual add stays TVM's (fake-quant float), named in the one warning
    err = capsys.readouterr().err
    assert err.count("quantized op(s) run in float32") == 1 and "Add 'residual'" in err


# -- (b) the compiled model equals ONNX Runtime within one quantization step ---------------------------
@pytest.mark.slow  # compiles a whole model
@pytest.mark.parametrize("kind,per_channel", CASES)
def test_compiled_model_matches_onnxruntime_within_one_step(tmp_path, target, kind, per_channel):
    path = quantized_model(tmp_path, kind, per_channel)
    step = float(initializers(path)["y_scale"])
    for seed in (0, 1):
        side, ours, theirs = compiled_against_onnxruntime(load_model(path), target, tmp_path, seed)
        assert side["tolerance"]["quantization_step"] == {"y": pytest.approx(step)}
        error = float(np.abs(ours[0].astype(np.float64) - theirs[0]).max())
        assert error <= step * (1 + 1e-5), f"{error / step:.2f} steps"
        # the output spans many steps: an all-zero or constant output would not pass by accident
        assert np.unique(np.rint(theirs[0] / step)).size > 20
        assert all(c.ok for c in compare_outputs(side, ours, theirs))


@pytest.mark.slow  # compiles a whole model
def test_a_wrong_requantize_multiplier_is_caught(tmp_path, target):
    """The comparison can fail: one conv's multiplier off by 5% moves the output by more than a step."""
    path = quantized_model(tmp_path, "U8S8")
    graph = load_model(path)
    chain = graph.chains()[2]
    chain.quant.y_scale = np.float32(chain.quant.y_scale * 0.95)  # the multiplier x*w/y grows by 5%
    side, ours, theirs = compiled_against_onnxruntime(graph, target, tmp_path)
    assert not all(c.ok for c in compare_outputs(side, ours, theirs))


# -- (c) the convs really run as int8 kernels ------------------------------------------------------------
@pytest.mark.slow  # compiles a whole model
def test_compile_model_builds_int8_kernels_and_verifies(tmp_path, capsys):
    path = quantized_model(tmp_path, "U8S8", per_channel=True)
    library = str(tmp_path / "q.so")
    assert cli.main(["compile", "--model", path, "-o", library, "--logs", str(tmp_path / "logs")]) == 0
    import json

    side = json.load(open(library[:-3] + ".json")) if False else json.load(open(str(tmp_path / "q.json")))
    rows = {r["name"]: r for r in side["layers"]}
    from schedules.im2col_int8 import has_vnni
    from schedules.machine import host_machine

    # the untuned rule: im2col-int8 for the 1x1 conv, direct-int8 for the 3x3 ones; on a VNNI
    # host the vpdpbusd member for every groups=1 conv
    gemm = "im2col-int8-vnni" if has_vnni(host_machine()) else None
    assert {n: r["algorithm"] for n, r in rows.items()} == {
        "conv1": gemm or "direct-int8", "depthwise": "depthwise-int8", "pointwise": gemm or "im2col-int8",
        "conv4": gemm or "direct-int8"}
    assert all(r["workload"]["dtype"] == "int8" and r["workload"]["quant"]["out"] == "uint8" for r in rows.values())
    assert side["quantized"]["int8_layers"] == 4 and side["quantized"]["float_ops"] == ["Add 'residual'"]
    capsys.readouterr()
    assert cli.main(["verify", library]) == 0
    assert "quantization step" in capsys.readouterr().out


def test_the_int8_kernels_read_the_quantized_tensors(tmp_path, target):
    """In the built graph each kernel takes uint8 data and an int8 weight: no float conv is left,
    and between two int8 convs the tensor stays uint8 NHWC (no dequantize, no transpose pair)."""
    from tvm import relax

    from tuning.deploy.model import plan, replace_convs

    graph = load_model(quantized_model(tmp_path, "U8S8"))
    mod = replace_convs(graph, plan(graph, target, str(tmp_path / "logs")))
    calls = [b.value for block in mod["main"].body.blocks for b in block.bindings if isinstance(b.value, relax.Call)]
    ops = [getattr(c.op, "name", "") for c in calls]
    assert "relax.nn.conv2d" not in ops
    kernels = [c for c in calls if getattr(c.op, "name", "") == "relax.call_tir"
               and "convtune_l" in c.args[0].name_hint]
    assert len(kernels) == 4
    assert all(str(c.args[1].fields[0].ty.dtype) == "uint8" for c in kernels)
    # the weight: int8, or direct-int8's / im2col-int8's prepared panels of it widened to int16
    # (vpmaddwd's operand)
    from schedules.im2col_int8 import has_vnni
    from schedules.machine import host_machine

    wide = "int8" if has_vnni(host_machine()) else "int16"  # the VNNI member packs int8 quads
    assert [str(c.args[1].fields[1].ty.dtype) for c in kernels] == [wide, "int8", wide, wide]
    # requantized in the kernel (a kernel with a workspace, im2col-int8's col, returns (col, out))
    assert all(str(getattr(c.ty, "dtype", None) or c.ty.fields[-1].dtype) == "uint8" for c in kernels)
    # conv1 -> depthwise -> pointwise: their tensors pass straight through (the residual reads conv1's too)
    assert ops.count("relax.permute_dims") == 5  # x_q in; conv1 and pointwise out (to the add); add in; y out
    assert ops.count("relax.dequantize") == 3  # the add's two inputs and the output


# -- where the pattern is not complete: dequantized float32 out -------------------------------------------
def without_qdq(path: str, tensor: str) -> str:
    """The model with the QuantizeLinear of `tensor` and its DequantizeLinear removed: the float
    tensor goes on unquantized (to a float op, or out of the model)."""
    model = onnx.load(path)
    nodes = list(model.graph.node)
    q = next(n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    dq = next(n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    outputs = {o.name for o in model.graph.output}
    for node in nodes:
        if dq.output[0] in outputs and tensor in node.output:  # the producer writes the model's output
            node.output[list(node.output).index(tensor)] = dq.output[0]
        for i, name in enumerate(node.input):
            if name == dq.output[0]:
                node.input[i] = tensor
    model.graph.node.remove(q)
    model.graph.node.remove(dq)
    onnx.save(model, path)
    return path


@pytest.mark.slow  # compiles a whole model
def test_a_conv_whose_output_stays_float_is_dequantized_in_the_kernel(tmp_path, target):
    """conv4's output is the model's (float) output, with no QuantizeLinear: its int8 kernel writes
    float32, acc * x_scale * w_scale + the bias, and matches ONNX Runtime to float32 rounding."""
    path = without_qdq(quantized_model(tmp_path, "U8S8", per_channel=True), "y_QuantizeLinear_Input")
    graph = load_model(path)
    outs = {c.name: c.workload.quant.out for c in graph.chains()}
    assert outs == {"conv1": "uint8", "depthwise": "uint8", "pointwise": "uint8", "conv4": "float32"}
    conv4 = graph.chains()[3]
    values = initializers(path)
    expected = np.float32(values["r3_scale"]) * values["w4_scale"].astype(np.float32)
    np.testing.assert_array_equal(conv4.kernel_inputs()["scale"], expected)
    side, ours, theirs = compiled_against_onnxruntime(graph, target, tmp_path)
    assert "quantization_step" in side["tolerance"] and not side["tolerance"]["quantization_step"]
    scale = float(np.abs(theirs[0]).max())
    error = float(np.abs(ours[0] - theirs[0]).max())
    assert scale > 0.1 and error <= 1e-5 * scale, error  # no requantize at the end: float32 rounding only
    assert all(c.ok for c in compare_outputs(side, ours, theirs))


def test_a_conv_feeding_a_float_op_is_dequantized(tmp_path):
    """pointwise's output goes to the residual add unquantized: its chain ends at the float value."""
    path = without_qdq(quantized_model(tmp_path, "S8S8"), "c3")
    outs = {c.name: (c.workload.dtype, c.workload.quant.out) for c in load_model(path).chains()}
    assert outs["pointwise"] == ("s8s8", "float32") and outs["conv1"] == ("s8s8", "int8")


# -- refusals: one line naming the node -------------------------------------------------------------------
def _qdq_model(path, weight, scale, zero_point, axis=0, x_zero=None):
    """x -> Conv(x, DequantizeLinear(weight, scale, zero_point)) -> y: one DQ to refuse or accept."""
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=axis, name="dq_weight"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    inits = [weight, scale, zero_point]
    if x_zero is not None:
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_input"),
                 helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_input"),
                 nodes[0], helper.make_node("Conv", ["xd", "w"], ["y"], name="conv")]
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "xs"), x_zero]
    graph = helper.make_graph(nodes, "refuse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def _int8_weight(co=3):
    return numpy_helper.from_array(np.ones((co, 2, 1, 1), np.int8), "wq")


@pytest.mark.parametrize("case,words", [
    ("int4 weight", ["dq_weight", "int4"]),
    ("float8 zero point", ["q_input", "float8e4m3fn"]),
    ("scales for the wrong channel count", ["dq_weight", "4 scales for the 3 channels"]),
    ("zero point shape", ["dq_weight", "zero point has shape [2]"]),
    ("2-D scale", ["dq_weight", "scale has shape [3, 1]"]),
    ("zero point type", ["dq_weight", "zero point is uint8, its input int8"]),
])
def test_bad_quantization_is_one_line_naming_the_node(tmp_path, case, words):
    path = str(tmp_path / "bad.onnx")
    f32 = np.float32
    if case == "int4 weight":
        weight = helper.make_tensor("wq", TensorProto.INT4, [3, 2, 1, 1], [1] * 6)
        _qdq_model(path, weight, numpy_helper.from_array(np.full(3, 0.1, f32), "ws"),
                   helper.make_tensor("wz", TensorProto.INT4, [3], [0, 0, 0]))
    elif case == "float8 zero point":
        _qdq_model(path, _int8_weight(), numpy_helper.from_array(np.full(3, 0.1, f32), "ws"),
                   numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
                   x_zero=helper.make_tensor("xz", TensorProto.FLOAT8E4M3FN, [], [0.0]))
    elif case == "scales for the wrong channel count":
        _qdq_model(path, _int8_weight(), numpy_helper.from_array(np.full(4, 0.1, f32), "ws"),
                   numpy_helper.from_array(np.zeros(4, np.int8), "wz"))
    elif case == "zero point shape":
        _qdq_model(path, _int8_weight(), numpy_helper.from_array(np.full(3, 0.1, f32), "ws"),
                   numpy_helper.from_array(np.zeros(2, np.int8), "wz"))
    elif case == "zero point type":
        _qdq_model(path, _int8_weight(), numpy_helper.from_array(np.full(3, 0.1, f32), "ws"),
                   numpy_helper.from_array(np.zeros(3, np.uint8), "wz"))
    else:
        _qdq_model(path, _int8_weight(), numpy_helper.from_array(np.full((3, 1), 0.1, f32), "ws"),
                   numpy_helper.from_array(np.zeros((3, 1), np.int8), "wz"))
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_good_hand_written_qdq_conv_is_accepted(tmp_path):
    """The refusal test's model with its faults removed loads, its conv an s8s8 chain dequantized to float32."""
    path = _qdq_model(str(tmp_path / "good.onnx"), _int8_weight(),
                      numpy_helper.from_array(np.full(3, 0.1, np.float32), "ws"),
                      numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
                      x_zero=numpy_helper.from_array(np.array(3, np.int8), "xz"))
    (chain,) = load_model(path).chains()
    assert (chain.workload.dtype, chain.workload.quant.out, chain.workload.quant.scale) == ("s8s8", "float32", "channel")


def test_a_conv_the_int8_kernels_cannot_take_stays_float_named_in_the_warning(tmp_path, capsys):
    """A weight zero point other than 0 (the kernels take symmetric weights): the conv stays TVM's
    float conv, and the one warning names it with the reason."""
    path = _qdq_model(str(tmp_path / "asymmetric.onnx"), _int8_weight(),
                      numpy_helper.from_array(np.full(3, 0.1, np.float32), "ws"),
                      numpy_helper.from_array(np.array([0, 1, 0], np.int8), "wz"),
                      x_zero=numpy_helper.from_array(np.array(3, np.int8), "xz"))
    (chain,) = load_model(path).chains()
    assert chain.workload.dtype == "float32" and chain.quant is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Conv 'conv' (its weight zero point is not 0" in err


def test_the_qoperator_format_is_refused_naming_the_format_to_use(tmp_path):
    source = float_model(str(tmp_path / "float.onnx"))
    path = str(tmp_path / "qoperator.onnx")
    quantize_static(source, path, RandomData(), quant_format=QuantFormat.QOperator)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and "QLinearConv 'conv1_quant'" in message and "QDQ" in message, message


def test_two_int8_convs_reading_one_tensor_share_its_nhwc_copy(tmp_path, target):
    """A ResNet block's 3x3 conv and its 1x1 downsample read the same quantized tensor: one permute
    to NHWC serves both kernels."""
    from tvm import relax

    from tuning.deploy.model import plan, replace_convs

    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
               for n, s in (("wa", (8, 3, 3, 3)), ("wb", (8, 3, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2], name="block"),
             helper.make_node("Conv", ["x", "wb"], ["b"], strides=[2, 2], name="downsample"),
             helper.make_node("Add", ["a", "b"], ["y"], name="join")]
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], weights)
    source = str(tmp_path / "branches.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    path = str(tmp_path / "branches.q.onnx")
    quantize_static(source, path, RandomData(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    model = load_model(path)
    assert [c.workload.dtype for c in model.chains()] == ["int8", "int8"]
    mod = replace_convs(model, plan(model, target, str(tmp_path / "logs")))
    bindings = [b for block in mod["main"].body.blocks for b in block.bindings]
    calls = {b.var: b.value for b in bindings if isinstance(b.value, relax.Call)}
    kernels = [c for c in calls.values() if getattr(c.op, "name", "") == "relax.call_tir"
               and "convtune_l" in c.args[0].name_hint]
    inputs = {kernel.args[1].fields[0] for kernel in kernels}
    assert len(kernels) == 2 and len(inputs) == 1
    (shared,) = inputs
    assert getattr(calls[shared].op, "name", "") == "relax.permute_dims"
