"""A user's model -> its conv layers: ONNX files and PyTorch programs (torch.export), or a zoo name.

Every 2-D convolution of the model becomes a `Layer(name, workload, count)`; layers with the same
shape are merged into one (the first one's name) whose `count` says how often the model runs it,
so a network is a weighted set of distinct tuning tasks, as in the built-in zoo.

- ONNX (`pip install onnx`): shapes come from `onnx.shape_inference`; `pads` are ONNX's
  (x1_begin, x2_begin, x1_end, x2_end) = our (top, left, bottom, right); `auto_pad` SAME_UPPER /
  SAME_LOWER / VALID are resolved to explicit pads as ONNX defines them.
- PyTorch (`pip install torch==2.13.0`): an `nn.Module` with example inputs, an ExportedProgram, or
  a `.pt2` file written by `torch.export.save`; `aten.conv2d` / `aten.convolution` nodes, shapes from
  the nodes' fake tensors (`node.meta["val"]`), names from the module path (`layer1.0.conv1`).

Both are NCHW models; the workloads take the layout asked for (NHWC by default, like the zoo):
the layer is the same convolution, laid out the way the deployed kernel will see it.
Refused with a message: a missing optional package (with its pip command), a 1-D/3-D conv,
symbolic (dynamic) shapes (fix the batch with `batch=`), a dtype other than float32.
"""

from __future__ import annotations

import os
import sys

from schedules.workload import Workload, WorkloadError

from .networks import NETWORKS, Layer, distinct_layers, network_layers

ONNX_PIP = "pip install onnx"
TORCH_PIP = "pip install torch==2.13.0"
MODEL_SUFFIXES = (".onnx", ".pt2")


class ModelError(WorkloadError):
    """A model convtune cannot read; `field` names the model (or file), the message says why."""


def _layers(label: str, found: list[tuple[str, Workload]], skipped: list[str], conv: str) -> list[Layer]:
    """The convolutions a model reader found, as distinct layers; transposed ones are named and left out."""
    if skipped:
        print(f"warning: {label}: transposed convolutions are not tuned: {', '.join(skipped)}", file=sys.stderr)
    if not found:
        raise ModelError(label, f"has no {conv}")
    return distinct_layers([Layer(name, wl) for name, wl in found])


def _workload(model: str, node: str, x_shape, w_shape, stride, pad, dilation, groups, layout) -> Workload:
    n, ci, h, w = x_shape
    co, cig, kh, kw = w_shape
    if cig * groups != ci:
        raise ModelError(model, f"{node}: weight {tuple(w_shape)} with groups={groups} does not fit "
                                f"{ci} input channels")
    try:
        return Workload(n=n, h=h, w=w, ci=ci, co=co, kh=kh, kw=kw, stride=tuple(stride), pad=tuple(pad),
                        dilation=tuple(dilation), groups=groups, layout=layout)
    except WorkloadError as err:
        raise ModelError(model, f"{node}: {err}") from None


def _same_pads(size: int, k: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """ONNX auto_pad SAME_*: output ceil(size / stride); the odd pixel goes at the end (UPPER) or the start."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


# -- ONNX --------------------------------------------------------------------------------------------
def _import_onnx():
    try:
        import onnx  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise ModelError("onnx", f"reading ONNX models needs the onnx package: {ONNX_PIP}") from None
    return onnx


def from_onnx(model, layout: str = "NHWC", batch: int | None = None, network: str | None = None) -> list[Layer]:
    """The conv layers of an ONNX model (a path or a ModelProto). `batch` fixes a symbolic batch
    dimension of the graph inputs (ONNX exports often leave it dynamic)."""
    onnx = _import_onnx()
    label = model if isinstance(model, str) else (network or model.graph.name or "model")
    if isinstance(model, str):
        if not os.path.exists(model):
            raise ModelError(model, "no such file")
        try:
            model = onnx.load(model)
        except Exception as err:  # noqa: BLE001 - protobuf raises several types
            raise ModelError(label, f"not an ONNX model: {err}") from None
        network = network or os.path.splitext(os.path.basename(label))[0]
    network = network or label
    if batch is not None:
        model = _fix_batch(onnx, model, batch)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as err:  # noqa: BLE001
        raise ModelError(label, f"ONNX shape inference failed: {err}") from None
    graph = model.graph
    shapes: dict[str, tuple[list, int]] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
            shapes[info.name] = (dims, tensor.elem_type)
    for init in graph.initializer:
        shapes[init.name] = (list(init.dims), init.data_type)
    unknown = {n.domain for n in graph.node if n.domain not in ("", "ai.onnx")}
    found, skipped = [], []
    for index, node in enumerate(graph.node):
        if node.op_type == "ConvTranspose":
            skipped.append(node.name or node.output[0])
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0] or f"Conv_{index}"
        where = f"Conv {name!r}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        x_shape = _onnx_shape(label, where, "input", node.input[0], shapes, unknown)
        w_shape = _onnx_shape(label, where, "weight", node.input[1], shapes, unknown)
        if len(x_shape) != 4:
            raise ModelError(label, f"{where} is a {len(x_shape) - 2}-D convolution (input {tuple(x_shape)}); "
                                    "convtune tunes 2-D convolutions only")
        dtype = shapes[node.input[0]][1]
        if dtype != onnx.TensorProto.FLOAT:
            raise ModelError(label, f"{where} computes in {onnx.helper.tensor_dtype_to_np_dtype(dtype)}; "
                                    "convtune tunes float32 convolutions")
        kh, kw = attrs.get("kernel_shape", w_shape[2:])
        if (kh, kw) != tuple(w_shape[2:]):
            raise ModelError(label, f"{where}: kernel_shape {(kh, kw)} disagrees with its weight {tuple(w_shape)}")
        stride = list(attrs.get("strides", [1, 1]))
        dilation = list(attrs.get("dilations", [1, 1]))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = auto_pad == "SAME_UPPER"
            (top, bottom), (left, right) = (
                _same_pads(x_shape[2], kh, stride[0], dilation[0], upper),
                _same_pads(x_shape[3], kw, stride[1], dilation[1], upper))
            pad = (top, left, bottom, right)
        elif auto_pad == "VALID":
            pad = (0, 0, 0, 0)
        elif auto_pad == "NOTSET":
            pad = tuple(attrs.get("pads", [0, 0, 0, 0]))  # (top, left, bottom, right) in ONNX's order
        else:
            raise ModelError(label, f"{where}: unknown auto_pad {auto_pad!r}")
        wl = _workload(label, where, x_shape, w_shape, stride, pad, dilation, int(attrs.get("group", 1)), layout)
        found.append((f"{network}.{name}", wl))
    return _layers(label, found, skipped, "Conv node")


def _onnx_shape(label, where, role, value, shapes, unknown_domains) -> list[int]:
    if value not in shapes:
        hint = (f" (custom-domain ops {', '.join(sorted(unknown_domains))} upstream stop ONNX's shape inference)"
                if unknown_domains else "")
        raise ModelError(label, f"{where}: the shape of its {role} {value!r} is unknown after shape inference{hint}")
    dims = shapes[value][0]
    symbolic = [d for d in dims if not isinstance(d, int) or d <= 0]
    if symbolic:
        raise ModelError(label, f"{where}: its {role} {value!r} has a dynamic shape {tuple(dims)}; convtune tunes "
                                "fixed shapes (pass batch=N / --batch N for a symbolic batch, or export with static shapes)")
    return dims


def _fix_batch(onnx, model, batch: int):
    model = onnx.ModelProto.FromString(model.SerializeToString())  # leave the caller's model alone
    initializers = {i.name for i in model.graph.initializer}
    for info in model.graph.input:
        if info.name in initializers or not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    del model.graph.value_info[:]  # stale symbolic shapes would survive the new inference
    return model


# -- PyTorch -----------------------------------------------------------------------------------------
def _import_torch():
    try:
        import torch  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise ModelError("torch", f"reading PyTorch models needs torch: {TORCH_PIP}") from None
    return torch


def from_torch(program, example_inputs: tuple | None = None, layout: str = "NHWC",
               network: str | None = None) -> list[Layer]:
    """The conv layers of an `nn.Module` (exported here with `example_inputs`), a
    `torch.export.ExportedProgram`, or a `.pt2` file path (`torch.export.save`)."""
    torch = _import_torch()
    label = program if isinstance(program, str) else (network or type(program).__name__)
    if isinstance(program, str):
        if not os.path.exists(program):
            raise ModelError(program, "no such file")
        try:
            program = torch.export.load(program)
        except Exception as err:  # noqa: BLE001
            raise ModelError(label, f"not a torch.export program (.pt2 from torch.export.save): {err}") from None
        network = network or os.path.splitext(os.path.basename(label))[0]
    elif isinstance(program, torch.nn.Module):
        if example_inputs is None:
            raise ModelError(label, "a torch module needs example inputs to be exported (their shapes fix the layers)")
        network = network or type(program).__name__.lower()
        try:
            program = torch.export.export(program, tuple(example_inputs))
        except Exception as err:  # noqa: BLE001
            raise ModelError(label, f"torch.export failed: {err}") from None
    network = network or "model"
    aten = torch.ops.aten
    conv2d = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default, aten._convolution.default}
    other_dims = {aten.conv1d.default: 1, aten.conv1d.padding: 1, aten.conv3d.default: 3, aten.conv3d.padding: 3}
    found, skipped = [], []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        where = f"{_module_name(node)} ({node.target})"
        if node.target in other_dims:
            raise ModelError(label, f"{where} is a {other_dims[node.target]}-D convolution; "
                                    "convtune tunes 2-D convolutions only")
        if str(node.target).startswith("aten.conv_transpose"):
            skipped.append(where)
            continue
        if node.target not in conv2d:
            continue
        args = _bind(node)
        if args.get("transposed"):
            skipped.append(where)
            continue
        x_shape = _torch_shape(label, where, "input", args["input"])
        w_shape = _torch_shape(label, where, "weight", args["weight"])
        if len(x_shape) != 4:
            raise ModelError(label, f"{where} is a {len(x_shape) - 2}-D convolution (input {tuple(x_shape)}); "
                                    "convtune tunes 2-D convolutions only")
        dtype = args["input"].meta["val"].dtype
        if dtype != torch.float32:
            raise ModelError(label, f"{where} computes in {dtype}; convtune tunes float32 convolutions")
        stride, dilation = _pair(args["stride"]), _pair(args["dilation"])
        padding = args["padding"]
        if isinstance(padding, str):  # aten.conv2d.padding: "same" / "valid"
            if padding == "valid":
                pad = (0, 0, 0, 0)
            else:  # PyTorch's "same": total (k-1)*d, the odd pixel at the end
                (top, bottom), (left, right) = (_split(dilation[0] * (w_shape[2] - 1)),
                                                _split(dilation[1] * (w_shape[3] - 1)))
                pad = (top, left, bottom, right)
        else:
            ph, pw = _pair(padding)
            pad = (ph, pw, ph, pw)
        wl = _workload(label, where, x_shape, w_shape, stride, pad, dilation, int(args["groups"]), layout)
        found.append((f"{network}.{_module_name(node)}", wl))
    return _layers(label, found, skipped, "2-D convolution")


def _bind(node) -> dict:
    """The op's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _module_name(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return path or node.name


def _torch_shape(label, where, role, value) -> list[int]:
    val = getattr(value, "meta", {}).get("val")
    if val is None:
        raise ModelError(label, f"{where}: the shape of its {role} is unknown (no fake tensor in node.meta)")
    dims = list(val.shape)
    if not all(type(d) is int for d in dims):
        raise ModelError(label, f"{where}: its {role} has a dynamic shape {tuple(str(d) for d in dims)}; "
                                "convtune tunes fixed shapes (export without dynamic_shapes)")
    return dims


def _pair(value) -> tuple[int, int]:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(value[0]), int(value[-1]))


def _split(total: int) -> tuple[int, int]:
    return total // 2, total - total // 2


# -- one entry point ---------------------------------------------------------------------------------
def load_network(name_or_file: str, layout: str = "NHWC", batch: int | None = None) -> list[Layer]:
    """A zoo network (`resnet18`), an ONNX file (`model.onnx`) or a torch.export file (`model.pt2`)."""
    suffix = os.path.splitext(name_or_file)[1].lower()
    if suffix == ".onnx":
        return from_onnx(name_or_file, layout, batch=batch)
    if suffix == ".pt2":
        if batch is not None:
            raise ModelError(name_or_file, "batch= applies to ONNX models; a .pt2 program has its shapes fixed at export")
        return from_torch(name_or_file, layout=layout)
    if os.path.exists(name_or_file):
        raise ModelError(name_or_file, f"unknown model format {suffix or '(no suffix)'!r}; "
                                       f"give {' or '.join(MODEL_SUFFIXES)} (torch.export.save), or a zoo name")
    if name_or_file not in NETWORKS:
        raise ModelError("network", f"{name_or_file!r} is neither a zoo network ({', '.join(NETWORKS)}) "
                                    f"nor a model file ({', '.join(MODEL_SUFFIXES)})")
    return network_layers(name_or_file, layout)
