"""Files that are written whole or not at all: records' side files, sidecars, manifests, results.

Every JSON or text file convtune writes goes through here: a reader (another tuning process, a
user's deploy script) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

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
