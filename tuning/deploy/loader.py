"""Load a convtune library the way it was built to run: the sidecar's thread count, threads that float.

Why not `tvm.runtime.load_module` alone: TVM's runtime sizes its thread pool from `TVM_NUM_THREADS`
(else `OMP_NUM_THREADS`, else half the cores on x86) when the pool starts, and pins each worker
thread to one core while the calling thread floats. Beside another runtime's threads in the same
process (PyTorch's OpenMP pool, ONNX Runtime's spinning intra-op threads) the calling thread can
land on the worker's core while the other runtime keeps the free core busy: both halves of every
parallel loop then share one core and the library runs at exactly half speed, in some processes
and not others (docs/performance.md, "Two thread pools in one process").

`load` reads the sidecar beside the `.so` (a layer's or a model's), then configures the calling
thread's TVM pool through `runtime.config_threadpool` with mode -3 (`kSpecifyThreadShareAllCore`:
every pool thread may run on every core this process may use) and the sidecar's thread count; the
environment variables are not needed and, when set, no longer decide. TVM's pool is per calling
thread: call the library from the thread that loaded it, or call `configure_threads` in the
thread that will.
"""

from __future__ import annotations

import json
import os
import threading
import warnings

import tvm

from ..target import LibraryError, check_arch, host_arch

# TVM's ThreadGroup::AffinityMode (src/runtime/threading_backend.cc)
SHARE_ALL_CORES = -3  # kSpecifyThreadShareAllCore: each pool thread's affinity is the whole cpu list


class ThreadWarning(UserWarning):
    """A library will not run with the threads it was built for, or was loaded in a way that
    changes what runs; the message says what runs instead and how to fix it."""


_state = threading.local()  # per calling thread, as TVM's pool: {"threads": int, "by": path}
_said: set[tuple] = set()  # (TVM_NUM_THREADS, threads) warned about once per process
_loaded: dict[str, tuple] = {}  # realpath -> (size, mtime_ns) of the file when first dlopened


def sidecar_path(library_path: str) -> str:
    """Where a library's sidecar lives: beside it, same name, `.json`."""
    return os.path.splitext(library_path)[0] + ".json"


def load_sidecar_json(library_path: str):
    """(path, parsed JSON) of the sidecar beside a library (a kernel's or a model's), or LibraryError."""
    path = sidecar_path(library_path)
    if not os.path.exists(path):
        raise LibraryError(f"{library_path}: no sidecar {path} beside it (it says what the library computes)")
    try:
        with open(path) as f:
            return path, json.load(f)
    except json.JSONDecodeError as err:
        raise LibraryError(f"{path}: not valid JSON: {err}") from None


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask: taskset, cgroup cpusets count)."""
    return sorted(os.sched_getaffinity(0))


def pool_settings() -> dict:
    """What TVM's pool of the calling thread runs with now: for tables printed beside timings."""
    configured = getattr(_state, "threads", None)
    return {"threads": tvm.runtime.num_threads(),
            "binding": "unpinned (convtune loader)" if configured else
            f"TVM default (TVM_BIND_THREADS={os.environ.get('TVM_BIND_THREADS', 'unset, pinned')})"}


def configure_threads(threads: int, who: str = "the library") -> int:
    """Size TVM's thread pool of the calling thread to `threads` (at most the usable cores) with
    every thread free to move between cores; the count it runs with."""
    cores = usable_cores()
    run = threads
    if threads > len(cores):
        # More threads than cores make TVM's spinning barrier wait on descheduled threads: slower
        # than fewer threads, and the result is the same with any count (the parallel loop is split
        # at run time).
        warnings.warn(f"{who} was built for {threads} threads but this process may use {len(cores)} cores: "
                      f"running with {len(cores)}", ThreadWarning, stacklevel=3)
        run = len(cores)
    env = os.environ.get("TVM_NUM_THREADS")
    if env is not None and env.strip() != str(run) and (env, run) not in _said:
        _said.add((env, run))
        warnings.warn(f"TVM_NUM_THREADS={env} is set but {who} runs with {run} threads (the loader decides; "
                      f"pass threads= to convtune's load to choose)", ThreadWarning, stacklevel=3)
    tvm.get_global_func("runtime.config_threadpool")(SHARE_ALL_CORES, run, [str(c) for c in cores])
    got = tvm.runtime.num_threads()
    if got != run:
        # TVM's pool never grows past the size it started with (TVM_NUM_THREADS, OMP_NUM_THREADS or
        # half the cores, read at the first parallel call of this thread).
        warnings.warn(f"TVM's thread pool in this thread started with {got} threads before {who} was loaded, "
                      f"so it runs with {got}, not {run}: load convtune libraries before running other TVM "
                      f"code in this thread, or start the process with TVM_NUM_THREADS={run}",
                      ThreadWarning, stacklevel=3)
    _state.threads, _state.by = got, who
    return got


def _note_dlopen(path: str) -> None:
    """dlopen keeps the first file loaded under a path for the life of the process: a library
    rebuilt in place and loaded again would silently run the old code."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    signature = (stat.st_size, stat.st_mtime_ns)
    first = _loaded.setdefault(real, signature)
    if first != signature:
        warnings.warn(f"{path} was loaded earlier in this process and has changed on disk since: the process "
                      "keeps running the version loaded first (the dynamic loader caches by path); restart "
                      "it, or load the new library under another file name", ThreadWarning, stacklevel=3)


def load_module(path: str, side: dict, threads: int | None = None):
    """`tvm.runtime.load_module(path)` with TVM's pool configured for the library (`side`: its
    sidecar); `threads` overrides the sidecar's count."""
    # a library of another architecture: a message, not a dlopen error
    check_arch(path, host_arch(), "this host", ", or run it on a device with --rpc-tracker/--rpc")
    wanted = threads if threads is not None else side.get("threads", 1)
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted <= 0:
        raise LibraryError(f"{path}: threads must be a positive integer, got {wanted!r}")
    current = getattr(_state, "threads", None)
    if current is not None and current != min(wanted, len(usable_cores())):
        # One pool per calling thread serves every library it calls: give it the larger count,
        # so no library runs with fewer threads than it was built for (more is still correct).
        larger = max(current, wanted)
        warnings.warn(f"{path} wants {wanted} threads but {_state.by} configured this thread's TVM pool for "
                      f"{current}: both now run with {min(larger, len(usable_cores()))} (one pool per thread)",
                      ThreadWarning, stacklevel=2)
        wanted = larger
    _note_dlopen(path)
    module = tvm.runtime.load_module(path)
    configure_threads(wanted, who=path)
    return module


def load(path: str, threads: int | None = None):
    """Load a convtune library (`convtune compile` output: a layer's or a model's `.so` with its
    sidecar `.json` beside it) for this process, to use instead of `tvm.runtime.load_module`.

    A layer library's functions are called as `module["conv2d"](data, weight, out)`; a model
    library runs through `tvm.relax.VirtualMachine(module, tvm.cpu())`."""
    if not os.path.isfile(path):
        raise LibraryError(f"{path}: no such file")
    _, side = load_sidecar_json(path)
    if not isinstance(side, dict):
        raise LibraryError(f"{path}: its sidecar is not a JSON object")
    return load_module(path, side, threads)
