"""`convtune bench` in fresh processes: the spread across processes is reported and flagged."""

from __future__ import annotations

import pytest

from tuning.bench import SPREAD_FLAG, format_table, process_summary


def test_processes_that_disagree_are_flagged_not_averaged_away():
    steady = process_summary([1.00e-3, 1.05e-3, 1.02e-3], flops=10**9)
    halved = process_summary([1.00e-3, 2.00e-3, 1.01e-3], flops=10**9)
    assert not steady["flagged"] and halved["flagged"] and halved["spread"] == pytest.approx(2.0)
    assert (halved["min_ms"], halved["median_ms"], halved["max_ms"]) == pytest.approx((1.0, 1.01, 2.0))
    row = {"layer": "l", "algorithm": "direct", "tuned": True, "results": {"convtune": halved}}
    assert "SPREAD 2.00x" in format_table([row], None) and SPREAD_FLAG == 1.3
