"""Depthwise convolution: one KH x KW filter per channel (groups = CI), as in MobileNet.

out[n, y, x, c] = sum_{kh, kw} in[n, y*s + kh*d, x*s + kw*d, c / m] * w[kh, kw, 0, c]     (m = CO/CI)

Each output sums only KH*KW products and no input is shared between channels, so the GEMM-based
methods (im2col, indirect, Winograd) have no K dimension to amortise their transforms over: a
depthwise layer is bound by loads, and its schedule is about loading each input once. The
template keeps a register tile of (rows) x (width) x (channel vector) accumulators and fully
unrolls the kernel loops around it: for stride 1 neighbouring outputs read the same inputs at
different (kh, kw), and with everything unrolled LLVM loads each such input once and reuses it
from a register. NHWC reads the input with the zero padding inlined (a border test per tap,
uniform across the channel vector): a padded copy is a whole extra pass over the largest tensor of
a load-bound layer (EfficientNet's 112 x 112 x 96 3x3/2: 0.36 ms with the copy, 0.068 without;
7 x 7 x 1152 5x5: 0.14 -> 0.056; Zen 3, 2 threads, untuned). NCHW keeps the padded stage, as in
direct: there the vector runs along the width, where the border test differs per lane (inlined,
56 x 56 x 32 3x3 went 0.040 -> 0.080 ms).

NHWC vectorises along channels (contiguous, and the filter of a channel block is a vector too).
NCHW vectorises along the output width instead (contiguous for stride 1, strided for stride 2)
with a few channels unrolled beside it.

Knobs, NHWC: tile_y (row tile: [parallel rows, rows in registers]), tile_x (width tile:
[outer, pixels in registers]), tile_c (channel block: [outer, vector]), unroll.
NCHW: tile_c (channels unrolled in the tile), tile_y, tile_x (the vector), unroll.
Limits: depthwise layers only (groups = CI > 1; channel multiplier CO/CI >= 1); any stride,
padding, dilation.
"""

from __future__ import annotations

from tvm import s_tir, te

from .direct import padded, schedule_pad
from .template import Algorithm, Knobs, Phase, Unsupported, epilogue, has_block, phase
from .workload import Workload

NAME = "depthwise"

# Raise when the template or its default config changes: older records are then set aside.
TEMPLATE_VERSION = 2  # 2: NHWC reads with the padding inlined


def depthwise_compute(wl: Workload, data: te.Tensor, weight: te.Tensor) -> te.Tensor:
    src = padded(wl, data)
    mult = wl.co // wl.ci  # channel multiplier: output c reads input channel c // mult
    (sh, sw), (dh, dw) = wl.stride, wl.dilation
    rh = te.reduce_axis((0, wl.kh), name="rh")
    rw = te.reduce_axis((0, wl.kw), name="rw")
    if wl.layout == "NHWC":
        return te.compute(
            wl.out_shape,
            lambda n, y, x, c: te.sum(
                src[n, y * sh + rh * dh, x * sw + rw * dw, c // mult] * weight[rh, rw, 0, c], axis=[rh, rw]),
            name="conv2d")
    return te.compute(
        wl.out_shape,
        lambda n, c, y, x: te.sum(
            src[n, c // mult, y * sh + rh * dh, x * sw + rw * dw] * weight[c, 0, rh, rw], axis=[rh, rw]),
        name="conv2d")


def functions(wl: Workload) -> dict[str, Phase]:
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    fused, out = epilogue(wl, depthwise_compute(wl, data, weight))
    return {"conv2d": phase("conv2d", data=data, weight=weight, **fused, out=out)}


def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    if wl.layout == "NHWC" and has_block(sch, "pad"):
        sch.compute_inline(sch.get_sblock("pad"))  # see the module's docstring
    else:
        schedule_pad(sch, wl)
    block = sch.get_sblock("conv2d")
    n, a, b, c, rh, rw = sch.get_loops(block)
    if wl.layout == "NHWC":  # a=y, b=x, c=channels (vector)
        y0, y1 = knobs.split("tile_y", a, 2, max_inner=4, prefer=(1,))
        x0, x1 = knobs.split("tile_x", b, 2, max_inner=8, prefer=(4,))
        c0, c1 = knobs.split("tile_c", c, 2, max_inner=64, prefer=(16,))
        # Width tiles outside channel blocks: consecutive blocks read consecutive memory.
        outer, tile, vector = [n, y0, x0, c0], [y1, x1], c1
    else:  # NCHW: a=channels, b=y, c=x (vector)
        c0, c1 = knobs.split("tile_c", a, 2, max_inner=8, prefer=(2,))
        y0, y1 = knobs.split("tile_y", b, 2, max_inner=4, prefer=(1,))
        x0, x1 = knobs.split("tile_x", c, 2, max_inner=64, prefer=(16,))
        outer, tile, vector = [n, c0, y0, x0], [c1, y1], x1
    # The kernel loops run outside the accumulator tile and are fully unrolled with it.
    sch.reorder(*outer, rh, rw, *tile, vector)
    write_back = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(write_back, outer[-1], preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(write_back)[-1])
    sch.parallel(sch.fuse(*outer))
    for loop in (rh, rw, *tile):
        sch.unroll(loop)
    sch.vectorize(vector)
    sch.decompose_reduction(block, rh)
    knobs.unroll()


def check(wl: Workload) -> None:
    if not wl.is_depthwise:
        raise Unsupported(NAME, f"only depthwise layers (groups = ci > 1), got groups={wl.groups}, ci={wl.ci}")


ALGORITHM = Algorithm(
    template_version=TEMPLATE_VERSION,
    name=NAME,
    layouts=("NHWC", "NCHW"),
    description="depthwise convolution: register tile over width x channel vector, kernel loops unrolled",
    check=check,
    functions=functions,
    schedule=schedule,
)
