"""tuning/remote/tracker.py: a tracker is reported only once it is ours and listening."""

from __future__ import annotations

import pytest

import tuning.cli as cli
from tuning.remote.tracker import Tracker


@pytest.mark.slow  # starts a tracker process
def test_a_second_tracker_on_a_taken_port_is_refused(capsys):
    with Tracker.start() as first:
        assert cli.main(["tracker", "--port", str(first.port), "--detach"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"cannot bind port {first.port} on 127.0.0.1: it is taken" in err and len(err.splitlines()) == 1
        assert "pid" not in capsys.readouterr().out


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_a_port_out_of_range_is_refused(capsys, port):
    assert cli.main(["tracker", "--port", port]) == 2
    err = capsys.readouterr().err.strip()
    assert "1..65535" in err and len(err.splitlines()) == 1
