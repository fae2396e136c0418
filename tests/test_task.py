"""tuning/task.py: a workload through an algorithm, and the algorithm names a command takes."""

from __future__ import annotations

from schedules.workload import parse_spec
from tuning.task import algorithm_names, tasks_for


def test_an_algorithm_list_skips_known_ones_that_do_not_fit():
    wl = parse_spec("h=8,ci=8,co=8,k=3,stride=2,pad=1")  # Winograd needs stride 1
    assert [t.algorithm for t in tasks_for(wl, "direct,winograd")] == ["direct"]
    assert algorithm_names(" direct , im2col ") == ["direct", "im2col"]
