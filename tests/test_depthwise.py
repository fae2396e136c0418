import pytest

from schedules import get_algorithm
from schedules.template import Unsupported
from schedules.workload import parse_spec
from tuning.task import Task


@pytest.mark.parametrize("layer", ["h=8,ci=8,co=16,k=3,pad=1", "h=8,ci=8,co=8,k=3,pad=1,groups=4"])
def test_depthwise_refuses(layer):
    wl = parse_spec(layer)
    reason = get_algorithm("depthwise").supports(wl)
    assert reason == f"depthwise: only depthwise layers (groups = ci > 1), got groups={wl.groups}, ci={wl.ci}"
    with pytest.raises(Unsupported):
        Task(wl, "depthwise")


@pytest.mark.parametrize("layout, copies", [("NHWC", False), ("NCHW", True)])
def test_nhwc_reads_the_padding_inline(target, layout, copies):
    """NHWC: no padded copy of the input (a whole extra pass over a load-bound layer's largest
    tensor: 112 x 112 x 96 3x3/2 ran 5x slower with it on Zen 3); NCHW keeps its padded stage."""
    from schedules.template import has_block

    wl = parse_spec("h=9,w=7,ci=16,co=16,k=3,pad=1x0x2x1,stride=2,groups=16", layout)
    task = Task(wl, "depthwise", target.machine)
    sch = task.template.apply(task.template.functions(wl)["conv2d"].func, wl, None, target.machine)
    assert has_block(sch, "pad") == copies

