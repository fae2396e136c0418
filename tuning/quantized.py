"""Quantized ONNX models (QDQ format): which convs run as convtune's int8 kernels, read off the file.

ONNX Runtime's `quantize_static` writes a quantized model as the float model with
QuantizeLinear / DequantizeLinear (Q / DQ) pairs around the ops it quantizes (the QDQ format):

    x_q --DQ(x_scale, x_zp)--.
    W_q (int8 constant) --DQ(w_scale, 0)--> Conv --(Relu | Clip)--> Q(y_scale, y_zp) --> y_q
    B_q (int32 constant) --DQ(x_scale * w_scale, 0)--'

TVM's ONNX frontend reads Q / DQ as float ops (`relax.op.quantize` / `dequantize`) and constant
folding turns DQ(W_q) into a float weight: what it builds is a float conv between fake-quant
ops. This module finds each such conv in the ONNX graph, where the integers are still there, as a
`QuantizedConv`: the int8 weight, the int32 bias, the zero points and the scales, and what the
conv's output becomes:

  requantized  the output's only consumer is a Q (after at most one Relu / Clip): the int8 workload
               writes uint8 / int8 directly, multiplier x_scale * w_scale / y_scale (QLinearConv);
  dequantized  anything else (a float op, a graph output): the int32 accumulator times
               x_scale * w_scale, float32 (the Quant `out=float32`), and the float graph goes on.

`tuning.graph` matches them to the Relax convs by their position among the file's convs (each
Relax conv found by its shape: `ModelGraph.conv_names`) and checks each against the Relax graph
before replacing it. A quantized conv that
does not fit (uint8 weights, a weight zero point, a float bias) stays TVM's float conv and is
named in the one warning, with the other quantized ops TVM runs as float (a quantized Add, pools).

Refused outright (ModelError naming the node): Q / DQ of int4 / float8 / float4 types, blocked
quantization, and scales or zero points whose shape does not fit the tensor they quantize.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .networks import ModelError
from .tables import safe_text

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ONNX Runtime's other format (quant_format=QOperator): integer ops TVM's ONNX frontend has no converter for
QOPERATOR_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QLinearAdd", "QLinearMul")
# ONNX TensorProto element types by number: the ones a Q / DQ may carry
_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 10: "float16",
               16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
               21: "uint4", 22: "int4", 23: "float4e2m1", 24: "float8e8m0"}
# No kernel of convtune's nor of TVM's CPU backend computes these: refused, not silently emulated.
REFUSED_TYPES = ("uint4", "int4", "float4e2m1", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz",
                 "float8e8m0")
# activations convtune's int8 kernels read: uint8 data -> workload dtype int8 (U8S8), int8 -> s8s8
WORKLOAD_DTYPE = {"uint8": "int8", "int8": "s8s8"}


@dataclass
class QuantizedConv:
    """One ONNX Conv between DQ's (and, when requantized, before a Q), with its integers."""

    node: str  # the Conv node's name (escaped), for messages
    dtype: str  # the workload's: int8 (uint8 activations) or s8s8 (int8 activations)
    x_scale: np.float32
    x_zero_point: int
    weight: np.ndarray  # OIHW int8, as the file has it
    w_scale: np.ndarray  # float32, (1,) per tensor or (co,) per output channel
    bias: np.ndarray | None  # int32 (co,), B_q (its scale is x_scale * w_scale: checked)
    out: str  # uint8 | int8 (requantized) or float32 (dequantized)
    y_scale: np.float32 | None = None
    y_zero_point: int | None = None
    activation: str = "none"  # an explicit Relu / Clip between the Conv and its Q
    clip: tuple[float, float] = (0.0, 6.0)

    @property
    def per_channel(self) -> bool:
        return self.w_scale.size > 1

    @property
    def scale(self) -> np.ndarray:
        """The requantize (or dequantize) multiplier per output channel, float32, computed as ONNX
        Runtime's QLinearConv computes it (x_scale * w_scale[c] / y_scale, left to right in
        float32), so that both round the same products the same way."""
        s = np.float32(self.x_scale) * self.w_scale.astype(np.float32)
        if self.out != "float32":
            s = s / np.float32(self.y_scale)
        return s.astype(np.float32)

    def quant_inputs(self) -> dict[str, np.ndarray]:
        """The kernel's quant arguments (schedules.workload.Workload.quant_args), by name."""
        data = "uint8" if self.dtype == "int8" else "int8"
        values = {"x_zero_point": np.array([self.x_zero_point], data), "scale": self.scale}
        if self.bias is not None:
            values["bias"] = self.bias
        if self.out != "float32":
            values["y_zero_point"] = np.array([self.y_zero_point], self.out)
            values["y_scale"] = np.array([self.y_scale], np.float32)
        return values


@dataclass
class Quantization:
    """What the file's Q / DQ ops say: the quantized convs by position among the Conv nodes, the
    quantized ops TVM will run as float ops, and one quantization step per dequantized output."""

    convs: dict[int, QuantizedConv] = field(default_factory=dict)
    float_ops: list[str] = field(default_factory=list)  # "Add 'name'", "Conv 'name': why"
    output_steps: dict[str, float] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.convs or self.float_ops)


class _Graph:
    def __init__(self, onnx, model):
        self.onnx = onnx
        self.constants = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in model.graph.output}
        try:  # the shapes of the tensors a Q / DQ quantizes, to check their scales against
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - a model shape inference cannot read: its declared shapes
            inferred = model
        self.types = {}
        for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            t = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            self.types[value.name] = (_ONNX_TYPES.get(t.elem_type, str(t.elem_type)), dims)
        for name, tensor in self.constants.items():
            self.types[name] = (_ONNX_TYPES.get(tensor.data_type, str(tensor.data_type)), list(tensor.dims))

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else self.onnx.numpy_helper.to_array(tensor)

    def dtype(self, name: str) -> str | None:
        return self.types.get(name, (None, None))[0]

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


def _node_name(node, index: int) -> str:
    return safe_text(node.name or f"{node.op_type} #{index}")


def _attr(onnx, node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def check_qdq(onnx, graph: _Graph, label: str, node, index: int) -> None:
    """Refuse, in one line naming the node, a Q / DQ convtune and TVM cannot compute faithfully."""
    name = _node_name(node, index)
    x = node.input[0]
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    types = [graph.dtype(zp)] if zp else []
    if node.op_type == "DequantizeLinear":
        types.append(graph.dtype(x))
    else:
        output_dtype = _attr(onnx, node, "output_dtype", 0)
        if output_dtype:
            types.append(_ONNX_TYPES.get(output_dtype, str(output_dtype)))
    if node.op_type == "DequantizeLinear" and len(types) == 2 and None not in types and types[0] != types[1]:
        raise ModelError(label, f"DequantizeLinear {name!r}: zero point is {types[0]}, its input {types[1]}: "
                                "ONNX requires the same type")
    for t in types:
        if t in REFUSED_TYPES:
            raise ModelError(label, f"{node.op_type} {name!r} quantizes to {t}: convtune compiles uint8 / int8 "
                                    "quantization (int4, float4 and float8 types are refused)")
    if _attr(onnx, node, "block_size", 0):
        raise ModelError(label, f"{node.op_type} {name!r} uses blocked quantization (block_size): not supported")
    scale_shape = graph.types.get(node.input[1], (None, None))[1]
    zp_shape = graph.types.get(zp, (None, None))[1] if zp else None
    x_shape = graph.types.get(x, (None, None))[1]
    if scale_shape is None:
        return
    if len(scale_shape) > 1:
        raise ModelError(label, f"{node.op_type} {name!r}: scale has shape {scale_shape}; it must be a scalar "
                                "(per tensor) or 1-D (one per channel of the axis)")
    if zp_shape is not None and list(zp_shape) != list(scale_shape) and not (
            _numel(zp_shape) == 1 and _numel(scale_shape) == 1):
        raise ModelError(label, f"{node.op_type} {name!r}: zero point has shape {list(zp_shape)}, its scale "
                                f"{list(scale_shape)}: they must match")
    if len(scale_shape) == 1 and scale_shape[0] not in (None, 1) and x_shape:
        axis = _attr(onnx, node, "axis", 1)
        axis = axis + len(x_shape) if axis < 0 else axis
        if not 0 <= axis < len(x_shape):
            raise ModelError(label, f"{node.op_type} {name!r}: axis {axis} is outside its {len(x_shape)}-D input")
        if x_shape[axis] is not None and x_shape[axis] != scale_shape[0]:
            raise ModelError(label, f"{node.op_type} {name!r}: {scale_shape[0]} scales for the {x_shape[axis]} "
                                    f"channels of axis {axis}")


def _numel(shape) -> int:
    return int(np.prod([d or 1 for d in shape])) if shape else 1


def read_quantization(model, label: str) -> Quantization:
    """The file's quantized convs and the quantized ops left to TVM (see the module docstring);
    ModelError for what is refused. A float model gives an empty Quantization."""
    import onnx

    for index, node in enumerate(model.graph.node):
        if node.op_type in QOPERATOR_OPS:
            raise ModelError(label, f"{node.op_type} {_node_name(node, index)!r}: a model in ONNX Runtime's QOperator "
                                    "format, which TVM cannot read; quantize it in the QDQ format (quantize_static's "
                                    "default, quant_format=QuantFormat.QDQ), whose convs convtune runs as int8 kernels")
    if not any(n.op_type in QDQ_OPS for n in model.graph.node):
        return Quantization()
    graph = _Graph(onnx, model)
    found = Quantization()
    for index, node in enumerate(model.graph.node):
        if node.op_type in QDQ_OPS:
            check_qdq(onnx, graph, label, node, index)
    convs = 0
    lowered: set = set()  # the ONNX nodes convtune's kernels compute (Conv, its DQs, Relu, Q)
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Conv":
            continue
        position, convs = convs, convs + 1
        if not _from_dq(graph, node.input[0]):
            continue  # a float conv: not quantized
        try:
            conv, nodes = _quantized_conv(onnx, graph, node, index)
        except _NotLowered as why:
            found.float_ops.append(f"Conv {_node_name(node, index)!r} ({why})")
            continue
        found.convs[position] = conv
        lowered.update(id(n) for n in nodes)
    # The quantized ops TVM runs as float: every other op that reads a DQ's output or feeds a Q.
    seen = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in QDQ_OPS or node.op_type == "Conv" or id(node) in lowered:
            continue
        reads = any(_from_dq(graph, i) for i in node.input if i)
        feeds = any(u.op_type == "QuantizeLinear" for o in node.output for u in graph.consumers.get(o, []))
        if reads or feeds:
            seen.append(f"{node.op_type} {_node_name(node, index)!r}")
    found.float_ops += seen
    for output in model.graph.output:
        producer = graph.producer.get(output.name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            scale = graph.constant(producer.input[1])
            if scale is not None and scale.size == 1:
                found.output_steps[safe_text(output.name)] = float(scale.reshape(()))
    return found


class _NotLowered(Exception):
    """Why a quantized conv stays TVM's float conv."""


def _from_dq(graph: _Graph, name: str):
    producer = graph.producer.get(name)
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def _scalar(graph: _Graph, name: str | None, what: str, default=0):
    if not name:
        return default
    value = graph.constant(name)
    if value is None:
        raise _NotLowered(f"its {what} is computed at run time")
    if value.size != 1:
        raise _NotLowered(f"its {what} is per channel ({value.size} values)")
    return value.reshape(())


def _quantized_conv(onnx, graph: _Graph, node, index: int) -> tuple[QuantizedConv, list]:
    name = _node_name(node, index)
    dq_x = _from_dq(graph, node.input[0])
    x_type = graph.dtype(dq_x.input[0])
    if x_type not in WORKLOAD_DTYPE:
        raise _NotLowered(f"{x_type} activations; the int8 kernels read uint8 or int8")
    x_scale = np.float32(_scalar(graph, dq_x.input[1], "input scale"))
    x_zp = int(_scalar(graph, dq_x.input[2] if len(dq_x.input) > 2 else None, "input zero point"))
    dq_w = _from_dq(graph, node.input[1])
    weight = graph.constant(dq_w.input[0]) if dq_w is not None else None
    if weight is None:
        raise _NotLowered("its weight is not a DequantizeLinear of a constant")
    if weight.dtype != np.int8:
        raise _NotLowered(f"{weight.dtype} weights; the int8 kernels take int8 weights")
    co = weight.shape[0]
    w_scale = graph.constant(dq_w.input[1])
    w_zp = graph.constant(dq_w.input[2]) if len(dq_w.input) > 2 and dq_w.input[2] else np.zeros(1, np.int8)
    if w_scale is None or w_zp is None:
        raise _NotLowered("its weight scale or zero point is computed at run time")
    if np.any(w_zp != 0):
        raise _NotLowered("its weight zero point is not 0 (the int8 kernels take symmetric weights)")
    if w_scale.size not in (1, co) or (w_scale.size > 1 and _attr(onnx, dq_w, "axis", 1) not in (0, -4)):
        raise _NotLowered(f"its weight scale has {w_scale.size} values, not one or one per output channel")
    w_scale = w_scale.astype(np.float32).reshape(-1)
    nodes = [node, dq_x, dq_w]
    bias = None
    if len(node.input) > 2 and node.input[2]:
        dq_b = _from_dq(graph, node.input[2])
        b = graph.constant(dq_b.input[0]) if dq_b is not None else None
        if b is None or b.dtype != np.int32:
            raise _NotLowered("its bias is not a DequantizeLinear of an int32 constant")
        b_scale = graph.constant(dq_b.input[1])
        b_zp = graph.constant(dq_b.input[2]) if len(dq_b.input) > 2 and dq_b.input[2] else np.zeros(1, np.int32)
        expected = np.float32(x_scale) * w_scale
        # QLinearConv's bias is in units of x_scale * w_scale; a bias quantized otherwise would
        # need rescaling, which is not the integer the file holds.
        if (b_scale is None or b_zp is None or np.any(b_zp != 0)
                or not np.allclose(np.broadcast_to(b_scale.reshape(-1), expected.shape), expected, rtol=1e-5)):
            raise _NotLowered("its bias is not quantized with scale x_scale * w_scale and zero point 0")
        bias = b.astype(np.int32).reshape(-1)
        nodes.append(dq_b)
    dtype = WORKLOAD_DTYPE[x_type]
    conv = QuantizedConv(safe_text(name), dtype, x_scale, x_zp, weight, w_scale, bias, "float32")
    # The output: Q after at most one Relu / Clip (requantized), else dequantized float32.
    after = graph.only_consumer(node.output[0])
    activation, clip, act_node = "none", (0.0, 6.0), None
    if after is not None and after.op_type in ("Relu", "Clip"):
        if after.op_type == "Relu":
            activation = "relu"
        else:
            lo = graph.constant(after.input[1]) if len(after.input) > 1 and after.input[1] else None
            hi = graph.constant(after.input[2]) if len(after.input) > 2 and after.input[2] else None
            if lo is not None and hi is not None and lo.size == 1 and hi.size == 1:
                activation, clip = "clip", (float(lo.reshape(())), float(hi.reshape(())))
        if activation != "none":
            act_node, after = after, graph.only_consumer(after.output[0])
    if after is not None and after.op_type == "QuantizeLinear":
        y_type = graph.dtype(after.input[2]) if len(after.input) > 2 and after.input[2] else "uint8"
        y_scale = graph.constant(after.input[1])
        y_zp = graph.constant(after.input[2]) if len(after.input) > 2 and after.input[2] else np.zeros(1, np.uint8)
        if y_type in ("uint8", "int8") and y_scale is not None and y_scale.size == 1 and y_zp is not None \
                and y_zp.size == 1:
            conv.out, conv.y_scale, conv.y_zero_point = y_type, np.float32(y_scale.reshape(())), int(y_zp.reshape(()))
            conv.activation, conv.clip = activation, clip
            nodes += [after] + ([act_node] if act_node is not None else [])
    return conv, nodes
