"""Winograd minimal filtering F(m x m, 3 x 3): fewer multiplications per output, paid for in adds.

The article's "algorithm analysis" family (Lavin & Gray, arXiv:1509.09308). The output is cut into
m x m tiles; each needs an alpha x alpha input tile d (alpha = m + 2, overlapping its neighbours by
2). With constant matrices A, B, G (Cook-Toom, from TOPI's `winograd_transform_matrices`):

    U = G g G^T          per (ci, co) filter       weight transform (prepare phase: `pack_weight`)
    V = B^T d B          per (tile, ci)            input transform
    M[e,n] = sum_ci V[e,n] U[e,n]                  alpha^2 independent GEMMs [tiles x CI] x [CI x CO]
    Y = A^T M A          per (tile, co)            output (inverse) transform

so the 9 multiplications of a direct 3x3 output become alpha^2 / m^2 in the GEMMs (4, 2.25, 1.78 for
m = 2, 4, 6). The price is numerical: B and A grow with m, and the float32 error grows with them
(`error_growth`, measured per tile size).

Implementation: NHWC. The transform matrices are folded into the compute as per-index constant sums
(zero terms dropped, +-1 without a multiply) and the loop over that index is unrolled, so LLVM sees
constants (and fuses them into FMAs); the transforms are separable (B^T d, then (B^T d) B; A^T M,
then (A^T M) A). Work is organised per *block* of tiles (a rectangle of th x tw tiles): the block's
zero-padded input rectangle, its input transform, its alpha^2 GEMMs and its inverse transform run
back to back on one core while V and M are in cache. TVM compacts these intermediates to
block-sized buffers inside the parallel loop; the CPU runtime's per-thread workspace pool reuses
them across calls (no page faults per call, checked), so no workspace arguments are needed.
Tile columns are rounded up to a count with a divisor in [4, 8] (zero tiles, never written) so a
register tile of several tiles always exists.

Knobs (the tuned function is `conv2d_packed(data, packed, out)`):
  tile_th, tile_tw  tile rows / columns: [blocks, in-block, register rows]. The block size decides
                    where the transforms are computed: one block = whole-tensor stages, small
                    blocks = per-tile-block fusion (V and M stay in L1/L2).
  tile_co           output channels: [blocks, outer, middle, vector lanes of the GEMM register tile
                    and of the inverse transform]. Channel blocks run in parallel beside the tile
                    blocks, each redoing its tiles' input transform: parallelism for layers with
                    few tiles (7x7 has one F(4) block).
  tile_ci           the GEMM reduction: [outer, inner].
  unroll            MetaSchedule's auto-unroll depth for the loop nests (the constants' loops are
                    unrolled regardless).
Limits: 3x3 kernels, stride 1, dilation 1, groups 1, any padding; NHWC only (the GEMM vectorises
along output channels, which are contiguous only in NHWC). Partial tiles at the bottom/right edge
read zeros beyond the input and their extra outputs are not written.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
from tvm import s_tir, te, tirx
from tvm.topi.nn.winograd_util import winograd_transform_matrices

from .machine import Machine
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

KERNEL = 3
TILES = (2, 4, 6)

# Raise when the template or its default config changes: older records are then set aside.
TEMPLATE_VERSION = 1


def multiplications_per_output(m: int, r: int = KERNEL) -> float:
    """Multiplications per output of 2-D F(m x m, r x r) in the GEMMs: alpha^2 / m^2 (m=1: direct, r^2)."""
    alpha = m + r - 1
    return alpha * alpha / (m * m)


@lru_cache(maxsize=None)
def transform_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (alpha x m), B (alpha x alpha), G (alpha x 3): TOPI's float32 constants, read back as numbers.

    TOPI returns each matrix as a compute whose body is a chain
    Select(i % rows == a && j % cols == b, value, ...): walk it."""
    mats = []
    for tensor in winograd_transform_matrices(m, KERNEL, "float32"):
        mat = np.zeros([int(d) for d in tensor.shape])
        node = tensor.op.body[0]
        while isinstance(node, tirx.Select):
            row, col = node.condition.a.b.value, node.condition.b.b.value
            mat[row, col] = node.true_value.value
            node = node.false_value
        mats.append(mat)
    return tuple(mats)


def _const(value: float) -> tirx.PrimExpr:
    return tirx.const(value, "float32")


def _linear(terms) -> tirx.PrimExpr:
    """sum(c * x) over (c, x) with the constants folded: zeros dropped, +-1 as add/subtract."""
    terms = [(float(c), x) for c, x in terms if c != 0]
    terms.sort(key=lambda t: t[0] < 0)  # start from a positive term: no negation needed
    if not terms:
        return _const(0.0)
    c, x = terms[0]
    expr = x if c == 1 else x * _const(c)
    for c, x in terms[1:]:
        if c == 1:
            expr = expr + x
        elif c == -1:
            expr = expr - x
        else:
            expr = expr + x * _const(c)
    return expr


def _by_index(index: tirx.PrimExpr, values: list) -> tirx.PrimExpr:
    """values[index] for a loop index that the schedule unrolls: the branches fold to one value."""
    expr = values[-1]
    for k in range(len(values) - 2, -1, -1):
        # if_then_else, not Select: vectorisation keeps its scalar condition, which folds once
        # the index is unrolled (a Select's condition would be broadcast first and stay).
        expr = tirx.if_then_else(index == k, values[k], expr)
    return expr


def tile_grid(wl: Workload, m: int) -> tuple[int, int]:
    """Tile rows and columns: ceil(OH/m) x ceil(OW/m), the columns rounded up (a few zero tiles,
    computed and not written) until they have a divisor in [4, 8], so that a register tile of
    several tiles exists (19 columns would otherwise allow only 1 or 19)."""
    nh, nw = -(-wl.oh // m), -(-wl.ow // m)
    while nw > 8 and not any(nw % d == 0 for d in range(4, 9)):
        nw += 1
    return nh, nw


# -- compute ---------------------------------------------------------------------------------------
def weight_transform(wl: Workload, m: int, weight: te.Tensor) -> te.Tensor:
    """U[e, n, ci, co] = (G g G^T)[e, n]: [alpha, alpha, CI, CO], CO contiguous for the GEMM."""
    _, _, g = transform_matrices(m)
    alpha = m + 2
    gg = te.compute(
        (alpha, 3, wl.ci, wl.co),
        lambda e, k2, ci, co: _by_index(e, [_linear((g[a, k1], weight[k1, k2, ci, co]) for k1 in range(3))
                                            for a in range(alpha)]),
        name="weight_transform_g")
    return te.compute(
        (alpha, alpha, wl.ci, wl.co),
        lambda e, n, ci, co: _by_index(n, [_linear((g[b, k2], gg[e, k2, ci, co]) for k2 in range(3))
                                           for b in range(alpha)]),
        name="weight_transform")


def winograd_run(wl: Workload, m: int, data: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """The run phase from the transformed weight: input transform, batched GEMM, inverse transform."""
    a_mat, b_mat, _ = transform_matrices(m)
    alpha = m + 2
    nh, nw = tile_grid(wl, m)
    t, l, _, _ = wl.pad
    hp, wp = nh * m + 2, nw * m + 2  # every tile's input, partial edge tiles included
    if t == 0 and l == 0 and hp <= wl.h and wp <= wl.w:
        src = data
    else:
        def pad_value(n, y, x, c):
            inside = tirx.all(y >= t, y < wl.h + t, x >= l, x < wl.w + l)
            return tirx.if_then_else(inside, data[n, y - t, x - l, c], _const(0.0))

        src = te.compute((wl.n, hp, wp, wl.ci), pad_value, name="data_pad")

    # B^T d: rows of each input tile combined; then (B^T d) B: columns.
    btd = te.compute(
        (wl.n, nh, nw, alpha, alpha, wl.ci),
        lambda n, th, tw, e, c, ci: _by_index(e, [
            _linear((b_mat[r, k], src[n, th * m + r, tw * m + c, ci]) for r in range(alpha)) for k in range(alpha)]),
        name="input_tile_bt")
    v = te.compute(
        (alpha, alpha, wl.n, nh, nw, wl.ci),
        lambda e, nu, n, th, tw, ci: _by_index(nu, [
            _linear((b_mat[c, k], btd[n, th, tw, e, c, ci]) for c in range(alpha)) for k in range(alpha)]),
        name="input_transform")
    rc = te.reduce_axis((0, wl.ci), name="rc")
    gemm = te.compute(
        (alpha, alpha, wl.n, nh, nw, wl.co),
        lambda e, nu, n, th, tw, co: te.sum(v[e, nu, n, th, tw, rc] * packed[e, nu, rc, co], axis=rc),
        name="gemm")
    # A^T M: rows; then (A^T M) A, written straight into the output (edge tiles cut by the shape).
    atm = te.compute(
        (wl.n, nh, nw, m, alpha, wl.co),
        lambda n, th, tw, i, nu, co: _by_index(i, [
            _linear((a_mat[e, k], gemm[e, nu, n, th, tw, co]) for e in range(alpha)) for k in range(m)]),
        name="output_tile_at")

    def output(n, y, x, co):
        th, i, tw, j = tirx.floordiv(y, m), tirx.floormod(y, m), tirx.floordiv(x, m), tirx.floormod(x, m)
        return _by_index(j, [_linear((a_mat[nu, k], atm[n, th, tw, i, nu, co]) for nu in range(alpha))
                             for k in range(m)])

    return te.compute(wl.out_shape, output, name="output_transform")


def make_functions(m: int):
    def functions(wl: Workload) -> dict[str, Phase]:
        alpha = m + 2
        data = te.placeholder(wl.data_shape, wl.dtype, name="data")
        weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
        packed = te.placeholder((alpha, alpha, wl.ci, wl.co), wl.dtype, name="packed")
        fused, one_shot = epilogue(wl, winograd_run(wl, m, data, weight_transform(wl, m, weight)))
        run_fused, out = epilogue(wl, winograd_run(wl, m, data, packed))
        return {
            "conv2d": phase("conv2d", data=data, weight=weight, **fused, out=one_shot),
            "pack_weight": phase("pack_weight", weight=weight, packed=weight_transform(wl, m, weight)),
            "conv2d_packed": phase("conv2d_packed", data=data, packed=packed, **run_fused, out=out),
        }

    return functions


# -- schedule --------------------------------------------------------------------------------------
def _vector(channels: int) -> int:
    """Lanes for a transform's channel loop (one zmm when the channel count allows)."""
    return largest_divisor(channels, 16)


def default_blocks(wl: Workload, m: int, machine: Machine) -> tuple[tuple[int, ...], ...]:
    """Default `prefer` for tile_th, tile_tw and tile_co: a register tile of tiles x co2 lanes
    (one vector) within the machine's registers (template.register_tile: 8 tiles x 16 lanes on
    AVX-512, 8 x 8 on AVX2), and a block whose V and M (alpha^2 x tiles x (CI + CO) floats) fit in
    half the L2, in a number of blocks that keeps the machine's threads evenly busy when the layer
    allows it; a layer with fewer tile blocks than threads gets channel blocks."""
    alpha = m + 2
    nh, nw = tile_grid(wl, m)
    threads = machine.threads
    tiles, co2 = register_tile(machine, 8, wl.co, max_rows=8, max_vectors=1)
    tw2 = largest_divisor(nw, tiles)
    th2 = largest_divisor(nh, max(1, tiles // tw2))
    budget = max(8, min(64, (machine.l2 // 2) // (alpha * alpha * (wl.ci + wl.co) * 4)))
    tw1 = largest_divisor(nw // tw2, max(1, budget // tw2))
    th1 = largest_divisor(nh // th2, max(1, budget // (tw2 * tw1 * th2)))

    def blocks() -> int:
        return wl.n * (nh // (th1 * th2)) * (nw // (tw1 * tw2))

    while th1 > 1 and blocks() % threads and blocks() < 4 * threads:
        th1 = largest_divisor(nh // th2, th1 - 1)
    cb = threads if blocks() < threads and (wl.co // co2) % threads == 0 else 1
    return (th2, th1), (tw2, tw1), (co2, wl.co // (co2 * cb), 1)


def schedule_weight_transform(sch: s_tir.Schedule, wl: Workload) -> None:
    block = sch.get_sblock("weight_transform")
    e, nu, ci, co = sch.get_loops(block)
    co0, co1 = sch.split(co, [None, _vector(wl.co)])
    sch.reorder(ci, co0, e, nu, co1)
    sch.parallel(sch.fuse(ci, co0))
    sch.unroll(nu)
    sch.vectorize(co1)
    gg = sch.get_sblock("weight_transform_g")
    sch.compute_at(gg, e, preserve_unit_loops=True)
    loops = sch.get_loops(gg)
    sch.reorder(loops[-3], loops[-4])  # k2 outside, e (the constants' index) unrolled inside
    sch.unroll(loops[-4])
    sch.vectorize(loops[-1])


def _unroll_index(sch: s_tir.Schedule, block, index: int, loop: int) -> None:
    """Order a transform's last three loops as (loop, index, channel vector): `index` picks the
    constants (unrolled, so they fold), `loop` only moves the tile's address (left a loop)."""
    loops = sch.get_loops(block)
    sch.reorder(loops[loop], loops[index])
    sch.unroll(loops[index])
    sch.vectorize(loops[-1])


def _split(knobs: Knobs, name: str, loop, n: int, **kw) -> tuple[list, list]:
    """knobs.split, also returning the sampled factors, so that a loop created later (a producer
    moved under the block by compute_at) is split by the same decision in any traced schedule."""
    loops = knobs.split(name, loop, n, **kw)
    sample = [inst for inst in knobs.sch.trace.insts if inst.kind.name == "SamplePerfectTile"][-1]
    return loops, list(sample.outputs)


def schedule_run(sch: s_tir.Schedule, wl: Workload, m: int, knobs: Knobs) -> None:
    # The output's loops carry the blocks: (n, cb, th0, tw0) is the parallel loop over blocks of
    # (th1*th2) x (tw1*tw2) tiles and CO/cb channels, and every producer (inverse, GEMM, input
    # transform) is computed per block, so V and M never leave the core's cache. cb > 1 recomputes
    # a block's input transform per channel block: parallelism for layers with few tiles.
    out = sch.get_sblock("output_transform")
    n, y, x, co = sch.get_loops(out)
    nh, nw = tile_grid(wl, m)
    yt, yi = sch.split(y, [nh, m])  # partial edge tiles and padding tiles: predicated
    xt, xi = sch.split(x, [nw, m])
    prefer_th, prefer_tw, prefer_co = default_blocks(wl, m, knobs.machine)
    (th0, th1, th2), th_f = _split(knobs, "tile_th", yt, 3, max_inner=4, prefer=prefer_th)
    (tw0, tw1, tw2), tw_f = _split(knobs, "tile_tw", xt, 3, max_inner=8, prefer=prefer_tw)
    (cb, co0, co1, co2), co_f = _split(knobs, "tile_co", co, 4, max_inner=32, prefer=prefer_co)
    sch.reorder(n, cb, th0, tw0, th1, th2, tw1, tw2, co0, co1, yi, xi, co2)
    sch.unroll(xi)  # x % m picks the constants of A
    sch.vectorize(co2)

    # Inverse transform per (tile, channel vector): A^T M is m x alpha vectors, in L1.
    atm = sch.get_sblock("output_tile_at")
    sch.compute_at(atm, co1, preserve_unit_loops=True)
    _unroll_index(sch, atm, -3, -2)

    # The block's alpha^2 GEMMs, register-tiled (th2 x tw2 tiles) x co2 lanes with the reduction
    # outside the tile, so each loaded U vector serves th2*tw2 tiles.
    gemm = sch.get_sblock("gemm")
    sch.compute_at(gemm, tw0, preserve_unit_loops=True)
    e, nu, gn, gth, gtw, gco, ci = sch.get_loops(gemm)[-7:]
    g_th1, g_th2 = sch.split(gth, th_f[1:])
    g_tw1, g_tw2 = sch.split(gtw, tw_f[1:])
    g_co0, g_co1, g_co2 = sch.split(gco, co_f[1:])
    ci0, ci1 = knobs.split("tile_ci", ci, 2, prefer=(wl.ci,))
    sch.reorder(gn, g_co0, e, nu, g_th1, g_tw1, g_co1, ci0, ci1, g_th2, g_tw2, g_co2)
    # "local": a buffer of its own (StorageRewrite would otherwise merge it with a big global
    # one), small enough for the stack, so LLVM keeps the accumulators in registers.
    write_back = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(write_back, g_co1, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(write_back)[-1])
    sch.unroll(g_th2)
    sch.unroll(g_tw2)
    sch.vectorize(g_co2)

    # Input transform of the block, before its GEMMs; per (tile, channel vector) the B^T d partial
    # product is a few KiB in L1.
    v = sch.get_sblock("input_transform")
    sch.compute_at(v, tw0, preserve_unit_loops=True)
    ve, vnu, vn, vth, vtw, vci = sch.get_loops(v)[-6:]
    vci0, vci1 = sch.split(vci, [None, _vector(wl.ci)])
    sch.reorder(vn, vth, vtw, vci0, ve, vnu, vci1)
    sch.unroll(vnu)
    sch.vectorize(vci1)
    btd = sch.get_sblock("input_tile_bt")
    sch.compute_at(btd, vci0, preserve_unit_loops=True)
    _unroll_index(sch, btd, -3, -2)
    if has_block(sch, "data_pad"):
        # The block's input rectangle, zero-padded, copied once: the transform then reads it
        # without bounds checks.
        pad = sch.get_sblock("data_pad")
        sch.compute_at(pad, tw0, preserve_unit_loops=True)
        _, pc1 = sch.split(sch.get_loops(pad)[-1], [None, _vector(wl.ci)])
        sch.vectorize(pc1)

    sch.parallel(sch.fuse(n, cb, th0, tw0))
    sch.decompose_reduction(gemm, ci0)  # after parallel: it wants whole reduction blocks
    knobs.unroll()


def make_schedule(m: int):
    def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
        if has_block(sch, "weight_transform"):
            schedule_weight_transform(sch, wl)
        if has_block(sch, "gemm"):
            schedule_run(sch, wl, m, knobs)

    return schedule


def check(wl: Workload, name: str = "winograd") -> None:
    if (wl.kh, wl.kw) == (KERNEL, KERNEL) and wl.stride == wl.dilation == (1, 1) and wl.groups == 1:
        return
    got = f"{wl.kh}x{wl.kw}"
    for field, value in (("stride", wl.stride), ("dilation", wl.dilation)):
        if value != (1, 1):
            got += f" {field} " + (f"{value[0]}" if value[0] == value[1] else f"{value[0]}x{value[1]}")
    if wl.groups != 1:
        got += f" groups {wl.groups}"
    raise Unsupported(name, f"Winograd needs a 3x3 kernel, stride 1, dilation 1, groups 1; got {got}")


# Float32 error over direct convolution's, per tile size: the worst ratio measured on random
# layers with CI from 1 to 512 (F2 1.9x, F4 14x, F6 41x, all at CI=1: more channels dilute the
# transforms' share), rounded up; tests/test_winograd.py re-measures it on one layer.
ERROR_GROWTH = {2: 2.0, 4: 16.0, 6: 48.0}


def make_algorithm(m: int) -> Algorithm:
    name = f"winograd-f{m}"

    return Algorithm(
        template_version=TEMPLATE_VERSION,
        name=name,
        layouts=("NHWC",),
        description=(f"Winograd F({m}x{m},3x3): {(m + 2) ** 2} multiplications per {m * m} outputs "
                 f"({KERNEL * KERNEL / multiplications_per_output(m):.2f}x fewer than direct), block-fused transforms"),
        check=partial(check, name=name),
        functions=make_functions(m),
        schedule=make_schedule(m),
        run_function="conv2d_packed",
        error_growth=lambda wl: ERROR_GROWTH[m],
        multiplication_saving=KERNEL * KERNEL / multiplications_per_output(m),
    )


ALGORITHMS = [make_algorithm(m) for m in TILES]
