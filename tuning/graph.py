"""A whole model as a TVM Relax graph, and the conv chains in it that convtune's kernels replace.

A model file becomes a Relax graph in one place, `tuning.model_import.load_model` (ONNX, torch.export
.pt2, a zoo architecture); this module is what happens to the graph after that. `normalise` makes it
the way convtune's kernels want it:

  1. batch norm folded into the preceding conv's weights and a bias (FoldBatchnormToConv2D; what is
     left of batch norm is decomposed into arithmetic and constant-folded), and a zero `pad` op
     before a conv folded into the conv's padding (PyTorch's even-kernel "same");
  2. the convs converted to the kernels' layout (NHWC activations, HWIO weights by default: the
     layout the article and the tuned templates favour on CPUs), with one transpose at each end of
     the graph and none between layers (ConvertLayout carries the layout through pools and adds);
  3. constants folded, so weights and biases are plain constants.

`conv_chains` then matches every `conv2d (+ per-channel affine ops: bias, batch norm) (+ residual
add) (+ relu | clip | hardswish | silu)` chain whose intermediate values have no other user, with
Relax's dataflow pattern language (`tvm.relax.dpl`, `chain_patterns`): each is one convtune workload
with its epilogue. The same chains serve `convtune layers FILE` and `--network FILE` (their bare
convs), `tune --model` (the workloads to tune) and `compile --model` (what to replace), so all of
them agree on what a model's layers are.

A quantized ONNX model (QDQ: QuantizeLinear / DequantizeLinear around float ops) has its quantized
convs read off the file first (tuning/quantized.py); each becomes an int8 chain instead (uint8 or
int8 in, int8 weights, requantized to uint8 / int8 or dequantized to float32 in the kernel), whose
input is the quantized tensor itself, so that int8 convs pass integers from one to the next.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from schedules.workload import Epilogue, Workload, WorkloadError

from .networks import Layer, distinct_layers
from .quantized import Quantization, QuantizedConv


@dataclass
class ConvChain:
    """One conv with its epilogue, as the graph computes it."""

    index: int  # position among the model's convs (the frontend keeps the file's order)
    name: str
    workload: Workload
    data: object  # relax.Expr: the conv's input
    weight: np.ndarray  # in the workload's weight layout
    bias: np.ndarray | None
    residual: object | None  # relax.Expr added after the bias
    replaced: list = field(default_factory=list)  # the relax.Vars the kernel computes, conv first
    last: object = None  # the relax.Var whose value the kernel produces
    # A matmul by a constant [K, N] weight is a 1x1 conv over its rows: the kernel reads its input
    # viewed as NHWC [n, h, w, K] and its output is viewed back as the matmul's shape (`shape`).
    shape: tuple | None = None
    # An int8 conv of a quantized model (tuning.quantized): its integers, zero points and scales.
    # Its input and output are NCHW in the graph (TVM's layout conversion stops at quantize /
    # dequantize), the int8 kernels NHWC: the permutations the kernel's operands go through.
    quant: QuantizedConv | None = None
    data_permute: tuple | None = None
    out_permute: tuple | None = None
    position: int | None = None  # a conv's position among the file's convs (`ModelGraph.conv_names`)

    def kernel_inputs(self) -> dict[str, np.ndarray]:
        """The epilogue's arrays as the kernel takes them: bias (float32, or int32 for an int8
        conv), and an int8 conv's zero points and scales."""
        inputs = {} if self.quant is None else self.quant.quant_inputs()
        if self.bias is not None:
            inputs["bias"] = self.bias
        return inputs


@dataclass
class ModelGraph:
    label: str  # what the user named: a file path or a zoo name
    mod: object  # tvm.IRModule, normalised (see the module docstring)
    layout: str
    # The file's convs in its order: (readable name or None, `conv_key`). The frontends may emit
    # them in another order (TVM's ONNX frontend does, around shape arithmetic): a chain takes the
    # name of the first unnamed one of its shape. A bare name (no key): the graph's order.
    conv_names: list
    source: dict  # how it was read: {"kind": "onnx"|"pt2"|"zoo", ...}
    trust_pickle: bool = False  # the user vouched for the pickles of its .pt2 (--trust-pickle)
    # The inputs' names as the file has them (`input.1`): Relax's parameters carry sanitised names
    # (`input_1`), but ONNX Runtime, and a user's feed, know the file's.
    input_names: list[str] | None = None
    matmul_names: list[str] = field(default_factory=list)  # of the MatMul/Gemm nodes, in order
    output_names: list[str] | None = None  # the file's own (`y`, `logits`), for the sidecar and the user
    quantization: Quantization | None = None  # a QDQ model's quantized convs (tuning.quantized)
    # What `convtune layers` says of the model's other convs: transposed ones (named in a warning),
    # and those it refuses (a 1-D conv, a dtype other than float32), which TVM runs in a compiled model.
    transposed: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    _chains: list | None = None

    @property
    def inputs(self) -> list[dict]:
        params = self.mod["main"].params
        names = self.input_names if self.input_names and len(self.input_names) == len(params) else None
        return [_tensor_info(names[i] if names else p.name, p.ty) for i, p in enumerate(params)]

    @property
    def outputs(self) -> list[dict]:
        info = self.mod["main"].ret_ty
        fields = info.fields if hasattr(info, "fields") else [info]
        if self.output_names and len(self.output_names) == len(fields):
            return [_tensor_info(name, f) for name, f in zip(self.output_names, fields)]
        return [_tensor_info(f"output{i}" if len(fields) > 1 else "output", f) for i, f in enumerate(fields)]

    def chains(self) -> list[ConvChain]:
        if self._chains is None:
            self._chains = conv_chains(self)
        return self._chains

    def layers(self) -> list[Layer]:
        """The distinct conv workloads (with their epilogues) and how often each occurs."""
        return distinct_layers([Layer(c.name, c.workload) for c in self.chains()])


def conv_key(x_shape, w_shape, stride, dilation, groups) -> tuple:
    """What identifies a conv of a model file in its Relax graph, whatever the order the frontend
    emits them in: NCHW input shape, OIHW weight shape, stride, dilation, groups."""
    return (tuple(int(d) for d in x_shape), tuple(int(d) for d in w_shape), tuple(int(s) for s in stride),
            tuple(int(d) for d in dilation), int(groups))


def _workload_key(wl: Workload) -> tuple:
    return conv_key((wl.n, wl.ci, wl.h, wl.w), (wl.co, wl.ci // wl.groups, wl.kh, wl.kw), wl.stride, wl.dilation,
                    wl.groups)


def positional_name(index: int, wl: Workload) -> str:
    """A layer name from the conv's position in the model and its shape, for models that carry no
    module path: `conv3.3x3s2.64-128` (the 4th conv: 3x3, stride 2, 64 -> 128 channels; `g4`: groups)."""
    stride = "" if wl.stride == (1, 1) else (f"s{wl.stride[0]}" if wl.stride[0] == wl.stride[1]
                                             else f"s{wl.stride[0]}x{wl.stride[1]}")
    groups = f"g{wl.groups}" if wl.groups > 1 else ""
    return f"conv{index}.{wl.kh}x{wl.kw}{stride}{groups}.{wl.ci}-{wl.co}"


def _tensor_info(name: str, sinfo) -> dict:
    shape = [int(d) for d in sinfo.shape.values] if sinfo.shape is not None else None
    return {"name": name, "shape": shape, "dtype": str(sinfo.dtype)}


def normalise(mod, layout: str = "NHWC"):
    """Batch norm folded, convs in `layout`, constants folded (see the module docstring)."""
    from tvm import relax

    mod = relax.transform.FoldConstant()(mod)  # ONNX Clip's NaN guards on constant bounds
    mod = _elementwise_as_ops(mod)
    mod = _pads_into_convs(mod)
    mod = relax.transform.FoldBatchnormToConv2D()(mod)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.FoldConstant()(mod)
    if layout == "NHWC":
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        mod = relax.transform.FoldConstant()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    return relax.transform.DeadCodeElimination()(mod)


def _pads_into_convs(mod):
    """`conv2d(pad(x))` with a zero pad of the spatial axes only as `conv2d(x)` with that padding
    added to its own: PyTorch's "same" for an even kernel (torch.export: a pad op, then the conv),
    so that the conv is the layer `convtune layers` lists and the kernel pads inline, not a pass
    of its own over the input. Before ConvertLayout: the convs are the frontends' NCHW."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if getattr(call.op, "name", "") != "relax.nn.conv2d" or not isinstance(call.args[0], relax.Var):
                return call
            pad = self.lookup_binding(call.args[0])
            attrs = call.attrs
            if not (isinstance(pad, relax.Call) and getattr(pad.op, "name", "") == "relax.nn.pad"
                    and str(attrs.data_layout) == "NCHW" and str(pad.attrs.pad_mode) == "constant"
                    and float(pad.attrs.pad_value) == 0.0):
                return call
            width = [int(p) for p in pad.attrs.pad_width]
            conv = [int(p) for p in attrs.padding]
            if len(width) != 8 or any(width[:4]) or len(conv) != 4:
                return call
            padding = (conv[0] + width[4], conv[1] + width[6], conv[2] + width[5], conv[3] + width[7])
            return relax.op.nn.conv2d(pad.args[0], call.args[1], strides=attrs.strides, padding=padding,
                                      dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                                      kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                                      out_dtype=attrs.out_dtype)

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = Fold(mod).visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def _elementwise_as_ops(mod):
    """TVM's ONNX frontend emits Clip as two TE calls (`call_tir` of topi.maximum, topi.minimum):
    opaque to ConvertLayout (a transpose each side of every ReLU6) and to the chain finder. With a
    constant bound they are the Relax ops `maximum` / `minimum`, which both understand; so is the
    Relax `clip` op (`_clip_as_ops`)."""
    from tvm import relax

    names = {gv: gv.name_hint for gv in mod.get_global_vars()}

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if getattr(call.op, "name", "") == "relax.clip":
                rewritten = _clip_as_ops(call)
                return call if rewritten is None else rewritten
            if getattr(call.op, "name", "") != "relax.call_tir" or not isinstance(call.args[1], relax.Tuple):
                return call
            name = names.get(call.args[0], "")
            args = list(call.args[1].fields)
            if len(args) == 2 and _is_constant(args[1]) and _scalar(args[1]) is not None:
                if name.startswith("maximum"):
                    return relax.op.maximum(args[0], args[1])
                if name.startswith("minimum"):
                    return relax.op.minimum(args[0], args[1])
            return call

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = Rewrite(mod).visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def _clip_as_ops(call):
    """Relax's `clip(x, lo, hi)` (HardSwish's and HardSigmoid's, from the ONNX frontend) as
    `minimum(maximum(x, lo), hi)`: ConvertLayout has no rule for clip and wrapped every one in two
    transposes (MobileNet-v3: 0.29 ms of layout ops an inference), and the chain finder reads the
    pair. None for bounds that are not plain numbers."""
    from tvm import relax

    x, lo, hi = call.args
    dtype = str(getattr(x.ty, "dtype", ""))
    bounds = []
    for bound in (lo, hi):
        value = getattr(bound, "value", None)
        try:
            bounds.append(float(value.value if hasattr(value, "value") else value))
        except (TypeError, ValueError):
            return None
    if not dtype.startswith("float"):
        return None
    return relax.op.minimum(relax.op.maximum(x, relax.const(bounds[0], dtype)), relax.const(bounds[1], dtype))


def _is_constant(expr) -> bool:
    import tvm

    return isinstance(getattr(expr, "value", None), tvm.runtime.Tensor)


def _scalar(expr) -> float | None:
    value = expr.value.numpy()
    return float(value.reshape(())) if value.size == 1 and value.dtype == np.float32 else None


# -- the conv chains ---------------------------------------------------------------------------
# Epilogue ops after a conv (or a matmul by a constant) as Relax's dataflow patterns. A chain is
# `anchor (+ affine)* (+ residual add) (+ activation)`, matched rooted at its last binding:
#   affine: add / subtract / multiply / divide by a constant (its bias; a batch norm TVM decomposed);
#   residual: add of another tensor of the output's shape;
#   activation: relu; clip as the frontend writes it, minimum(maximum(x, lo), hi), or maximum(x, 0);
#   hardswish x * (min(max(x + 3, 0), 6) / 6) (or * 1/6) and silu x * sigmoid(x), where one
#   pattern object at both places makes them the same value.
# What a pattern cannot say (per-channel constants, the constants' values, single users, shapes)
# `_Chains` checks on the match.
_MAX_AFFINE = 8  # affine ops after one conv (bias, decomposed batch norm: 5)


def _chain_patterns() -> dict:
    from tvm.relax.dpl import is_const, is_op, wildcard

    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    matmul = is_op("relax.matmul")(wildcard(), wildcard())
    anchor = conv | matmul
    body, affine = anchor, []
    for _ in range(_MAX_AFFINE):  # the anchor, then up to _MAX_AFFINE affine ops: one level each
        steps = [is_op(op)(body, is_const()) for op in _AFFINE]
        affine.append(steps)
        body = anchor | steps[0] | steps[1] | steps[2] | steps[3]
    residual = is_op("relax.add")(body, wildcard())
    head = body | residual
    relu = is_op("relax.nn.relu")(head)
    lower = is_op("relax.maximum")(head, is_const())
    clip = is_op("relax.minimum")(lower, is_const())
    six = is_op("relax.minimum")(is_op("relax.maximum")(is_op("relax.add")(head, is_const()), is_const()), is_const())
    scale = is_op("relax.divide")(six, is_const()) | is_op("relax.multiply")(six, is_const())
    hardswish = is_op("relax.multiply")(head, scale)
    silu = is_op("relax.multiply")(head, is_op("relax.sigmoid")(head))
    chain = relu | clip | lower | hardswish | silu | head
    return {"chain": chain, "body": body, "conv": conv, "matmul": matmul, "affine": affine, "residual": residual,
            "relu": relu, "clip": clip, "lower": lower, "hardswish": hardswish, "silu": silu}


_PATTERNS: dict = {}


def chain_patterns() -> dict:
    """The patterns, built once: "chain" (a whole chain, rooted at its last binding), "body" (the
    anchor and its affine ops) and the parts `_Chains` reads a match by."""
    if not _PATTERNS:
        _PATTERNS.update(_chain_patterns())
    return _PATTERNS


def conv_chains(graph: ModelGraph) -> list[ConvChain]:
    """Every conv (and matmul by a constant) of the graph's main function with the epilogue that
    follows it (see the module docstring); a conv the kernels cannot take (another layout, a
    dynamic shape, a non-constant weight) is left to TVM and named in a warning."""
    return _Chains(graph).find()


class _Chains:
    """The chains of one graph. The patterns are matched rooted at every binding, the last first, so
    that each anchor gets its longest chain; where two chains could take one residual add, the
    earlier conv takes it (the other's output is its residual), as a walk in the file's order would."""

    def __init__(self, graph: ModelGraph):
        from tvm import relax

        self.graph = graph
        self.func = graph.mod["main"]
        self.bindings = [b for block in self.func.body.blocks for b in block.bindings]
        self.var2val = relax.analysis.get_var2val(self.func)
        self.binding_of = {b.var: b for b in self.bindings}
        self.var_of = {b.value: b.var for b in self.bindings}
        self.order = {b.var: i for i, b in enumerate(self.bindings)}
        self.users: dict = {}
        for binding in self.bindings:
            self._count(binding.value, binding)
        self._count(self.func.body.body, None)
        self.claimed: set = set()  # vars a chain computes
        self.anchors: dict = {}  # anchor var -> (workload, weight, name, position, shape) of a float anchor
        self.patterns = chain_patterns()

    def _count(self, expr, holder):
        from tvm import relax

        if isinstance(expr, relax.Var):
            self.users.setdefault(expr, []).append(holder)
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                self._count(arg, holder)
        elif isinstance(expr, relax.Tuple):
            for item in expr.fields:
                self._count(item, holder)
        elif isinstance(expr, relax.TupleGetItem):
            self._count(expr.tuple_value, holder)

    def only_user(self, var):
        holders = self.users.get(var, [])
        ok = len(holders) == 1 and holders[0] is not None and holders[0].var not in self.claimed
        return holders[0] if ok else None

    @staticmethod
    def op_name(binding) -> str:
        from tvm import relax

        value = binding.value
        return value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else ""

    # -- the anchors, in the graph's order: names, workloads, int8 chains ----------------------------
    def find(self) -> list[ConvChain]:
        graph = self.graph
        chains, skipped = [], []
        quantized = graph.quantization.convs if graph.quantization is not None else {}
        not_int8 = list(graph.quantization.float_ops) if graph.quantization is not None else []
        unnamed = list(range(len(graph.conv_names)))  # the file's convs no chain has taken the name of

        def name_of(index: int, wl: Workload) -> tuple[str, int]:
            """The file's name for the conv (`conv_names`), else its position and shape; and its position."""
            entries = graph.conv_names
            if entries and isinstance(entries[0], tuple):
                key = _workload_key(wl)
                position = next((i for i in unnamed if entries[i][1] == key), None)
                if position is None:
                    return positional_name(index, wl), index
                unnamed.remove(position)
                return entries[position][0] or positional_name(position, wl), position
            return (entries[index] if index < len(entries) else None) or positional_name(index, wl), index

        convs = matmuls = 0
        bound = {b.var: b.value for b in self.bindings}
        for binding in self.bindings:
            if self.op_name(binding) == "relax.nn.conv2d":
                index, convs = convs, convs + 1
                try:
                    wl, weight = _conv_workload(graph.layout, binding.value)
                except (WorkloadError, ValueError) as err:
                    skipped.append(f"conv {index}: {err}")
                    continue
                name, position = name_of(index, wl)
                if position in quantized:  # by its position among the file's convs
                    try:
                        chain = _int8_chain(quantized[position], wl, weight, binding, bound, self.only_user,
                                            self.op_name)
                    except (WorkloadError, ValueError) as err:
                        not_int8.append(f"Conv {quantized[position].node!r} ({err})")
                    else:
                        chain.name, chain.position = name, position
                        self.claimed.update(chain.replaced)
                        chains.append(chain)
                        continue
                self.anchors[binding.var] = (wl, weight, name, position, None)
            elif self.op_name(binding) == "relax.matmul":
                index, matmuls = matmuls, matmuls + 1
                found = _matmul_workload(binding.value, binding.var)
                if found is None:  # activations times activations (attention), or a dynamic shape: TVM's
                    continue
                wl, weight, shape = found
                name = ((graph.matmul_names[index] if index < len(graph.matmul_names) else None)
                        or f"matmul{index}.{wl.n * wl.h * wl.w}x{wl.ci}x{wl.co}")
                self.anchors[binding.var] = (wl, weight, name, None, shape)
        for binding in reversed(self.bindings):  # the last binding of a chain first: the longest chain
            if binding.var not in self.claimed:
                chain = self._chain_at(binding)
                if chain is not None:
                    self.claimed.update(chain.replaced)
                    chains.append(chain)
        chains.sort(key=lambda c: self.order[c.replaced[0]])
        for i, chain in enumerate(chains):
            chain.index = i
        if skipped:
            print(f"warning: {graph.label}: {len(skipped)} conv(s) left to TVM: {'; '.join(skipped)}", file=sys.stderr)
        if not_int8:
            print(f"warning: {graph.label}: {len(not_int8)} quantized op(s) run in float32 between their "
                  f"DequantizeLinear and QuantizeLinear (convtune has no int8 kernel for them; TVM computes them): "
                  f"{'; '.join(not_int8)}", file=sys.stderr)
        return chains

    # -- a match, checked ---------------------------------------------------------------------------
    def _var(self, expr):
        """The var a matched expression is bound to (the match sees through bindings)."""
        from tvm import relax

        return expr if isinstance(expr, relax.Var) else self.var_of.get(expr)

    def _single(self, var, user_var) -> bool:
        """`var`'s one user is the binding of `user_var`, which no chain has taken."""
        holders = self.users.get(var, [])
        return (len(holders) == 1 and holders[0] is not None and holders[0].var.same_as(user_var)
                and user_var not in self.claimed)

    def _body(self, var):
        """The anchor and its affine ops ending at `var`: (anchor var, [(op, values, var) ...]), or
        None where it is no such body (not matched, an anchor the kernels cannot take, an op not
        per-channel, a value with another user, a binding another chain took)."""
        value = self.var2val.get(var)
        if value is None or var in self.claimed:
            return None
        match = self.patterns["body"].extract_matched_expr(value, self.var2val)
        if match is None:
            return None
        call = match.get(self.patterns["conv"])
        anchor = self._var(call if call is not None else match.get(self.patterns["matmul"]))
        if anchor is None or anchor not in self.anchors or anchor in self.claimed:
            return None
        wl = self.anchors[anchor][0]
        steps, previous = [], anchor
        for level in self.patterns["affine"]:  # innermost level (next to the anchor) first
            call = next((match[p] for p in level if p in match), None)
            if call is None:
                continue
            step_var = self._var(call)
            step = _affine_step(call, previous, wl)
            if step_var is None or step is None or not self._single(previous, step_var):
                return None
            steps.append((step[0], step[1], step_var))
            previous = step_var
        return (anchor, steps) if previous.same_as(var) else None

    def _chain_at(self, binding) -> ConvChain | None:
        """The chain whose last binding is `binding`, or None."""
        p = self.patterns
        match = p["chain"].extract_matched_expr(binding.value, self.var2val)
        if match is None:
            return None
        root = binding.var
        # the activation: its kind, clip bounds, the vars it computes, the value it reads (head)
        activation, clip, covered, head = "none", (0.0, 6.0), [], root
        if p["relu"] in match:
            activation, head, covered = "relu", self._operand(binding.value), [root]
        elif p["clip"] in match:
            lower = self._operand(binding.value)
            head = self._operand(self.var2val[lower])
            lo, hi = _scalar_operand(self.var2val[lower], head), _scalar_operand(binding.value, lower)
            if lo is None or hi is None or lo > hi or not self._single(lower, root):
                return None
            activation, clip, covered = "clip", (lo, hi), [lower, root]
        elif p["lower"] in match:
            head = self._operand(binding.value)
            if _scalar_operand(binding.value, head) != 0.0:
                return None
            activation, covered = "relu", [root]
        elif p["hardswish"] in match or p["silu"] in match:
            found = self._swish(binding)
            if found is None:
                return None
            activation, head, covered = found
        if head is None or head in self.claimed or (covered and not self._feeds(head, activation, covered)):
            return None
        # the residual add, then the anchor's body
        residual, added = None, []
        if p["residual"] in match and self._body(head) is None:
            found = self._residual(head)
            if found is None:
                return None
            body, residual = found
            added = [head]
        else:
            body = self._body(head)
            if body is None:
                return None
        anchor, steps = body
        return self._make(anchor, steps, residual, added + covered, activation, clip)

    def _operand(self, call):
        """The var a unary op or an op with one constant operand reads."""
        return next((self._var(a) for a in call.args if not _is_constant(a)), None)

    def _feeds(self, head, activation: str, covered: list) -> bool:
        """The activation's first op is `head`'s one user (hardswish and silu: its two, the final
        multiply one of them), and no chain has taken them."""
        if activation not in ("hardswish", "silu"):
            return self._single(head, covered[0])
        holders = self.users.get(head, [])
        return len(holders) == 2 and all(h is not None and h.var not in self.claimed
                                         and any(h.var.same_as(v) for v in covered) for h in holders)

    def _swish(self, binding):
        """hardswish or silu ending at `binding` (the final multiply): (activation, head, vars)."""
        from tvm import relax

        a, b = binding.value.args
        for head, factor in ((a, b), (b, a)):
            head, factor = self._var(head), self._var(factor)
            if head is None or factor is None:
                continue
            value = self.var2val.get(factor)
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.sigmoid":
                if value.args[0].same_as(head) and self._single(factor, binding.var):
                    return "silu", head, [factor, binding.var]
                continue
            # factor = (min(max(head + 3, 0), 6)) / 6, or * (1 / 6)
            chain, previous = [], factor
            for op in ("relax.divide|relax.multiply", "relax.minimum", "relax.maximum", "relax.add"):
                value = self.var2val.get(previous)
                if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") in op.split("|")):
                    break
                chain.append((previous, value))
                previous = self._var(value.args[0])
            if len(chain) != 4 or not previous.same_as(head):
                continue
            (scaled, scale), (six, upper), (zero, lower), (three, plus) = chain
            factor6 = _scalar_operand(scale, six)
            divides = scale.op.name == "relax.divide" and scale.args[0].same_as(six) and factor6 == 6.0
            multiplies = scale.op.name == "relax.multiply" and factor6 is not None and abs(factor6 * 6.0 - 1.0) < 1e-6
            if not ((divides or multiplies) and _scalar_operand(upper, zero) == 6.0
                    and _scalar_operand(lower, three) == 0.0 and _scalar_operand(plus, head) == 3.0):
                continue
            if not (self._single(three, zero) and self._single(zero, six) and self._single(six, scaled)
                    and self._single(scaled, binding.var)):
                continue
            return "hardswish", head, [three, zero, six, scaled, binding.var]
        return None

    def _residual(self, add_var):
        """The body and the residual of the add `add_var`: the operand whose anchor comes first in
        the graph, of those that are a body whose one user is the add, the other operand a
        non-constant tensor of the output's shape."""
        value = self.var2val[add_var]
        found = []
        for main, other in ((value.args[0], value.args[1]), (value.args[1], value.args[0])):
            main = self._var(main)
            body = self._body(main) if main is not None else None
            if body is None or not self._single(main, add_var) or _is_constant(other):
                continue
            wl, _, _, _, shape = self.anchors[body[0]]
            if _shape(other.ty) == list(shape or wl.out_shape):
                found.append((self.order[body[0]], body, other))
        if not found:
            return None
        _, body, other = min(found, key=lambda f: f[0])
        return body, other

    def _make(self, anchor, steps, residual, after, activation, clip) -> ConvChain:
        wl, weight, name, position, shape = self.anchors[anchor]
        conv = self.var2val[anchor]
        chain = ConvChain(0, name, wl, conv.args[0], weight, None, residual, [anchor] + [s[2] for s in steps] + after,
                          (after or [s[2] for s in steps] or [anchor])[-1], shape=shape, position=position)
        # Per-channel affine ops right after the conv (its bias, a batch norm that TVM decomposed
        # into subtract / divide / multiply / add by constants) fold into its weight and a bias:
        # y = conv(x, w) * scale + shift = conv(x, w * scale) + shift, exact up to rounding.
        bias = False
        if steps:
            scale = np.ones(wl.co, np.float64)
            shift = np.zeros(wl.co, np.float64)
            for op, value, _ in steps:
                if op == "relax.add":
                    shift = shift + value
                elif op == "relax.subtract":
                    shift = shift - value
                elif op == "relax.multiply":
                    scale, shift = scale * value, shift * value
                else:
                    scale, shift = scale / value, shift / value
            axis = -1 if wl.layout == "NHWC" else 0
            channel = [1] * weight.ndim
            channel[axis] = wl.co
            chain.weight = (weight.astype(np.float64) * scale.reshape(channel)).astype(np.float32)
            chain.bias, bias = shift.astype(np.float32), True
        epilogue = Epilogue(bias=bias, residual=residual is not None, activation=activation, clip=clip)
        chain.workload = Workload(**{**wl.to_dict(), "epilogue": epilogue})
        return chain


def _int8_chain(q: QuantizedConv, wl: Workload, weight: np.ndarray, binding, bound: dict, only_user,
                op_name) -> ConvChain:
    """A quantized conv (`q`, read off the ONNX file) as one int8 conv chain of the Relax graph:

        [permute_dims] <- dequantize(x_q)          the chain's input is x_q itself (NCHW)
        conv2d -> add(bias) [-> relu | clip] [-> permute_dims] [-> quantize]

    The chain ends at the quantize (requantized: the kernel writes uint8 / int8, and the next
    conv's dequantize reads it) or at the float value (dequantized). `wl`, `weight`: the float
    conv as normalised; its weight must be q's dequantized (the conv at this position in the file
    is this one). ValueError says why the graph does not have the shape q promises."""
    from tvm import relax

    conv = binding.value
    nchw_graph = wl.layout == "NCHW"
    # the input: x_q through its dequantize (and the layout conversion's permute, when NHWC)
    data = conv.args[0]
    if not nchw_graph:
        value = bound.get(data)
        if not _is_permute(value, (0, 2, 3, 1)):
            raise ValueError("its input is not the dequantized tensor")
        data = value.args[0]
    value = bound.get(data)
    if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.dequantize"):
        raise ValueError("its input is not the dequantized tensor")
    x_q = value.args[0]
    if str(x_q.ty.dtype) != ("uint8" if q.dtype == "int8" else "int8"):
        raise ValueError(f"its input is {x_q.ty.dtype}")
    # the weight the frontend folded must be the file's dequantized integers
    hwio = q.weight.transpose(2, 3, 1, 0)
    dequantized = (hwio.astype(np.float32) * q.w_scale.reshape(1, 1, 1, -1)).astype(np.float32)
    if not np.allclose(weight.transpose(2, 3, 1, 0) if nchw_graph else weight, dequantized, rtol=1e-5, atol=0):
        raise ValueError("its folded weight is not the file's dequantized int8 weight")
    geometry = {k: v for k, v in wl.to_dict().items() if k not in ("epilogue", "quant")}
    int8 = Workload(**{**geometry, "layout": "NHWC", "dtype": q.dtype})  # the int8 kernels are NHWC
    replaced, last = [binding.var], binding.var
    layout = wl.layout  # of the value at `last`
    nxt = only_user(last)
    if q.bias is not None:
        other = _other_operand(nxt.value, last) if nxt is not None and op_name(nxt) == "relax.add" else None
        bias = _channel_constant(other, wl) if other is not None else None
        expected = q.bias.astype(np.float32) * (np.float32(q.x_scale) * q.w_scale)
        if bias is None or not np.allclose(bias, expected, rtol=1e-5, atol=1e-30):
            raise ValueError("its bias add is not the file's dequantized int32 bias")
        replaced.append(nxt.var)
        last, nxt = nxt.var, only_user(nxt.var)
    activation, clip = "none", (0.0, 6.0)
    quantize = None
    for _ in range(4):  # relu / clip, the permute back to NCHW, the quantize: in the graph's order
        if nxt is None:
            break
        op = op_name(nxt)
        if op == "relax.nn.relu" and activation == "none":
            activation, steps = "relu", [nxt]
        elif op == "relax.maximum" and activation == "none":
            lo = _scalar_operand(nxt.value, last)
            after = only_user(nxt.var)
            hi = _scalar_operand(after.value, nxt.var) if after is not None and op_name(after) == "relax.minimum" else None
            if lo is not None and hi is not None and lo <= hi:
                activation, clip, steps = "clip", (lo, hi), [nxt, after]
            elif lo == 0.0:
                activation, steps = "relu", [nxt]
            else:
                break
        elif op == "relax.permute_dims" and layout == "NHWC" and _is_permute(nxt.value, (0, 3, 1, 2)) \
                and q.out != "float32":
            layout, steps = "NCHW", [nxt]
        elif op == "relax.quantize" and q.out != "float32" and layout == "NCHW":
            quantize, steps = nxt, [nxt]
        else:
            break
        replaced += [s.var for s in steps]
        last = steps[-1].var
        if quantize is not None:
            break
        nxt = only_user(last)
    if q.out != "float32":
        if quantize is None:
            raise ValueError("the graph has no quantize after it where the file has its QuantizeLinear")
        scale, zero = quantize.value.args[1], quantize.value.args[2]
        if not (_is_constant(scale) and _is_constant(zero) and np.allclose(scale.value.numpy(), q.y_scale, rtol=1e-6)
                and int(zero.value.numpy().reshape(-1)[0]) == q.y_zero_point
                and str(quantize.var.ty.dtype) == q.out):
            raise ValueError("its quantize is not the file's QuantizeLinear")
        if activation != q.activation:
            raise ValueError(f"its activation is {activation} in the graph, {q.activation} in the file")
    epilogue = Epilogue(bias=q.bias is not None, activation=activation, clip=clip)
    int8 = Workload(**{**int8.to_dict(), "epilogue": epilogue,
                       "quant": {"out": q.out, "scale": "channel" if q.per_channel else "tensor"}})
    int8.check_quant_inputs({**q.quant_inputs(), **({"bias": q.bias} if q.bias is not None else {})})
    return ConvChain(0, q.node, int8, x_q, hwio, q.bias, None, replaced, last, quant=q,
                     data_permute=(0, 2, 3, 1), out_permute=(0, 3, 1, 2) if layout == "NCHW" else None)


def _is_permute(value, axes: tuple) -> bool:
    from tvm import relax

    if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.permute_dims"):
        return False
    given = value.attrs.axes
    return given is not None and tuple(int(a) for a in given) == axes


def _shape(sinfo) -> list[int] | None:
    shape = getattr(sinfo, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    try:
        return [int(d) for d in shape.values]
    except TypeError:  # a symbolic dimension
        return None


def _conv_workload(layout: str, call) -> tuple[Workload, np.ndarray]:

    attrs = call.attrs
    data_layout, kernel_layout = str(attrs.data_layout), str(attrs.kernel_layout)
    want = ("NHWC", "HWIO") if layout == "NHWC" else ("NCHW", "OIHW")
    if (data_layout, kernel_layout) != want or str(attrs.out_layout) not in ("", data_layout):
        raise ValueError(f"layout {data_layout}/{kernel_layout}, the kernels take {want[0]}/{want[1]}")
    x, w = call.args
    if not _is_constant(w):
        raise ValueError("its weight is computed at run time, not a constant")
    xs = _shape(x.ty)
    if xs is None or len(xs) != 4:
        raise ValueError("its input shape is not static 4-D")
    if str(x.ty.dtype) != "float32" or str(attrs.out_dtype) not in ("", "None", "void", "float32"):
        raise ValueError(f"it computes in {x.ty.dtype}; the kernels are float32")
    weight = w.value.numpy()
    n, h, wd, ci = xs if layout == "NHWC" else (xs[0], xs[2], xs[3], xs[1])
    if layout == "NHWC":
        kh, kw, _, co = weight.shape
    else:
        co, _, kh, kw = weight.shape
    pad = [int(p) for p in attrs.padding]
    wl = Workload(n=n, h=h, w=wd, ci=ci, co=co, kh=kh, kw=kw, stride=tuple(int(s) for s in attrs.strides),
                  pad=tuple(pad) if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1]),
                  dilation=tuple(int(d) for d in attrs.dilation), groups=int(attrs.groups), layout=layout)
    if tuple(weight.shape) != wl.weight_shape:
        raise ValueError(f"weight {tuple(weight.shape)} is not {wl.weight_layout} {wl.weight_shape}")
    return wl, weight


def _matmul_workload(call, var) -> tuple[Workload, np.ndarray, tuple] | None:
    """A matmul `x [..., K] @ W [K, N]` with a constant float32 W as a 1x1 NHWC conv: (workload,
    HWIO weight [1, 1, K, N], the matmul's output shape). A 4-D x [n, h, w, K] (ConvNeXt's MLP
    after its permute) keeps its pixels; otherwise the rows are h (n = 1, w = 1). None where the
    weight is not a constant matrix or a shape is not static: TVM schedules those."""
    x, w = call.args
    if not _is_constant(w) or str(w.value.dtype) != "float32" or len(w.value.shape) != 2:
        return None
    xs = _shape(x.ty)
    out = _shape(var.ty)
    if xs is None or out is None or not xs or str(x.ty.dtype) != "float32":
        return None
    k, n_out = (int(d) for d in w.value.shape)
    if xs[-1] != k or str(call.attrs.out_dtype) not in ("", "None", "void", "float32"):
        return None
    if len(xs) == 4:
        n, h, wd = xs[:3]
    else:
        n, h, wd = 1, int(np.prod(xs[:-1], dtype=np.int64)), 1
    try:
        wl = Workload(n=n, h=h, w=wd, ci=k, co=n_out, kh=1, kw=1, layout="NHWC")
    except WorkloadError:
        return None
    return wl, w.value.numpy().reshape(1, 1, k, n_out), tuple(out)


_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _affine_step(call, var, wl: Workload):
    """(op, per-channel float64 values) when `call` is `var <op> constant` with a per-channel or
    scalar constant (`constant - var` and `constant / var` are not affine in var's scale)."""
    a, b = call.args
    if not a.same_as(var):
        if call.op.name not in ("relax.add", "relax.multiply") or not b.same_as(var):
            return None
        a, b = b, a
    values = _channel_constant(b, wl)
    if values is None and _is_constant(b) and _scalar(b) is not None:
        values = np.full(wl.co, _scalar(b), np.float32)
    if values is None or not np.all(np.isfinite(values)):
        return None
    if call.op.name == "relax.divide" and np.any(values == 0):
        return None
    return call.op.name, values.astype(np.float64)


def _other_operand(call, var):
    a, b = call.args
    if a.same_as(var):
        return b
    if b.same_as(var):
        return a
    return None


def _channel_constant(expr, wl: Workload) -> np.ndarray | None:
    """A per-output-channel constant as the frontend broadcasts it ([1,1,1,C], [1,C,1,1], [C])."""
    if not _is_constant(expr) or str(expr.value.dtype) != "float32":
        return None
    value = expr.value.numpy()
    channel_shape = (1, 1, 1, wl.co) if wl.layout == "NHWC" else (1, wl.co, 1, 1)
    if value.shape in (channel_shape, (wl.co,)) or (wl.layout == "NHWC" and value.shape == (1, wl.co)):
        return value.reshape(wl.co).astype(np.float32)
    return None


def _scalar_operand(call, var) -> float | None:
    other = _other_operand(call, var)
    if other is None or not _is_constant(other):
        return None
    value = _scalar(other)
    return value if value is not None and np.isfinite(value) else None


# -- rewriting the chains ------------------------------------------------------------------------
def replace_chains(graph: ModelGraph, emit) -> object:
    """The graph's module with every conv chain computed by `emit(builder, chain, value)`, which
    returns the Relax expression that stands for the chain's last value (`value(expr)` maps an
    operand of the chain, e.g. its input or residual, into the rewritten graph). The bindings the
    chain computes are dropped; nothing else changes. Deploy emits convtune's kernels; the model
    search emits an opaque stand-in, so that both see the same fused ops around the convs."""
    from tvm import relax

    chains = graph.chains()
    ends = {c.last: c for c in chains}
    dropped = {v for c in chains for v in c.replaced[:-1]}

    @relax.expr_functor.mutator
    class Replace(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var in dropped:
                return
            if binding.var not in ends:
                return super().visit_var_binding_(binding)
            value = emit(self.builder_, ends[binding.var], self.visit_expr)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))

    replace = Replace(graph.mod)
    main = replace.visit_expr(graph.mod["main"])
    mod = replace.builder_.get()
    mod[mod.get_global_var("main")] = main
    mod = relax.transform.DeadCodeElimination()(mod)
    return _cancel_permutes(mod) if any(c.quant is not None for c in chains) else mod


def chain_input(builder, chain: ConvChain, value):
    """The chain's input as its kernel reads it (an int8 conv's x_q permuted to NHWC)."""
    data = value(chain.data)
    if chain.data_permute is not None:
        data = builder.emit(relax_op().permute_dims(data, chain.data_permute))
    return data


def chain_output(builder, chain: ConvChain, expr):
    """The kernel's result as the graph holds the chain's last value (back to NCHW for an int8 conv
    whose output the file quantizes: the next dequantize reads it there)."""
    if chain.out_permute is not None:
        expr = relax_op().permute_dims(builder.emit(expr), chain.out_permute)
    return expr


def relax_op():
    from tvm import relax

    return relax.op


def _cancel_permutes(mod):
    """permute_dims(permute_dims(x, a), b) that compose to the identity is x: between two int8
    convs, one kernel's NHWC output permuted to NCHW for the graph and back to NHWC for the next
    kernel is no copy at all."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Cancel(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if getattr(call.op, "name", "") != "relax.permute_dims" or not isinstance(call.args[0], relax.Var):
                return call
            inner = self.lookup_binding(call.args[0])
            if not (isinstance(inner, relax.Call) and getattr(inner.op, "name", "") == "relax.permute_dims"):
                return call
            if call.attrs.axes is None or inner.attrs.axes is None:
                return call
            outer_axes = [int(a) for a in call.attrs.axes]
            inner_axes = [int(a) for a in inner.attrs.axes]
            if [inner_axes[a] for a in outer_axes] == list(range(len(outer_axes))):
                return inner.args[0]
            return call

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = _share_permutes(Cancel(mod).visit_expr(func))
    return relax.transform.DeadCodeElimination()(mod)


def _share_permutes(func):
    """One permute_dims per (tensor, axes): two int8 convs reading the same quantized tensor (a
    ResNet block's 3x3 conv and its downsample) read one NHWC copy of it, not one each."""
    from tvm import relax

    first, alias = {}, {}
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.permute_dims"
                    and isinstance(value.args[0], relax.Var) and value.attrs.axes is not None):
                continue
            key = (value.args[0], tuple(int(a) for a in value.attrs.axes))
            if key in first:
                alias[binding.var] = first[key]
            else:
                first[key] = binding.var
    if not alias:
        return func

    @relax.expr_functor.mutator
    class Share(relax.PyExprMutator):
        def visit_dataflow_var_(self, var):
            return alias.get(var, var)

        def visit_var_(self, var):
            return alias.get(var, var)

    return Share().visit_expr(func)


def _fast_math():
    """Relax legalizations of the transcendental ops by TOPI's polynomial approximations. TVM's
    own lower exp/erf/tanh/sigmoid to libm calls, one scalar call per element that LLVM cannot
    vectorise: ConvNeXt's GELU took 4.2 ms for 1.2 M elements (erff), a vectorised polynomial a
    fraction of it. The approximations are within a few float32 ulps (relative 1e-7..1e-6), far
    inside a model's tolerance; a NaN input still gives NaN (the polynomials clamp their argument,
    which would turn NaN into a number), and so does a ReLU left to TVM (a select, not a max)."""
    from tvm import te, tirx, topi

    def keep_nan(fast):
        def compute(x):
            y = fast(x)
            return te.compute(x.shape, lambda *i: tirx.Select(x(*i) != x(*i), x(*i), y(*i)), name="fast_math")
        return compute

    def sigmoid(x):
        one = tirx.const(1.0, x.dtype)
        e = topi.fast_exp(topi.negative(x))
        return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="sigmoid")

    def gelu(x):
        half = tirx.const(0.5, x.dtype)
        erf = topi.fast_erf(topi.multiply(x, tirx.const(0.5 ** 0.5, x.dtype)))
        return te.compute(x.shape, lambda *i: x(*i) * (half + erf(*i) * half), name="gelu")

    def silu(x):
        return topi.multiply(x, sigmoid(x))

    def relu(x):
        # a select, not TOPI's max(x, 0): LLVM's maxnum makes max(NaN, 0) = 0 where ORT keeps NaN
        zero = tirx.const(0.0, x.dtype)
        return te.compute(x.shape, lambda *i: tirx.Select(x(*i) < zero, zero, x(*i)), name="relu")

    def legalize(fast, nan_safe=False):
        def rule(bb, call):
            x = call.args[0]
            if str(x.ty.dtype) != "float32":
                return call  # left to the default legalization below
            return bb.call_te(fast if nan_safe else keep_nan(fast), x)
        return rule

    return {"relax.exp": legalize(topi.fast_exp), "relax.tanh": legalize(topi.fast_tanh),
            "relax.erf": legalize(topi.fast_erf), "relax.sigmoid": legalize(sigmoid),
            "relax.nn.gelu": legalize(gelu), "relax.nn.silu": legalize(silu),
            "relax.nn.relu": legalize(relu, nan_safe=True)}


def legalize_passes():
    """Relax's CPU legalization and fusion (`cpu_generic.legalize_passes`), with the fast-math
    legalizations first: what `compile --model` builds and `tune --model` tunes, alike."""
    from tvm import relax

    return [relax.transform.LegalizeOps(_fast_math()), relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), relax.transform.FuseTIR()]


OPS_RECORDS = "model-ops"  # under logs/<target tag>/: MetaSchedule's records of models' non-conv ops


def ops_directory(logs: str, target) -> str:
    return os.path.join(logs, target.tag, OPS_RECORDS)


OPAQUE_KERNEL = "convtune.kernel"  # the stand-in's extern name: never called, never built


def ops_module(graph: ModelGraph):
    """The graph with its conv chains as opaque extern calls, legalised and fused as the deployed
    model will be: its PrimFuncs are exactly the model's other ops (what `tune --model` tunes and
    the compiled library looks up by structure)."""
    import tvm
    from tvm import relax

    def stand_in(builder, chain, value):
        args = [chain_input(builder, chain, value)] + ([value(chain.residual)] if chain.residual is not None else [])
        wl = chain.workload
        return chain_output(builder, chain, relax.call_dps_packed(
            OPAQUE_KERNEL, relax.Tuple(args), relax.TensorType(chain.shape or wl.out_shape, wl.out_dtype)))

    mod = replace_chains(graph, stand_in)
    return tvm.transform.Sequential(legalize_passes())(mod)
