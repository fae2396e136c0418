"""Compute definitions and schedule templates, one file per algorithm.

The registry below is the only place the pipeline learns which algorithms exist. A module offers
`ALGORITHMS` (a family, e.g. Winograd's tile sizes) or a single `ALGORITHM`.
"""

from __future__ import annotations

import importlib

from .template import Algorithm, Unsupported

MODULES = ("direct", "im2col", "spatial_pack", "winograd", "indirect", "depthwise", "grouped", "direct_int8", "depthwise_int8", "im2col_int8")


def _load() -> dict[str, Algorithm]:
    found: dict[str, Algorithm] = {}
    for module_name in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{module_name}":
                raise
            continue
        for algorithm in getattr(module, "ALGORITHMS", None) or [module.ALGORITHM]:
            found[algorithm.name] = algorithm
    return found


ALGORITHMS: dict[str, Algorithm] = _load()


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise Unsupported(name, f"unknown algorithm; known: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def family(name: str) -> list[Algorithm]:
    """`winograd` names every `winograd-*` variant; a full name names itself."""
    if name in ALGORITHMS:
        return [ALGORITHMS[name]]
    members = [a for n, a in ALGORITHMS.items() if n.startswith(name + "-")]
    if not members:
        raise Unsupported(name, f"unknown algorithm; known: {', '.join(ALGORITHMS)}")
    return members


def applicable(wl) -> list[Algorithm]:
    return [a for a in ALGORITHMS.values() if a.supports(wl) is None]
