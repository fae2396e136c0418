"""The conv2d workload: one layer's shape, validated, with its output shape and FLOPs.

A workload is a frozen value; everything downstream (templates, records, libraries) is keyed by
its canonical `key`, so two spellings of the same layer share their records.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

LAYOUTS = ("NHWC", "NCHW")
WEIGHT_LAYOUT = {"NHWC": "HWIO", "NCHW": "OIHW"}
# TVM indexes a tensor with int32 arithmetic: a tensor of 2**31 elements or more overflows it.
MAX_ELEMENTS = 2**31 - 1


# hardswish (MobileNet-v3: x * clip(x + 3, 0, 6) / 6) and silu (EfficientNet, RegNet's SE:
# x * sigmoid(x)) are fused too: after a conv each was a pass of its own over the conv's output
# (and hardswish a transpose each side, its clip being opaque to the layout conversion).
ACTIVATIONS = ("none", "relu", "clip", "hardswish", "silu")

# Element types of a layer, named as a quantization engineer reads them (ONNX Runtime's U8S8 / S8S8):
#   float32  float32 data x float32 weights -> float32 (the default; everything before issue 24)
#   int8     uint8 data x int8 weights, int32 accumulation (ONNX QLinearConv/ConvInteger with
#            QUInt8 activations and QInt8 weights: x86's classic u8s8, what vpdpbusd multiplies)
#   s8s8     int8 data x int8 weights, int32 accumulation (ONNX Runtime's quantizer default, QDQ S8S8)
# `u8s8` is read as `int8`. Weights are symmetric (zero point 0), as ONNX Runtime quantizes them.
DTYPES = ("float32", "int8", "s8s8")
DTYPE_ALIASES = {"u8s8": "int8"}
# What a quantized conv writes: the int32 accumulator (ConvInteger, + an int32 bias), requantized
# uint8 / int8 (QLinearConv: scale, output zero point, round half to even, saturate), or
# dequantized float32 (the accumulator times x_scale * w_scale).
QUANT_OUTPUTS = ("int32", "uint8", "int8", "float32")
# the requantize / dequantize multiplier: one for the tensor, or one per output channel
QUANT_SCALES = ("tensor", "channel")


class WorkloadError(ValueError):
    """An impossible or inconsistent layer; the message names the field and the rule."""

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class Epilogue:
    """What a kernel applies to its output tile before the tile is written, in the order ResNet
    and MobileNet use: a per-channel bias, then a residual (a tensor of the output's shape) added,
    then an activation: ReLU, clip(lo, hi) (ReLU6 is clip(0, 6)), hardswish or SiLU. Every algorithm fuses it into
    the block that writes the output (its write-back, Winograd's inverse transform, im2col's and
    indirect's tile copy), so the output is written once, already finished."""

    bias: bool = False
    residual: bool = False
    activation: str = "none"
    clip: tuple[float, float] = (0.0, 6.0)  # (lo, hi), used when activation == "clip"

    def __post_init__(self):
        object.__setattr__(self, "clip", tuple(float(v) for v in self.clip))
        if self.activation not in ACTIVATIONS:
            raise WorkloadError("act", f"must be one of {', '.join(ACTIVATIONS)} (or relu6), got {self.activation!r}")
        if len(self.clip) != 2 or not all(math.isfinite(v) for v in self.clip) or self.clip[0] > self.clip[1]:
            raise WorkloadError("clip", f"must be finite lo:hi with lo <= hi, got {self.clip}")

    @property
    def empty(self) -> bool:
        return not (self.bias or self.residual or self.activation != "none")

    @property
    def key(self) -> str:
        """'' for the bare conv, else e.g. `_eb.r.relu`: records of a fused conv live apart."""
        if self.empty:
            return ""
        parts = (["b"] if self.bias else []) + (["r"] if self.residual else [])
        if self.activation == "relu":
            parts.append("relu")
        elif self.activation == "clip":
            parts.append("clip" + "to".join(f"{v:g}" for v in self.clip))
        elif self.activation != "none":
            parts.append(self.activation)
        return "_e" + ".".join(parts)

    @property
    def spec(self) -> list[str]:
        parts = (["bias=1"] if self.bias else []) + (["residual=1"] if self.residual else [])
        if self.activation == "relu":
            parts.append("act=relu")
        elif self.activation == "clip":
            parts.append("act=relu6" if self.clip == (0.0, 6.0) else "act=clip:" + ":".join(f"{v:g}" for v in self.clip))
        elif self.activation != "none":
            parts.append(f"act={self.activation}")
        return parts

    def __str__(self) -> str:
        return ",".join(self.spec) or "none"


@dataclass(frozen=True)
class Quant:
    """How a quantized (int8 / s8s8) conv finishes its int32 accumulator, per output element:

      int32    acc + bias                                               (ConvInteger; act=relu: max(0, .))
      uint8    clamp(rint(float32(acc + bias) * scale[c]) + y_zero_point, lo, hi)    (QLinearConv)
      int8     likewise, saturated to [-128, 127]
      float32  float32(acc + bias) * scale[c]   then the float activation       (dequantized)

    `scale` is the multiplier: x_scale * w_scale[c] / y_scale for uint8/int8, x_scale * w_scale[c]
    for float32; `tensor` gives one value, `channel` one per output channel. rint rounds half to
    even and the product is one float32 multiply: ONNX QuantizeLinear's definition. The saturation
    bounds [lo, hi] are the type's, narrowed by a folded activation: relu -> lo = y_zero_point (the
    real 0); relu6 / clip:A:B -> [y_zero_point + rint(A / y_scale), y_zero_point + rint(B / y_scale)],
    which equals quantizing the clipped real value (rint is monotone). bias is int32 (QLinearConv's B)."""

    out: str = "int32"
    scale: str = "tensor"

    def __post_init__(self):
        if self.out not in QUANT_OUTPUTS:
            raise WorkloadError("out", f"must be one of {', '.join(QUANT_OUTPUTS)}, got {self.out!r}")
        if self.scale not in QUANT_SCALES:
            raise WorkloadError("scale", f"must be tensor (one multiplier) or channel (one per output channel), "
                                f"got {self.scale!r}")
        if self.out == "int32" and self.scale != "tensor":
            raise WorkloadError("scale", "an int32 output is not rescaled: give out=uint8, int8 or float32 with scale=")

    @property
    def default(self) -> bool:
        return self == Quant()

    @property
    def requantized(self) -> bool:
        return self.out in ("uint8", "int8")

    @property
    def scaled(self) -> bool:
        return self.out != "int32"

    @property
    def key(self) -> str:
        return ("" if self.out == "int32" else f"_to{self.out}") + ("_perchannel" if self.scale == "channel" else "")

    @property
    def spec(self) -> list[str]:
        return ([] if self.out == "int32" else [f"out={self.out}"]) + (["scale=channel"] if self.scale == "channel" else [])


@dataclass(frozen=True)
class Workload:
    n: int
    h: int
    w: int
    ci: int
    co: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    layout: str = "NHWC"
    dtype: str = "float32"
    epilogue: Epilogue = Epilogue()
    quant: Quant = Quant()  # int8 / s8s8 only: what the int32 accumulator becomes

    def __post_init__(self):
        # Normalise scalars so `Workload(..., stride=2, pad=1)` means what a user expects.
        for name, size in (("stride", 2), ("dilation", 2), ("pad", 4)):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,) * size
            elif name == "pad" and len(value) == 2:
                value = (value[0], value[1], value[0], value[1])
            object.__setattr__(self, name, tuple(int(v) for v in value))
        object.__setattr__(self, "layout", str(self.layout).upper())
        if isinstance(self.epilogue, dict):
            object.__setattr__(self, "epilogue", Epilogue(**self.epilogue))
        if isinstance(self.quant, dict):
            object.__setattr__(self, "quant", Quant(**self.quant))
        if isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", DTYPE_ALIASES.get(self.dtype.lower(), self.dtype.lower()))
        self.validate()

    def validate(self) -> None:
        for name in ("n", "h", "w", "ci", "co", "kh", "kw", "groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise WorkloadError(name, f"must be a positive integer, got {value!r}")
        if len(self.stride) != 2 or min(self.stride) <= 0:
            raise WorkloadError("stride", f"must be positive, got {self.stride}")
        if len(self.dilation) != 2 or min(self.dilation) <= 0:
            raise WorkloadError("dilation", f"must be positive, got {self.dilation}")
        if len(self.pad) != 4 or min(self.pad) < 0:
            raise WorkloadError("pad", f"must be non-negative (top, left, bottom, right), got {self.pad}")
        if self.layout not in LAYOUTS:
            raise WorkloadError("layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if not isinstance(self.epilogue, Epilogue):
            raise WorkloadError("epilogue", f"must be an Epilogue, got {self.epilogue!r}")
        if self.dtype not in DTYPES:
            raise WorkloadError("dtype", f"must be float32, int8 (uint8 data x int8 weights) or s8s8 (int8 data x "
                                f"int8 weights), got {self.dtype!r}")
        if not isinstance(self.quant, Quant):
            raise WorkloadError("quant", f"must be a Quant, got {self.quant!r}")
        if self.quantized:
            self._validate_quantized()
        elif not self.quant.default:
            raise WorkloadError("out", f"out= and scale= are for int8 / s8s8 layers; this one is {self.dtype}")
        if self.ci % self.groups:
            raise WorkloadError("groups", f"input channels ci={self.ci} must be divisible by groups={self.groups}")
        if self.co % self.groups:
            raise WorkloadError("groups", f"output channels co={self.co} must be divisible by groups={self.groups}")
        for axis, size, k, d, lo, hi in (("h", self.h, self.kh, self.dilation[0], self.pad[0], self.pad[2]),
                                         ("w", self.w, self.kw, self.dilation[1], self.pad[1], self.pad[3])):
            span = (k - 1) * d + 1
            if span > size + lo + hi:
                raise WorkloadError(
                    f"k{axis}", f"dilated kernel extent {span} is larger than the padded input {axis}={size}+{lo}+{hi}")
        padded = (self.n, self.h + self.pad[0] + self.pad[2], self.w + self.pad[1] + self.pad[3], self.ci)
        for tensor, shape in (("input", self.data_shape), ("padded input", padded), ("output", self.out_shape),
                              ("weight", self.weight_shape)):
            elements = math.prod(shape)
            if elements > MAX_ELEMENTS:
                raise WorkloadError("shape", f"the {tensor} would hold {elements} elements, more than {MAX_ELEMENTS} "
                                    "(2**31 - 1): TVM's int32 index arithmetic would overflow")

    def _validate_quantized(self) -> None:
        ep, q = self.epilogue, self.quant
        if ep.residual:
            raise WorkloadError("residual", "an int8 conv takes no residual (a quantized add is its own op, "
                                "QLinearAdd); fold it after the conv")
        if ep.activation in ("hardswish", "silu"):
            raise WorkloadError("act", f"{ep.activation} on an int8 conv is its own op (a quantized model's "
                                "hardswish runs between a dequantize and a quantize); int8 convs fold relu / clip")
        if q.out == "int32" and ep.activation == "clip":
            raise WorkloadError("act", "clip on an int32 output has no scale to place its bounds: requantize "
                                "(out=uint8 or int8) or dequantize (out=float32)")

    # -- element types ---------------------------------------------------------------------------
    @property
    def quantized(self) -> bool:
        return self.dtype != "float32"

    @property
    def data_dtype(self) -> str:
        return {"float32": "float32", "int8": "uint8", "s8s8": "int8"}[self.dtype]

    @property
    def weight_dtype(self) -> str:
        return "float32" if self.dtype == "float32" else "int8"

    @property
    def out_dtype(self) -> str:
        return self.quant.out if self.quantized else self.dtype

    @property
    def quant_args(self) -> list[tuple[str, tuple[int, ...], str]]:
        """The quantized epilogue's arguments, in the order kernels take them: (name, shape, dtype).
        Named as ONNX QLinearConv names its inputs; `scale` is the combined multiplier (Quant)."""
        if not self.quantized:
            return []
        q, ep = self.quant, self.epilogue
        args = [("x_zero_point", (1,), self.data_dtype)]
        if ep.bias:
            args.append(("bias", (self.co,), "int32"))
        if q.scaled:
            args.append(("scale", (self.co,) if q.scale == "channel" else (1,), "float32"))
        if q.requantized:
            args.append(("y_zero_point", (1,), q.out))
            if ep.activation == "clip":
                args.append(("y_scale", (1,), "float32"))
        return args

    def check_quant_inputs(self, arrays: dict) -> None:
        """Refuse, in one line, a zero point, scale or bias of the wrong shape, a zero point outside its
        type, or a scale that is not a positive finite number (ONNX requires y_scale > 0)."""
        import numpy as np

        for name, shape, dtype in self.quant_args:
            if name not in arrays:
                raise WorkloadError(name, f"is required for {self.spec} (shape {shape}, {dtype})")
            a = np.asarray(arrays[name])
            if a.shape != shape and not (shape == (1,) and a.shape == ()):
                what = {"scale": "per-channel: one per output channel" if shape != (1,) else "per-tensor: one value",
                        "bias": "one int32 per output channel"}.get(name, "one value (per-tensor)")
                raise WorkloadError(name, f"must have shape {shape} ({what}), got {a.shape}")
            if dtype in ("uint8", "int8"):
                info = np.iinfo(dtype)
                if not np.issubdtype(a.dtype, np.integer) or a.min() < info.min or a.max() > info.max:
                    raise WorkloadError(name, f"must be a {dtype} value in [{info.min}, {info.max}], got {a.ravel()[:4]}")
            if name in ("scale", "y_scale") and not (np.all(np.isfinite(a)) and np.all(a > 0)):
                raise WorkloadError(name, f"must be positive and finite, got {a.ravel()[:4]}")

    # -- derived shapes ------------------------------------------------------------------------
    @property
    def oh(self) -> int:
        return (self.h + self.pad[0] + self.pad[2] - (self.kh - 1) * self.dilation[0] - 1) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pad[1] + self.pad[3] - (self.kw - 1) * self.dilation[1] - 1) // self.stride[1] + 1

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.ci

    @property
    def has_padding(self) -> bool:
        return any(self.pad)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.n, self.h, self.w, self.ci) if self.layout == "NHWC" else (self.n, self.ci, self.h, self.w)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        cig = self.ci // self.groups
        return (self.kh, self.kw, cig, self.co) if self.layout == "NHWC" else (self.co, cig, self.kh, self.kw)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.n, self.oh, self.ow, self.co) if self.layout == "NHWC" else (self.n, self.co, self.oh, self.ow)

    @property
    def weight_layout(self) -> str:
        return WEIGHT_LAYOUT[self.layout]

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two FLOPs (two integer ops for int8: GOPS), over the direct algorithm
        (the figure GFLOP/s divides)."""
        return 2 * self.n * self.oh * self.ow * self.co * (self.ci // self.groups) * self.kh * self.kw

    # -- names ---------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Canonical, file-name safe identity of the layer (records and libraries are keyed by it)."""
        s, p, d = self.stride, self.pad, self.dilation
        return (f"{self.layout}_n{self.n}_h{self.h}_w{self.w}_ci{self.ci}_co{self.co}_k{self.kh}x{self.kw}"
                f"_s{s[0]}x{s[1]}_p{p[0]}.{p[1]}.{p[2]}.{p[3]}_d{d[0]}x{d[1]}_g{self.groups}{self.dtype_key}"
                f"{self.epilogue.key}")

    @property
    def dtype_key(self) -> str:
        """'' for float32 (its keys are what they always were), else `_int8`, `_s8s8_touint8_perchannel`:
        records of a quantized layer live in their own directory, apart from the float32 layer's."""
        return "" if not self.quantized else f"_{self.dtype}{self.quant.key}"

    @property
    def bare(self) -> "Workload":
        """The same conv without its epilogue: same tile space, so its records seed this one's."""
        if self.epilogue.empty and self.quant.default:
            return self
        return dataclasses.replace(self, epilogue=Epilogue(), quant=Quant())

    @property
    def spec(self) -> str:
        """The shortest key=value spec that parses back to this workload."""
        parts = [f"n={self.n}"] if self.n != 1 else []
        parts += [f"h={self.h}", f"w={self.w}", f"ci={self.ci}", f"co={self.co}"]
        parts += [f"k={self.kh}"] if self.kh == self.kw else [f"kh={self.kh}", f"kw={self.kw}"]
        for name, value, default in (("stride", self.stride, 1), ("dilation", self.dilation, 1)):
            if value != (default, default):
                parts.append(f"{name}={value[0]}" if value[0] == value[1] else f"{name}={value[0]}x{value[1]}")
        if any(self.pad):
            p = self.pad
            parts.append(f"pad={p[0]}" if len(set(p)) == 1 else "pad=" + "x".join(map(str, p)))
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.layout != "NHWC":
            parts.append(f"layout={self.layout}")
        if self.quantized:
            parts += [f"dtype={self.dtype}"] + self.quant.spec
        return ",".join(parts + self.epilogue.spec)

    def to_dict(self) -> dict:
        """Plain JSON types; the epilogue only when there is one (bare records stay as they were)."""
        d = dataclasses.asdict(self)
        if not self.quantized:  # float32 records and sidecars stay byte for byte as they were
            del d["quant"]
        if self.epilogue.empty:
            del d["epilogue"]
        else:
            d["epilogue"]["clip"] = list(self.epilogue.clip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Workload":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise WorkloadError(sorted(unknown)[0], "is not a workload field")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if isinstance(values.get("epilogue"), dict):
            epilogue = values["epilogue"]
            unknown = set(epilogue) - {f.name for f in dataclasses.fields(Epilogue)}
            if unknown:
                raise WorkloadError(f"epilogue.{sorted(unknown)[0]}", "is not an epilogue field")
            values["epilogue"] = Epilogue(**epilogue)
        if isinstance(values.get("quant"), dict):
            unknown = set(values["quant"]) - {f.name for f in dataclasses.fields(Quant)}
            if unknown:
                raise WorkloadError(f"quant.{sorted(unknown)[0]}", "is not a quant field")
            values["quant"] = Quant(**values["quant"])
        return cls(**values)

    def with_layout(self, layout: str) -> "Workload":
        return dataclasses.replace(self, layout=layout)

    def __str__(self) -> str:
        return self.spec


SPEC_KEYS = ("n", "h", "w", "ci", "co", "k", "kh", "kw", "stride", "pad", "dilation", "groups", "layout",
             "bias", "residual", "act", "dtype", "out", "scale")
_FLAG = {"0": False, "1": True}


# ASCII digits only: int() would also take '+8', '8_0' and other scripts' digits ('٨').
_INTEGER = re.compile(r"-?[0-9]+")


def _ints(field: str, text: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split("x")]
    if len(parts) not in sizes:
        raise WorkloadError(field, f"expects {' or '.join(map(str, sizes))} integers separated by 'x', got {text!r}")
    if not all(_INTEGER.fullmatch(p) for p in parts):
        what = "an integer" if sizes == (1,) else "integers (decimal digits 0-9) separated by 'x'"
        raise WorkloadError(field, f"must be {what}, got {text!r}")
    return tuple(int(p) for p in parts)


def parse_spec(text: str, layout: str | None = None) -> Workload:
    """Parse `h=56,w=56,ci=64,co=64,k=3,pad=1` (see SPEC_KEYS). `layout` overrides the spec's."""
    values: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" not in item:
            raise WorkloadError(item, "expected key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        key = key.lower()
        if key not in SPEC_KEYS:
            raise WorkloadError(key, f"unknown key; known keys: {', '.join(SPEC_KEYS)}")
        if key in values:
            raise WorkloadError(key, "given twice")
        values[key] = value
    for required in ("h", "ci", "co"):
        if required not in values:
            raise WorkloadError(required, "is required")
    if "k" in values and ("kh" in values or "kw" in values):
        raise WorkloadError("k", "give either k or kh/kw, not both")
    if "k" not in values and "kh" not in values:
        raise WorkloadError("k", "is required (or kh and kw)")

    def one(field: str, default: str | None = None) -> int:
        return _ints(field, values.get(field, default), (1,))[0]

    kh = one("k") if "k" in values else one("kh")
    kw = one("k") if "k" in values else one("kw", values["kh"])
    stride = _ints("stride", values.get("stride", "1"), (1, 2))
    dilation = _ints("dilation", values.get("dilation", "1"), (1, 2))
    pad = _ints("pad", values.get("pad", "0"), (1, 2, 4))
    return Workload(
        dtype=values.get("dtype", "float32"), quant=_quant(values),
        epilogue=_epilogue(values),
        n=one("n", "1"), h=one("h"), w=one("w", values["h"]), ci=one("ci"), co=one("co"), kh=kh, kw=kw,
        stride=stride * (2 // len(stride)), dilation=dilation * (2 // len(dilation)),
        pad=pad[0] if len(pad) == 1 else pad, groups=one("groups", "1"),
        layout=layout or values.get("layout", "NHWC"),
    )


def _epilogue(values: dict[str, str]) -> Epilogue:
    """`bias=1`, `residual=1`, `act=relu|relu6|clip:LO:HI|hardswish|silu|none` from a spec."""
    flags = {}
    for name in ("bias", "residual"):
        text = values.get(name, "0")
        if text not in _FLAG:
            raise WorkloadError(name, f"must be 0 or 1, got {text!r}")
        flags[name] = _FLAG[text]
    act = values.get("act", "none").lower()
    if act == "relu6":
        return Epilogue(**flags, activation="clip", clip=(0.0, 6.0))
    if act.startswith("clip:"):
        bounds = act.split(":")[1:]
        try:
            lo, hi = (float(b) for b in bounds)
        except ValueError:
            raise WorkloadError("act", f"clip takes two numbers, clip:LO:HI, got {act!r}") from None
        return Epilogue(**flags, activation="clip", clip=(lo, hi))
    if act not in ("none", "relu", "hardswish", "silu"):
        raise WorkloadError("act", f"must be relu, relu6, clip:LO:HI, hardswish, silu or none, got {act!r}")
    return Epilogue(**flags, activation=act)


def _quant(values: dict[str, str]) -> Quant:
    """`out=int32|uint8|int8|float32` and `scale=tensor|channel` of a quantized layer (u8 / s8 / i32 /
    f32 are read as the type names); the Workload refuses them on a float32 layer."""
    short = {"u8": "uint8", "s8": "int8", "i8": "int8", "i32": "int32", "f32": "float32"}
    dtype = values.get("dtype", "float32").lower()
    given = [k for k in ("out", "scale") if k in values]
    if given and DTYPE_ALIASES.get(dtype, dtype) == "float32":
        raise WorkloadError(given[0], "out= and scale= are for int8 / s8s8 layers (dtype=int8 or s8s8)")
    out = values.get("out", "int32").lower()
    return Quant(out=short.get(out, out), scale=values.get("scale", "tensor").lower())
