"""Indirect convolution (QNNPACK, Marat Dukhan): a GEMM whose input rows are read through pointers.

The article's 间接卷积优化算法. Im2col copies every input window into a K = KH*KW*IC wide row of a
matrix; the indirect algorithm keeps the input where it is and builds, once, an *indirection
buffer*: for each output pixel p, KH*KW references to the input rows its window covers. In NHWC
an input pixel's IC channels are contiguous, so one reference stands for IC elements, and the
input is viewed as a matrix [N*H*W + 1, IC] whose last row is zero: every padded window position
points at that one zero row, so there is no padded copy of the input either.

    out[p, co] = sum_{kh, kw, ic} input_buffer[indirection[p, kh, kw], ic] * w[kh, kw, ic, co]

The run phase is the M x N micro-kernel GEMM of the article: M output pixels (OH*OW flattened, so
M is free of the output width) by N output channels held in registers; for each of the KH*KW
kernel positions it fetches the M row references from the indirection buffer and streams the M
rows of IC inputs against an IC x N panel of packed weights. After KH*KW such passes the M x N
block is complete and is written out once.

Phases (the premise of the article: the input lives at a fixed address):
  load_input(data, input_buffer)           NHWC data -> the [N*H*W + 1, IC] input buffer. A
      deployed network skips this copy: the previous layer writes straight into input_buffer (its
      last row stays zero). It is here because the harness hands the layer its input as `data`.
  build_indirection(indirection)           the int32 table [N*OH*OW, KH, KW] of row indices; it
      depends only on the shape, so it is a compute with no inputs. A pixel tile's table is
      contiguous; the article's reordering to KH x KW x M (so that assembly steps one pointer)
      buys nothing here, as the M references are loaded once per kernel position, outside the
      IC loop.
  pack_weight(weight, packed)              HWIO -> [CO/NB, KH, KW, IC, NB]: the weight panel of one
      channel block is contiguous, read sequentially by the micro-kernel. NB is fixed by the
      layer, not by a knob (a knob cannot change a tensor's shape); N is a multiple of it.
  conv2d_packed(input_buffer, indirection, packed, out)   the run phase (tuned, timed).
  conv2d(data, weight, out)                one shot: the three prepare stages, then the run.
An entry of the table outside the input buffer reads the zero row (clamped, hoisted out of the IC
loop): the run phase never reads out of bounds whatever the table holds. MetaSchedule's runner
times conv2d_packed on random arguments; convtune's trials instead receive the real table that
build_indirection makes for the layer (tuning/deploy/state.py's StateFiller), so a trial times the
real access pattern; the clamp is the guard for any caller that passes a table of its own.

Row indices (int32, 4 bytes) instead of QNNPACK's pointers (8 bytes): TIR indexes a buffer by a
loaded value, and LLVM turns `input_buffer[indirection[...], ic]` into M base pointers per kernel
position, which is the article's micro-kernel. `indirection_bytes(wl)` is the buffer's size, to
compare with the im2col matrix's N*OH*OW*KH*KW*IC*4 bytes: smaller by a factor of about IC.

Knobs (the run function's, also applied to the one-shot conv2d):
  tile_m   output pixels: [outer, cache block, M]; M is the micro-kernel's row count.
           Both outer loops run in parallel; default micro-kernel M x N = 7 x 32.
  tile_n   output-channel blocks of NB (NB = 16 when CO allows it; see `channel_block`):
           [outer, cache block, N/NB]; the micro-kernel is N = (N/NB) * NB channels wide, each NB
           block one vector.
  tile_ic  input channels: [outer, inner]; the kernel positions loop between the two (an IC split
           keeps the M rows' slices and the weight panel in L1 for large IC).
  unroll   MetaSchedule's explicit-unroll depth.
Limits: NHWC only (a reference must name IC contiguous elements), groups = 1. Any stride,
padding, dilation.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from .template import (
    Algorithm,
    Knobs,
    Phase,
    Unsupported,
    epilogue,
    has_block,
    largest_divisor,
    phase,
    register_tile,
)
from .workload import Workload

NAME = "indirect"
INDEX_DTYPE = "int32"

# Raise when the template or its default config changes: older records are then set aside.
TEMPLATE_VERSION = 1


def channel_block(co: int) -> int:
    """NB, the output channels of one packed weight block and one vector of the micro-kernel: a
    full AVX-512 register (16 floats) or an AVX2 one (8) when CO allows it."""
    for nb in (16, 8):
        if co % nb == 0:
            return nb
    return largest_divisor(co, 16)


def input_rows(wl: Workload) -> int:
    """Rows of the input buffer: one per input pixel, then the zero row."""
    return wl.n * wl.h * wl.w + 1


def indirection_bytes(wl: Workload) -> int:
    """The indirection buffer (N*OH*OW*KH*KW int32 references) plus the one zero row (IC floats)
    the padded positions point at: what the indirect algorithm adds to the input. The im2col
    matrix it replaces takes N*OH*OW*KH*KW*IC*4 bytes."""
    entries = wl.n * wl.oh * wl.ow * wl.kh * wl.kw
    return entries * 4 + wl.ci * 4


# -- compute -------------------------------------------------------------------------------------
def load_input_compute(wl: Workload, data: te.Tensor) -> te.Tensor:
    zero_row = wl.n * wl.h * wl.w

    def value(r, c):
        n, rest = r // (wl.h * wl.w), r % (wl.h * wl.w)
        return tirx.if_then_else(r < zero_row, data[n, rest // wl.w, rest % wl.w, c], tirx.const(0.0, wl.dtype))

    return te.compute((input_rows(wl), wl.ci), value, name="input_buffer")


def indirection_compute(wl: Workload) -> te.Tensor:
    """Row of the input buffer that output pixel p reads at kernel position (kh, kw)."""
    (sh, sw), (dh, dw) = wl.stride, wl.dilation
    top, left = wl.pad[0], wl.pad[1]
    zero_row = wl.n * wl.h * wl.w

    def value(p, kh, kw):
        n, rest = p // (wl.oh * wl.ow), p % (wl.oh * wl.ow)
        iy = rest // wl.ow * sh - top + kh * dh
        ix = rest % wl.ow * sw - left + kw * dw
        inside = tirx.all(iy >= 0, iy < wl.h, ix >= 0, ix < wl.w)
        row = tirx.if_then_else(inside, (n * wl.h + iy) * wl.w + ix, zero_row)
        return row.astype(INDEX_DTYPE)

    return te.compute((wl.n * wl.oh * wl.ow, wl.kh, wl.kw), value, name="indirection")


def packed_shape(wl: Workload) -> tuple[int, ...]:
    nb = channel_block(wl.co)
    return (wl.co // nb, wl.kh, wl.kw, wl.ci, nb)


def pack_compute(wl: Workload, weight: te.Tensor) -> te.Tensor:
    nb = channel_block(wl.co)
    return te.compute(packed_shape(wl),
                      lambda b, kh, kw, ic, v: weight[kh, kw, ic, b * nb + v], name="packed")


def gemm_compute(wl: Workload, input_buffer: te.Tensor, indirection: te.Tensor,
                 packed: te.Tensor) -> te.Tensor:
    """The [N*OH*OW, CO] output matrix (rows: pixels, columns: channels) and its NHWC view."""
    nb = channel_block(wl.co)
    rh = te.reduce_axis((0, wl.kh), name="rh")
    rw = te.reduce_axis((0, wl.kw), name="rw")
    rc = te.reduce_axis((0, wl.ci), name="rc")
    zero_row = input_rows(wl) - 1

    def row(p, kh, kw):
        # An entry outside the buffer reads the zero row: the kernel stays memory-safe whatever
        # the table holds (MetaSchedule's runner fills state arguments with random bits). Two
        # integer ops per row reference, hoisted out of the IC loop.
        return tirx.min(tirx.max(indirection[p, kh, kw], 0), zero_row)

    gemm = te.compute(
        (wl.n * wl.oh * wl.ow, wl.co),
        lambda p, c: te.sum(input_buffer[row(p, rh, rw), rc] * packed[c // nb, rh, rw, rc, c % nb],
                            axis=[rh, rw, rc]),
        name="gemm")
    return te.compute(wl.out_shape, lambda n, y, x, c: gemm[(n * wl.oh + y) * wl.ow + x, c], name="conv2d")


def functions(wl: Workload) -> dict[str, Phase]:
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    fused, one_shot = epilogue(
        wl, gemm_compute(wl, load_input_compute(wl, data), indirection_compute(wl), pack_compute(wl, weight)))

    input_buffer = te.placeholder((input_rows(wl), wl.ci), wl.dtype, name="input_buffer")
    indirection = te.placeholder((wl.n * wl.oh * wl.ow, wl.kh, wl.kw), INDEX_DTYPE, name="indirection")
    packed = te.placeholder(packed_shape(wl), wl.dtype, name="packed")
    run_fused, out = epilogue(wl, gemm_compute(wl, input_buffer, indirection, packed))
    return {
        "conv2d": phase("conv2d", data=data, weight=weight, **fused, out=one_shot),
        "load_input": phase("load_input", data=data, input_buffer=load_input_compute(wl, data)),
        "build_indirection": phase("build_indirection", indirection=indirection_compute(wl)),
        "pack_weight": phase("pack_weight", weight=weight, packed=pack_compute(wl, weight)),
        "conv2d_packed": phase("conv2d_packed", input_buffer=input_buffer, indirection=indirection,
                               packed=packed, **run_fused, out=out),
    }


# -- schedule ------------------------------------------------------------------------------------
def schedule_prepare(sch: s_tir.Schedule) -> None:
    """The prepare stages are copies: parallel over rows, vectorised along the contiguous axis."""
    for name in ("input_buffer", "indirection", "packed"):
        if not has_block(sch, name):
            continue
        loops = sch.get_loops(sch.get_sblock(name))
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        sch.vectorize(loops[-1])


def schedule_gemm(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    nb = channel_block(wl.co)
    out = sch.get_sblock("conv2d")
    gemm = sch.get_sblock("gemm")
    # The NHWC view iterates the output matrix's rows: pixel p = (n*OH + y)*OW + x, so that the
    # pixel tile (and the block it reads from the GEMM) is a contiguous row range.
    sch.transform_block_layout(out, lambda n, y, x, c: ((n * wl.oh + y) * wl.ow + x, c))
    pixel, c = sch.get_loops(out)
    cb, cv = sch.split(c, [wl.co // nb, nb], preserve_unit_iters=True)
    # Default micro-kernel M x N from the machine's register budget (template.register_tile):
    # M pixels x N channels in blocks of NB, M | the pixel count.
    rows, width = register_tile(knobs.machine, wl.n * wl.oh * wl.ow, wl.co, step=nb)
    p0, p1, p2 = knobs.split("tile_m", pixel, 3, max_inner=16, prefer=(rows,))
    b0, b1, b2 = knobs.split("tile_n", cb, 3, max_inner=4, prefer=(max(1, width // nb),))
    sch.reorder(p0, b0, p1, b1, p2, b2, cv)
    # The M x N block accumulates in a buffer of its own under the block loop (registers after
    # LLVM; "global" scope, because TVM puts small global buffers on the stack but "local" ones
    # in its workspace pool, one allocation per block).
    sch.compute_at(gemm, b1, preserve_unit_loops=True)
    m, ch, rh, rw, rc = sch.get_loops(gemm)[-5:]
    g_b, g_v = sch.split(ch, [None, nb], preserve_unit_iters=True)
    rc0, rc1 = knobs.split("tile_ic", rc, 2, prefer=(wl.ci,))
    sch.reorder(rc0, rh, rw, rc1, m, g_b, g_v)
    # The block is indexed by constants only once its loops are unrolled: then it is registers.
    for loop in (m, g_b, p2, b2):
        sch.unroll(loop)
    sch.vectorize(g_v)
    sch.vectorize(cv)
    sch.parallel(sch.fuse(p0, b0))
    sch.decompose_reduction(gemm, rc0)
    knobs.unroll()


def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    schedule_prepare(sch)
    if has_block(sch, "gemm"):
        schedule_gemm(sch, wl, knobs)


def check(wl: Workload) -> None:
    if wl.groups != 1:
        raise Unsupported(NAME, "groups must be 1 (one indirection reference spans all IC channels), "
                                f"got groups={wl.groups}")
    if input_rows(wl) * wl.ci >= 2**31:
        raise Unsupported(NAME, "the input buffer has 2**31 elements or more (int32 indices)")


ALGORITHM = Algorithm(
    template_version=TEMPLATE_VERSION,
    name=NAME,
    layouts=("NHWC",),
    description="indirect convolution (QNNPACK): M x N micro-kernel GEMM reading input rows through an "
            "indirection buffer, one zero row for padding",
    check=check,
    functions=functions,
    schedule=schedule,
    run_function="conv2d_packed",
)
