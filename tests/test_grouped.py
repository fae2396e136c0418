"""The grouped template (schedules/grouped.py); its kernels against the reference are in
test_algorithms.py and test_epilogue.py with every other template's."""

from schedules.workload import parse_spec
from tuning.task import Task


def test_grouped_reads_the_padding_inline(target):
    """The grouped template has no padded copy either (a group's reduction is short: the copy
    weighed as much as the conv on ResNeXt's stride-2 layer)."""
    from schedules.template import has_block

    wl = parse_spec("h=9,w=7,ci=16,co=24,k=3,pad=1x0x2x1,stride=2,groups=4")
    task = Task(wl, "grouped", target.machine)
    sch = task.template.apply(task.template.functions(wl)["conv2d"].func, wl, None, target.machine)
    assert not has_block(sch, "pad")
