"""Direct int8 convolution (u8s8 and s8s8), the dot product tensorized: vpmaddwd on AVX2.

    acc[n, y, x, c] = sum_{kh, kw, ic} (in[n, y*s + kh*d, x*s + kw*d, ic] - x_zero_point) * w[kh, kw, ic, c]
    out[n, y, x, c] = finish(acc + bias[c])        (int32; or requantized / dequantized: see Quant)

Exact: every product and sum is an integer; the accumulator is int32.

How it is built (NHWC, groups = 1):

  pack_weight (prepare, once)   HWIO int8 -> [CO/8, KH, KW, CI/2, 8, 2] int16: the weights widened
                                once, in groups of 2 input channels x 8 output channels, so one
                                32-byte load gives the operand vpmaddwd wants (channels past CO and
                                an odd CI's last channel are zeros).
  widen (per call)              data -> [N, H+pads, W+pads, CI/2, 2] int16 holding
                                in - x_zero_point, and 0 in the padding: padding with the zero point
                                in the quantized domain is padding with 0 after the subtraction.
  conv (per call)               the direct convolution over the widened data and packed weights;
                                its innermost (8 channels x 2 inputs) step is tensorized into
                                vpbroadcastd (the pixel's 2 inputs) + vpmaddwd + vpaddd.
  output                        bias, then int32 / requantize / dequantize, written per register
                                tile while the accumulators are in registers.

The data zero point is subtracted where the data is widened, not corrected afterwards: the AVX2
multiply (vpmaddwd) needs int16 operands anyway, so the widening pass over the input (CI*H*W
elements, against CI*H*W*KH*KW*CO/stride^2 multiply-adds) is paid in any case and the subtraction
in it is free; it also makes the padding an ordinary 0. A VNNI path multiplies raw uint8 bytes
(vpdpbusd) and cannot subtract there (x - zp does not fit a byte): it needs oneDNN's / MLAS's
per-channel correction zp * sum(w) folded into the bias instead (not built yet).

Cost against float32 (AVX2, Zen 3): one vpmaddwd does 16 multiply-adds where one vfmadd231ps does
8, but needs a vpaddd beside it and an int16 copy of the input; Zen 3 issues two of each per cycle,
so the int8 peak is at most 2x float32's. vpmaddubsw (32 u8*s8 products per instruction) would
double that again but saturates its int16 pair sums on full-range data (255*127*2 > 32767): not
bit-exact, so not used (see int8_intrinsics.py). Measured on AMD EPYC Zen 3, 2 cores, untuned
default configs, 2026-12-05 (cores shared with another benchmark: indicative), with
`TVM_NUM_THREADS=2 python -m tuning.cli bench SPEC --algorithm direct-int8,direct --no-rivals
--in-process --rounds 3`, h=28,ci=128,co=128,k=3,pad=1: direct-int8 255 GOPS (0.90 ms), float32
direct 88.5 GFLOP/s (2.32 ms): 2.6x, above the 2x the instruction count allows against a *good*
float32 kernel (untuned float32 direct reaches 43% of the 204 GFLOP/s FP32 peak; int8 125% of it).

The loop the conv became (znver3, default config, `mod.inspect_source("asm")`; tests/test_int8.py
checks it): per input pair, per register tile of R pixels x V channel vectors (2 x 4 here): V
`vmovdqu` of packed weights, R `vpbroadcastd` of the pixel pairs, R*V `vpmaddwd` and R*V `vpaddd`
(LLVM unrolls it twice); no vpmaddubsw.

Loops (NHWC): parallel(n, y tiles, x tiles, channel-block tiles) -> rows -> pixel tile -> channel
tile -> reduction (ci pairs outer, kh, kw, ci pairs inner) -> register tile of R pixels (unrolled)
x V vectors of 8 channels (unrolled) -> the tensorized 8 x 2 step.

Knobs: tile_y [tiles, rows], tile_x [tiles, .., R pixels in registers], tile_cb (blocks of 8
channels) [blocks, .., V vectors in registers], tile_rc (ci pairs) [outer, inner], unroll.
Limits: int8 / s8s8 layers, NHWC, groups = 1 (depthwise int8 is depthwise's; grouped later).
Any stride, dilation, (asymmetric) padding, batch, channel counts (odd CI, CO not a multiple of 8).
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from . import int8_intrinsics
from .template import Algorithm, Knobs, Phase, Unsupported, divisors, has_block, phase, quant_placeholders, quantized_epilogue
from .workload import Workload

NAME = "direct-int8"
TEMPLATE_VERSION = 1
# Output channels per accumulator vector: int32 lanes of a ymm register (the AVX2 vpmaddwd width).
OCB = 8
# Input channels per dot-product step: vpmaddwd sums pairs of int16 products into each int32 lane.
PAIR = 2


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def packed_shape(wl: Workload) -> tuple[int, ...]:
    return (ceil_div(wl.co, OCB), wl.kh, wl.kw, ceil_div(wl.ci, PAIR), OCB, PAIR)


def pack_compute(wl: Workload, weight: te.Tensor) -> te.Tensor:
    """HWIO int8 -> [CO/8, KH, KW, CI/2, 8, 2] int16, zeros past CO and CI."""
    def value(cb, kh, kw, p, i, j):
        c, ic = cb * OCB + i, p * PAIR + j
        inside = tirx.all(c < wl.co, ic < wl.ci)
        return tirx.if_then_else(inside, weight[kh, kw, tirx.min(ic, wl.ci - 1), tirx.min(c, wl.co - 1)]
                                 .astype("int16"), tirx.const(0, "int16"))
    return te.compute(packed_shape(wl), value, name="packed")


def widen_compute(wl: Workload, data: te.Tensor, x_zero_point: te.Tensor) -> te.Tensor:
    """data - x_zero_point as int16, zero-padded (the quantized padding value is the zero point),
    channels in pairs (an odd CI's extra channel is 0)."""
    t, l, b, r = wl.pad
    shape = (wl.n, wl.h + t + b, wl.w + l + r, ceil_div(wl.ci, PAIR), PAIR)

    def value(n, y, x, p, j):
        c = p * PAIR + j
        inside = tirx.all(y >= t, y < wl.h + t, x >= l, x < wl.w + l, c < wl.ci)
        # min(): the not-taken branch's index stays inside the tensor even where LLVM evaluates it
        # speculatively in a vectorised loop.
        v = data[n, tirx.min(tirx.max(y - t, 0), wl.h - 1), tirx.min(tirx.max(x - l, 0), wl.w - 1),
                 tirx.min(c, wl.ci - 1)]
        return tirx.if_then_else(inside, v.astype("int16") - x_zero_point[0].astype("int16"),
                                 tirx.const(0, "int16"))
    return te.compute(shape, value, name="widen")


def conv_compute(wl: Workload, widened: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """acc[n, y, x, cb, i] (int32): output channel cb*8 + i, every product widened to int32."""
    (sh, sw), (dh, dw) = wl.stride, wl.dilation
    rh = te.reduce_axis((0, wl.kh), name="rh")
    rw = te.reduce_axis((0, wl.kw), name="rw")
    rp = te.reduce_axis((0, ceil_div(wl.ci, PAIR)), name="rp")
    rj = te.reduce_axis((0, PAIR), name="rj")
    return te.compute(
        (wl.n, wl.oh, wl.ow, ceil_div(wl.co, OCB), OCB),
        lambda n, y, x, cb, i: te.sum(
            widened[n, y * sh + rh * dh, x * sw + rw * dw, rp, rj].astype("int32")
            * packed[cb, rh, rw, rp, i, rj].astype("int32"), axis=[rh, rw, rp, rj]),
        name="conv2d")


def functions(wl: Workload) -> dict[str, Phase]:
    data = te.placeholder(wl.data_shape, wl.data_dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.weight_dtype, name="weight")
    q = quant_placeholders(wl)
    zp = q["x_zero_point"]

    def output(acc: te.Tensor) -> te.Tensor:
        return quantized_epilogue(wl, lambda n, y, x, c: acc[n, y, x, c // OCB, c % OCB], q)

    one_shot = output(conv_compute(wl, widen_compute(wl, data, zp), pack_compute(wl, weight)))
    packed = te.placeholder(packed_shape(wl), "int16", name="packed")
    out = output(conv_compute(wl, widen_compute(wl, data, zp), packed))
    return {
        "conv2d": phase("conv2d", data=data, weight=weight, **q, out=one_shot),
        "pack_weight": phase("pack_weight", weight=weight, packed=pack_compute(wl, weight)),
        "conv2d_packed": phase("conv2d_packed", data=data, packed=packed, **q, out=out),
    }


# -- schedule ------------------------------------------------------------------------------------
def register_tile(registers: int, ow: int, blocks: int) -> tuple[int, int]:
    """(R pixels, V vectors of 8 channels) of the accumulator tile. It must fit the vector registers
    with what each step also holds: R*V accumulators + V weight vectors + 1 broadcast pair + 1
    vpmaddwd product before its vpaddd (16 ymm on AVX2: 6x2, 4x2, 3x3 or 2x4 fit, 4x3 does not).
    Among those: the most multiply-adds per step (R*V), then the fewest loads (R + V)."""
    best = (1, 1)
    for rows in (r for r in divisors(ow) if r <= 8):
        for vecs in (v for v in divisors(blocks) if v <= 4):
            if rows * vecs + vecs + 2 > registers:
                continue
            if (rows * vecs, -(rows + vecs)) > (best[0] * best[1], -(best[0] + best[1])):
                best = (rows, vecs)
    return best


def _copy_loops(sch: s_tir.Schedule, block_name: str, spatial: int) -> None:
    """A prepare / widening stage: parallel over its outer `spatial` loops, the rest vectorised
    (in 16-lane pieces when long: int16 x 16 is one ymm)."""
    if not has_block(sch, block_name):
        return
    loops = sch.get_loops(sch.get_sblock(block_name))
    sch.parallel(sch.fuse(*loops[:spatial]))
    inner = sch.fuse(*loops[spatial:])
    extent = int(sch.get(inner).extent)
    if extent > 32 and extent % 16 == 0:
        inner = sch.split(inner, [None, 16])[1]
    sch.vectorize(inner)


def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    _copy_loops(sch, "packed", 3)  # [cb, kh, kw | ci pairs, 8, 2]
    _copy_loops(sch, "widen", 3)   # [n, y, x | ci pairs, 2]
    if not has_block(sch, "conv2d"):  # pack_weight: the copy alone
        return
    conv = sch.get_sblock("conv2d")
    n, y, x, cb, i, rh, rw, rp, rj = sch.get_loops(conv)
    rows, vecs = register_tile(knobs.machine.registers, wl.ow, ceil_div(wl.co, OCB))
    y0, y1 = knobs.split("tile_y", y, 2, prefer=(1,))
    x0, x1, x2 = knobs.split("tile_x", x, 3, max_inner=8, prefer=(rows,))
    cb0, cb1, cb2 = knobs.split("tile_cb", cb, 3, max_inner=4, prefer=(vecs,))
    rp0, rp1 = knobs.split("tile_rc", rp, 2, prefer=(ceil_div(wl.ci, PAIR),))
    # The reduction runs outside the register tile (R pixels x V vectors), so each packed weight
    # vector loaded is used R times and each broadcast pixel pair V times.
    sch.reorder(n, y0, x0, cb0, y1, x1, cb1, rp0, rh, rw, rp1, x2, cb2, i, rj)
    # The finished tile is written from registers: bias, requantize, store, per tile.
    out = sch.get_sblock("output")
    sch.reverse_compute_at(out, cb1, preserve_unit_loops=True)
    sch.parallel(sch.fuse(n, y0, x0, cb0))
    pmaddwd = knobs.machine.arch == "x86_64" and knobs.machine.isa in ("avx2", "avx512")
    if not pmaddwd:  # no vpmaddwd (SSE-only x86, ARM): LLVM vectorises the widened products itself
        sch.reorder(rj, i)
        sch.vectorize(i)
    init = sch.decompose_reduction(conv, rp0)
    sch.vectorize(sch.get_loops(init)[-1])
    if pmaddwd:
        sch.tensorize(i, int8_intrinsics.AVX2_PMADDWD_8x2)
    sch.unroll(x2)
    sch.unroll(cb2)
    out_loops = sch.get_loops(out)
    if wl.co % OCB == 0:  # whole vectors: the tile's channels are one contiguous, vectorisable run
        sch.vectorize(out_loops[-1])
    knobs.unroll()


def check(wl: Workload) -> None:
    if not wl.quantized:
        raise Unsupported(NAME, f"int8 / s8s8 layers only, got dtype={wl.dtype} (use direct)")
    if wl.groups != 1:
        raise Unsupported(NAME, f"groups=1 only, got groups={wl.groups} (depthwise int8: depthwise)")


ALGORITHM = Algorithm(
    template_version=TEMPLATE_VERSION,
    name=NAME,
    layouts=("NHWC",),
    dtypes=("int8", "s8s8"),
    description="direct int8 convolution: int16-widened data and packed weights, vpmaddwd-tensorized 8x2 step",
    check=check,
    functions=functions,
    schedule=schedule,
    run_function="conv2d_packed",
    peak_ratio=2.0,
)
