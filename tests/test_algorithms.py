"""Every algorithm against the numpy float64 reference, from one table of cases.

Per algorithm: the layers its default config must compute (odd sizes, strides, asymmetric
padding, dilation, groups, batch > 1, both layouts where it has them), the layers and seeds of
random points of its space, and a golden canonical layer whose knob names, default config and
scheduled-module structural hash are pinned in tests/golden/algorithms.json. The per-algorithm
files keep only their own math (Winograd's transforms, the indirection table, the packed tile).

Regenerate the golden file deliberately, after a template change, and review its diff:

    CONVTUNE_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_algorithms.py -k golden
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import tvm_ffi

from schedules import ALGORITHMS, get_algorithm
from schedules.machine import Machine
from schedules.template import register_tile
from schedules.workload import parse_spec

from .support.checks import check_algorithm


@dataclass(frozen=True)
class Spec:
    layers: tuple[str, ...]  # default config must match the reference on each
    random_layers: tuple[str, ...]  # random configs of the space on each ...
    seeds: tuple[int, ...]  # ... at these seeds
    canonical: str  # the golden layer
    layouts: tuple[str, ...] = ("NHWC", "NCHW")


COMMON = (
    "h=9,w=7,ci=5,co=6,k=3",  # odd sizes, no padding
    "h=10,ci=8,co=16,k=3,pad=1",
    "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1",
    "h=8,ci=3,co=5,k=5,pad=2",
    "h=9,w=8,ci=4,co=8,k=3,pad=0x1x2x0",  # asymmetric (top, left, bottom, right)
    "h=12,ci=6,co=6,k=3,pad=2,dilation=2",
    "h=13,w=5,ci=3,co=7,kh=3,kw=1,stride=1x2",
)
RESNET_LAYER1 = "h=56,ci=64,co=64,k=3,pad=1"
# Winograd: every tile size meets partial edge tiles; between them the layers cover no / symmetric /
# asymmetric / wide padding, odd sizes and channel counts, batch 2, a 1x1 output and a tile grid
# widened with zero tiles (58 -> 29 columns of F(2) -> 30).
WINOGRAD_LAYERS = (
    ("h=9,w=7,ci=5,co=6,k=3", (2, 4, 6)),
    ("h=10,ci=8,co=16,k=3,pad=1", (4,)),
    ("h=9,w=8,ci=4,co=8,k=3,pad=0x1x2x0", (2, 6)),
    ("n=2,h=8,w=6,ci=3,co=20,k=3,pad=1", (4, 6)),
    ("h=6,ci=4,co=4,k=3,pad=2", (2,)),
    ("h=3,ci=4,co=4,k=3", (6,)),  # one output pixel in one 6x6 tile
    ("h=5,w=58,ci=4,co=8,k=3,pad=1", (2,)),
)


def _winograd(m: int) -> Spec:
    return Spec(layers=tuple(layer for layer, tiles in WINOGRAD_LAYERS if m in tiles),
                random_layers=("n=2,h=12,w=17,ci=16,co=24,k=3,pad=0x1x2x0",), seeds=(1, 2),
                canonical=RESNET_LAYER1, layouts=("NHWC",))


# int8: exact (tolerance 0) against the integer reference; u8 and s8 data, int32 / requantized /
# dequantized outputs, CO below and across whole 8-channel vectors, odd CI (a half channel pair)
INT8_LAYERS = (
    "h=9,w=7,ci=5,co=6,k=3,dtype=int8",
    "h=10,ci=8,co=16,k=3,pad=1,dtype=int8",
    "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1,dtype=s8s8",
    "h=9,w=8,ci=4,co=24,k=3,pad=0x1x2x0,dtype=int8,out=uint8,scale=channel,bias=1,act=relu",
    "h=12,ci=6,co=6,k=3,pad=2,dilation=2,dtype=s8s8,out=int8",
    "n=2,h=7,ci=16,co=20,k=1,dtype=int8,out=float32,scale=channel,bias=1",
)

SPECS = {
    "direct": Spec(
        layers=COMMON + (
            "h=8,ci=8,co=12,k=3,pad=1,groups=4",
            "h=9,ci=16,co=16,k=3,stride=2,pad=1,groups=16",  # depthwise
            "h=7,ci=16,co=24,k=1",
        ),
        random_layers=("h=10,ci=8,co=16,k=3,pad=1", "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1,groups=2"),
        seeds=(1, 2, 3), canonical=RESNET_LAYER1),
    "im2col": Spec(
        layers=COMMON + (
            "h=8,w=6,ci=16,co=24,k=1",  # 1x1 stride 1: the input is the matrix, no copy
            "h=7,ci=16,co=24,k=1",  # NHWC: no copy; NCHW: 49 pixels padded to whole vectors by a copy
            "h=7,w=5,ci=16,co=20,k=1,stride=2",  # 1x1 strided: copied
            "h=6,ci=8,co=40,k=1,pad=1",  # 1x1 padded: copied
            "n=2,h=6,ci=4,co=16,k=3,pad=1",
        ),
        random_layers=("h=10,ci=8,co=32,k=3,pad=1", "h=11,w=13,ci=4,co=12,k=3,stride=2,pad=1", "h=8,ci=16,co=24,k=1"),
        seeds=(1, 2, 3), canonical=RESNET_LAYER1),
    "spatial-pack": Spec(
        layers=COMMON + (
            "h=10,ci=8,co=20,k=3,pad=1",  # channels that do not divide the vector
            "h=7,ci=16,co=24,k=1",
            "h=6,ci=80,co=16,k=3,pad=1",  # wide channel rows: the pack copies them in vector pieces
        ),
        random_layers=("h=10,ci=8,co=16,k=3,pad=1", "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1x0x2x1"),
        seeds=(1, 2, 3), canonical=RESNET_LAYER1),
    "indirect": Spec(
        layers=(
            "h=9,w=7,ci=5,co=6,k=3",  # CO below one vector
            "h=10,ci=8,co=16,k=3,pad=1",
            "h=11,w=13,ci=4,co=8,k=3,stride=2,pad=1",
            "h=8,ci=3,co=5,k=5,pad=2",
            "h=9,w=8,ci=4,co=24,k=3,pad=0x1x2x0",  # CO in blocks
            "h=12,ci=6,co=6,k=3,pad=2,dilation=2",
            "h=7,ci=16,co=20,k=1",  # 1x1: the table points at each pixel's own row
            "h=13,w=5,ci=3,co=7,kh=3,kw=1,stride=1x2,pad=1",
            "n=2,h=7,ci=8,co=32,k=3,stride=2,pad=1",  # a pixel tile may span two images
            "h=7,ci=32,co=64,k=3,pad=1",  # 7x7: the default 7-pixel micro-kernel
        ),
        random_layers=("h=10,ci=8,co=32,k=3,pad=1", "h=11,w=13,ci=12,co=24,k=3,stride=2,pad=0x1x1x2"),
        seeds=(1, 2, 3, 4), canonical=RESNET_LAYER1, layouts=("NHWC",)),
    "depthwise": Spec(
        layers=(
            "h=14,ci=32,co=32,k=3,pad=1,groups=32",  # MobileNet-v1 dw, stride 1
            "h=14,ci=32,co=32,k=3,stride=2,pad=1,groups=32",  # ... and stride 2
            "h=9,w=7,ci=6,co=12,k=3,groups=6",  # odd sizes, no padding, channel multiplier 2
            "h=11,w=10,ci=24,co=24,k=5,stride=2,pad=0x1x2x0,groups=24",  # asymmetric padding
            "h=12,ci=5,co=5,k=3,pad=2,dilation=2,groups=5",
            "n=2,h=8,w=9,ci=16,co=16,kh=3,kw=1,stride=1x2,pad=1,groups=16",
        ),
        random_layers=("h=14,ci=32,co=32,k=3,stride=2,pad=1,groups=32", "h=9,w=11,ci=8,co=16,k=3,pad=1,groups=8"),
        seeds=(1, 2, 3), canonical="h=112,ci=32,co=32,k=3,pad=1,groups=32"),
    "grouped": Spec(
        layers=(
            "h=8,ci=8,co=12,k=3,pad=1,groups=4",  # 2 in, 3 out per group: vectors of 1
            "h=9,w=7,ci=16,co=32,k=3,groups=4",  # 4 in, 8 out per group: one AVX2 vector
            "h=11,w=13,ci=12,co=48,k=3,stride=2,pad=0x1x2x1,groups=3",  # asymmetric padding, 16 out
            "h=12,ci=8,co=8,k=3,pad=2,dilation=2,groups=2",
            "n=2,h=7,ci=32,co=32,k=1,groups=8",  # batch 2, pointwise grouped
            "h=10,w=6,ci=24,co=12,k=5,stride=2,pad=2,groups=6",  # more inputs than outputs per group
        ),
        random_layers=("h=10,ci=32,co=64,k=3,pad=1,groups=4", "h=11,w=13,ci=12,co=24,k=3,stride=2,pad=1,groups=3"),
        seeds=(1, 2, 3), canonical="h=56,ci=128,co=128,k=3,pad=1,groups=32", layouts=("NHWC",)),
    **{f"winograd-f{m}": _winograd(m) for m in (2, 4, 6)},
    # int8: INT8_LAYERS
    "direct-int8": Spec(
        layers=INT8_LAYERS,
        random_layers=("h=10,ci=8,co=32,k=3,pad=1,dtype=int8",
                       "h=11,w=13,ci=12,co=24,k=3,stride=2,pad=0x1x1x2,dtype=s8s8,out=uint8,bias=1"),
        seeds=(1, 2, 3), canonical="h=56,ci=64,co=64,k=3,pad=1,dtype=int8", layouts=("NHWC",)),
    # im2col + GEMM int8: the VNNI member runs here without vpdpbusd (LLVM's vectorised products),
    # so its arithmetic (raw bytes, the zero point corrected per channel) is checked on any host
    **{name: Spec(
        layers=INT8_LAYERS,
        random_layers=("h=10,ci=8,co=32,k=3,pad=1,dtype=int8",
                       "h=11,w=13,ci=12,co=24,k=1,stride=2,dtype=s8s8,out=uint8,bias=1"),
        seeds=(1, 2, 3), canonical="h=28,ci=128,co=128,k=1,dtype=int8", layouts=("NHWC",))
       for name in ("im2col-int8", "im2col-int8-vnni")},
    "depthwise-int8": Spec(
        layers=(
            "h=9,w=7,ci=6,co=12,k=3,groups=6,dtype=int8",  # channel multiplier 2, no padding
            "h=14,ci=32,co=32,k=3,pad=1,groups=32,dtype=int8",  # MobileNet-v1 dw, stride 1
            "h=14,ci=32,co=32,k=3,stride=2,pad=1,groups=32,dtype=s8s8,out=int8,bias=1",
            "h=11,w=10,ci=24,co=24,k=5,stride=2,pad=0x1x2x0,groups=24,dtype=int8,out=uint8,scale=channel,act=relu6",
            "h=12,ci=5,co=5,k=3,pad=2,dilation=2,groups=5,dtype=s8s8,out=float32,scale=channel",
        ),
        random_layers=("h=14,ci=32,co=32,k=3,stride=2,pad=1,groups=32,dtype=int8,out=uint8,bias=1,act=relu",),
        seeds=(1, 2, 3), canonical="h=112,ci=32,co=32,k=3,pad=1,groups=32,dtype=int8", layouts=("NHWC",)),
}


def test_every_algorithm_has_a_spec():
    assert sorted(SPECS) == sorted(ALGORITHMS)


def test_knob_names_do_not_depend_on_the_machine():
    """Records must replay on any machine: the space's shape is the same everywhere."""
    for name, spec in SPECS.items():
        wl = parse_spec(spec.canonical)
        names = {kind: list(get_algorithm(name).default_config(wl, m)) for kind, m in MACHINES.items()}
        assert len({tuple(v) for v in names.values()}) == 1, (name, names)


def test_register_tiles_fit_the_machine():
    """The default accumulator tile of every machine kind fits its registers (no spills)."""
    for kind, machine in MACHINES.items():
        for rows_extent, vector_extent in ((56, 64), (14, 256), (7, 512), (3136, 64), (49, 1024), (9, 6)):
            rows, width = register_tile(machine, rows_extent, vector_extent)
            vectors = -(-width // machine.lanes)
            assert rows * vectors + vectors + 1 <= machine.registers, (kind, rows, width)
            assert rows_extent % rows == 0 and vector_extent % width == 0
    assert register_tile(MACHINES["avx512"], 56, 64) == (4, 64)  # 16 zmm accumulators
    assert register_tile(MACHINES["avx2"], 56, 64) == (4, 16)  # 8 ymm accumulators (7 x 16 would spill)
    assert register_tile(MACHINES["neon"], 56, 64) == (4, 16)


# AVX2 kernels run on any x86 host of the last decade: their default configs are checked against
# the reference here whatever this host's widest ISA is.
AVX2_TARGET = '{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}'
AVX2_CASES = [(name, spec.layers[1] if len(spec.layers) > 1 else spec.layers[0]) for name, spec in SPECS.items()]


@pytest.mark.parametrize("name,layer", AVX2_CASES)
def test_avx2_default_config_matches_reference(name, layer):
    from tuning.target import resolve_target

    check_algorithm(name, layer, target=resolve_target(AVX2_TARGET, 2))


DEFAULT_CASES = [(name, layer, layout) for name, spec in SPECS.items() for layer in spec.layers
                 for layout in spec.layouts]
RANDOM_CASES = [(name, layout, seed) for name, spec in SPECS.items() for layout in spec.layouts for seed in spec.seeds]


@pytest.mark.parametrize("name,layer,layout", DEFAULT_CASES)
def test_default_config_matches_reference(name, layer, layout):
    check_algorithm(name, parse_spec(layer, layout=layout))


@pytest.mark.parametrize("name,layout,seed", RANDOM_CASES)
def test_random_configs_match_reference(name, layout, seed):
    for layer in SPECS[name].random_layers:
        check_algorithm(name, parse_spec(layer, layout=layout), config="random", seed=seed)


# -- golden design spaces ----------------------------------------------------------------------------
GOLDEN = Path(__file__).parent / "golden" / "algorithms.json"
REGENERATE = os.environ.get("CONVTUNE_REGENERATE_GOLDEN") == "1"


# One machine of each kind, described from its target alone (table caches, fixed threads), so
# the golden file is the same on whichever CPU the tests run.
MACHINES = {
    "avx512": Machine.from_target({"kind": "llvm", "mcpu": "znver4"}, 2, host=False),
    "avx2": Machine.from_target({"kind": "llvm", "mcpu": "haswell"}, 2, host=False),
    "neon": Machine.from_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
                                 "mcpu": "cortex-a72"}, 4, host=False),
}


def design(name: str, layout: str, kind: str) -> dict:
    """What pins an algorithm's space on its canonical layer for one machine kind: knob names,
    default config, and the structural hash of the function scheduled at that default config."""
    algorithm, machine = get_algorithm(name), MACHINES[kind]
    wl = parse_spec(SPECS[name].canonical, layout=layout)
    config = algorithm.default_config(wl, machine)
    scheduled = algorithm.apply(algorithm.functions(wl)[algorithm.run_function].func, wl, config, machine).mod
    return {"layer": wl.spec, "knobs": list(config), "default_config": config,
            "structural_hash": str(tvm_ffi.structural_hash(scheduled))}


GOLDEN_CASES = [(name, layout, kind) for name, spec in SPECS.items() for layout in spec.layouts for kind in MACHINES]


@pytest.fixture(scope="module")
def golden():
    if REGENERATE:
        found = {f"{name}/{layout}/{kind}": design(name, layout, kind) for name, layout, kind in GOLDEN_CASES}
        lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in sorted(found.items())]
        GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one line per design: readable diffs
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name,layout,kind", GOLDEN_CASES)
def test_golden_design(golden, name, layout, kind):
    """The space the search explores and the untuned kernel; a change here must be deliberate
    (regenerate, then read the diff: knob names change replayability of every record)."""
    expected = golden[f"{name}/{layout}/{kind}"]
    found = design(name, layout, kind)
    assert found["knobs"] == expected["knobs"]
    assert found["default_config"] == expected["default_config"]
    assert found["structural_hash"] == expected["structural_hash"], "the scheduled default kernel changed"
