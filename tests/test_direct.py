import pytest

from schedules import get_algorithm
from tuning.workload import parse_spec

from .conftest import check_algorithm

LAYERS = [
    "h=9,w=7,ci=5,co=6,k=3",  # odd sizes, no padding
    "h=10,ci=8,co=16,k=3,pad=1",
    "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1",
    "h=8,ci=3,co=5,k=5,pad=2",
    "h=9,w=8,ci=4,co=8,k=3,pad=0x1x2x0",  # asymmetric (top, left, bottom, right)
    "h=12,ci=6,co=6,k=3,pad=2,dilation=2",
    "h=8,ci=8,co=12,k=3,pad=1,groups=4",
    "h=9,ci=16,co=16,k=3,stride=2,pad=1,groups=16",  # depthwise
    "h=7,ci=16,co=24,k=1",
    "h=13,w=5,ci=3,co=7,kh=3,kw=1,stride=1x2",
]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("layer", LAYERS)
def test_direct_default_config(layer, layout):
    check_algorithm("direct", parse_spec(layer, layout=layout))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_direct_random_configs(layout, seed):
    for layer in ("h=10,ci=8,co=16,k=3,pad=1", "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1,groups=2"):
        check_algorithm("direct", parse_spec(layer, layout=layout), config="random", seed=seed)


def test_direct_knobs_golden():
    """The space the search explores; a change here must be deliberate."""
    wl = parse_spec("h=56,ci=64,co=64,k=3,pad=1")
    assert get_algorithm("direct").knob_names(wl) == ["tile_y", "tile_x", "tile_c", "tile_rc", "unroll"]
    assert get_algorithm("direct").knob_names(wl.with_layout("NCHW")) == ["tile_c", "tile_y", "tile_x", "tile_rc", "unroll"]
