"""Fault injection for tests: run and build functions that crash, hang or fail on some trials.

They run inside MetaSchedule's worker processes, which import this module by name.
"""

import itertools
import os
import signal
import time

from tvm.s_tir.meta_schedule.runner.local_runner import default_run_evaluator

from tuning.search.measure import fast_build

_calls = itertools.count()


def faulty_run(rt_mod, device, evaluator_config, repeated_args):
    """Of every four trials, one segfaults its runner process and one never returns."""
    n = next(_calls) % 4
    if n == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    if n == 3:
        time.sleep(3600)  # an endless kernel
    return default_run_evaluator(rt_mod, device, evaluator_config, repeated_args)


def failing_build(mod, target, params=None):
    """Every third build fails the way a bad schedule fails LLVM."""
    if next(_calls) % 3 == 2:
        raise RuntimeError("injected build failure: LLVM rejected the module")
    return fast_build(mod, target, params)
