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


ACTIVATIONS = ("none", "relu", "clip")


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
    then an activation: ReLU, or clip(lo, hi) (ReLU6 is clip(0, 6)). Every algorithm fuses it into
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
        return "_e" + ".".join(parts)

    @property
    def spec(self) -> list[str]:
        parts = (["bias=1"] if self.bias else []) + (["residual=1"] if self.residual else [])
        if self.activation == "relu":
            parts.append("act=relu")
        elif self.activation == "clip":
            parts.append("act=relu6" if self.clip == (0.0, 6.0) else "act=clip:" + ":".join(f"{v:g}" for v in self.clip))
        return parts

    def __str__(self) -> str:
        return ",".join(self.spec) or "none"


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
        if self.dtype != "float32":
            raise WorkloadError("dtype", f"only float32 is supported, got {self.dtype!r}")
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
        """Multiply-adds counted as two FLOPs, over the direct algorithm (the figure GFLOP/s divides)."""
        return 2 * self.n * self.oh * self.ow * self.co * (self.ci // self.groups) * self.kh * self.kw

    # -- names ---------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Canonical, file-name safe identity of the layer (records and libraries are keyed by it)."""
        s, p, d = self.stride, self.pad, self.dilation
        return (f"{self.layout}_n{self.n}_h{self.h}_w{self.w}_ci{self.ci}_co{self.co}_k{self.kh}x{self.kw}"
                f"_s{s[0]}x{s[1]}_p{p[0]}.{p[1]}.{p[2]}.{p[3]}_d{d[0]}x{d[1]}_g{self.groups}{self.epilogue.key}")

    @property
    def bare(self) -> "Workload":
        """The same conv without its epilogue: same tile space, so its records seed this one's."""
        return dataclasses.replace(self, epilogue=Epilogue()) if not self.epilogue.empty else self

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
        return ",".join(parts + self.epilogue.spec)

    def to_dict(self) -> dict:
        """Plain JSON types; the epilogue only when there is one (bare records stay as they were)."""
        d = dataclasses.asdict(self)
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
        return cls(**values)

    def with_layout(self, layout: str) -> "Workload":
        return dataclasses.replace(self, layout=layout)

    def __str__(self) -> str:
        return self.spec


SPEC_KEYS = ("n", "h", "w", "ci", "co", "k", "kh", "kw", "stride", "pad", "dilation", "groups", "layout",
             "bias", "residual", "act")
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
        epilogue=_epilogue(values),
        n=one("n", "1"), h=one("h"), w=one("w", values["h"]), ci=one("ci"), co=one("co"), kh=kh, kw=kw,
        stride=stride * (2 // len(stride)), dilation=dilation * (2 // len(dilation)),
        pad=pad[0] if len(pad) == 1 else pad, groups=one("groups", "1"),
        layout=layout or values.get("layout", "NHWC"),
    )


def _epilogue(values: dict[str, str]) -> Epilogue:
    """`bias=1`, `residual=1`, `act=relu|relu6|clip:LO:HI|none` from a spec."""
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
    if act not in ("none", "relu"):
        raise WorkloadError("act", f"must be relu, relu6, clip:LO:HI or none, got {act!r}")
    return Epilogue(**flags, activation=act)
