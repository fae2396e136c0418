"""Fault injection for tests: run and build functions that crash, hang or fail on some trials.

They run inside MetaSchedule's worker processes, which import this module by name.
"""

import itertools
import os
import signal
import time

from tvm.s_tir.meta_schedule.runner.local_runner import default_run_evaluator

from tuning.measure import fast_build

_calls = itertools.count()


def _nth(every: int) -> bool:
    return next(_calls) % every == every - 1


def crashing_run(rt_mod, device, evaluator_config, repeated_args):
    """Every third trial segfaults its runner process."""
    if _nth(3):
        os.kill(os.getpid(), signal.SIGSEGV)
    return default_run_evaluator(rt_mod, device, evaluator_config, repeated_args)


def hanging_run(rt_mod, device, evaluator_config, repeated_args):
    """Every third trial never returns (an endless kernel)."""
    if _nth(3):
        time.sleep(3600)
    return default_run_evaluator(rt_mod, device, evaluator_config, repeated_args)


def failing_build(mod, target, params=None):
    """Every third build fails the way a bad schedule fails LLVM."""
    if _nth(3):
        raise RuntimeError("injected build failure: LLVM rejected the module")
    return fast_build(mod, target, params)
