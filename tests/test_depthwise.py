import pytest

from schedules import get_algorithm
from schedules.template import Unsupported
from tuning.task import Task
from tuning.workload import parse_spec

from .conftest import check_algorithm

LAYERS = [
    "h=14,ci=32,co=32,k=3,pad=1,groups=32",  # MobileNet-v1 dw, stride 1
    "h=14,ci=32,co=32,k=3,stride=2,pad=1,groups=32",  # ... and stride 2
    "h=9,w=7,ci=6,co=12,k=3,groups=6",  # odd sizes, no padding, channel multiplier 2
    "h=11,w=10,ci=24,co=24,k=5,stride=2,pad=0x1x2x0,groups=24",  # asymmetric padding, 24 channels
    "h=12,ci=5,co=5,k=3,pad=2,dilation=2,groups=5",
    "n=2,h=8,w=9,ci=16,co=16,kh=3,kw=1,stride=1x2,pad=1,groups=16",
]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("layer", LAYERS)
def test_depthwise_default_config(layer, layout):
    check_algorithm("depthwise", parse_spec(layer, layout=layout))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_depthwise_random_configs(layout, seed):
    for layer in ("h=14,ci=32,co=32,k=3,stride=2,pad=1,groups=32", "h=9,w=11,ci=8,co=16,k=3,pad=1,groups=8"):
        check_algorithm("depthwise", parse_spec(layer, layout=layout), config="random", seed=seed)


def test_depthwise_knobs_golden():
    """The space the search explores; a change here must be deliberate."""
    wl = parse_spec("h=112,ci=32,co=32,k=3,pad=1,groups=32")
    algorithm = get_algorithm("depthwise")
    assert algorithm.knob_names(wl) == ["tile_y", "tile_x", "tile_c", "unroll"]
    assert algorithm.knob_names(wl.with_layout("NCHW")) == ["tile_c", "tile_y", "tile_x", "unroll"]


@pytest.mark.parametrize("layer", ["h=8,ci=8,co=16,k=3,pad=1", "h=8,ci=8,co=8,k=3,pad=1,groups=4"])
def test_depthwise_refuses(layer):
    wl = parse_spec(layer)
    reason = get_algorithm("depthwise").supports(wl)
    assert reason == f"depthwise: only depthwise layers (groups = ci > 1), got groups={wl.groups}, ci={wl.ci}"
    with pytest.raises(Unsupported):
        Task(wl, "depthwise")
