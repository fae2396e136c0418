import pytest

from schedules import get_algorithm
from schedules import spatial_pack as sp
from schedules.template import Unsupported
from schedules.workload import parse_spec
from tuning.task import Task

from .support.checks import check_algorithm


@pytest.mark.parametrize("tile", [(1, 1), (2, 5), (5, 10), (10, 10)])
def test_spatial_pack_fixed_tiles(tile):
    """The sweep's extremes: one-pixel tiles (im2col's granularity) up to one whole-image tile."""
    wl = parse_spec("h=10,ci=8,co=16,k=3,pad=1")
    check_algorithm("spatial-pack", wl, config=sp.tile_config(wl, *tile))


@pytest.mark.parametrize("layer,tile", [
    ("h=10,ci=8,co=16,k=3,pad=1", (2, 5)),
    ("h=10,ci=8,co=16,k=3,pad=1,layout=NCHW", (5, 2)),
    ("h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1", (3, 7)),
    ("h=12,ci=6,co=6,k=3,pad=2,dilation=2", (4, 6)),
    ("h=9,w=7,ci=5,co=6,k=3", (1, 1)),
])
def test_packed_buffer_is_tile_plus_halo(layer, tile):
    """Lowering allocates exactly the predicted tile+halo, not the whole padded input."""
    wl = parse_spec(layer)
    mod = sp.scheduled(wl, sp.tile_config(wl, *tile))
    assert sp.allocated_pack_shape(mod, wl) == sp.packed_tile_shape(wl, *tile)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_packed_buffer_at_random_configs(seed):
    for layer in ("h=12,w=10,ci=8,co=16,k=3,pad=1", "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1x0x2x1,layout=NCHW"):
        wl = parse_spec(layer)
        config = sp.ALGORITHM.sample_config(wl, seed)
        tile_w = config["tile_w"][1] * config["tile_w"][2]
        assert sp.allocated_pack_shape(sp.scheduled(wl, config), wl) == sp.packed_tile_shape(
            wl, config["tile_h"][1], tile_w)


def test_packed_tile_arithmetic():
    wl = parse_spec("h=56,ci=64,co=64,k=3,pad=1")
    assert sp.packed_tile_shape(wl, 8, 8) == (1, 10, 10, 64)
    assert sp.packed_tile_shape(wl.with_layout("NCHW"), 8, 14) == (1, 64, 10, 16)
    assert sp.halo_overhead(wl, 56, 56) == pytest.approx(58 * 58 / (56 * 56))
    assert sp.halo_overhead(wl, 1, 1) == pytest.approx(9.0)  # im2col: every window copied
    strided = parse_spec("h=11,w=13,ci=4,co=8,k=3,stride=2,dilation=2,pad=2")
    assert sp.packed_tile_shape(strided, 3, 2) == (1, 2 * 2 + 2 * 2 + 1, 1 * 2 + 2 * 2 + 1, 4)
    overheads = [sp.halo_overhead(wl, t, t) for t in (56, 28, 14, 8, 4, 2, 1)]
    assert overheads == sorted(overheads)  # finer tiles copy more halo


def test_spatial_pack_refuses_groups():
    wl = parse_spec("h=8,ci=8,co=12,k=3,pad=1,groups=4")
    assert "groups=4: only groups=1" in get_algorithm("spatial-pack").supports(wl)
    with pytest.raises(Unsupported, match="spatial-pack: groups=4"):
        Task(wl, "spatial-pack")


def test_tile_config_rejects_non_divisors():
    with pytest.raises(ValueError, match="does not divide"):
        sp.tile_config(parse_spec("h=10,ci=8,co=16,k=3,pad=1"), 3, 5)
