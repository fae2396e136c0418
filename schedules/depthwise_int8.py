"""Depthwise int8 convolution (u8s8 and s8s8): widened, no dot product, so MobileNets run int8 end to end.

    acc[n, y, x, c] = sum_{kh, kw} (in[n, y*s + kh*d, x*s + kw*d, c / m] - x_zero_point) * w[kh, kw, 0, c]
    out[n, y, x, c] = finish(acc + bias[c])        (int32; or requantized / dequantized: see Quant)

A depthwise output sums only KH*KW products, each of its own channel: there are no neighbouring
input channels to pair, so neither vpmaddwd's pairs nor vpdpbusd's quads fit (a dot product over
kw would need the window's pixels interleaved per channel, a transpose per tile). The template
widens instead: the input minus its zero point as int16 (a separate "pad" stage, zero in the
padding, as in direct-int8), and per channel vector `vpmovsxwd` (8 pixels' int16 -> int32, folded
into the load), `vpmovsxbd` of the int8 weights, `vpmulld`, `vpaddd`. vpmulld is the costly one
(Zen 3: two uops, 1 per cycle of 8 lanes, where vfmadd231ps issues 2): the int8 depthwise layer
runs at about the float32 one's rate (see docs/performance.md's int8 section); what int8 saves
here is memory traffic (a quarter of the input and weight bytes), which is what bounds a depthwise
layer at large sizes.

The schedule is depthwise's own (schedules/depthwise.py: register tile of rows x width x channel
vector, kernel loops unrolled around it, the widening stage parallel over rows); the quantized
epilogue is fused into its write-back the way every float epilogue is (the stage is named
"epilogue", which `fuse_epilogue` inlines). Its knobs are depthwise's.

Limits: int8 / s8s8 depthwise layers (groups = CI > 1, channel multiplier CO/CI >= 1), NHWC; any
stride, dilation, (asymmetric) padding, batch.
"""

from __future__ import annotations

from tvm import te, tirx

from . import depthwise
from .template import EPILOGUE_BLOCK, Algorithm, Phase, Unsupported, phase, quant_placeholders, quantized_epilogue
from .workload import Workload

NAME = "depthwise-int8"
TEMPLATE_VERSION = 1


def widen_compute(wl: Workload, data: te.Tensor, x_zero_point: te.Tensor) -> te.Tensor:
    """data - x_zero_point as int16, 0 in the padding (the quantized zero point): named "pad", the
    stage depthwise's schedule places (always present: it is the widening too)."""
    t, l, b, r = wl.pad
    shape = (wl.n, wl.h + t + b, wl.w + l + r, wl.ci)

    def value(n, y, x, c):
        inside = tirx.all(y >= t, y < wl.h + t, x >= l, x < wl.w + l)
        v = data[n, tirx.min(tirx.max(y - t, 0), wl.h - 1), tirx.min(tirx.max(x - l, 0), wl.w - 1), c]
        return tirx.if_then_else(inside, v.astype("int16") - x_zero_point[0].astype("int16"),
                                 tirx.const(0, "int16"))
    return te.compute(shape, value, name="pad")


def conv_compute(wl: Workload, widened: te.Tensor, weight: te.Tensor) -> te.Tensor:
    mult = wl.co // wl.ci
    (sh, sw), (dh, dw) = wl.stride, wl.dilation
    rh = te.reduce_axis((0, wl.kh), name="rh")
    rw = te.reduce_axis((0, wl.kw), name="rw")
    return te.compute(
        wl.out_shape,
        lambda n, y, x, c: te.sum(
            widened[n, y * sh + rh * dh, x * sw + rw * dw, c // mult].astype("int32")
            * weight[rh, rw, 0, c].astype("int32"), axis=[rh, rw]),
        name="conv2d")


def functions(wl: Workload) -> dict[str, Phase]:
    data = te.placeholder(wl.data_shape, wl.data_dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.weight_dtype, name="weight")
    q = quant_placeholders(wl)
    acc = conv_compute(wl, widen_compute(wl, data, q["x_zero_point"]), weight)
    out = quantized_epilogue(wl, lambda n, y, x, c: acc[n, y, x, c], q, name=EPILOGUE_BLOCK)
    return {"conv2d": phase("conv2d", data=data, weight=weight, **q, out=out)}


def check(wl: Workload) -> None:
    if not wl.quantized:
        raise Unsupported(NAME, f"int8 / s8s8 layers only, got dtype={wl.dtype} (use depthwise)")
    if not wl.is_depthwise:
        raise Unsupported(NAME, f"only depthwise layers (groups = ci > 1), got groups={wl.groups}, ci={wl.ci}")


ALGORITHM = Algorithm(
    template_version=TEMPLATE_VERSION,
    name=NAME,
    layouts=("NHWC",),
    dtypes=("int8", "s8s8"),
    description="depthwise int8 convolution: int16-widened input, int32 products, depthwise's register tile",
    check=check,
    functions=functions,
    schedule=depthwise.schedule,
)
