"""im2col-int8 and im2col-int8-vnni (schedules/im2col_int8.py): their own math (phases, packed
shapes, the copy skipped, the zero-point correction), bit-identical int32 and ONNX-exact requantized
results against the exact integer reference on shapes beyond tests/test_int8.py's, ONNX Runtime's
QLinearConv on the same integers, the untuned rule, and the instructions each builds to.

(tests/test_int8.py runs both members over its layers, saturation and rounding cases too; their
default and random configs are in tests/test_algorithms.py's table, the designs in its golden file.)
The VNNI member runs here without vpdpbusd (LLVM vectorises its products), so its arithmetic, the
correction included, is checked on any host; its vpdpbusd code is built, not run.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from schedules import get_algorithm
from schedules.im2col_int8 import PMADDWD, VNNI, col_bytes, has_vnni, register_tile
from schedules.machine import Machine
from schedules.reference import conv2d_reference, epilogue_inputs, int_conv_reference, random_inputs
from schedules.workload import parse_spec
from tuning.deploy.library import Choice, in_memory_kernel, untuned_algorithm
from tuning.task import Task

from .support.checks import check_algorithm, host_target

MEMBERS = ["im2col-int8", "im2col-int8-vnni"]
ZEN2 = Machine.from_target({"kind": "llvm", "mcpu": "znver2"}, 2, host=False)
SPR = Machine.from_target({"kind": "llvm", "mcpu": "sapphirerapids"}, 2, host=False)


def test_phases_and_packed_shapes():
    """Weights packed once into the groups the instruction reads: int16 pairs x 8 lanes (vpmaddwd),
    int8 quads x 16 lanes (vpdpbusd) plus the per-channel weight sums; K padded per tap."""
    wl = parse_spec("h=8,ci=5,co=20,k=3,pad=1,dtype=int8")
    pair = get_algorithm("im2col-int8").functions(wl)
    quad = get_algorithm("im2col-int8-vnni").functions(wl)
    assert list(pair) == list(quad) == ["conv2d", "pack_weight", "conv2d_packed"]
    assert [(a.name, a.shape, a.dtype) for a in pair["pack_weight"].args] == [
        ("weight", (3, 3, 5, 20), "int8"), ("packed", (3, 9 * 3, 8, 2), "int16")]
    assert [(a.name, a.shape, a.dtype) for a in quad["pack_weight"].args] == [
        ("weight", (3, 3, 5, 20), "int8"), ("packed", (2, 9 * 2, 16, 4), "int8"), ("wsum", (32,), "int32")]
    assert [a.name for a in pair["conv2d_packed"].args] == ["data", "packed", "x_zero_point", "col", "out"]
    assert [a.name for a in quad["conv2d_packed"].args] == ["data", "packed", "wsum", "x_zero_point", "col", "out"]
    assert [a.dtype for a in quad["conv2d_packed"].args][-2] == "uint8"


def test_a_u8_pointwise_layer_is_read_in_place_by_the_vnni_member():
    """1x1, stride 1, unpadded, CI % 4 == 0, uint8 data: the NHWC input is the GEMM's matrix."""
    for spec, pair_bytes, quad_bytes in (
            ("h=14,ci=64,co=32,k=1,dtype=int8", 14 * 14 * 64 * 2, 0),
            ("h=14,ci=64,co=32,k=1,dtype=s8s8", 14 * 14 * 64 * 2, 14 * 14 * 64),  # s8: shifted by 128, copied
            ("h=14,ci=6,co=32,k=1,dtype=int8", 14 * 14 * 6 * 2, 14 * 14 * 8),  # 6 -> two quads
            ("h=14,ci=64,co=32,k=1,stride=2,dtype=int8", 7 * 7 * 64 * 2, 7 * 7 * 64),
            ("h=14,ci=64,co=32,k=3,pad=1,dtype=int8", 14 * 14 * 9 * 64 * 2, 14 * 14 * 9 * 64)):
        wl = parse_spec(spec)
        assert (col_bytes(wl, PMADDWD), col_bytes(wl, VNNI)) == (pair_bytes, quad_bytes), spec
        args = [a.name for a in get_algorithm("im2col-int8-vnni").functions(wl)["conv2d_packed"].args]
        assert ("col" in args) == (quad_bytes > 0)


def test_register_tiles_fit_the_registers():
    """vpmaddwd: R*V + V + 2 <= 16 ymm; vpdpbusd accumulates in place: R*V + V + 1 <= 32 zmm."""
    assert register_tile(PMADDWD, ZEN2, 3136, 8) == (4, 2)  # 6 does not divide 56*56: 8 accumulators
    assert register_tile(PMADDWD, ZEN2, 14 * 14 * 3, 8) == (6, 2)
    assert register_tile(VNNI, SPR, 3136, 4) == (4, 4)  # 16 zmm accumulators (8 x 4 would need 37)
    for pixels in (49, 196, 784, 3136, 169):
        for vectors in (1, 2, 4, 8, 32):
            r, v = register_tile(PMADDWD, ZEN2, pixels, vectors)
            assert r * v + v + 2 <= 16 and pixels % r == 0 and vectors % v == 0
            r, v = register_tile(VNNI, SPR, pixels, vectors)
            assert r * v + v + 1 <= 32 and pixels % r == 0 and vectors % v == 0


# -- exact against the reference ------------------------------------------------------------------------
LAYERS = [
    "h=9,w=7,ci=5,co=6,k=3,dtype=int8",  # odd CI: a half pair, 5 of a quad's 8
    "h=13,w=11,ci=7,co=33,k=1,dtype=int8",  # 1x1 odd sizes, CO past two 16-lane panels
    "n=2,h=8,w=6,ci=16,co=16,k=1,dtype=int8",  # 1x1 in place (VNNI), batch 2
    "h=9,ci=12,co=8,k=1,stride=2,dtype=s8s8",  # strided 1x1
    "n=2,h=10,w=9,ci=8,co=24,k=3,pad=1,dtype=s8s8",
    "h=11,w=13,ci=4,co=16,k=3,stride=2,pad=0x1x2x0,dtype=int8",  # asymmetric padding, strided
    "h=12,ci=6,co=10,k=3,pad=2,dilation=2,dtype=s8s8",  # dilation
    "h=10,w=7,ci=3,co=12,kh=5,kw=3,stride=2x1,pad=2x1,dtype=int8",  # a stem: CI = 3
]


@pytest.mark.parametrize("algorithm", MEMBERS)
@pytest.mark.parametrize("layer", LAYERS)
def test_int32_sums_are_bit_identical(algorithm, layer):
    """The bare int32 accumulator (what ConvInteger returns), at random zero points."""
    checks = check_algorithm(algorithm, layer)
    assert all(c.max_error == 0.0 and c.tolerance == 0.0 for c in checks)


REQUANTIZED = [
    "h=13,w=11,ci=7,co=33,k=1,dtype=int8,out=uint8,bias=1",  # per tensor
    "n=2,h=8,w=6,ci=16,co=16,k=1,dtype=int8,out=uint8,scale=channel,bias=1,act=relu",
    "h=9,ci=12,co=8,k=1,stride=2,dtype=s8s8,out=int8,scale=channel,bias=1",
    "n=2,h=10,w=9,ci=8,co=24,k=3,pad=1,dtype=s8s8,out=int8,bias=1,act=relu6",
    "h=11,w=13,ci=4,co=16,k=3,stride=2,pad=0x1x2x0,dtype=int8,out=uint8,scale=channel",
    "h=12,ci=6,co=10,k=3,pad=2,dilation=2,dtype=s8s8,out=float32,scale=channel,bias=1",
]


@pytest.mark.parametrize("algorithm", MEMBERS)
@pytest.mark.parametrize("layer", REQUANTIZED)
def test_requantized_outputs_are_onnx_exact(algorithm, layer):
    """Requantized as QuantizeLinear (the reference's): tolerance 0, per tensor and per channel."""
    assert all(c.max_error == 0.0 for c in check_algorithm(algorithm, layer))


def _run_packed(wl, algorithm, data, weight, extra):
    kernel = in_memory_kernel(Choice(Task(wl, algorithm), None, None), host_target())
    tensors = kernel.tensors(data, weight, extra)
    kernel.prepare(tensors)
    kernel.call(kernel.run_function, tensors)
    return tensors["out"].numpy()


@pytest.mark.parametrize("algorithm", MEMBERS)
@pytest.mark.parametrize("dtype,zero_points", [("int8", (0, 128, 255)), ("s8s8", (-128, 0, 127))])
def test_extreme_zero_points_and_full_range_data(algorithm, dtype, zero_points):
    """Every zero point at both ends of its type (the VNNI correction zp' * sum w at its largest,
    s8 data shifted to 0..255), full-range data and weights, padding in every tap."""
    wl = parse_spec(f"h=7,w=6,ci=9,co=20,k=3,pad=1,stride=1,dtype={dtype}")
    rng = np.random.default_rng(3)
    info = np.iinfo(wl.data_dtype)
    data = rng.integers(info.min, info.max + 1, wl.data_shape).astype(wl.data_dtype)
    weight = rng.choice(np.array([-128, -127, 0, 126, 127], np.int8), wl.weight_shape)
    for zp in zero_points:
        extra = {"x_zero_point": np.array([zp], wl.data_dtype)}
        expected = int_conv_reference(wl, data, weight, zp).astype(np.int32)
        np.testing.assert_array_equal(_run_packed(wl, algorithm, data, weight, extra), expected)


@pytest.mark.parametrize("algorithm", MEMBERS)
@pytest.mark.parametrize("spec, weight_bits", [
    ("h=9,w=11,ci=16,co=24,k=3,pad=1,stride=2,dtype=s8s8,out=int8,scale=channel,bias=1", 8),
    ("h=9,w=9,ci=16,co=24,k=1,dtype=s8s8,out=int8,bias=1", 8),
    ("h=9,w=9,ci=16,co=24,k=1,dtype=int8,out=int32", 8),  # ConvInteger
    # MLAS's AVX2 U8S8 kernel saturates int16 pair sums (vpmaddubsw): 7-bit weights for it
    ("h=10,w=9,ci=32,co=16,k=1,dtype=int8,out=uint8,scale=channel,bias=1", 7),
])
def test_same_as_onnxruntime(algorithm, spec, weight_bits):
    """The kernel's output is ONNX Runtime's QLinearConv / ConvInteger output on the same integers."""
    pytest.importorskip("onnxruntime")
    from tuning.bench import onnxruntime_int8_call

    wl = parse_spec(spec)
    data, weight = random_inputs(wl)
    weight = (weight.astype(np.int16) >> (8 - weight_bits)).astype(np.int8)
    theirs = onnxruntime_int8_call(wl, data, weight, 1)["onnxruntime"]()[0].transpose(0, 2, 3, 1)
    extra = epilogue_inputs(wl)
    ours = _run_packed(wl, algorithm, data, weight, extra)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, conv2d_reference(wl, data, weight, **extra))


# -- where the pipeline uses them ----------------------------------------------------------------------
def test_untuned_rule_for_int8_layers():
    avx2 = ZEN2
    pointwise = parse_spec("h=28,ci=128,co=256,k=1,dtype=int8,out=uint8")
    strided = parse_spec("h=28,ci=128,co=256,k=1,stride=2,dtype=s8s8")
    three = parse_spec("h=28,ci=128,co=128,k=3,pad=1,dtype=int8,out=uint8")
    dw = parse_spec("h=28,ci=128,co=128,k=3,pad=1,groups=128,dtype=int8")
    assert [untuned_algorithm(wl, avx2) for wl in (pointwise, strided, three, dw)] == [
        "im2col-int8", "im2col-int8", "direct-int8", "depthwise-int8"]
    assert [untuned_algorithm(wl, SPR) for wl in (pointwise, strided, three, dw)] == [
        "im2col-int8-vnni", "im2col-int8-vnni", "im2col-int8-vnni", "depthwise-int8"]
    assert has_vnni(ZEN2) is None and has_vnni(SPR) == "avx512"
    assert get_algorithm("im2col-int8-vnni").suits(SPR) and not get_algorithm("im2col-int8-vnni").suits(ZEN2)
    assert get_algorithm("im2col-int8").suits(ZEN2)


def test_records_are_keyed_apart_from_float32(tmp_path):
    from tuning.records import layer_directory
    from tuning.target import resolve_target

    target = resolve_target("x86")
    base = "h=14,ci=32,co=64,k=1"
    assert layer_directory(str(tmp_path), target, parse_spec(base)) != \
        layer_directory(str(tmp_path), target, parse_spec(f"{base},dtype=int8"))
    assert get_algorithm("im2col").supports(parse_spec(f"{base},dtype=int8")) is not None
    assert get_algorithm("im2col-int8").supports(parse_spec(base)) is not None


@pytest.mark.parametrize("spec", ["h=8,ci=8,co=12,k=3,pad=1,groups=4,dtype=int8",
                                  "h=9,ci=16,co=16,k=3,pad=1,groups=16,dtype=int8"])
def test_groups_are_refused(spec):
    for name in MEMBERS:
        reason = get_algorithm(name).supports(parse_spec(spec))
        assert reason is not None and reason.startswith(f"{name}: ") and "only groups=1" in reason


# -- the instructions -----------------------------------------------------------------------------------
def _asm(algorithm: str, target: dict, spec: str) -> str:
    import json

    from tuning.deploy.library import build
    from tuning.target import resolve_target

    tgt = resolve_target(json.dumps(target), 2)
    return build(Choice(Task(parse_spec(spec), algorithm, tgt.machine), None, None), tgt).mod.inspect_source("asm")


@pytest.mark.parametrize("spec", ["h=14,ci=32,co=32,k=3,pad=1,dtype=int8,out=uint8,bias=1",
                                  "h=14,ci=64,co=64,k=1,dtype=s8s8"])
def test_avx2_builds_to_vpmaddwd(spec):
    """This host's CPU (Zen 2: AVX2, no VNNI): vpbroadcastd + vpmaddwd + vpaddd, no vpmaddubsw."""
    asm = _asm("im2col-int8", {"kind": "llvm", "mcpu": "znver2"}, spec)
    assert len(re.findall(r"\bvpmaddwd\s+\S+, %ymm", asm)) >= 8
    assert "vpmaddubsw" not in asm
    # the run function's copy and write-back are vector loads and stores, not element gathers and
    # byte scatters (what a division of the lane index or a 16-channel write-back loop gave)
    run = asm[asm.index("conv2d_packed_compute_:"):]
    run = run[:re.search(r"\n[A-Za-z_][\w.]*:\n", run[1:]).start() + 1]
    assert "vpmaddwd" in run and not re.search(r"vpinsr[bdw]|vpextr[bdw]", run)


@pytest.mark.parametrize("mcpu,encoding", [
    ("sapphirerapids", r"\bvpdpbusd\s+\S+, %zmm"),  # AVX512-VNNI
    ("znver4", r"\bvpdpbusd\s+\S+, %zmm"),
    ("alderlake", r"\{vex\}\s*vpdpbusd\s+\S+, %ymm"),  # AVX-VNNI: 16 lanes as two ymm steps
])
@pytest.mark.parametrize("spec", ["h=14,ci=32,co=64,k=3,pad=1,dtype=int8,out=uint8,bias=1",
                                  "h=14,ci=64,co=64,k=1,dtype=s8s8,out=int8,scale=channel"])
def test_vnni_builds_to_vpdpbusd(mcpu, encoding, spec):
    """Built, not run (no VNNI here): the tensorized step is vpdpbusd, and no vpmaddubsw."""
    asm = _asm("im2col-int8-vnni", {"kind": "llvm", "mcpu": mcpu}, spec)
    assert len(re.findall(encoding, asm)) >= 8, asm[:2000]
    assert "vpmaddubsw" not in asm and "vpmaddwd" not in asm
