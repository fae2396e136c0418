"""Shared checks: build an algorithm at a config and compare every path with the reference."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TVM_NUM_THREADS", "2")

from tuning.library import Choice, in_memory_kernel  # noqa: E402
from tuning.target import resolve_target  # noqa: E402
from tuning.task import Task  # noqa: E402
from tuning.verify import verify  # noqa: E402
from tuning.workload import Workload, parse_spec  # noqa: E402

HOST = None


def host_target():
    global HOST
    if HOST is None:
        HOST = resolve_target("x86")
    return HOST


def check_algorithm(algorithm: str, layer: str | Workload, config="default", seed: int = 1) -> list:
    """Build `algorithm` for `layer` at `config` ("default", "random" or a dict) and verify
    the one-shot and the prepare/run functions against the float64 reference."""
    wl = parse_spec(layer) if isinstance(layer, str) else layer
    task = Task(wl, algorithm)
    if config == "default":
        config = None
    elif config == "random":
        config = task.template.sample_config(wl, seed)
    choice = Choice(task, None, config)
    target = host_target()
    kernel = in_memory_kernel(choice, target)
    checks = verify(kernel, seed=seed)
    for c in checks:
        assert c.ok, f"{algorithm} {wl.spec} config={config}: {c.function} max error {c.max_error:.3g} > {c.tolerance:.3g}"
    return checks


@pytest.fixture
def target():
    return host_target()
