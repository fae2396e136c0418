"""Grouped convolution: G independent convolutions side by side (ResNeXt, RegNet), NHWC.

out[n, y, x, g*COg + j] = sum_{kh, kw, ic < CIg} in[n, y*s + kh*d, x*s + kw*d, g*CIg + ic] * w[kh, kw, ic, g*COg + j]

A group has CIg = CI/G input and COg = CO/G output channels, typically 4-64 (ResNeXt-50 32x4d:
4, 8, 16, 32; RegNetY-400MF: 8). Direct's template vectorises the whole output-channel axis: a
vector of outputs then straddles groups, each lane reads a different input channel, and LLVM
gathers them one by one (2-3 GFLOP/s on ResNeXt's 4-channel groups). Here the channel axis is
split at the group boundary first, c = g * COg + j, so that within the vectorised j the input
channel g * CIg + ic is one scalar: one broadcast, one weight vector, one FMA per lane, as in a
dense conv. The register tile is (x pixels) x (j vectors) accumulators over the group's
reduction (kh, kw, ic); groups and rows are the parallel work.

Vector width: the largest power of two that divides COg, at most the machine's lanes. Groups
narrower than a vector (COg = 4 under AVX2's 8 lanes) run on half-width vectors: two groups in
one vector would need a different input channel per half, a shuffle per FMA, which costs what it
saves (the layer is bound by loading its inputs, CIg products per load).

Knobs: tile_y (row tile), tile_x (pixels: [outer, middle, in registers]), tile_j (the group's
output channels: [outer, vectors, lanes]), unroll. Limits: NHWC, groups > 1 and not depthwise
(depthwise has its own template); any stride, padding, dilation.
"""

from __future__ import annotations

from tvm import s_tir, te

from .direct import conv2d_compute
from .template import Algorithm, Knobs, Phase, Unsupported, epilogue, has_block, phase, register_tile
from .workload import Workload

NAME = "grouped"
# Bump when the template or its default config changes: older records are then set aside.
TEMPLATE_VERSION = 2  # 2: the padding read inline


def functions(wl: Workload) -> dict[str, Phase]:
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    fused, out = epilogue(wl, conv2d_compute(wl, data, weight))
    return {"conv2d": phase("conv2d", data=data, weight=weight, **fused, out=out)}


def vector_width(wl: Workload, lanes: int) -> int:
    """The vector along a group's output channels: a power of two dividing COg, <= lanes."""
    cog, width = wl.co // wl.groups, 1
    while width * 2 <= lanes and cog % (width * 2) == 0:
        width *= 2
    return width


def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    # The zero padding is read inline (a border test per tap) rather than copied in a pass of its
    # own: a group's reduction is short (CI/groups channels x the window), so the copy weighs as
    # much as the conv (ResNeXt 28x28x256 3x3/2 groups 32: 0.087 -> 0.060 ms; RegNet 14x14x208
    # groups 13: 0.105 -> 0.081; 56x56x128: 0.48 -> 0.42; Zen 3, untuned).
    if has_block(sch, "pad"):
        sch.compute_inline(sch.get_sblock("pad"))
    block = sch.get_sblock("conv2d")
    n, y, x, c, rh, rw, rc = sch.get_loops(block)
    machine = knobs.machine
    cog = wl.co // wl.groups
    g, j = sch.split(c, [wl.groups, cog], preserve_unit_iters=True)
    lanes = vector_width(wl, machine.lanes)
    # The default tile: rows x (vectors of `lanes`) accumulators within the register budget
    # (register_tile counts a vector of `lanes` as one register, whatever the machine's width).
    rows, width = register_tile(machine, wl.ow, cog, max_rows=8, step=lanes)
    y0, y1 = knobs.split("tile_y", y, 2, prefer=(1,))
    x0, x1, x2 = knobs.split("tile_x", x, 3, max_inner=8, prefer=(rows,))
    j0, j1, j2 = knobs.split("tile_j", j, 3, max_inner=machine.lanes, prefer=(lanes, width // lanes))
    sch.reorder(n, y0, x0, g, j0, y1, x1, j1, rh, rw, rc, x2, j2)
    write_back = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(write_back, j1, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(write_back)[-1])
    sch.parallel(sch.fuse(n, y0, x0, g))
    sch.unroll(x2)
    sch.vectorize(j2)
    sch.decompose_reduction(block, rh)
    knobs.unroll()


def check(wl: Workload) -> None:
    if wl.groups == 1:
        raise Unsupported(NAME, "groups = 1 (a dense conv: direct, im2col, ...)")
    if wl.is_depthwise:
        raise Unsupported(NAME, "depthwise (groups = CI): the depthwise template")


ALGORITHM = Algorithm(
    name=NAME,
    layouts=("NHWC",),
    description="grouped convolution, the channel axis split at the group boundary and vectorised within a group",
    check=check,
    functions=functions,
    schedule=schedule,
    template_version=TEMPLATE_VERSION,
)
