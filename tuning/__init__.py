"""convtune's tuning, deployment and CLI package (the templates are in `schedules`)."""

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_while_starting(signum, frame):  # noqa: ARG001 - a signal handler's signature
    name = _signal.Signals(signum).name
    _sys.stderr.write(f"\nconvtune: {name} while starting; nothing was run\n")
    _sys.stderr.flush()
    _os._exit(128 + signum)


def _quiet_start() -> None:
    """Ctrl-C (or SIGTERM) in the first seconds of a command lands inside `import torch` or
    `import tvm`, which the CLI's own handling has not reached yet: a raw traceback of someone
    else's import. Launched as the CLI (`convtune`, `python -m tuning...`), those seconds end with
    one line instead; `tuning.cli.main` installs its handlers when it starts. A program that
    imports the package keeps its own handlers."""
    launcher = _sys.argv[0] if _sys.argv else ""
    if launcher != "-m" and _os.path.basename(launcher) != "convtune":
        return
    for signum in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(signum) in (_signal.default_int_handler, _signal.SIG_DFL):
            _signal.signal(signum, _interrupted_while_starting)


def _guard_optional_torch() -> None:
    """TVM's FFI imports torch, if installed, as its first act (tvm_ffi/__init__.py) and forgives
    only an ImportError: a broken install (a missing libtorch_cpu.so is an OSError) killed every
    command, `--help` included. A torch that cannot be imported is marked absent here, before TVM
    is, so every command runs and only the PyTorch features say torch is unavailable."""
    if "torch" in _sys.modules:
        return
    try:
        import torch  # noqa: F401, PLC0415 - the import TVM would do anyway, a moment later
    except ImportError:
        return
    except Exception as err:  # noqa: BLE001 - whatever a broken install raises
        _sys.modules["torch"] = None  # `import torch` now raises ImportError, which TVM forgives
        message = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)[:200]
        print(f"convtune: warning: torch is installed but cannot be imported ({type(err).__name__}: {message}); "
              "PyTorch models and rivals are unavailable (reinstall torch, or uninstall it)", file=_sys.stderr)


def end_quiet_start() -> None:
    """The command has started (its own handling of Ctrl-C and SIGTERM takes over)."""
    if _signal.getsignal(_signal.SIGINT) is _interrupted_while_starting:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    if _signal.getsignal(_signal.SIGTERM) is _interrupted_while_starting:
        _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)


_quiet_start()
_guard_optional_torch()
