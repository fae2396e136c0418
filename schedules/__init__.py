"""Compute definitions and schedule templates, one file per algorithm.

The registry below is the only place the pipeline learns which algorithms exist.
"""

from __future__ import annotations

from .template import Algorithm, Unsupported
from . import direct

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (direct.ALGORITHM,)}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise Unsupported(name, f"unknown algorithm; known: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def applicable(wl) -> list[Algorithm]:
    return [a for a in ALGORITHMS.values() if a.supports(wl) is None]
