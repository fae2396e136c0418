"""Small ONNX models built in the test (no downloads, no torch): the structures whole-model
compilation must handle, with random weights."""

from __future__ import annotations

import numpy as np
import pytest


def small_resnet(path: str, seed: int = 0, batch: int = 1, size: int = 12) -> str:
    """input [N,3,S,S] -> conv3x3(+bias) -> BatchNorm -> Relu -> conv3x3 + residual -> Relu
    -> MaxPool 2x2 -> conv1x1 -> Clip(0, 6) -> GlobalAveragePool -> Flatten -> Gemm (10 classes).
    Two conv chains with a residual between them, a ReLU6 chain, pooling and a linear layer."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.3):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.uniform(-scale, scale, shape).astype(np.float32).ravel())

    c = 8
    inits = [
        init("w1", c, 3, 3, 3), init("b1", c),
        helper.make_tensor("bn_s", TensorProto.FLOAT, [c], rng.uniform(0.5, 1.5, c).astype(np.float32)),
        init("bn_b", c), init("bn_m", c),
        helper.make_tensor("bn_v", TensorProto.FLOAT, [c], rng.uniform(0.5, 2.0, c).astype(np.float32)),
        init("w2", c, c, 3, 3), init("b2", c),
        init("w3", 16, c, 1, 1), init("b3", 16),
        helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0]),
        init("fc_w", 10, 16), init("fc_b", 10),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="stem/conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"], name="stem/bn"),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="block/conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], name="head/conv"),
        helper.make_node("Clip", ["c3", "lo", "hi"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_resnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def onnxruntime_outputs(path: str, inputs: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, inputs)


def mlp_block(path: str, seed: int = 0) -> str:
    """ConvNeXt's block without its depthwise conv, NHWC as ConvNeXt permutes it: input [1,5,7,8]
    -> MatMul [8,32] + bias -> GELU (Div, Erf, Add, Mul, Mul: as torch exports it) -> MatMul [32,8]
    + bias -> + input (the residual) -> Sigmoid, and a second output: Tanh of the first hidden
    layer's mean. Two matmuls by constant weights (1x1 convs for convtune), transcendental ops."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.5):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.uniform(-scale, scale, shape).astype(np.float32).ravel())

    def scalar(name, value):
        return helper.make_tensor(name, TensorProto.FLOAT, [], [value])

    inits = [init("w1", 8, 32), init("b1", 32), init("w2", 32, 8), init("b2", 8),
             scalar("sqrt2", 2 ** 0.5), scalar("one", 1.0), scalar("half", 0.5)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="block/fc1"),
        helper.make_node("Add", ["m1", "b1"], ["h1"]),
        helper.make_node("Div", ["h1", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["h1", "e1"], ["g0"]),
        helper.make_node("Mul", ["g0", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["m2"], name="block/fc2"),
        helper.make_node("Add", ["m2", "b2"], ["h2"]),
        helper.make_node("Add", ["h2", "x"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["y"]),
        helper.make_node("ReduceMean", ["h1"], ["mean"], axes=[3], keepdims=0),
        helper.make_node("Tanh", ["mean"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 7, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 7, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5, 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def swish_block(path: str, seed: int = 0) -> str:
    """MobileNet-v3 / EfficientNet activations after convs: conv + bias -> HardSwish (ONNX op 14);
    conv -> Sigmoid, Mul (SiLU as torch exports it); a conv whose output also feeds a second
    branch (its sigmoid is not fused: the conv's output is read three times). NCHW [1, 3, 11, 9]."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.4):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.uniform(-scale, scale, shape).astype(np.float32).ravel())

    inits = [init("w1", 16, 3, 3, 3), init("b1", 16, scale=2.0), init("w2", 16, 16, 1, 1), init("w3", 8, 16, 3, 3)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("HardSwish", ["c1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2"], ["c2"], name="expand"),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Mul", ["c2", "s2"], ["h2"]),
        helper.make_node("Conv", ["h2", "w3"], ["c3"], pads=[1, 1, 1, 1], name="project"),
        helper.make_node("Sigmoid", ["c3"], ["s3"]),
        helper.make_node("Mul", ["c3", "s3"], ["y"]),
        helper.make_node("Relu", ["c3"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "swish_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 11, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 11, 9]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 11, 9])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def four_convs(path: str) -> None:
    """Four small convs in a chain, each a layer of its own kind (3x3, 1x1, 3x3 stride 2, 3x3 unpadded):
    a network search with four tasks."""
    onnx = pytest.importorskip("onnx", reason="onnx is an optional extra: pip install onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="k3", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="k1"),
             helper.make_node("Conv", ["b", "w3"], ["c"], name="k3s2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["c", "w4"], ["y"], name="k3nopad")]
    inits = [weight("w1", (8, 8, 3, 3)), weight("w2", (8, 8, 1, 1)), weight("w3", (8, 8, 3, 3)),
             weight("w4", (8, 8, 3, 3))]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
