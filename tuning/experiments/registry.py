"""Which experiments exist, in the report's order (the article's), and where their code is."""

from __future__ import annotations

import importlib
import os

DEFAULT_OUT = os.path.join("docs", "experiments")
# name -> module, in the report's order (the article's order)
EXPERIMENTS = {
    "layout": "layout",
    "im2col-memory": "im2col_memory",
    "spatial-pack": "spatial_pack",
    "winograd": "winograd",
    "indirect": "indirect",
    "tuning-curves": "tuning_curves",
    "transfer": "transfer",
}
NAMES = tuple(EXPERIMENTS)


def module(name: str):
    return importlib.import_module(f"{__package__}.{EXPERIMENTS[name]}")


def report_path(out: str, report: str | None = None) -> str:
    return report or os.path.normpath(out).rstrip(os.sep) + ".md"
