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
