"""Im2col + GEMM for int8 layers (u8s8 and s8s8): im2col.py's method, the dot product tensorized.

    acc[n, p, c] = sum_k A[n, p, k] * B[k, c]        p = y*OW + x (NHWC pixels), k = (kh, kw, ic)
    out[n, y, x, c] = finish(acc[n, y*OW + x, c] + bias[c])   (int32, or requantized / dequantized: Quant)

A is the im2col matrix of (data - x_zero_point), zero in the padding; B the HWIO weight as it lies
(a (KH*KW*CI) x CO matrix). Every product and sum is an integer, the accumulator int32: exact, the
same numbers as schedules/reference.py's integer reference and as direct-int8.

Two members, one per dot-product instruction. A tensor's shape cannot depend on a knob or on the
target (the prepare phase is built for a generic host and its output fed to the tuned kernel), so
the group of inputs one instruction reduces is fixed by the member, not chosen per machine:

  im2col-int8       groups of 2 int16 (vpmaddwd, AVX2 and AVX-512 without VNNI).
                    col  = [N, OH*OW, KH*KW, CI/2, 2] int16, data - x_zero_point (the widening is
                           the copy: a 1x1 stride-1 layer's col is its input as it lies, widened,
                           no larger than direct-int8's widened input; other layers KH*KW times it).
                    B    = [CO/8, KH*KW*CI/2, 8, 2] int16, packed once (prepare).
                    step = vpbroadcastd (a pixel's pair) + vpmaddwd + vpaddd: 16 multiply-adds.
  im2col-int8-vnni  groups of 4 bytes (vpdpbusd: AVX512-VNNI zmm, 64 u8 x s8 products into 16
                    int32 lanes, no 16-bit intermediate; AVX-VNNI: the same on two ymm halves).
                    col  = [N, OH*OW, KH*KW, CI/4, 4] uint8: the raw data (u8), or data + 128 (s8
                           data, an xor of the sign bit: vpdpbusd's first operand is unsigned),
                           the zero point in the padding. A u8s8 1x1 stride-1 unpadded layer with
                           CI % 4 == 0 reads its NHWC input in place: no copy at all.
                    B    = [CO/16, KH*KW*CI/4, 16, 4] int8 (the 4-byte groups vpdpbusd reads, one
                           64-byte load per k-group) and wsum[c] = sum_k B[k, c] (int32), both
                           made once in the prepare phase.
                    acc  = sum_k col * B - zp' * wsum[c], zp' = x_zero_point (+ 128 for s8 data).
                           The raw bytes cannot have the zero point subtracted in place (x - zp
                           does not fit a byte), so it is corrected per output channel, as oneDNN
                           and MLAS do: sum (x - zp) w = sum x w - zp sum w. Padding holds zp', so
                           padded taps cancel exactly. int32 wrap-around makes the result exact
                           whenever the exact sum fits int32 (the reference refuses the others),
                           the raw sum fits whenever K <= 65793 (255 * 128 * K < 2^31).
                    On a machine without VNNI the member still builds and is exact (LLVM
                    vectorises the widened products; tests/test_im2col_int8.py runs it here), but
                    `--algorithm auto` offers it only where vpdpbusd exists (`runs_well_on`).

Why not vpmaddubsw on AVX2 (u8 x s8 pairs -> saturating int16, the pre-VNNI int8 idiom, 32
products per instruction): 255 * 127 * 2 = 64770 > 32767, so full-range data gives wrong sums (see
int8_intrinsics.py and the int8 section of docs/performance.md: ONNX Runtime's U8S8 kernel does
this and is up to 16 steps off). Results here are bit-identical to the reference, so the AVX2 path
is the exact vpmaddwd one: at most 2x the FP32 rate, where the VNNI member's is 4x.

K is padded per kernel tap, not overall: each (kh, kw) tap holds ceil(CI/G)*G channels, the extra
ones 0 in the weights (and in col). A tap's channels are then one contiguous run of one input pixel,
so the copy vectorises along them with one padding test per run (CI = 3 stems pay 4/3).

Phases: `pack_weight(weight, packed[, wsum])` once; `conv2d_packed(data, packed[, wsum], quant
args.., col, out)` per input (col a workspace argument, as in im2col.py; absent when the copy is
skipped); `conv2d(data, weight, quant args.., out)` all in one call.

Template (outermost first): batch x pixel blocks x channel blocks in parallel; K blocks; cache rows;
cache columns; K strip; the register tile of R pixels (unrolled) x V vectors (unrolled) x the
tensorized step. By default one K block (`k_strip`: the whole K while the tile's weight panels fit
half the L2), so the accumulators stay in registers for the whole reduction, and cache columns of
at least 32 channels (the write-back's vector loop). After the K blocks the block's tile is
finished (zero-point correction, bias, requantize / dequantize) and stored while in cache.
Knobs: `tile_m` (M = OH*OW pixels: blocks, cache rows, register rows), `tile_n` (N = CO vectors:
blocks, cache columns, register vectors), `tile_k` (K groups: blocks, strip), `unroll` (im2col's).
Default register tile, from the register budget (`register_tile`): the R*V accumulators, V weight
vectors, one broadcast pixel group and (vpmaddwd only) one product before its vpaddd must all fit,
or LLVM spills accumulators inside the reduction loop:
  AVX2 (16 ymm, vpmaddwd):   R*V + V + 2 <= 16 -> 6x2 (12 accumulators) where 6 | M, else 4x2 ..
  AVX-512 (32 zmm, vpdpbusd, accumulating in place): R*V + V + 1 <= 32 -> 6x4 (24) where 6 | M,
  else 4x4 (16; 8x4 would need 37).
  AVX-VNNI (16 ymm, a 16-lane vector is two): 2 (R*V + V) + 1 <= 16 -> 2x2.
Limits: int8 / s8s8 layers, NHWC, groups = 1; any stride, dilation, (asymmetric) padding, batch,
odd CI, CO not a multiple of the vector.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te, tirx

from . import int8_intrinsics
from .machine import Machine
from .template import (
    Algorithm,
    Knobs,
    Phase,
    Unsupported,
    divisors,
    has_block,
    largest_divisor,
    phase,
    quant_placeholders,
    quantized_epilogue,
)
from .workload import Workload

TEMPLATE_VERSION = 1


@dataclass(frozen=True)
class Dot:
    """The dot-product instruction a member is built around: the group of inputs it reduces per
    int32 lane, the lanes (output channels) per accumulator vector, the operand types."""

    name: str
    group: int  # inputs summed into one int32 lane per instruction (the packed weight's last axis)
    lanes: int  # int32 accumulators per vector (the packed weight's panel)
    col_dtype: str  # the im2col matrix
    weight_dtype: str  # the packed weight
    corrected: bool  # raw bytes multiplied: the zero point corrected per channel afterwards


PMADDWD = Dot("im2col-int8", 2, 8, "int16", "int16", False)
VNNI = Dot("im2col-int8-vnni", 4, 16, "uint8", "int8", True)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def taps(wl: Workload) -> int:
    return wl.kh * wl.kw


def groups_per_tap(wl: Workload, dot: Dot) -> int:
    return ceil_div(wl.ci, dot.group)


def k_groups(wl: Workload, dot: Dot) -> int:
    """The GEMM's reduction in groups of `dot.group` inputs: KH*KW taps x ceil(CI / group)."""
    return taps(wl) * groups_per_tap(wl, dot)


def panels(wl: Workload, dot: Dot) -> int:
    return ceil_div(wl.co, dot.lanes)


def packed_shape(wl: Workload, dot: Dot) -> tuple[int, ...]:
    return (panels(wl, dot), k_groups(wl, dot), dot.lanes, dot.group)


def col_shape(wl: Workload, dot: Dot) -> tuple[int, ...]:
    """[N, OH*OW, KH*KW taps, CI groups, group]: in memory the [N, M, K] matrix, the tap kept as
    an axis of its own so that the copy's index needs no division of the vectorised lane."""
    return (wl.n, wl.oh * wl.ow, taps(wl), groups_per_tap(wl, dot), dot.group)


def skips_copy(wl: Workload, dot: Dot) -> bool:
    """The NHWC input already is the VNNI member's matrix: raw uint8 bytes (u8s8), 1x1, stride 1,
    no padding, whole 4-byte groups. The vpmaddwd member always copies: its matrix is int16."""
    return (dot.corrected and wl.dtype == "int8" and wl.kh == 1 and wl.kw == 1 and wl.stride == (1, 1)
            and not wl.has_padding and wl.ci % dot.group == 0)


def col_bytes(wl: Workload, dot: Dot) -> int:
    """Bytes of the materialised im2col matrix (0 when the copy is skipped)."""
    if skips_copy(wl, dot):
        return 0
    n, m, t, k, g = col_shape(wl, dot)
    return n * m * t * k * g * (2 if dot.col_dtype == "int16" else 1)


def zero_point(wl: Workload, dot: Dot, x_zero_point: te.Tensor):
    """The zero point in the matrix's terms (int32): s8 data is shifted by 128 in the VNNI member."""
    zp = x_zero_point[0].astype("int32")
    return zp + tirx.const(128, "int32") if dot.corrected and wl.dtype == "s8s8" else zp


def col_compute(wl: Workload, dot: Dot, data: te.Tensor, x_zero_point: te.Tensor) -> te.Tensor:
    """The unfolded input [N, OH*OW, taps, CI groups, group]: vpmaddwd's data - zp (int16, 0 in
    the padding), or vpdpbusd's raw bytes (s8 + 128; the shifted zero point in the padding)."""
    (sh, sw), (dh, dw) = wl.stride, wl.dilation
    t, l = wl.pad[0], wl.pad[1]
    zp = zero_point(wl, dot, x_zero_point)

    def value(n, p, tap, cg, j):
        c = cg * dot.group + j
        iy = p // wl.ow * sh + tap // wl.kw * dh - t
        ix = p % wl.ow * sw + tap % wl.kw * dw - l
        inside = tirx.all(iy >= 0, iy < wl.h, ix >= 0, ix < wl.w, c < wl.ci)
        # min/max: the not-taken branch's index stays inside the tensor where LLVM evaluates it
        # speculatively in a vectorised loop (as direct-int8's widening)
        v = data[n, tirx.min(tirx.max(iy, 0), wl.h - 1), tirx.min(tirx.max(ix, 0), wl.w - 1),
                 tirx.min(c, wl.ci - 1)].astype("int32")
        if dot.corrected:
            v = v + tirx.const(128, "int32") if wl.dtype == "s8s8" else v
            return tirx.if_then_else(inside, v, zp).astype(dot.col_dtype)
        return tirx.if_then_else(inside, v - zp, tirx.const(0, "int32")).astype(dot.col_dtype)
    return te.compute(col_shape(wl, dot), value, name="im2col")


def pack_compute(wl: Workload, dot: Dot, weight: te.Tensor) -> te.Tensor:
    """HWIO int8 -> [CO/lanes, K groups, lanes, group], zeros past CO and past CI in each tap."""
    per_tap = groups_per_tap(wl, dot)

    def value(o, kg, i, j):
        tap, ic, c = kg // per_tap, kg % per_tap * dot.group + j, o * dot.lanes + i
        v = weight[tap // wl.kw, tap % wl.kw, tirx.min(ic, wl.ci - 1), tirx.min(c, wl.co - 1)]
        return tirx.if_then_else(tirx.all(ic < wl.ci, c < wl.co), v.astype(dot.weight_dtype),
                                 tirx.const(0, dot.weight_dtype))
    return te.compute(packed_shape(wl, dot), value, name="pack")


def wsum_compute(wl: Workload, dot: Dot, weight: te.Tensor) -> te.Tensor:
    """sum_k w[k, c] per (padded) output channel: the zero-point correction's factor."""
    rh = te.reduce_axis((0, wl.kh), name="rh")
    rw = te.reduce_axis((0, wl.kw), name="rw")
    ri = te.reduce_axis((0, wl.ci), name="ri")
    return te.compute((panels(wl, dot) * dot.lanes,), lambda c: te.sum(
        tirx.if_then_else(c < wl.co, weight[rh, rw, ri, tirx.min(c, wl.co - 1)].astype("int32"),
                          tirx.const(0, "int32")), axis=[rh, rw, ri]), name="wsum")


def gemm_compute(wl: Workload, dot: Dot, data: te.Tensor, col: te.Tensor | None, packed: te.Tensor) -> te.Tensor:
    """gemm[n, p, cb, i] (int32) = sum over K groups of A * B, output channel cb * lanes + i."""
    per_tap = groups_per_tap(wl, dot)
    rt = te.reduce_axis((0, taps(wl)), name="rt")
    rc = te.reduce_axis((0, per_tap), name="rc")
    rj = te.reduce_axis((0, dot.group), name="rj")

    def a(n, p, j):
        if col is not None:
            return col[n, p, rt, rc, j]
        return data[n, p // wl.w, p % wl.w, rc * dot.group + j]  # the input as it lies (skips_copy)
    # (the schedule fuses rt, rc into one K loop: rt * per_tap + rc is the packed weight's k group)
    return te.compute((wl.n, wl.oh * wl.ow, panels(wl, dot), dot.lanes), lambda n, p, cb, i: te.sum(
        a(n, p, rj).astype("int32") * packed[cb, rt * per_tap + rc, i, rj].astype("int32"), axis=[rt, rc, rj]),
        name="gemm")


def _functions(dot: Dot):
    def functions(wl: Workload) -> dict[str, Phase]:
        data = te.placeholder(wl.data_shape, wl.data_dtype, name="data")
        weight = te.placeholder(wl.weight_shape, wl.weight_dtype, name="weight")
        q = quant_placeholders(wl)
        zp = q["x_zero_point"]

        def build(packed: te.Tensor, wsum: te.Tensor | None):
            col = None if skips_copy(wl, dot) else col_compute(wl, dot, data, zp)
            gemm = gemm_compute(wl, dot, data, col, packed)

            def acc(n, y, x, c):
                v = gemm[n, y * wl.ow + x, c // dot.lanes, c % dot.lanes]
                return v - zero_point(wl, dot, zp) * wsum[c] if wsum is not None else v
            return col, quantized_epilogue(wl, acc, q)

        packed = pack_compute(wl, dot, weight)
        wsum = wsum_compute(wl, dot, weight) if dot.corrected else None
        _, one_shot = build(packed, wsum)
        packed_arg = te.placeholder(packed_shape(wl, dot), dot.weight_dtype, name="packed")
        wsum_arg = te.placeholder((panels(wl, dot) * dot.lanes,), "int32", name="wsum") if dot.corrected else None
        col, out = build(packed_arg, wsum_arg)
        prepared = {"packed": packed, **({"wsum": wsum} if dot.corrected else {})}
        state = {"packed": packed_arg, **({"wsum": wsum_arg} if dot.corrected else {})}
        workspace = {} if col is None else {"col": col}
        return {
            "conv2d": phase("conv2d", data=data, weight=weight, **q, out=one_shot),
            "pack_weight": phase("pack_weight", weight=weight, **prepared),
            # the caller's inputs, then the workspace the kernel writes, then the output (im2col.py)
            "conv2d_packed": phase("conv2d_packed", data=data, **state, **q, **workspace, out=out),
        }
    return functions


# -- schedule ------------------------------------------------------------------------------------
def has_vnni(machine: Machine) -> str | None:
    """"avx512" (vpdpbusd zmm), "avxvnni" (vpdpbusd ymm, VEX) or None, from LLVM's features of the
    machine's mcpu (a target's extra mattr is not kept in Machine: name a VNNI mcpu)."""
    if machine.arch != "x86_64" or machine.mcpu == "generic":
        return None
    from tvm.target import Target, codegen

    target = Target({"kind": "llvm", "mcpu": machine.mcpu})
    if machine.isa == "avx512" and codegen.llvm_cpu_has_features(["avx512vnni", "avx512bw"], target):
        return "avx512"
    if codegen.llvm_cpu_has_features("avxvnni", target):
        return "avxvnni"
    return None


def instruction(dot: Dot, machine: Machine) -> str | None:
    """The tensor intrinsic of the member's step on `machine`, None where LLVM vectorises it."""
    if machine.arch != "x86_64":
        return None
    if dot.corrected:
        return {"avx512": int8_intrinsics.VNNI_VPDPBUSD_16x4,
                "avxvnni": int8_intrinsics.AVXVNNI_VPDPBUSD_16x4}.get(has_vnni(machine))
    return int8_intrinsics.AVX2_PMADDWD_8x2 if machine.isa in ("avx2", "avx512") else None


def register_tile(dot: Dot, machine: Machine, pixels: int, vectors: int) -> tuple[int, int]:
    """(R pixels, V channel vectors) of the accumulator tile, R | pixels, V | vectors. It must fit
    the registers with what each step also holds: R*V accumulators + V weight vectors + 1 broadcast
    pixel group (+ 1 vpmaddwd product before its vpaddd; vpdpbusd accumulates in place). Among
    those: the most accumulators (multiply-adds per step), then the fewest loads (R + V), then
    more rows (a narrower channel tile fits more layers: Machine.register_tile's tie-break).
    A VNNI vector on AVX-VNNI (16 lanes as two ymm halves) counts twice."""
    width = 2 if dot.corrected and has_vnni(machine) == "avxvnni" else 1
    extra = 1 if dot.corrected else 2
    best = (1, 1)
    for rows in (r for r in divisors(pixels) if r <= 8):
        for vecs in (v for v in divisors(vectors) if v <= 4):
            if (rows * vecs + vecs) * width + extra > machine.registers:
                continue
            if (rows * vecs, -(rows + vecs), rows) > (best[0] * best[1], -(best[0] + best[1]), best[0]):
                best = (rows, vecs)
    return best


def cache_rows(wl: Workload, dot: Dot, rows: int, machine: Machine) -> int:
    """Register tiles per M block (im2col.py's rule in bytes): each M block streams the whole
    packed weight once, so a layer whose weight outweighs its pixels (CO > OH*OW) keeps as many rows
    per block as half the L2 holds; otherwise 4, a block's rows staying in L1 beside a panel."""
    pixels = wl.oh * wl.ow
    row_bytes = k_groups(wl, dot) * dot.group * (2 if dot.col_dtype == "int16" else 1)
    if wl.co <= pixels or machine.l2 <= 0:
        return 4
    return max(4, (machine.l2 // 2) // (max(rows, 1) * row_bytes))


def k_strip(wl: Workload, dot: Dot, vectors: int, machine: Machine) -> int:
    """The default K strip (in groups): all of K while the register tile's weight panels over it
    fit half the L2, else the largest divisor of K that does. Not an L1-sized strip (im2col.py's
    256): with more than one K block LLVM unrolls the cache-row loop inside it and keeps every
    row's accumulators live across the K blocks, spilling them in the innermost loop (Zen 2,
    h=28,ci=128,co=128,k=3: a strip of 96 pairs spilled 4 of 8 accumulators per step; the whole K,
    576 pairs, none). The panels then stream from L2: one load per R multiply-adds."""
    per_group = vectors * dot.lanes * dot.group * (2 if dot.weight_dtype == "int16" else 1)
    budget = machine.l2 // 2 if machine.l2 > 0 else 128 * 1024
    return largest_divisor(k_groups(wl, dot), max(1, budget // per_group))


def _copy_loops(sch: s_tir.Schedule, block: str, spatial: int) -> None:
    """A copy stage: parallel over its outer `spatial` loops, the rest vectorised in pieces of at
    most 32 elements."""
    if not has_block(sch, block):
        return
    loops = sch.get_loops(sch.get_sblock(block))
    sch.parallel(sch.fuse(*loops[:spatial]))
    inner = sch.fuse(*loops[spatial:])
    extent = int(sch.get(inner).extent)
    width = next(w for w in (32, 16, 8, 4, 2, 1) if extent % w == 0)
    if width > 1:
        sch.vectorize(sch.split(inner, [None, width])[1] if extent > width else inner)


def _schedule_im2col(sch: s_tir.Schedule, wl: Workload, dot: Dot) -> None:
    """[n, pixels | taps | channel groups, group], parallel over (n, pixel); a tap's channels, one
    contiguous run of one input pixel behind one padding test, are the vectorised loop (with the
    tap folded into the k-group axis the lane index went through a division by KW * CI groups,
    and the copy became byte gathers: vpinsrb / vpextrb)."""
    if not has_block(sch, "im2col"):
        return
    n, p, _, cg, j = sch.get_loops(sch.get_sblock("im2col"))
    sch.parallel(sch.fuse(n, p))
    run = sch.fuse(cg, j)
    extent = groups_per_tap(wl, dot) * dot.group
    width = next(w for w in (32, 16, 8, 4, 2, 1) if extent % w == 0)
    if width > 1:
        sch.vectorize(sch.split(run, [None, width])[1] if extent > width else run)


def _schedule(dot: Dot):
    def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
        _copy_loops(sch, "pack", 2)  # [panels, k groups | lanes, group]
        if has_block(sch, "wsum"):
            sch.parallel(sch.get_loops(sch.get_sblock("wsum"))[0])
        _schedule_im2col(sch, wl, dot)
        if not has_block(sch, "gemm"):  # pack_weight: the copies alone
            return
        machine = knobs.machine
        gemm = sch.get_sblock("gemm")
        n, m, cb, i, rt, rc, rj = sch.get_loops(gemm)
        rk = sch.fuse(rt, rc)  # the K groups, tap-major as the packed weight has them
        rows, vecs = register_tile(dot, machine, wl.oh * wl.ow, panels(wl, dot))
        m0, m1, m2 = knobs.split("tile_m", m, 3, max_inner=8, prefer=(rows, cache_rows(wl, dot, rows, machine)))
        # cache columns: a block writes at least 32 channels per pixel where CO allows (see the
        # write-back below)
        columns = max(1, -(-32 // (vecs * dot.lanes)))
        n0, n1, n2 = knobs.split("tile_n", cb, 3, max_inner=4, prefer=(vecs, columns))
        k0, k1 = knobs.split("tile_k", rk, 2, max_inner=k_groups(wl, dot), prefer=(k_strip(wl, dot, vecs, machine),))
        sch.reorder(n, m0, n0, k0, m1, n1, k1, m2, n2, i, rj)
        blocks = sch.fuse(n, m0, n0)
        sch.parallel(blocks)
        # The block's tile is complete after its K blocks: finish it (correction, bias,
        # requantize) and store it while it is in cache, over the same (n, pixel, c) space.
        # (The one-shot function computes wsum in a stage of its own, which TVM will not let the
        # write-back follow into the blocks: there, and only there, it is a pass of its own.)
        out = sch.get_sblock("output")
        sch.transform_block_layout(out, lambda b, y, x, c: (b, y * wl.ow + x, c))
        if not has_block(sch, "wsum"):
            sch.reverse_compute_at(out, blocks, preserve_unit_loops=True)
        intrinsic = instruction(dot, machine)
        if intrinsic is None:  # no dot-product instruction: LLVM vectorises the widened products
            sch.reorder(rj, i)
            sch.vectorize(i)
        init = sch.decompose_reduction(gemm, k0)
        sch.vectorize(sch.get_loops(init)[-1])
        if intrinsic is not None:  # (AVX-VNNI: the 16 lanes as two ymm vpdpbusd, one intrinsic)
            sch.tensorize(i, intrinsic)
        sch.unroll(m2)
        sch.unroll(n2)
        # The write-back is left to LLVM's loop vectorizer: TVM's scalarises the requantize
        # (tirx.nearbyint has no vector form in its vectorizer; direct-int8's write-back is the same).
        # LLVM vectorises the contiguous channel loop when it is long (32 and more); a loop of 16 it
        # unrolls first and then vectorises the pixel loop, with gathers and byte scatters
        # (vpinsrd / vpextrb): hence the 32-channel default above, and no TVM unrolling here.
        sch.annotate(sch.get_loops(out)[-2], "pragma_auto_unroll_max_step", 0)
        knobs.unroll()
    return schedule


def _check(dot: Dot):
    def check(wl: Workload) -> None:
        if not wl.quantized:
            raise Unsupported(dot.name, f"int8 / s8s8 layers only, got dtype={wl.dtype} (use im2col)")
        if wl.groups != 1:
            kind = "depthwise" if wl.is_depthwise else f"grouped (groups={wl.groups})"
            raise Unsupported(dot.name, f"{kind} layers are not one GEMM; only groups=1 is supported "
                                        "(depthwise int8: depthwise-int8)")
    return check


def runs_well_on(dot: Dot, machine: Machine) -> str | None:
    """None where the member's dot-product instruction exists, else why `auto` leaves it out."""
    if dot.corrected and has_vnni(machine) is None:
        return f"{dot.name}: no VNNI (vpdpbusd) on {machine.mcpu}"
    return None


ALGORITHMS = [
    Algorithm(
        template_version=TEMPLATE_VERSION,
        name=dot.name,
        layouts=("NHWC",),
        dtypes=("int8", "s8s8"),
        description=description,
        check=_check(dot),
        functions=_functions(dot),
        schedule=_schedule(dot),
        run_function="conv2d_packed",
        peak_ratio=ratio,
        machine_check=(lambda machine, dot=dot: runs_well_on(dot, machine)),
    )
    for dot, ratio, description in (
        (PMADDWD, 2.0, "im2col + GEMM, int8: int16 im2col matrix (data - zero point), packed int16 weight pairs, "
                       "vpmaddwd-tensorized 8x2 step"),
        (VNNI, 4.0, "im2col + GEMM, int8: uint8 im2col matrix, weights packed in 4-byte groups, "
                    "vpdpbusd-tensorized 16x4 step, zero point corrected per channel"),
    )
]
