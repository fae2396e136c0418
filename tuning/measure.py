"""How trials are built and timed: one place for threads, repeats, timeouts and the builders.

MetaSchedule's default builder imports every tensor intrinsic (CUDA included) in each fresh worker
pool, about 7 s per trial here; building straight with tvm.tirx.build costs about a second.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass

import tvm
from tvm.s_tir import meta_schedule as ms

from .target import Target


@dataclass(frozen=True)
class MeasureConfig:
    number: int = 3  # calls per repeat
    repeat: int = 5  # repeats; the median is recorded
    min_repeat_ms: int = 50  # each repeat lasts at least this long (stable medians on 2 cores)
    flush_cache: bool = False
    build_timeout: float = 60.0
    run_timeout: float = 30.0
    builders: int = 2  # parallel build workers

    def evaluator(self) -> ms.runner.EvaluatorConfig:
        return ms.runner.EvaluatorConfig(number=self.number, repeat=self.repeat,
                                         min_repeat_ms=self.min_repeat_ms,
                                         enable_cpu_cache_flush=self.flush_cache)

    def to_dict(self) -> dict:
        return asdict(self)


def fast_build(mod: tvm.IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415 - worker-side import

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def export_aarch64(mod: tvm.runtime.Module) -> str:
    """Link a trial's module into an aarch64 .so on the host: a board has no compiler."""
    from tvm.support import cc  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(prefix="convtune-trial-"), "trial.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


def builder(target: Target, config: MeasureConfig) -> ms.builder.LocalBuilder:
    return ms.builder.LocalBuilder(
        max_workers=config.builders, timeout_sec=config.build_timeout, f_build=fast_build,
        f_export=export_aarch64 if target.arch == "aarch64" and not target.is_host else None)


def local_runner(target: Target, config: MeasureConfig) -> ms.runner.LocalRunner:
    # Runner workers inherit the environment: this is how the thread count reaches them.
    os.environ["TVM_NUM_THREADS"] = str(target.threads)
    return ms.runner.LocalRunner(timeout_sec=config.run_timeout, evaluator_config=config.evaluator(),
                                 cooldown_sec=0.0)
