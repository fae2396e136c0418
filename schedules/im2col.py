"""Im2col + GEMM (Caffe's method): unfold the input into a matrix, then one tiled, packed GEMM.

The article's steps, per batch image:
  1. im2col: copy the input into the (OH*OW) x (KH*KW*IC) matrix `col` (NHWC; padding becomes
     zeros in it), about KH*KW times the input.
  2. the weight is the (KH*KW*IC) x OC matrix as it lies (HWIO), packed once into GEMM panels.
  3. GEMM with KH*KW*IC as the reduction: out[OH*OW, OC] = col x W.
  4. that output matrix is the NHWC output as it lies (no col2im).
NCHW is the article's figure 4, the same GEMM with the operands swapped:
  out[OC, OH*OW] = W[OC, IC*KH*KW] x col[IC*KH*KW, OH*OW].
For a 1x1, stride-1, unpadded layer the input already is that matrix: there is no copy at all
(in NCHW, when OH*OW fills whole vectors; see below).

Phases: `pack_weight(weight, packed)` once; `conv2d_packed(data, packed, col, out)` per input.
Where the matrix is materialised whole, as Caffe does (NCHW; NHWC layers whose weight outweighs
their input), `col` is a workspace argument so that it lives across calls (a freshly allocated
matrix would page-fault on every call, very expensive on these VMs; TVM will not compute_at a
block that writes a function argument). NHWC layers whose input outweighs their weight unfold
each parallel M block's rows just before its GEMM into a small internal buffer that stays in
cache (`col_per_block`: 56 x 56 x 64 3x3, 59 -> 82 GFLOP/s, 1 thread, Zen 2): no `col` argument.
It is absent too when the copy is skipped. `conv2d(data, weight, out)` does it all in one call.

The GEMM in its own terms: C[M, N] = A[M, K] x B[K, N], N the output's contiguous axis (vectors),
M broadcast into the rows of a register tile:
  NHWC: M = OH*OW pixels (A = col); N = OC (B = weight panels [OC/16, K, 16], or 8 wide).
  NCHW: M = OC (A = weight panels [OC/4, K, 4]); N = OH*OW pixels (B = col, 16 or 8 per vector).
Panel and vector widths are fixed by the compute (a knob cannot change a tensor's shape), so the
micro-kernel always streams whole vectors: OC is padded with zero weights to whole panels, and in
NCHW the output rows are padded so that OH*OW fills whole vectors (col gets zero columns). The
GEMM writes its padded tile to a small buffer, whose valid part is copied into `out`.

Template (outermost first): batch x pixel blocks x channel blocks in parallel; K blocks; cache
rows; cache columns; then the micro-kernel over a K strip: (M register rows) x (N register panels),
unrolled, times the vector; after the K blocks, the block's tile is copied to `out`.
Knobs: `tile_m` (M: blocks, cache rows, register rows), `tile_n` (N panels: blocks, cache columns,
register panels), `tile_k` (K: blocks, strip), `unroll`.
Limits: groups=1 only (grouped and depthwise layers are not one GEMM; see `depthwise`).
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from .direct import padded, schedule_pad
from .template import Algorithm, Knobs, Phase, Unsupported, epilogue, has_block, phase, register_tile
from .workload import Workload

NAME = "im2col"
VECTOR = (16, 8)  # vector widths of the N axis: AVX-512 (two AVX2 registers), or one AVX2 one
NCHW_ROWS = 4  # output channels per NCHW weight panel: the rows one panel adds to the tile

# Raise when the template or its default config changes: older records are then set aside.
TEMPLATE_VERSION = 4  # 2: weight-heavy layers default to one M block (cache_rows); 3: up to 14 rows for M without a small factor; 4: NHWC M padded to whole 6-row tiles
ROW_TILE = 6  # NHWC: the GEMM's M (pixels) is computed in whole tiles of this many rows; see gemm_rows


def weight_panel(wl: Workload) -> int:
    """Output channels per weight panel (NHWC: the vector; NCHW: broadcast rows)."""
    if wl.layout == "NCHW":
        return NCHW_ROWS
    return VECTOR[0] if wl.co % VECTOR[0] == 0 else VECTOR[1]


def weight_panels(wl: Workload) -> int:
    return -(-wl.co // weight_panel(wl))


def pixel_vector(wl: Workload) -> tuple[int, int]:
    """NCHW: (vector width, output rows padded so that rows x OW fills whole vectors)."""
    best = None
    for width in VECTOR:
        rows = wl.oh
        while rows * wl.ow % width:
            rows += 1
        if best is None or rows < best[1]:
            best = (width, rows)
    return best


def gemm_k(wl: Workload) -> int:
    return wl.kh * wl.kw * wl.ci


def skips_copy(wl: Workload) -> bool:
    """1x1, stride 1, no padding: the input is the im2col matrix already (dilation is moot at 1x1).
    NCHW also needs OH*OW to fill whole vectors (else the copy pads it)."""
    if not (wl.kh == 1 and wl.kw == 1 and wl.stride == (1, 1) and not wl.has_padding):
        return False
    return wl.layout == "NHWC" or pixel_vector(wl)[1] == wl.oh


def row_tile(wl: Workload) -> int:
    """NHWC: the register rows the GEMM's M is padded to whole multiples of (see gemm_rows), or 1
    (no padding) where N is one vector wide.

    The micro-kernel that keeps the FMA units busy on AVX2 is 6 rows x 2 vectors: 12 accumulators,
    2 weight vectors loaded once per k and reused by every row, 1 broadcast = 15 of 16 registers.
    12 independent FMA chains cover a 5-cycle FMA latency on 2 units (Zen 2: 10 in flight; 4 x 2 =
    8 chains stall 20% of the time), and it loads 8 values per 12 FMAs, inside 2 loads a cycle
    (7 x 2 with the weights read from memory loads 21 per 14 FMAs: load-bound). MLAS's SGEMM
    kernel is this 6 x 16 tile. Where N is one 8-wide vector and nothing wider divides it (CO a
    multiple of 8 but not of 16 or 24: SqueezeNet's classifier, 1000), every row costs a load
    anyway: up to 14 rows of the unpadded M (13 x 13 = 169: 13 rows, 71 GFLOP/s, against 64 for
    12 rows of 180 padded ones, 1 thread, Zen 2)."""
    n = weight_panels(wl) * weight_panel(wl)
    return ROW_TILE if any(n % w == 0 for w in (16, 24, 32)) else 1


def gemm_rows(wl: Workload) -> int:
    """NHWC: the GEMM's M, the pixel count rounded up to whole register tiles (row_tile).

    CNN pixel counts have no factor 3 (56 x 56 = 2^6 x 7^2, 28 x 28, 14 x 14, 7 x 7), so a perfect
    tiling never offers 6 rows: the GEMM runs over a few extra rows instead, which re-read the last
    pixel (a clamped index, hoisted out of the k loop: no test in it) and are never copied out.
    Up to 4 tiles per cache block when that costs <= 1% extra rows: 56 x 56 -> 3144 (+0.3%),
    28 x 28 -> 792 (+1.0%), 14 x 14 -> 198, 7 x 7 -> 54 (+10%, still ahead of 7 rows x 2 vectors
    with the weights read from memory: 44 against 35 GFLOP/s on 7 x 7 512 -> 512 3x3, Zen 2)."""
    pixels, tile = wl.oh * wl.ow, row_tile(wl)
    if pixels % tile == 0:
        return pixels
    for unit in (4 * tile, 2 * tile, tile):
        rows = -(-pixels // unit) * unit
        if unit == tile or rows - pixels <= pixels // 100:
            return rows


def col_per_block(wl: Workload) -> bool:
    """NHWC layers whose input matrix outweighs the weight (CO <= OH*OW, the early and middle
    stages): each parallel M block unfolds its own rows of `col` just before its GEMM, into a
    buffer of a few rows x K that stays in cache, instead of the whole matrix written to memory
    and read back (56 x 56 x 64 3x3: 7.2 MB each way a call). The block's N loop then covers all
    of N (the copy is made once per row), so the parallelism comes from the M blocks, which such
    layers have plenty of. Weight-heavy layers keep the whole matrix up front: their parallelism
    is across N blocks, each of which would unfold the rows again."""
    return wl.layout == "NHWC" and not skips_copy(wl) and wl.co <= wl.oh * wl.ow


def _pixel(wl: Workload, p):
    """GEMM row p as a pixel: gemm_rows' padded rows re-read the last one (a clamped index)."""
    last = wl.oh * wl.ow - 1
    return p if gemm_rows(wl) == last + 1 else tirx.min(p, last)


def col_shape(wl: Workload) -> tuple[int, int, int]:
    if wl.layout == "NHWC":
        return (wl.n, gemm_rows(wl), gemm_k(wl))
    return (wl.n, gemm_k(wl), pixel_vector(wl)[1] * wl.ow)


def im2col_bytes(wl: Workload) -> int:
    """Bytes of the whole im2col matrix (the article's figure: OH*OW x KH*KW*IC, or the NCHW
    padded one), 0 when the copy is skipped. Unfolded per block (col_per_block), a call holds only
    a block's rows of it at a time."""
    if skips_copy(wl):
        return 0
    n, rows, cols = col_shape(wl)
    if wl.layout == "NHWC":
        rows = wl.oh * wl.ow  # without gemm_rows' padded rows
    return n * rows * cols * 4


def im2col_compute(wl: Workload, data: te.Tensor) -> te.Tensor:
    """The unfolded input: [N, OH*OW, KH*KW*IC] (NHWC) or [N, IC*KH*KW, OHp*OW] (NCHW)."""
    (sh, sw), (dh, dw) = wl.stride, wl.dilation
    zero = tirx.const(0.0, wl.dtype)
    if wl.layout == "NHWC":
        # Padding is tested per (pixel, r, s): uniform over the vector of channels it guards.
        t, l = wl.pad[0], wl.pad[1]

        def value(n, p, k):  # k = (r, s, c): the HWIO weight's row order
            p = _pixel(wl, p)
            r, s, c = k // (wl.kw * wl.ci), k // wl.ci % wl.kw, k % wl.ci
            iy = (p // wl.ow) * sh + r * dh - t
            ix = (p % wl.ow) * sw + s * dw - l
            v = data[n, iy, ix, c]
            if not wl.has_padding:
                return v
            return tirx.if_then_else(tirx.all(iy >= 0, iy < wl.h, ix >= 0, ix < wl.w), v, zero)
        return te.compute(col_shape(wl), value, name="im2col")

    # NCHW rows are vectorised along pixels, where a padding test would differ per lane: copy from
    # a zero-padded input instead (one pass over the input, small next to the KH*KW-fold copy).
    # Only the extra output rows (whole rows, so uniform over a vector) are tested.
    src = padded(wl, data)
    rows = pixel_vector(wl)[1]

    def value(n, k, p):  # k = (c, r, s): the OIHW weight's column order
        c, r, s = k // (wl.kh * wl.kw), k // wl.kw % wl.kh, k % wl.kw
        y = p // wl.ow
        v = src[n, c, y * sh + r * dh, (p % wl.ow) * sw + s * dw]
        return v if rows == wl.oh else tirx.if_then_else(y < wl.oh, v, zero)
    return te.compute(col_shape(wl), value, name="im2col")


def pack_compute(wl: Workload, weight: te.Tensor) -> te.Tensor:
    """Weight panels [OC/panel, K, panel]: the micro-kernel reads one panel row per k."""
    nb = weight_panel(wl)
    zero = tirx.const(0.0, wl.dtype)

    def value(o, k, j):
        c = o * nb + j
        if wl.layout == "NHWC":
            v = weight[k // (wl.kw * wl.ci), k // wl.ci % wl.kw, k % wl.ci, c]
        else:
            v = weight[c, k // (wl.kh * wl.kw), k // wl.kw % wl.kh, k % wl.kw]
        return v if wl.co % nb == 0 else tirx.if_then_else(c < wl.co, v, zero)

    return te.compute((weight_panels(wl), gemm_k(wl), nb), value, name="pack")


def gemm_compute(wl: Workload, data: te.Tensor, packed: te.Tensor, col: te.Tensor | None) -> te.Tensor:
    """The GEMM over the padded N (and NCHW M) axis ("gemm"), then its valid part copied into the
    output ("conv2d"). The padded axes are kept flat, so a tile's valid part is a plain box."""
    nb = weight_panel(wl)
    channels = weight_panels(wl) * nb
    rk = te.reduce_axis((0, gemm_k(wl)), name="rk")
    if wl.layout == "NHWC":
        def a(n, p, k):  # col's rows are gemm_rows' already
            if col is not None:
                return col[n, p, k]
            p = _pixel(wl, p)
            return data[n, p // wl.w, p % wl.w, k]
        gemm = te.compute((wl.n, gemm_rows(wl), channels),
                          lambda n, p, c: te.sum(a(n, p, rk) * packed[c // nb, rk, c % nb], axis=rk), name="gemm")
        return te.compute(wl.out_shape, lambda n, y, x, c: gemm[n, y * wl.ow + x, c], name="conv2d")

    def b(n, k, p):
        return col[n, k, p] if col is not None else data[n, k, p // wl.w, p % wl.w]
    gemm = te.compute((wl.n, channels, pixel_vector(wl)[1] * wl.ow),
                      lambda n, c, p: te.sum(packed[c // nb, rk, c % nb] * b(n, rk, p), axis=rk), name="gemm")
    return te.compute(wl.out_shape, lambda n, c, y, x: gemm[n, c, y * wl.ow + x], name="conv2d")


def functions(wl: Workload) -> dict[str, Phase]:
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    packed_arg = te.placeholder((weight_panels(wl), gemm_k(wl), weight_panel(wl)), wl.dtype, name="packed")

    packed = pack_compute(wl, weight)
    fused, one_shot = epilogue(wl, gemm_compute(wl, data, packed, None if skips_copy(wl) else im2col_compute(wl, data)))

    col = None if skips_copy(wl) else im2col_compute(wl, data)
    run_fused, out = epilogue(wl, gemm_compute(wl, data, packed_arg, col))
    # The whole matrix is a workspace argument, so that it lives across calls (see above); unfolded
    # per block (col_per_block) it is a small internal buffer of each block.
    workspace = {} if col is None or col_per_block(wl) else {"col": col}
    return {
        "conv2d": phase("conv2d", data=data, weight=weight, **fused, out=one_shot),
        "pack_weight": phase("pack_weight", weight=weight, packed=packed),
        # the epilogue's inputs before the workspace: a caller's inputs, then what the kernel writes
        "conv2d_packed": phase("conv2d_packed", data=data, packed=packed_arg, **run_fused, **workspace, out=out),
    }


def _vectorize_inner(sch: s_tir.Schedule, loop, extent: int) -> None:
    """Vectorise the largest power-of-two chunk (<= 16) of a contiguous loop."""
    width = next(w for w in (16, 8, 4, 2, 1) if extent % w == 0)
    if width > 1:
        sch.vectorize(sch.split(loop, [None, width])[1])


def schedule_pack(sch: s_tir.Schedule, wl: Workload) -> None:
    o, k, j = sch.get_loops(sch.get_sblock("pack"))
    sch.parallel(sch.fuse(o, k))
    if wl.co % weight_panel(wl) == 0:  # a zero-padded panel's guard differs per lane
        sch.vectorize(j)


def _vectorize_channel_runs(sch: s_tir.Schedule, cols, wl: Workload) -> None:
    """NHWC im2col columns (r, s, c): runs of IC contiguous channels of one input pixel."""
    _, c = sch.split(cols, [None, wl.ci], preserve_unit_iters=True)
    _vectorize_inner(sch, c, wl.ci)


def schedule_im2col(sch: s_tir.Schedule, wl: Workload) -> None:
    """The whole matrix up front, in parallel over its rows, vectorised along its contiguous axis."""
    schedule_pad(sch, wl)
    block = sch.get_sblock("im2col")
    n, rows, cols = sch.get_loops(block)
    sch.parallel(sch.fuse(n, rows))
    if wl.layout == "NHWC":
        _vectorize_channel_runs(sch, cols, wl)
    else:  # columns: pixels; one output row is a (strided) run of one padded input row
        _, x = sch.split(cols, [None, wl.ow], preserve_unit_iters=True)
        if wl.ow <= 64:
            sch.vectorize(x)
        else:
            _vectorize_inner(sch, x, wl.ow)


def cache_rows(wl: Workload, rows: int, machine) -> int:
    """The default register tiles per M block (NHWC). Each M block streams the whole weight once,
    so a layer whose weight is larger than its input matrix (CO > OH*OW: the last stages, MLP
    blocks on 7x7 and 14x14 maps, 1x1 layers of 3072 channels) wants as few M blocks as the L2
    allows: all of M in one block while its rows (M x K floats) fit half the L2. ConvNeXt's 7x7
    768 -> 3072 matmul: 4 cache rows (7 M blocks, the 9.4 MB weight read 7 times) 36 GFLOP/s,
    one M block 113 (Zen 3, 2 threads). Otherwise 4: a block's rows stay in L1 beside a panel."""
    pixels, k = wl.oh * wl.ow, gemm_k(wl)
    if wl.co <= pixels or machine.l2 <= 0:
        return 4
    return max(4, (machine.l2 // 2) // (max(rows, 1) * k * 4))


def schedule_gemm(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    gemm = sch.get_sblock("gemm")
    out = sch.get_sblock("conv2d")
    k_extent = gemm_k(wl)
    if wl.layout == "NHWC":  # M = pixels; N = weight panels x vector lanes
        n, m, c, k = sch.get_loops(gemm)
        panel = weight_panel(wl)
        o, vector = sch.split(c, [None, panel], preserve_unit_iters=True)
        # Register tile: m2 pixels x n2 panels, from the machine's register budget; M is padded to
        # whole row tiles (gemm_rows), so AVX2 gets 6 x 16 and AVX-512 6 x 64 where N allows.
        max_rows = 8 if row_tile(wl) > 1 else 14  # one vector wide: a row per accumulator, 14 + 2
        rows, width = register_tile(knobs.machine, gemm_rows(wl), weight_panels(wl) * panel, step=panel,
                                    max_rows=max_rows)
        m0, m1, m2 = knobs.split("tile_m", m, 3, max_inner=max_rows,
                                 prefer=(rows, cache_rows(wl, rows, knobs.machine)))
        n2_panels = max(1, width // panel)
        n1_panels = weight_panels(wl) // n2_panels if col_per_block(wl) else 1  # see col_per_block
        n0, n1, n2 = knobs.split("tile_n", o, 3, max_inner=4, prefer=(n2_panels, n1_panels))
        k0, k1 = knobs.split("tile_k", k, 2, max_inner=k_extent, prefer=(256,))
        sch.reorder(n, m0, n0, k0, m1, n1, k1, m2, n2, vector)
        outer, unrolled = [n, m0, n0], [m2, n2]
        # The output matrix is the NHWC output as it lies: copy over the same (n, pixel, c) space.
        sch.transform_block_layout(out, lambda b, y, x, c: (b, y * wl.ow + x, c))
    else:  # M = weight panels x 4 rows; N = pixel vectors x lanes
        n, c, p, k = sch.get_loops(gemm)
        o, row = sch.split(c, [None, NCHW_ROWS], preserve_unit_iters=True)
        lanes, padded_rows = pixel_vector(wl)
        q, vector = sch.split(p, [None, lanes], preserve_unit_iters=True)
        # Register tile: m2 panels of NCHW_ROWS channels x n2 pixel vectors, within the registers.
        rows, width = register_tile(knobs.machine, weight_panels(wl) * NCHW_ROWS, padded_rows * wl.ow,
                                    max_rows=4 * NCHW_ROWS, step=lanes)
        m0, m1, m2 = knobs.split("tile_m", o, 3, max_inner=4, prefer=(max(1, rows // NCHW_ROWS), 1))
        n0, n1, n2 = knobs.split("tile_n", q, 3, max_inner=4, prefer=(max(1, width // lanes), 2))
        k0, k1 = knobs.split("tile_k", k, 2, max_inner=k_extent, prefer=(256,))
        # Pixel blocks outermost as in NHWC, so a thread's consecutive blocks share col columns.
        sch.reorder(n, n0, m0, k0, m1, n1, k1, m2, row, n2, vector)
        outer, unrolled = [n, n0, m0], [m2, row, n2]
        sch.transform_block_layout(out, lambda b, c, y, x: (b, c, y * wl.ow + x))

    if has_block(sch, "im2col") and not col_per_block(wl):
        schedule_im2col(sch, wl)
    blocks = sch.fuse(*outer)
    sch.parallel(blocks)
    if has_block(sch, "im2col") and col_per_block(wl):
        unfold = sch.get_sblock("im2col")
        sch.compute_at(unfold, blocks, preserve_unit_loops=True)
        _vectorize_channel_runs(sch, sch.get_loops(unfold)[-1], wl)
    # One block's GEMM tile is complete after its K loop: copy its valid part (padding dropped)
    # into the output while it is in cache.
    sch.reverse_compute_at(out, blocks, preserve_unit_loops=True)
    last = sch.get_loops(out)[-1]
    _vectorize_inner(sch, last, int(sch.get(last).extent))

    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(vector)
    sch.decompose_reduction(gemm, k0)
    knobs.unroll()


def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    if has_block(sch, "pack"):
        schedule_pack(sch, wl)
    if has_block(sch, "gemm"):
        schedule_gemm(sch, wl, knobs)


def check(wl: Workload) -> None:
    if wl.groups != 1:
        kind = "depthwise" if wl.is_depthwise else f"grouped (groups={wl.groups})"
        raise Unsupported(NAME, f"{kind} layers are not one GEMM; only groups=1 is supported "
                                "(use direct, or depthwise for depthwise layers)")


ALGORITHM = Algorithm(
    template_version=TEMPLATE_VERSION,
    name=NAME,
    layouts=("NHWC", "NCHW"),
    description="im2col + GEMM (Caffe): the input unfolded into a matrix, packed weight panels, tiled GEMM",
    check=check,
    functions=functions,
    schedule=schedule,
    run_function="conv2d_packed",
)
