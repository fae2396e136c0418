"""convtune's tuning, deployment and CLI package (the templates are in `schedules`)."""

import sys as _sys


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


_guard_optional_torch()
