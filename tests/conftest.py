"""Fixtures only; shared helpers live in tests/support/."""

from __future__ import annotations

import os

import pytest

# Before TVM's runtime starts its thread pool (it would take half the cores).
os.environ.setdefault("TVM_NUM_THREADS", "2")

from .support.checks import host_target  # noqa: E402


@pytest.fixture
def target():
    return host_target()
