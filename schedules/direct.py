"""Direct convolution: the seven-loop nest of the article, tiled for registers and caches.

out[n, y, x, c] = sum_{kh, kw, ic} in[n, y*s + kh*d, x*s + kw*d, g(c)*CIg + ic] * w[kh, kw, ic, c]

Every layer fits (any stride, padding, dilation, groups). The template keeps an accumulator tile
of (x pixels) x (c channels) in registers, vectorised along the contiguous output axis (c in NHWC,
x in NCHW), with the reduction outside the tile so each loaded weight vector is reused x times.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from .template import Algorithm, Knobs, Phase, epilogue, has_block, phase, register_tile
from .workload import Workload

# Raise when the template or its default config changes: older records are then set aside.
TEMPLATE_VERSION = 1


def padded(wl: Workload, data: te.Tensor) -> te.Tensor:
    """Zero-padded input (a separate stage, so templates can place it), or the input itself."""
    if not wl.has_padding:
        return data
    t, l, b, r = wl.pad
    if wl.layout == "NHWC":
        shape = (wl.n, wl.h + t + b, wl.w + l + r, wl.ci)

        def value(n, y, x, c):
            inside = tirx.all(y >= t, y < wl.h + t, x >= l, x < wl.w + l)
            return tirx.if_then_else(inside, data[n, y - t, x - l, c], tirx.const(0.0, wl.dtype))
    else:
        shape = (wl.n, wl.ci, wl.h + t + b, wl.w + l + r)

        def value(n, c, y, x):
            inside = tirx.all(y >= t, y < wl.h + t, x >= l, x < wl.w + l)
            return tirx.if_then_else(inside, data[n, c, y - t, x - l], tirx.const(0.0, wl.dtype))
    return te.compute(shape, value, name="pad")


def conv2d_compute(wl: Workload, data: te.Tensor, weight: te.Tensor, name: str = "conv2d") -> te.Tensor:
    """The direct convolution in the workload's layout (weights HWIO for NHWC, OIHW for NCHW)."""
    src = padded(wl, data)
    cig, cog = wl.ci // wl.groups, wl.co // wl.groups
    (sh, sw), (dh, dw) = wl.stride, wl.dilation
    rh = te.reduce_axis((0, wl.kh), name="rh")
    rw = te.reduce_axis((0, wl.kw), name="rw")
    rc = te.reduce_axis((0, cig), name="rc")

    def channel(c):
        return rc if wl.groups == 1 else (c // cog) * cig + rc

    if wl.layout == "NHWC":
        return te.compute(
            wl.out_shape,
            lambda n, y, x, c: te.sum(
                src[n, y * sh + rh * dh, x * sw + rw * dw, channel(c)] * weight[rh, rw, rc, c], axis=[rh, rw, rc]),
            name=name)
    return te.compute(
        wl.out_shape,
        lambda n, c, y, x: te.sum(
            src[n, channel(c), y * sh + rh * dh, x * sw + rw * dw] * weight[c, rc, rh, rw], axis=[rc, rh, rw]),
        name=name)


def functions(wl: Workload) -> dict[str, Phase]:
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    fused, out = epilogue(wl, conv2d_compute(wl, data, weight))
    return {"conv2d": phase("conv2d", data=data, weight=weight, **fused, out=out)}


def schedule_pad(sch: s_tir.Schedule, wl: Workload) -> None:
    if not has_block(sch, "pad"):
        return
    pad = sch.get_sblock("pad")
    loops = sch.get_loops(pad)
    sch.parallel(sch.fuse(*loops[:3]))
    sch.vectorize(loops[3])


def schedule_register_tile(sch: s_tir.Schedule, wl: Workload, knobs: Knobs, block_name: str = "conv2d") -> None:
    """Tile a direct-convolution block; shared by templates whose inner loop is a direct conv."""
    block = sch.get_sblock(block_name)
    n, a, b, c, r0, r1, r2 = sch.get_loops(block)
    # The register tile (rows broadcast x width vectorised) from the machine's register budget;
    # the bounds let the search reach twice the default width and 8 rows (more rows than 8 leave
    # long remainders on 7- and 14-wide maps and, with 2+ vectors, exceed 32 registers).
    machine = knobs.machine
    max_width = 4 * machine.lanes
    if wl.layout == "NHWC":  # a=y, b=x, c=channels (vector); reduction rh, rw, rc
        y, x, ch = a, b, c
        rh, rw, rc = r0, r1, r2
        rows, width = register_tile(machine, wl.ow, wl.co, max_rows=8)
        y0, y1 = knobs.split("tile_y", y, 2, prefer=(1,))
        x0, x1, x2 = knobs.split("tile_x", x, 3, max_inner=8, prefer=(rows,))
        c0, c1, c2 = knobs.split("tile_c", ch, 3, max_inner=max_width, prefer=(width,))
        rc0, rc1 = knobs.split("tile_rc", rc, 2, prefer=(wl.ci // wl.groups,))
        sch.reorder(n, y0, x0, c0, y1, x1, c1, rc0, rh, rw, rc1, x2, c2)
        outer, tile_root, unrolled, vector = [n, y0, x0, c0], c1, x2, c2
    else:  # NCHW: a=channels, b=y, c=x (vector); reduction rc, rh, rw
        ch, y, x = a, b, c
        rc, rh, rw = r0, r1, r2
        rows, width = register_tile(machine, wl.co, wl.ow, max_rows=8)
        c0, c1, c2 = knobs.split("tile_c", ch, 3, max_inner=8, prefer=(rows,))
        y0, y1 = knobs.split("tile_y", y, 2, prefer=(1,))
        x0, x1, x2 = knobs.split("tile_x", x, 3, max_inner=max_width, prefer=(width,))
        rc0, rc1 = knobs.split("tile_rc", rc, 2, prefer=(wl.ci // wl.groups,))
        sch.reorder(n, c0, y0, x0, c1, y1, x1, rc0, rh, rw, rc1, c2, x2)
        outer, tile_root, unrolled, vector = [n, c0, y0, x0], x1, c2, x2

    # The accumulator tile lives in a small local buffer (registers after LLVM), written back once.
    write_back = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(write_back, tile_root, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(write_back)[-1])
    sch.parallel(sch.fuse(*outer))
    sch.unroll(unrolled)
    sch.vectorize(vector)
    sch.decompose_reduction(block, rc0)
    knobs.unroll()


def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    schedule_pad(sch, wl)
    schedule_register_tile(sch, wl, knobs)


def check(wl: Workload) -> None:
    """Direct convolution takes every valid layer."""


ALGORITHM = Algorithm(
    template_version=TEMPLATE_VERSION,
    name="direct",
    layouts=("NHWC", "NCHW"),
    description="seven-loop direct convolution, register-tiled, vectorised along the contiguous output axis",
    check=check,
    functions=functions,
    schedule=schedule,
)
