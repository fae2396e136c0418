"""The one model front end: a model file (or a zoo architecture) read once into a Relax graph, and
the conv layers every command takes from it.

`load_model` reads an ONNX file, a torch.export program (.pt2) or a zoo architecture (torchvision,
random weights, exported to ONNX in memory) with TVM's Relax frontends into a `ModelGraph`
(tuning/graph.py: normalised, its conv chains matched). `compile --model` and `tune --model` use
the graph; `convtune layers FILE` and `tune/compile --network FILE` use `load_network` /
`conv_layers`: the same graph's conv chains without their epilogues (the bare convs), so all of
them list the same convs. A layer is `Layer(name, workload, count)`; layers with the same shape
are merged into one (the first one's name) whose `count` says how often the model runs it.

What the frontends alone would not give, read here off the file before TVM sees it:

- ONNX (`pip install onnx`): a symbolic batch fixed (`batch=`, `--model-batch N`); static shapes
  from `onnx.shape_inference` with data propagation, and what it leaves unknown (legacy exports:
  shapes computed from `Shape` at run time) recovered by folding the shape arithmetic into
  constants, then, with onnxruntime installed, by running the model once on zeros; a conv whose
  shape stays dynamic is refused, every one named, with the fix. `auto_pad` SAME_UPPER /
  SAME_LOWER are rewritten as the explicit pads ONNX defines (TVM's frontend would emit a pad op
  and an unpadded conv on the larger input). `pads` are ONNX's (x1_begin, x2_begin, x1_end,
  x2_end) = our (top, left, bottom, right).
- PyTorch (`pip install torch==2.13.0`): an `nn.Module` with example inputs, an ExportedProgram, or
  a `.pt2` file written by `torch.export.save` (refused when it carries pickles that could run
  code, unless trusted); dynamic shapes refused naming the conv.

Names: the PyTorch module path wherever the model carries it (`features.1.block.0.0`: torch.export's
module stack, the legacy ONNX exporter's `/features/features.1/block/block.0/block.0.0/Conv`, the
dynamo exporter's name scopes), so two exports of one model name their layers alike; else a
hand-given ONNX node name; else position and shape (`conv3.3x3s2.64-128`). `layers` prefixes them
with the network (the file's base name): `resnet18.layer1.0.conv1`.

Both are NCHW models; the workloads take the layout asked for (NHWC by default, like the zoo):
the layer is the same convolution, laid out the way the deployed kernel will see it.
`layers` refuses, with a message: a missing optional package (with its pip command), a 1-D/3-D
conv, a dtype other than float32 (a compiled model leaves those convs to TVM).
"""

from __future__ import annotations

import ast
import io
import os
import re
import sys
import warnings

from schedules.workload import Workload

from .graph import ModelGraph, conv_key, normalise
from .networks import NETWORKS, Layer, ModelError, distinct_layers, network_layers
from .quantized import read_quantization
from .tables import safe_text

__all__ = ["MODEL_SUFFIXES", "MODEL_ZOO", "ModelError", "conv_layers", "from_onnx", "from_torch", "load_model",
           "load_network", "zoo_onnx"]

ONNX_PIP = "pip install onnx"
TORCH_PIP = "pip install torch==2.13.0"
MODEL_SUFFIXES = (".onnx", ".pt2")
MODEL_ZOO = ("resnet18", "resnet50", "mobilenet_v2")  # torchvision architectures, weights=None
ZOO_INPUT = (1, 3, 224, 224)


# -- the entry points --------------------------------------------------------------------------------
def load_model(source: str, layout: str = "NHWC", batch: int | None = None,
               trust_pickle: bool = False) -> ModelGraph:
    """A model file (.onnx, .pt2) or a zoo name (MODEL_ZOO), as a normalised Relax graph."""
    suffix = os.path.splitext(source)[1].lower()
    if suffix == ".onnx":
        model = read_onnx(source)
        return _onnx_graph(source, model, layout, batch, {"kind": "onnx", "path": os.path.abspath(source)})
    if suffix == ".pt2":
        if batch is not None:
            raise ModelError(source, "--model-batch applies to ONNX models; a .pt2 program has its shapes fixed "
                                     "at export")
        program = load_exported_program(source, trust_pickle)
        return _program_graph(source, program, layout, {"kind": "pt2", "path": os.path.abspath(source)}, trust_pickle)
    if os.path.exists(source):
        raise ModelError(source, f"unknown model format {suffix or '(no suffix)'!r}; give "
                                 f"{' or '.join(MODEL_SUFFIXES)} (torch.export.save), or a zoo name "
                                 f"({', '.join(MODEL_ZOO)})")
    if source in MODEL_ZOO:
        return _onnx_graph(source, zoo_onnx(source, batch or 1), layout, None,
                           {"kind": "zoo", "name": source, "batch": batch or 1})
    raise ModelError("model", f"{source!r} is neither a zoo model ({', '.join(MODEL_ZOO)}) nor a model file "
                              f"({', '.join(MODEL_SUFFIXES)})")


def load_network(name_or_file: str, layout: str = "NHWC", batch: int | None = None,
                 trust_pickle: bool = False) -> list[Layer]:
    """The distinct conv layers of a zoo network (`resnet18`: tuning/networks.py) or a model file
    (`model.onnx`, `model.pt2`: its graph's convs, `conv_layers`)."""
    suffix = os.path.splitext(name_or_file)[1].lower()
    if suffix in MODEL_SUFFIXES or os.path.exists(name_or_file):
        return conv_layers(load_model(name_or_file, layout, batch, trust_pickle))
    if name_or_file not in NETWORKS:
        raise ModelError("network", f"{name_or_file!r} is neither a zoo network ({', '.join(NETWORKS)}) "
                                    f"nor a model file ({', '.join(MODEL_SUFFIXES)})")
    return network_layers(name_or_file, layout)


def conv_layers(graph: ModelGraph, network: str | None = None) -> list[Layer]:
    """What `convtune layers` lists of a model: its conv chains' convs without their epilogues
    (the matmuls a compiled model also runs as 1x1 convs are not listed), named `<network>.<name>`
    (network: the file's base name), merged by shape; refused where `layers` refuses a conv."""
    if graph.unsupported:
        raise ModelError(graph.label, graph.unsupported[0])
    network = network or os.path.splitext(os.path.basename(graph.label))[0]
    convs = sorted((c for c in graph.chains() if c.shape is None), key=lambda c: c.position)  # the file's order
    found = [(f"{network}.{c.name}", c.workload.bare) for c in convs]
    noun = "2-D convolution" if graph.source.get("kind") == "pt2" else "Conv node"
    return _layers(graph.label, found, graph.transposed, noun)


def from_onnx(model, layout: str = "NHWC", batch: int | None = None, network: str | None = None) -> list[Layer]:
    """The conv layers of an ONNX model (a path or a ModelProto). `batch` fixes a symbolic batch
    dimension of the graph inputs (ONNX exports often leave it dynamic)."""
    if isinstance(model, str):
        return conv_layers(load_model(model, layout, batch), network)
    onnx = _import_onnx()
    label = network or model.graph.name or "model"
    check_opset(onnx, label, model)
    return conv_layers(_onnx_graph(label, model, layout, batch, {"kind": "onnx"}), network or label)


def from_torch(program, example_inputs: tuple | None = None, layout: str = "NHWC",
               network: str | None = None, trust_pickle: bool = False) -> list[Layer]:
    """The conv layers of an `nn.Module` (exported here with `example_inputs`), a
    `torch.export.ExportedProgram`, or a `.pt2` file path (`torch.export.save`)."""
    torch = import_torch()
    if isinstance(program, str):
        return conv_layers(load_model(program, layout, trust_pickle=trust_pickle), network)
    label = network or type(program).__name__
    if isinstance(program, torch.nn.Module):
        if example_inputs is None:
            raise ModelError(label, "a torch module needs example inputs to be exported (their shapes fix the layers)")
        network = network or type(program).__name__.lower()
        try:
            program = torch.export.export(program, tuple(example_inputs))
        except Exception as err:  # noqa: BLE001
            raise ModelError(label, f"torch.export failed: {err}") from None
    graph = _program_graph(label, program, layout, {"kind": "pt2"})
    return conv_layers(graph, network or "model")


def _layers(label: str, found: list[tuple[str, Workload]], skipped: list[str], conv: str) -> list[Layer]:
    """The convolutions a model reader found, as distinct layers; transposed ones are named and left out.
    A name that two different shapes share (a module run at two sizes) gets `_2`, `_3`, ... on the later ones."""
    # Names come from the model file: escaped here before anything prints them.
    label, skipped = safe_text(label), [safe_text(name) for name in skipped]
    if skipped:
        print(f"warning: {label}: transposed convolutions are not tuned: {', '.join(skipped)}", file=sys.stderr)
    if not found:
        raise ModelError(label, f"has no {conv}")
    layers = distinct_layers([Layer(safe_text(name), wl) for name, wl in found])
    seen: dict[str, int] = {}
    unique = []
    for layer in layers:
        seen[layer.name] = seen.get(layer.name, 0) + 1
        name = layer.name if seen[layer.name] == 1 else f"{layer.name}_{seen[layer.name]}"
        unique.append(Layer(name, layer.workload, layer.count))
    return unique


def same_pads(size: int, k: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """ONNX auto_pad SAME_*: output ceil(size / stride); the odd pixel goes at the end (UPPER) or the start."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


# -- ONNX --------------------------------------------------------------------------------------------
def _onnx_graph(label: str, model, layout: str, batch: int | None, source: dict) -> ModelGraph:
    """An ONNX ModelProto as a ModelGraph: its quantized convs read (before TVM folds the integer
    weights away), the batch fixed, the convs' shapes made static and checked, names read, SAME
    pads made explicit; then TVM's frontend and `normalise`."""
    onnx = _import_onnx()
    # Before TVM reads it: an int4 / float8 Q or DQ is refused naming its node, not as whatever
    # the frontend raises; and constant folding would lose the integer weights.
    quantization = read_quantization(model, label)
    if batch is not None:
        model = fix_batch(onnx, model, batch, label)
    shapes, names, matmuls, transposed, unsupported = _read_convs(onnx, label, model)
    model = _explicit_same_pads(onnx, model, shapes)
    mod = _relax_from_onnx(label, model)
    return ModelGraph(label, normalise(mod, layout), layout, names, source, False, _onnx_input_names(model), matmuls,
                      [safe_text(o.name) for o in model.graph.output], quantization, transposed, unsupported)


def _read_convs(onnx, label: str, model):
    """The Conv nodes as the model front end needs them before TVM reads the model: (static shapes
    of every conv input: value -> dims; the 2-D convs' (name, `conv_key`) in file order, the name
    None where the file says nothing; the MatMul / Gemm nodes' names; the transposed convs; what `layers` refuses).

    Shapes: ONNX's shape inference with data propagation; where a conv input is still unknown
    (shapes computed at run time: a `Slice` whose bounds come from `Shape`, a `Resize` sized from
    `Shape`), the shape arithmetic is folded into constants and inferred again, and as a last
    resort the model is run once on zeros with onnxruntime (when installed) to read them. A conv
    whose shape stays dynamic is refused (all of them named, with the fix)."""
    inferred = _infer(onnx, label, model)
    shapes = _onnx_shapes(inferred.graph)
    convs = [n for n in inferred.graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]
    missing = [v for n in convs for v in n.input[:2] if _static(shapes.get(v)) is None]
    if missing:
        shapes.update(_recover_shapes(onnx, label, inferred, shapes, list(dict.fromkeys(missing))))
    graph = inferred.graph
    unknown = {n.domain for n in graph.node if n.domain not in ("", "ai.onnx")}
    names, matmuls, transposed, unsupported, dynamic = [], [], [], [], []
    static: dict[str, list[int]] = {}
    for node in graph.node:
        if node.op_type == "ConvTranspose":
            transposed.append(safe_text(node.name or node.output[0]))
        if node.op_type in ("MatMul", "Gemm"):
            path = onnx_module_path(node)
            matmuls.append(safe_text(path) if path is not None else None)
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        where = f"Conv {(node.name or node.output[0] or f'Conv_{len(names) + len(dynamic)}')!r}"
        try:
            x_shape = _onnx_shape(where, "input", node.input[0], shapes, unknown)
            w_shape = _onnx_shape(where, "weight", node.input[1], shapes, unknown)
        except _NoShape as err:
            dynamic.append(str(err))
            continue
        static[node.input[0]] = x_shape
        if len(x_shape) != 4:
            unsupported.append(f"{where} is a {len(x_shape) - 2}-D convolution (input {tuple(x_shape)}); "
                               "convtune tunes 2-D convolutions only")
            continue
        dtype = shapes[node.input[0]][1]
        if dtype != onnx.TensorProto.FLOAT:
            unsupported.append(f"{where} computes in {onnx.helper.tensor_dtype_to_np_dtype(dtype)}; "
                               "convtune tunes float32 convolutions")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        path = onnx_module_path(node)  # from the file: escaped before anything prints it
        names.append((safe_text(path) if path is not None else None,
                      conv_key(x_shape, w_shape, attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]),
                               attrs.get("group", 1))))
    if dynamic:
        raise ModelError(label, _dynamic_refusal(onnx, graph, shapes, dynamic))
    return static, names, matmuls, transposed, unsupported


def _relax_from_onnx(label: str, model):
    from tvm.relax.frontend.onnx import from_onnx

    initializers = {i.name for i in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
            raise ModelError(label, f"input {value.name!r} has a symbolic shape {shown}; give --model-batch N "
                                    "(its batch size) to fix it")
        shapes[value.name] = [d.dim_value for d in dims]
    try:
        with warnings.catch_warnings():  # its checker's and its renames' notes: nothing a user acts on
            warnings.filterwarnings("ignore", category=UserWarning, module=r"tvm\.relax\.frontend\.onnx")
            return from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    except Exception as err:  # noqa: BLE001 - the frontend raises whatever an op converter raises
        raise ModelError(label, f"TVM's ONNX frontend cannot read it: {str(err).splitlines()[0][:300]}") from None


def _explicit_same_pads(onnx, model, shapes: dict):
    """Convs with auto_pad SAME_UPPER / SAME_LOWER rewritten with the explicit pads they mean
    (`shapes`: the convs' static input shapes): TVM's frontend would emit a pad op (in NCHW, a
    transpose each side) and an unpadded conv on the larger input, a pass over the input the
    kernels do inline. The model is copied when a conv changes."""
    same = [n for n in model.graph.node if n.op_type == "Conv" and any(
        a.name == "auto_pad" and a.s in (b"SAME_UPPER", b"SAME_LOWER") for a in n.attribute)]
    if not same:
        return model
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type != "Conv" or not node.input or node.input[0] not in shapes:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("auto_pad", b"NOTSET")
        x = shapes[node.input[0]]
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if mode not in (b"SAME_UPPER", b"SAME_LOWER") or len(x) != 4 or w is None or len(w) != 4:
            continue
        kh, kw = attrs.get("kernel_shape", w[2:])
        stride, dilation = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
        upper = mode == b"SAME_UPPER"
        (top, bottom), (left, right) = (same_pads(x[2], kh, stride[0], dilation[0], upper),
                                        same_pads(x[3], kw, stride[1], dilation[1], upper))
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept + [onnx.helper.make_attribute("pads", [top, left, bottom, right])])
    return copy


def _import_onnx():
    try:
        import onnx  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise ModelError("onnx", f"reading ONNX models needs the onnx package: {ONNX_PIP}") from None
    return onnx


def read_onnx(path: str):
    """An ONNX file as a ModelProto, or ModelError naming the file and why not."""
    onnx = _import_onnx()
    if not os.path.exists(path):
        raise ModelError(path, "no such file")
    try:
        model = onnx.load(path)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(path, f"not an ONNX model: {err}") from None
    check_opset(onnx, path, model)
    return model


def check_opset(onnx, label: str, model) -> None:
    """Refuse a model whose default-domain opset is newer than the installed onnx knows: its ops
    would be read (and compared by ONNX Runtime) under semantics nobody here defines."""
    known = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > known:
            raise ModelError(label, f"uses ONNX opset {opset.version}, newer than the {known} the installed onnx "
                                    f"{onnx.__version__} knows; export with opset_version <= {known} "
                                    "(or upgrade onnx and onnxruntime)")


class _NoShape(Exception):
    """A conv input without a static shape (collected, then refused per layer with the fix)."""


def _infer(onnx, label, model):
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:  # noqa: BLE001
        raise ModelError(label, f"ONNX shape inference failed: {err}") from None


def _onnx_shapes(graph) -> dict[str, tuple[list, int]]:
    """value name -> (dims, elem type); a symbolic or unknown dimension is its name or '?'."""
    shapes: dict[str, tuple[list, int]] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
            shapes[info.name] = (dims, tensor.elem_type)
    for init in graph.initializer:
        shapes[init.name] = (list(init.dims), init.data_type)
    return shapes


def _static(entry) -> list[int] | None:
    """The dims of a shapes entry when every one is a known positive size (or the tensor is a scalar)."""
    if entry is None:
        return None
    dims = entry[0]
    return list(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None


def _onnx_shape(where, role, value, shapes, unknown_domains) -> list[int]:
    if value not in shapes:
        hint = (f" (custom-domain ops {', '.join(sorted(unknown_domains))} upstream stop ONNX's shape inference)"
                if unknown_domains else "")
        raise _NoShape(f"{where}: the shape of its {role} {value!r} is unknown{hint}")
    dims = shapes[value][0]
    if _static(shapes[value]) is None:
        raise _NoShape(f"{where}: its {role} {value!r} has a dynamic shape {tuple(dims)}")
    return dims


def _dynamic_refusal(onnx, graph, shapes, problems: list[str]) -> str:
    """One message for every conv without a static shape, and what fixes it."""
    initializers = {i.name for i in graph.initializer}
    symbolic = [f"{i.name!r} {tuple(shapes[i.name][0])}" for i in graph.input
                if i.name not in initializers and i.name in shapes and _static(shapes[i.name]) is None]
    if symbolic:
        fix = (f"the graph input {', '.join(symbolic)} has symbolic dimensions; convtune tunes fixed shapes: "
               "export with a fixed input shape (torch.onnx.export without dynamic_axes), or give "
               "--model-batch N for a symbolic batch (from Python: load_network(path, batch=N))")
    else:
        try:
            import onnxruntime  # noqa: F401, PLC0415 - an optional extra
            tried = "shape inference, folding the shape arithmetic and a run with onnxruntime"
            extra = ""
        except ImportError:
            tried = "shape inference and folding the shape arithmetic"
            extra = "; or `pip install onnxruntime`, with which convtune reads the shapes by running the model once"
        fix = (f"these shapes are computed at run time and {tried} did not fix them: export with static shapes "
               f"(torch.onnx.export(..., dynamo=True)), or simplify the model (onnxsim){extra}")
    limit = 3 if symbolic else 8  # a symbolic input reaches every conv: a few name it well enough
    shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
    return f"{len(problems)} Conv node(s) without a static input shape: {'; '.join(shown)}. Fix: {fix}"


# Operators of shape arithmetic: folded into constants when every input is known and small.
_SHAPE_OPS = frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Concat", "Constant", "ConstantOfShape", "Div", "Equal", "Expand",
    "Floor", "Gather", "GatherElements", "Greater", "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "Max",
    "Min", "Mod", "Mul", "Neg", "Not", "Or", "Range", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum",
    "Reshape", "Round", "Shape", "Size", "Slice", "Sqrt", "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze",
    "Where",
})
_FOLD_LIMIT = 4096  # elements: shape vectors and scalars, never weights or activations


def _recover_shapes(onnx, label, model, shapes, missing: list[str]) -> dict:
    """Static shapes for `missing` values that shape inference left unknown: fold the shape
    arithmetic (Shape of a static tensor, then Gather/Slice/Div/Concat/... of constants) into
    initializers and infer again, until nothing more folds; then, if some are still missing and
    onnxruntime is installed, run the model once on zeros and read them."""
    found: dict = {}
    for _ in range(16):
        folded, count = _fold_shape_arithmetic(onnx, model, shapes)
        if not count:
            break
        try:
            model = onnx.shape_inference.infer_shapes(folded, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - folding is best effort; the refusal names what is missing
            break
        shapes = _onnx_shapes(model.graph)
        found.update({v: shapes[v] for v in missing if _static(shapes.get(v)) is not None})
        if len(found) == len(missing):
            return found
    rest = [v for v in missing if v not in found]
    found.update(_shapes_by_running(onnx, label, model, shapes, rest))
    return found


def _fold_shape_arithmetic(onnx, model, shapes):
    """`model` with every node of shape arithmetic whose inputs are known replaced by initializers
    (a copy), and how many nodes were folded."""
    from onnx import numpy_helper  # noqa: PLC0415

    graph = model.graph
    values: dict = {}
    for init in graph.initializer:
        if _elements(init.dims) <= _FOLD_LIMIT:
            values[init.name] = numpy_helper.to_array(init)
    folded: list[int] = []
    for index, node in enumerate(graph.node):
        if node.op_type not in _SHAPE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        outputs = _evaluate(onnx, model, node, values, shapes)
        if outputs is None or any(o.size > _FOLD_LIMIT for o in outputs):
            continue
        values.update(zip(node.output, outputs))
        folded.append(index)
    if not folded:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = max(out.ir_version, 4)  # initializers need not be graph inputs
    keep = [n for i, n in enumerate(graph.node) if i not in set(folded)]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    present = {i.name for i in graph.initializer}
    out.graph.initializer.extend(numpy_helper.from_array(values[name], name)
                                 for i in folded for name in graph.node[i].output
                                 if name and name not in present)
    del out.graph.value_info[:]  # re-inferred from the constants
    return out, len(folded)


def _elements(dims) -> int:
    count = 1
    for d in dims:
        count *= int(d)
    return count


def _evaluate(onnx, model, node, values, shapes):
    """The node's outputs as numpy arrays, or None when an input is unknown or evaluation fails."""
    import numpy as np  # noqa: PLC0415

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Shape", "Size"):
        source = node.input[0]
        dims = list(values[source].shape) if source in values else _static(shapes.get(source))
        if dims is None:
            return None
        if node.op_type == "Size":
            return [np.array(_elements(dims), dtype=np.int64)]
        return [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)]
    inputs = [name for name in node.input if name]
    if any(name not in values for name in inputs):
        return None
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

    helper = onnx.helper
    one = helper.make_model(
        helper.make_graph([node], "fold",
                          [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype),
                                                         values[n].shape) for n in dict.fromkeys(inputs)],
                          [helper.make_empty_tensor_value_info(o) for o in node.output if o]),
        opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    try:
        results = ReferenceEvaluator(one).run(None, {n: values[n] for n in inputs})
    except Exception:  # noqa: BLE001 - an op the reference cannot run is simply not folded
        return None
    return [np.asarray(r) for r in results]


def _shapes_by_running(onnx, label, model, shapes, names: list[str]) -> dict:
    """Run the model once with onnxruntime on zeros (every graph input static), every value in
    `names` an extra output; their shapes. Empty without onnxruntime or static inputs."""
    if not names:
        return {}
    try:
        import onnxruntime as ort  # noqa: PLC0415 - an optional extra
    except ImportError:
        return {}
    import numpy as np  # noqa: PLC0415

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    feeds = {}
    for info in graph.input:
        if info.name in initializers:
            continue
        dims = _static(shapes.get(info.name))
        if dims is None:
            return {}
        elem = info.type.tensor_type.elem_type
        feeds[info.name] = np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in graph.output}
    wanted = [n for n in names if n not in initializers]
    for name in wanted:
        if name not in outputs:
            elem = shapes[name][1] if name in shapes else onnx.TensorProto.FLOAT
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results = session.run(wanted, feeds)
    except Exception as err:  # noqa: BLE001 - the refusal names what stays unknown
        print(f"warning: {label}: onnxruntime could not run the model to read its shapes: "
              f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__}", file=sys.stderr)
        return {}
    print(f"note: {label}: {len(wanted)} conv input shape(s) read by running the model once with onnxruntime",
          file=sys.stderr)
    return {name: (list(r.shape), onnx.helper.np_dtype_to_tensor_dtype(r.dtype)) for name, r in zip(wanted, results)}


def onnx_module_path(node) -> str | None:
    """The PyTorch module path an ONNX node carries: the dynamo exporter's name scopes, or the
    legacy exporter's node name (`/features/features.1/block/block.0/Conv` -> `features.1.block.0`);
    None for names that say nothing (`Conv_3`, `/Conv`, `node_conv2d`)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2]:
                return str(scopes[-2])
            return None
    name = node.name
    if name.startswith("/"):
        path, previous = "", ""
        for part in name.strip("/").split("/")[:-1]:  # the last part is the op (Conv, Conv_1)
            if previous and part.startswith(previous + "."):
                path += part[len(previous):]  # a container's child: `features` then `features.0`
            else:
                path = f"{path}.{part}" if path else part
            previous = part
        return path or None
    if not name or re.fullmatch(r"(node_)?(conv(2d|olution)?)(_\d+)*", name, re.IGNORECASE):
        return None
    return name


def fix_batch(onnx, model, batch: int, label: str = "model"):
    model = onnx.ModelProto.FromString(model.SerializeToString())  # leave the caller's model alone
    initializers = {i.name for i in model.graph.initializer}
    symbolic, fixed = 0, set()
    for info in model.graph.input:
        if info.name in initializers or not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
            symbolic += 1
        elif dims:
            fixed.add(dims[0].dim_value)
    # Nothing to fix and a different batch asked for: the batch would be ignored silently and the
    # library built for the model's own, so refuse. The model's own batch asked for is harmless.
    if not symbolic and fixed and fixed != {batch}:
        shown = ", ".join(str(b) for b in sorted(fixed))
        raise ModelError(label, f"the model's batch is fixed at {shown}; --model-batch applies to a symbolic batch "
                                "(leave it out, or export the model with a dynamic batch axis)")
    del model.graph.value_info[:]  # stale symbolic shapes would survive the new inference
    return model


def _onnx_input_names(model) -> list[str]:
    """The graph inputs that are not initializers, in order: what the Relax frontend makes parameters."""
    initializers = {i.name for i in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initializers]



# -- PyTorch -----------------------------------------------------------------------------------------
def import_torch():
    try:
        import torch  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise ModelError("torch", f"reading PyTorch models needs torch: {TORCH_PIP}") from None
    return torch


TRUST_PICKLE_HINT = "pass --trust-pickle only if you trust whoever made this file"


def _unsafe_pickles(path: str, torch) -> list[str]:
    """The members of a .pt2 archive that `torch.export.load` would unpickle with plain pickle.

    A `.pt2` is a zip; torch.export.load unpickles some members (sample inputs, pickled weights and
    constants, custom objects) and retries a failed `weights_only` load without it, so a crafted
    archive runs code while it is read. Each torch.save archive inside is opened here with
    `torch.load(weights_only=True)` (torch's restricted unpickler: tensors and containers, no code);
    any other pickle (custom or opaque objects, a bare pickle stream) cannot be vouched for."""
    import io
    import json
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelError(path, f"not a torch.export archive (.pt2 from torch.export.save): {err}") from None
    unsafe = []
    with archive:
        raw_tensors = set()  # members the configs declare as raw tensor bytes (never unpickled)
        for name in archive.namelist():
            if not name.endswith(("_weights_config.json", "_constants_config.json")):
                continue
            try:
                config = json.loads(archive.read(name)).get("config", {})
            except (ValueError, AttributeError):
                continue
            for meta in config.values() if isinstance(config, dict) else []:
                path_name = meta.get("path_name", "") if isinstance(meta, dict) else ""
                if path_name.startswith(("custom_obj", "opaque_obj")):
                    unsafe.append(f"{os.path.dirname(name)}/{path_name}")
                elif isinstance(meta, dict) and not meta.get("use_pickle"):
                    raw_tensors.add(f"{os.path.dirname(name)}/{path_name}")
        for name in archive.namelist():
            if name in raw_tensors or name in unsafe:
                continue
            data = archive.read(name)
            if data.startswith(b"PK\x03\x04"):  # a torch.save archive: its data.pkl is a pickle
                try:
                    torch.load(io.BytesIO(data), weights_only=True)
                except Exception:  # noqa: BLE001 - whatever the restricted unpickler refuses
                    unsafe.append(name)
            elif data[:1] == b"\x80" or name.endswith((".pkl", ".pickle")):  # a bare pickle stream
                unsafe.append(name)
    return unsafe


def load_exported_program(path: str, trust_pickle: bool = False):
    """`torch.export.load(path)`, refused when the archive carries pickles torch's restricted
    unpickler would not read (they could run code), unless the user trusts the file."""
    torch = import_torch()
    if not os.path.isfile(path):
        raise ModelError(path, "no such file")
    if not trust_pickle:
        unsafe = _unsafe_pickles(path, torch)
        if unsafe:
            shown = ", ".join(safe_text(n) for n in unsafe[:3]) + (" ..." if len(unsafe) > 3 else "")
            raise ModelError(path, f"carries pickled objects that can run code when loaded ({shown}); refused, "
                                   f"{TRUST_PICKLE_HINT}")
    try:
        return torch.export.load(path)
    except Exception as err:  # noqa: BLE001
        message = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise ModelError(path, f"not a torch.export program (.pt2 from torch.export.save): {message}") from None


def _program_graph(label: str, program, layout: str, source: dict, trust_pickle: bool = False) -> ModelGraph:
    """A torch.export program as a ModelGraph: its convs checked and named off the program's
    nodes (TVM's frontend keeps their order, not their module paths), then TVM's frontend."""
    names, transposed, unsupported = _read_program_convs(label, program)
    from tvm.relax.frontend.torch import from_exported_program

    try:
        mod = from_exported_program(program, keep_params_as_input=False)
    except Exception as err:  # noqa: BLE001 - the frontend raises whatever an op converter raises
        raise ModelError(label, f"TVM's PyTorch frontend cannot read it: {str(err).splitlines()[0][:300]}") from None
    return ModelGraph(label, normalise(mod, layout), layout, names, source, trust_pickle,
                      transposed=transposed, unsupported=unsupported)


def _read_program_convs(label: str, program):
    """(the 2-D convs' (module path, `conv_key`) in order, the path None at the root; the transposed convs; what
    `layers` refuses) of an ExportedProgram; ModelError for a conv whose shape is dynamic."""
    torch = import_torch()
    aten = torch.ops.aten
    conv2d = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default, aten._convolution.default}
    other_dims = {aten.conv1d.default: 1, aten.conv1d.padding: 1, aten.conv3d.default: 3, aten.conv3d.padding: 3}
    names, transposed, unsupported = [], [], []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        where = safe_text(f"{_module_name(node)} ({node.target})")
        if node.target in other_dims:
            unsupported.append(f"{where} is a {other_dims[node.target]}-D convolution; "
                               "convtune tunes 2-D convolutions only")
            continue
        if str(node.target).startswith("aten.conv_transpose"):
            transposed.append(where)
            continue
        if node.target not in conv2d:
            continue
        args = _bind(node)
        if args.get("transposed"):
            transposed.append(where)
            continue
        x_shape = _torch_shape(label, where, "input", args["input"])
        w_shape = _torch_shape(label, where, "weight", args["weight"])
        if len(x_shape) != 4:
            unsupported.append(f"{where} is a {len(x_shape) - 2}-D convolution (input {tuple(x_shape)}); "
                               "convtune tunes 2-D convolutions only")
            continue
        dtype = args["input"].meta["val"].dtype
        if dtype != torch.float32:
            unsupported.append(f"{where} computes in {dtype}; convtune tunes float32 convolutions")
        path = _module_path(node)
        names.append((safe_text(path) if path is not None else None,
                      conv_key(x_shape, w_shape, _pair(args["stride"]), _pair(args["dilation"]), args["groups"])))
    return names, transposed, unsupported


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


def _pair(value) -> tuple[int, int]:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(value[0]), int(value[-1]))


def _module_path(node) -> str | None:
    """The module path of the node's innermost module (`features.1.block.0.0`); None at the root."""
    stack = node.meta.get("nn_module_stack") or {}
    return (list(stack.values())[-1][0] if stack else "") or None


def _module_name(node) -> str:
    return _module_path(node) or node.name


def _torch_shape(label, where, role, value) -> list[int]:
    val = getattr(value, "meta", {}).get("val")
    if val is None:
        raise ModelError(label, f"{where}: the shape of its {role} is unknown (no fake tensor in node.meta)")
    dims = list(val.shape)
    if not all(type(d) is int for d in dims):
        raise ModelError(label, f"{where}: its {role} has a dynamic shape {tuple(str(d) for d in dims)}; "
                                "convtune tunes fixed shapes (export without dynamic_shapes)")
    return dims


# -- the zoo: torchvision architectures, random weights -----------------------------------------------
def zoo_onnx(name: str, batch: int = 1):
    """A torchvision architecture with random weights (no download), exported to ONNX in memory."""
    try:
        import torch
    except ImportError:
        raise ModelError(name, "zoo models are built with torchvision: pip install -e '.[bench]'") from None
    import onnx

    try:
        import torchvision
    except ImportError:
        raise ModelError(name, "zoo models are built with torchvision: pip install -e '.[bench]'") from None
    except RuntimeError:
        # A torchvision whose C++ extension cannot load beside this torch (a CUDA wheel beside a CPU
        # torch) fails on its operators' meta registrations; these two schemas are all the
        # pure-Python architectures need. Only then: defined before a working extension loads, they
        # make it abort the process on a duplicate registration.
        try:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _KEEP.append(lib)
        except RuntimeError:
            pass
        for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[module]
        import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    # Batch-norm statistics calibrated on random data: with the initial ones (mean 0, var 1) a
    # random-weight network's activations shrink layer by layer to outputs of ~1e-14, where every
    # comparison passes; a few training-mode passes give every layer unit-scale outputs.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn((4,) + ZOO_INPUT[1:]))
    model.eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros((batch,) + ZOO_INPUT[1:]),), buffer, dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


_KEEP: list = []  # the torch.library registration lives as long as the process
