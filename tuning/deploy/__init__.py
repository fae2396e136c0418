"""Deploying convtune's libraries; `load` is what users call instead of `tvm.runtime.load_module`."""

from .loader import load  # noqa: F401
