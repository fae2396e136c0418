"""Spatial pack (空间组合): divide the output into spatial tiles, pack each tile's input, convolve it.

The article's divide and conquer: the output's H and W are cut into tiles of tile_h x tile_w pixels;
for each tile the input window it needs -- the tile plus its halo, the (K-1)*dilation neighbouring
rows and columns a KxK window reaches into -- is copied into a small contiguous buffer; a small
direct convolution runs on that buffer; its results are written back into the output. The halo
holds the neighbouring tiles' pixels, and zeros only where the tile touches the true border (the
padding). The output channels are split into blocks too: within a tile every channel block reuses
the same packed input (channel splitting costs no memory, only locality, as the article says).

    packed tile = ((tile_h-1)*stride_h + (kh-1)*dilation_h + 1) x (same for w) x ci   (+ one image)

Smaller tiles: the packed tile and the weights' channel block stay in L1/L2, but the halo is copied
more often (`halo_overhead`); one-pixel tiles pack one KxKxCI window per output pixel: im2col.

How it is built. The compute is the direct convolution (`direct.conv2d_compute`); the packing is
the schedule's, so the tile sizes are knobs (a knob cannot change a tensor's shape): `cache_read`
of the (padded) input, `compute_at` under the spatial tile loop, and the zero padding inlined into
that copy, so lowering allocates exactly one tile+halo buffer per tile (`allocated_pack_shape`
reads it back from the lowered TIR). The write-back is the register tile's accumulator
(`cache_write` + `reverse_compute_at`), stored straight into the output tile: an extra contiguous
output-tile buffer would copy the whole output once more and gain nothing, since each output
element is written exactly once (unlike the input, which the KxK windows read KxK times).

Loops (NHWC): parallel(n, tile rows, tile cols) -> pack -> channel block -> pixels of the tile ->
register tile of (x pixels) x (c channels, vectorised), with the reduction (ci, kh, kw) outside the
register tile. NCHW vectorises along the tile's width instead, register-tiling channels.

Knobs: `tile_h` [tiles, tile height], `tile_w` [tiles, .., register pixels] (NHWC) or
[tiles, .., vector width] (NCHW), `tile_c` [channel blocks, .., vector/register channels],
`tile_rc` (reduction split), `unroll`. Tile sizes are perfect divisors of OH/OW (the search's
`sample_perfect_tile`); `tile_config` builds a config at a chosen tile size for sweeps.

Limits: groups=1 only. With groups the packed tile would still hold every input channel while each
output channel reads only its group's slice, and the vectorised channel axis would gather across
group boundaries instead of broadcasting one packed input value: `direct` and `depthwise` fit those.
Any stride, dilation and (asymmetric) padding; NHWC and NCHW.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, te, tirx

from .direct import conv2d_compute
from .template import (
    Algorithm,
    Knobs,
    Phase,
    Unsupported,
    default_tile,
    epilogue,
    has_block,
    largest_divisor,
    phase,
    register_tile,
)
from .workload import Workload

NAME = "spatial-pack"
FLOAT_BYTES = 4
# Spatial tiles the default config wants per thread: two, so that uneven tiles still balance.
TILES_PER_THREAD = 2

# Raise when the template or its default config changes: older records are then set aside.
TEMPLATE_VERSION = 1


# -- the article's arithmetic ------------------------------------------------------------------

def packed_extent(size: int, stride: int, k: int, dilation: int) -> int:
    """Input rows (or columns) a run of `size` output rows reads: the tile plus its halo."""
    return (size - 1) * stride + (k - 1) * dilation + 1


def packed_tile_shape(wl: Workload, tile_h: int, tile_w: int) -> tuple[int, ...]:
    """The predicted packed-tile buffer shape, in the data layout with its unit batch dimension:
    (1, rows, cols, ci) for NHWC, (1, ci, rows, cols) for NCHW, where rows =
    (tile_h-1)*stride_h + (kh-1)*dilation_h + 1 and cols likewise."""
    rows = packed_extent(tile_h, wl.stride[0], wl.kh, wl.dilation[0])
    cols = packed_extent(tile_w, wl.stride[1], wl.kw, wl.dilation[1])
    return (1, rows, cols, wl.ci) if wl.layout == "NHWC" else (1, wl.ci, rows, cols)


def halo_overhead(wl: Workload, tile_h: int, tile_w: int) -> float:
    """Bytes copied into packed tiles over the whole layer, divided by the input's bytes.

    ~1 for one big tile without padding, above 1 with halo (and padding zeros); at 1x1 tiles it is
    the im2col ratio KH*KW (times stride effects). Tiles that do not divide OH/OW are counted whole.
    """
    tiles = wl.n * math.ceil(wl.oh / tile_h) * math.ceil(wl.ow / tile_w)
    packed = tiles * math.prod(packed_tile_shape(wl, tile_h, tile_w))
    return packed / math.prod(wl.data_shape)


def pack_buffer_name(wl: Workload) -> str:
    """The packed tile's buffer in the scheduled TIR (`cache_read` names it after its source)."""
    return ("pad" if wl.has_padding else "data") + "_global"


# -- compute -----------------------------------------------------------------------------------

def functions(wl: Workload) -> dict[str, Phase]:
    """One phase: the packing happens per call, inside the kernel (tile buffers are small and
    reused from TVM's per-thread workspace pool, so nothing large lives across calls)."""
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    fused, out = epilogue(wl, conv2d_compute(wl, data, weight))
    return {"conv2d": phase("conv2d", data=data, weight=weight, **fused, out=out)}


# -- schedule ----------------------------------------------------------------------------------
def _default_tile_h(wl: Workload, tile_w: int, threads: int) -> int:
    """8 rows (the article's 4- or 8-pixel tiles), fewer when that leaves fewer than
    TILES_PER_THREAD tiles per thread: a halo copy is cheap next to a whole core idling."""
    col_tiles = wl.ow // tile_w
    tile_h = largest_divisor(wl.oh, 8)
    while tile_h > 1 and wl.n * (wl.oh // tile_h) * col_tiles < TILES_PER_THREAD * threads:
        tile_h = largest_divisor(wl.oh, tile_h - 1)
    return tile_h


def _vector_chunk(extent: int) -> int:
    """Copy loops vectorise whole rows up to 64 lanes, longer ones in 16-lane pieces."""
    if extent <= 64:
        return extent
    return 16 if extent % 16 == 0 else 8 if extent % 8 == 0 else extent


def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
    conv = sch.get_sblock("conv2d")
    n, a, b, c, r0, r1, r2 = sch.get_loops(conv)
    nhwc = wl.layout == "NHWC"
    machine = knobs.machine  # the register tile from its register budget (see template.register_tile)
    if nhwc:  # a=y, b=x, c=channels (vector); reduction rh, rw, rc
        y, x, ch, rh, rw, rc = a, b, c, r0, r1, r2
        reg, width = register_tile(machine, wl.ow, wl.co)
        tile_w_wish = (reg, max(1, 8 // reg))
        c_wish, c_max = (width,), 4 * machine.lanes
        w_max = 8
    else:  # a=channels, b=y, c=x (vector); reduction rc, rh, rw
        ch, y, x, rc, rh, rw = a, b, c, r0, r1, r2
        rows, width = register_tile(machine, wl.co, wl.ow)
        tile_w_wish = (width, 1)
        c_wish, c_max = (rows,), 8
        w_max = 4 * machine.lanes
    tw = math.prod(default_tile(wl.ow, 3, tile_w_wish, w_max)[1:])

    # The spatial tiles (the article's h*w pieces), then the pixels inside one tile.
    y0, y1 = knobs.split("tile_h", y, 2, prefer=(_default_tile_h(wl, tw, machine.threads),))
    x0, x1, x2 = knobs.split("tile_w", x, 3, max_inner=w_max, prefer=tile_w_wish)
    c0, c1, c2 = knobs.split("tile_c", ch, 3, max_inner=c_max, prefer=c_wish)
    rc0, rc1 = knobs.split("tile_rc", rc, 2, prefer=(wl.ci,))
    if nhwc:  # register tile: x2 pixels (unrolled) x c2 channels (vector)
        sch.reorder(n, y0, x0, c0, y1, x1, c1, rc0, rh, rw, rc1, x2, c2)
        unrolled, vector = x2, c2
    else:  # register tile: c2 channels (unrolled) x x2 pixels (vector)
        sch.reorder(n, y0, x0, c0, y1, x1, c1, rc0, rh, rw, rc1, c2, x2)
        unrolled, vector = c2, x2

    # Pack: the tile's input window (tile + halo) copied contiguously, once per tile; every
    # channel block below reuses it. Lowering sizes the buffer to the region the tile reads.
    pack = sch.cache_read(conv, 0, "global")
    sch.compute_at(pack, x0, preserve_unit_loops=True)
    if has_block(sch, "pad"):
        sch.compute_inline(sch.get_sblock("pad"))  # zeros only at the true border, in the copy
    copy_loops = sch.get_loops(pack)[-4:]
    inner = copy_loops[-1]  # ci (NHWC) or the window's columns (NCHW): contiguous both sides
    extent = int(sch.get(inner).extent)
    chunk = _vector_chunk(extent)
    if chunk != extent:
        inner = sch.split(inner, [None, chunk])[1]
    sch.vectorize(inner)

    # Write-back: the register tile's accumulator, stored into the output tile once.
    write_back = sch.cache_write(conv, 0, "global")
    sch.reverse_compute_at(write_back, c1, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(write_back)[-1])

    sch.parallel(sch.fuse(n, y0, x0))
    sch.unroll(unrolled)
    sch.vectorize(vector)
    sch.decompose_reduction(conv, rc0)
    knobs.unroll()


def check(wl: Workload) -> None:
    if wl.groups != 1:
        raise Unsupported(NAME, f"groups={wl.groups}: only groups=1 (the packed tile feeds every output "
                                "channel with every input channel; use direct or depthwise)")


ALGORITHM = Algorithm(
    template_version=TEMPLATE_VERSION,
    name=NAME,
    layouts=("NHWC", "NCHW"),
    description="spatial pack: output split into tiles, each tile's input+halo packed contiguously, "
            "a small register-tiled convolution per tile",
    check=check,
    functions=functions,
    schedule=schedule,
)


# -- for the granularity experiment ------------------------------------------------------------

def tile_config(wl: Workload, tile_h: int, tile_w: int, base: dict | None = None) -> dict:
    """A full config with the spatial tile fixed at tile_h x tile_w output pixels (each must
    divide OH / OW); the other knobs come from `base` (default: the template's default config),
    the register/vector width shrunk to a divisor of tile_w if needed."""
    if wl.oh % tile_h or wl.ow % tile_w:
        raise ValueError(f"{NAME}: tile {tile_h}x{tile_w} does not divide the output {wl.oh}x{wl.ow}")
    config = dict(base) if base is not None else default_config(wl)
    inner = largest_divisor(tile_w, int(config["tile_w"][2]))
    config["tile_h"] = [wl.oh // tile_h, tile_h]
    config["tile_w"] = [wl.ow // tile_w, tile_w // inner, inner]
    return config


def default_config(wl: Workload) -> dict:
    return ALGORITHM.default_config(wl)


def scheduled(wl: Workload, config: dict | None = None) -> tvm.IRModule:
    """The one-shot conv2d scheduled at `config` (None: default), as the build sees it. To time
    it, build with `tuning.deploy.library.build(Choice(Task(wl, "spatial-pack"), None, config), target)`."""
    sch = ALGORITHM.apply(functions(wl)["conv2d"].func, wl, config)
    return sch.mod


# Lowering up to (not including) FlattenBuffer, in the order the default s_tir pipeline runs it:
# buffers still have their N-D shapes, and allocations sit where (and as large as) lowering
# decided. The later passes only flatten and vectorise.
def _allocation_passes() -> list:
    st = s_tir.transform
    return [st.CanonicalizeLoop(), st.LowerCrossThreadReduction(), st.LowerInitBlock(),
            st.PlanAndUpdateBufferAllocationLocation(), st.ConvertBlocksToOpaque(),
            st.CompactBufferAllocation(), st.LowerMatchBuffer(), st.StmtSimplify(), st.LowerOpaqueBlock()]


def allocated_buffers(mod: tvm.IRModule | s_tir.Schedule) -> dict[str, tuple[int, ...]]:
    """Every buffer allocated inside the lowered function: name -> shape (a name allocated twice
    keeps the larger)."""
    if isinstance(mod, s_tir.Schedule):
        mod = mod.mod
    lowered = tvm.ir.transform.Sequential(_allocation_passes())(mod)
    found: dict[str, tuple[int, ...]] = {}

    def visit(stmt) -> None:
        if stmt is None:
            return
        if isinstance(stmt, tirx.AllocBuffer):
            shape = tuple(int(s) for s in stmt.buffer.shape)
            name = stmt.buffer.name
            if name not in found or math.prod(shape) > math.prod(found[name]):
                found[name] = shape
        if isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                visit(s)
            return
        if isinstance(stmt, tirx.IfThenElse):
            visit(stmt.then_case)
            visit(stmt.else_case)
            return
        body = getattr(stmt, "body", None)
        if isinstance(body, tirx.Stmt):
            visit(body)

    for func in lowered.functions.values():
        visit(func.body)
    return found


def allocated_pack_shape(mod: tvm.IRModule | s_tir.Schedule, wl: Workload) -> tuple[int, ...]:
    """The packed tile's shape as allocated in the lowered TIR of a scheduled module (compare
    with `packed_tile_shape`)."""
    buffers = allocated_buffers(mod)
    name = pack_buffer_name(wl)
    if name not in buffers:
        raise LookupError(f"{NAME}: no {name!r} allocation in the lowered TIR; found {sorted(buffers)}")
    return buffers[name]
