"""A user's model -> its conv layers: ONNX files and PyTorch programs (torch.export), or a zoo name.

Every 2-D convolution of the model becomes a `Layer(name, workload, count)`; layers with the same
shape are merged into one (the first one's name) whose `count` says how often the model runs it,
so a network is a weighted set of distinct tuning tasks, as in the built-in zoo.

- ONNX (`pip install onnx`): shapes come from `onnx.shape_inference` with data propagation; what
  it leaves unknown (legacy exports: shapes computed from `Shape` at run time) is recovered by
  folding the shape arithmetic into constants, then, with onnxruntime installed, by running the
  model once on zeros. `pads` are ONNX's (x1_begin, x2_begin, x1_end, x2_end) = our (top, left,
  bottom, right); `auto_pad` SAME_UPPER / SAME_LOWER / VALID are resolved to explicit pads as
  ONNX defines them.
- PyTorch (`pip install torch==2.13.0`): an `nn.Module` with example inputs, an ExportedProgram, or
  a `.pt2` file written by `torch.export.save`; `aten.conv2d` / `aten.convolution` nodes, shapes from
  the nodes' fake tensors (`node.meta["val"]`).

Names: the PyTorch module path wherever the model carries it (`features.1.block.0.0`: torch.export's
module stack, the legacy ONNX exporter's `/features/features.1/block/block.0/block.0.0/Conv`, the
dynamo exporter's name scopes), so two exports of one model name their layers alike; else a
hand-given ONNX node name; else position and shape (`conv3.3x3s2.64-128`).

Both are NCHW models; the workloads take the layout asked for (NHWC by default, like the zoo):
the layer is the same convolution, laid out the way the deployed kernel will see it.
Refused with a message: a missing optional package (with its pip command), a 1-D/3-D conv,
shapes that stay dynamic (every such layer named, with the fix), a dtype other than float32.
"""

from __future__ import annotations

import ast
import os
import re
import sys

from schedules.workload import Workload, WorkloadError

from .networks import NETWORKS, Layer, distinct_layers, network_layers
from .tables import safe_text

ONNX_PIP = "pip install onnx"
TORCH_PIP = "pip install torch==2.13.0"
MODEL_SUFFIXES = (".onnx", ".pt2")


class ModelError(WorkloadError):
    """A model convtune cannot read; `field` names the model (or file), the message says why."""


def _layers(label: str, found: list[tuple[str, Workload]], skipped: list[str], conv: str) -> list[Layer]:
    """The convolutions a model reader found, as distinct layers; transposed ones are named and left out.
    A name that two different shapes share (a module run at two sizes) gets `_2`, `_3`, ... on the later ones."""
    # Names come from the model file: escaped here, once, before anything prints them.
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


def positional_name(index: int, wl: Workload) -> str:
    """A layer name from the conv's position in the model and its shape, for models that carry no
    module path: `conv3.3x3s2.64-128` (the 4th conv: 3x3, stride 2, 64 -> 128 channels; `g4`: groups)."""
    stride = "" if wl.stride == (1, 1) else (f"s{wl.stride[0]}" if wl.stride[0] == wl.stride[1]
                                             else f"s{wl.stride[0]}x{wl.stride[1]}")
    groups = f"g{wl.groups}" if wl.groups > 1 else ""
    return f"conv{index}.{wl.kh}x{wl.kw}{stride}{groups}.{wl.ci}-{wl.co}"


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


def same_pads(size: int, k: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
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


def from_onnx(model, layout: str = "NHWC", batch: int | None = None, network: str | None = None) -> list[Layer]:
    """The conv layers of an ONNX model (a path or a ModelProto). `batch` fixes a symbolic batch
    dimension of the graph inputs (ONNX exports often leave it dynamic).

    Shapes: ONNX's shape inference with data propagation; where a conv input is still unknown
    (shapes computed at run time: a `Slice` whose bounds come from `Shape`, a `Resize` sized from
    `Shape`), the shape arithmetic is folded into constants and inferred again, and as a last
    resort the model is run once on zeros with onnxruntime (when installed) to read them."""
    onnx = _import_onnx()
    label = model if isinstance(model, str) else (network or model.graph.name or "model")
    if isinstance(model, str):
        model = read_onnx(model)
        network = network or os.path.splitext(os.path.basename(label))[0]
    network = network or label
    if batch is not None:
        model = fix_batch(onnx, model, batch, label)
    inferred = _infer(onnx, label, model)
    shapes = _onnx_shapes(inferred.graph)
    convs = [n for n in inferred.graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]
    missing = [v for n in convs for v in n.input[:2] if _static(shapes.get(v)) is None]
    if missing:
        shapes.update(_recover_shapes(onnx, label, inferred, shapes, list(dict.fromkeys(missing))))
    graph = inferred.graph
    unknown = {n.domain for n in graph.node if n.domain not in ("", "ai.onnx")}
    found, skipped, dynamic = [], [], []
    for node in graph.node:
        if node.op_type == "ConvTranspose":
            skipped.append(node.name or node.output[0])
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0] or f"Conv_{len(found) + len(dynamic)}"
        where = f"Conv {name!r}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        try:
            x_shape = _onnx_shape(where, "input", node.input[0], shapes, unknown)
            w_shape = _onnx_shape(where, "weight", node.input[1], shapes, unknown)
        except _NoShape as err:
            dynamic.append(str(err))
            continue
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
                same_pads(x_shape[2], kh, stride[0], dilation[0], upper),
                same_pads(x_shape[3], kw, stride[1], dilation[1], upper))
            pad = (top, left, bottom, right)
        elif auto_pad == "VALID":
            pad = (0, 0, 0, 0)
        elif auto_pad == "NOTSET":
            pad = tuple(attrs.get("pads", [0, 0, 0, 0]))  # (top, left, bottom, right) in ONNX's order
        else:
            raise ModelError(label, f"{where}: unknown auto_pad {auto_pad!r}")
        groups = int(attrs.get("group", 1))
        wl = _workload(label, where, x_shape, w_shape, stride, pad, dilation, groups, layout)
        readable = onnx_module_path(node) or positional_name(len(found) + len(dynamic), wl)
        found.append((f"{network}.{readable}", wl))
    if dynamic:
        raise ModelError(label, _dynamic_refusal(onnx, graph, shapes, dynamic))
    return _layers(label, found, skipped, "Conv node")


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


def from_torch(program, example_inputs: tuple | None = None, layout: str = "NHWC",
               network: str | None = None, trust_pickle: bool = False) -> list[Layer]:
    """The conv layers of an `nn.Module` (exported here with `example_inputs`), a
    `torch.export.ExportedProgram`, or a `.pt2` file path (`torch.export.save`)."""
    torch = import_torch()
    label = program if isinstance(program, str) else (network or type(program).__name__)
    if isinstance(program, str):
        program = load_exported_program(program, trust_pickle)
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
        found.append((f"{network}.{_module_path(node) or positional_name(len(found), wl)}", wl))
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


def _pair(value) -> tuple[int, int]:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(value[0]), int(value[-1]))


def _split(total: int) -> tuple[int, int]:
    return total // 2, total - total // 2


# -- one entry point ---------------------------------------------------------------------------------
def load_network(name_or_file: str, layout: str = "NHWC", batch: int | None = None,
                 trust_pickle: bool = False) -> list[Layer]:
    """A zoo network (`resnet18`), an ONNX file (`model.onnx`) or a torch.export file (`model.pt2`)."""
    suffix = os.path.splitext(name_or_file)[1].lower()
    if suffix == ".onnx":
        return from_onnx(name_or_file, layout, batch=batch)
    if suffix == ".pt2":
        if batch is not None:
            raise ModelError(name_or_file, "batch= applies to ONNX models; a .pt2 program has its shapes fixed at export")
        return from_torch(name_or_file, layout=layout, trust_pickle=trust_pickle)
    if os.path.exists(name_or_file):
        raise ModelError(name_or_file, f"unknown model format {suffix or '(no suffix)'!r}; "
                                       f"give {' or '.join(MODEL_SUFFIXES)} (torch.export.save), or a zoo name")
    if name_or_file not in NETWORKS:
        raise ModelError("network", f"{name_or_file!r} is neither a zoo network ({', '.join(NETWORKS)}) "
                                    f"nor a model file ({', '.join(MODEL_SUFFIXES)})")
    return network_layers(name_or_file, layout)
