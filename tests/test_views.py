"""tuning/views.py: what the command line prints of the application layer's results."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuning import views


@pytest.mark.parametrize("device_info,noted", [({"emulated": True, "machine": "aarch64"}, True),
                                               ({"machine": "aarch64"}, False), ({}, False)])
def test_emulated_note_only_for_an_emulated_device(device_info, noted):
    """Every RPC tune once printed the EMULATED note, real boards included."""
    from tuning.remote.emulator import EMULATED_NOTE

    assert (views.emulated_note(SimpleNamespace(device_info=device_info)) == EMULATED_NOTE) == noted


def test_no_note_for_a_local_run():
    assert views.emulated_note(None) is None
