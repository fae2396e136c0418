"""Shared checks: build an algorithm at a config and compare every path with the reference."""

from __future__ import annotations

from schedules.workload import Workload, parse_spec
from tuning.deploy.library import Choice, in_memory_kernel
from tuning.deploy.verify import verify
from tuning.target import resolve_target
from tuning.task import Task

_HOST = []


def host_target():
    """This machine as `--target x86` resolves it (once per test session)."""
    if not _HOST:
        _HOST.append(resolve_target("x86"))
    return _HOST[0]


def check_algorithm(algorithm: str, layer: str | Workload, config="default", seed: int = 1, target=None) -> list:
    """Build `algorithm` for `layer` at `config` ("default", "random" or a dict) for `target`
    (default: this host; it must run here) and verify the one-shot and the prepare/run functions
    against the float64 reference."""
    wl = parse_spec(layer) if isinstance(layer, str) else layer
    target = target or host_target()
    task = Task(wl, algorithm, target.machine)
    if config == "default":
        config = None
    elif config == "random":
        config = task.template.sample_config(wl, seed, target.machine)
    kernel = in_memory_kernel(Choice(task, None, config), target)
    checks = verify(kernel, seed=seed)
    for c in checks:
        assert c.ok, f"{algorithm} {wl.spec} config={config}: {c.function} max error {c.max_error:.3g} > {c.tolerance:.3g}"
    return checks


def one_line_error(capsys, text):
    """The command's stderr is one line that contains `text`; returns it."""
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1, err
    return err
