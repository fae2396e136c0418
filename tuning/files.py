"""Files that are written whole or not at all: records' side files, sidecars, manifests, results.

Every JSON or text file convtune writes goes through here: a reader (another tuning process, a
user's deploy script) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os


def write_text_atomic(path: str, text: str) -> str:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic on POSIX within one file system
    return path


def write_json_atomic(path: str, payload, default=None) -> str:
    """`payload` as indented JSON (`default` converts values json cannot)."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=default))


def write_arrays_atomic(path: str, arrays: dict) -> str:
    """numpy arrays by name as one .npz (a model's outputs)."""
    import numpy as np

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def locked(path: str):
    """Exclusive use of `path` among convtune processes (flock on a hidden `.NAME.lock` beside it):
    two writers of one output take turns instead of mixing their files."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f".{name}.lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_library(path: str, write_library, sidecar_path: str, sidecar: dict) -> None:
    """A library and its sidecar JSON written as a pair: both to temporaries in the same directory,
    then renamed, under `locked(path)`, so a second compile to the same path never mixes its
    library with another's sidecar, and a killed one leaves the previous pair whole.
    `write_library(tmp_path)` writes the library (a `.so` name, which export_library needs)."""
    with locked(path):
        tmp_library = f"{path[:-3]}.{os.getpid()}.tmp.so"
        tmp_sidecar = f"{sidecar_path}.{os.getpid()}.tmp"
        try:
            write_library(tmp_library)
            with open(tmp_sidecar, "w") as f:
                f.write(json.dumps(sidecar, indent=2))
            os.replace(tmp_library, path)
            os.replace(tmp_sidecar, sidecar_path)
        finally:
            for tmp in (tmp_library, tmp_sidecar):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
