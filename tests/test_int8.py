"""int8 convolution layers (schedules/direct_int8.py, depthwise_int8.py, int8_intrinsics.py): the
workload's dtype and quantized epilogue, the exact integer reference, and every int8 kernel against it
with tolerance 0.

The reference is checked against hand-computed values and ONNX's definitions first (so that a wrong
reference cannot make a wrong kernel pass); then the kernels over odd sizes, strides, asymmetric
padding, dilation, batch 2, non-zero data zero points, u8 and s8 data, int32 / requantized /
dequantized outputs, per-tensor and per-channel scales, relu and relu6 folded into the saturation,
and inputs where the saturation is hit at both ends.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from schedules import ALGORITHMS, get_algorithm
from schedules.reference import (
    conv2d_reference,
    epilogue_inputs,
    int_conv_reference,
    random_inputs,
    requantize,
    saturation_bounds,
)
from schedules.template import Unsupported
from schedules.workload import Workload, WorkloadError, parse_spec
from tuning.deploy.library import Choice, in_memory_kernel, untuned_algorithm
from tuning.deploy.verify import verify
from tuning.records import layer_directory
from tuning.task import Task, tasks_for

from .support.checks import check_algorithm

INT8_ALGORITHMS = [name for name, a in ALGORITHMS.items() if set(a.dtypes) & {"int8", "s8s8"}]


# -- workload: spec, keys, refusals --------------------------------------------------------------------
def test_dtype_parses_and_round_trips():
    wl = parse_spec("h=14,ci=32,co=32,k=3,pad=1,dtype=int8,out=u8,scale=channel,bias=1,act=relu")
    assert (wl.dtype, wl.data_dtype, wl.weight_dtype, wl.out_dtype) == ("int8", "uint8", "int8", "uint8")
    assert wl.spec == "h=14,w=14,ci=32,co=32,k=3,pad=1,dtype=int8,out=uint8,scale=channel,bias=1,act=relu"
    assert parse_spec(wl.spec) == wl
    assert Workload.from_dict(wl.to_dict()) == wl
    s8 = parse_spec("h=4,ci=2,co=2,k=1,dtype=s8s8")
    assert (s8.data_dtype, s8.out_dtype) == ("int8", "int32")
    assert parse_spec("h=4,ci=2,co=2,k=1,dtype=u8s8").dtype == "int8"  # ONNX Runtime's name for it


def test_float32_workloads_are_what_they_were():
    """Keys, specs and dicts of float32 layers name records and sidecars already on disk."""
    wl = parse_spec("h=56,ci=64,co=64,k=3,pad=1,bias=1,act=relu")
    assert wl.key == "NHWC_n1_h56_w56_ci64_co64_k3x3_s1x1_p1.1.1.1_d1x1_g1_eb.relu"
    assert wl.spec == "h=56,w=56,ci=64,co=64,k=3,pad=1,bias=1,act=relu"
    assert list(wl.to_dict()) == ["n", "h", "w", "ci", "co", "kh", "kw", "stride", "pad", "dilation", "groups",
                                  "layout", "dtype", "epilogue"]
    assert parse_spec("h=56,ci=64,co=64,k=3,pad=1,dtype=float32") == parse_spec("h=56,ci=64,co=64,k=3,pad=1")


def test_records_of_int8_layers_live_apart(tmp_path):
    from tuning.target import resolve_target

    target = resolve_target("x86")
    base = "h=14,ci=32,co=32,k=3,pad=1"
    layers = [base, f"{base},dtype=int8", f"{base},dtype=s8s8", f"{base},dtype=int8,out=uint8",
              f"{base},dtype=int8,out=uint8,scale=channel", f"{base},dtype=int8,out=float32"]
    dirs = {layer_directory(str(tmp_path), target, parse_spec(s)) for s in layers}
    assert len(dirs) == len(layers)
    assert parse_spec(f"{base},dtype=int8").key.endswith("_g1_int8")
    # the bare int8 conv (int32 out, no bias) seeds a requantized one: same template, same knobs
    fused = parse_spec(f"{base},dtype=int8,out=uint8,scale=channel,bias=1,act=relu")
    assert fused.bare == parse_spec(f"{base},dtype=int8")
    alg = get_algorithm("direct-int8")
    assert alg.knob_names(fused) == alg.knob_names(fused.bare)


@pytest.mark.parametrize("spec,field", [
    ("dtype=int4", "dtype"), ("dtype=float8", "dtype"), ("dtype=fp16", "dtype"), ("dtype=float16", "dtype"),
    ("dtype=bfloat16", "dtype"), ("out=uint8", "out"), ("dtype=float32,scale=channel", "scale"),
    ("dtype=int8,out=uint4", "out"), ("dtype=int8,out=uint8,scale=row", "scale"),
    ("dtype=int8,scale=channel", "scale"), ("dtype=int8,residual=1", "residual"),
    ("dtype=int8,act=relu6", "act"),
])
def test_bad_dtypes_and_quant_fields_are_refused_in_one_line(spec, field):
    with pytest.raises(WorkloadError) as err:
        parse_spec(f"h=8,ci=4,co=8,k=3,{spec}")
    assert err.value.field == field
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,value,why", [
    ("scale", np.ones(3, np.float32), "shape"),  # per-channel wants co=8
    ("scale", np.ones((8, 1), np.float32), "shape"),
    ("scale", np.full(8, -1.0, np.float32), "positive"),
    ("scale", np.full(8, np.nan, np.float32), "positive"),
    ("x_zero_point", np.array([1, 2], np.uint8), "shape"),
    ("x_zero_point", np.array([300]), "uint8"),
    ("y_zero_point", np.zeros((1, 1), np.uint8), "shape"),
    ("bias", np.zeros(4, np.int32), "shape"),
])
def test_quant_inputs_of_the_wrong_shape_are_refused_in_one_line(name, value, why):
    wl = parse_spec("h=6,ci=4,co=8,k=3,dtype=int8,out=uint8,scale=channel,bias=1")
    good = epilogue_inputs(wl)
    wl.check_quant_inputs(good)
    data, weight = random_inputs(wl)
    with pytest.raises(WorkloadError) as err:
        conv2d_reference(wl, data, weight, **{**good, name: value})
    assert err.value.field == name and why in str(err.value) and "\n" not in str(err.value)
    per_tensor = parse_spec("h=6,ci=4,co=8,k=3,dtype=int8,out=uint8")
    with pytest.raises(WorkloadError, match=r"scale: must have shape \(1,\)"):
        per_tensor.check_quant_inputs({**epilogue_inputs(per_tensor), "scale": np.ones(8, np.float32)})


def test_float32_templates_refuse_int8_layers():
    from schedules.machine import Machine

    wl = parse_spec("h=14,ci=32,co=32,k=3,pad=1,dtype=int8")
    for name, alg in ALGORITHMS.items():
        reason = alg.supports(wl)
        assert (reason is None) == (name in ("direct-int8", "im2col-int8", "im2col-int8-vnni")), (name, reason)
    dw = parse_spec("h=14,ci=32,co=32,k=3,pad=1,groups=32,dtype=int8")
    assert [a.name for a in ALGORITHMS.values() if a.supports(dw) is None] == ["depthwise-int8"]
    assert untuned_algorithm(dw) == "depthwise-int8"  # MobileNet's depthwise layers run int8 too
    with pytest.raises(Unsupported, match="dtype int8 not supported"):
        Task(wl, "direct")
    # auto: the VNNI member only where vpdpbusd exists
    avx2 = Machine.from_target({"kind": "llvm", "mcpu": "znver2"}, 2, host=False)
    vnni = Machine.from_target({"kind": "llvm", "mcpu": "sapphirerapids"}, 2, host=False)
    assert [t.algorithm for t in tasks_for(wl, "auto", avx2)] == ["direct-int8", "im2col-int8"]
    assert [t.algorithm for t in tasks_for(wl, "auto", vnni)] == ["direct-int8", "im2col-int8", "im2col-int8-vnni"]
    assert untuned_algorithm(wl) in INT8_ALGORITHMS
    with pytest.raises(Unsupported, match="dtype float32 not supported"):
        Task(parse_spec("h=14,ci=32,co=32,k=3,pad=1"), "direct-int8")


# -- the reference against hand-computed values and ONNX's definitions ---------------------------------
def test_reference_conv_is_exact_and_pads_with_the_zero_point():
    """1x1 input, 3x3 kernel, pad 1: only the centre tap sees data; the 8 padded taps are the zero point,
    so they contribute (zp - zp) * w = 0. Full-range values: 255 * 127 * 2 overflows int16, not int32."""
    wl = parse_spec("h=1,ci=2,co=1,k=3,pad=1,dtype=int8")
    data = np.array([255, 255], np.uint8).reshape(1, 1, 1, 2)
    weight = np.full((3, 3, 2, 1), 127, np.int8)
    acc = int_conv_reference(wl, data, weight, 3)
    assert acc.reshape(-1).tolist() == [(255 - 3) * 127 * 2]
    out = conv2d_reference(wl, data, weight, x_zero_point=np.array([3], np.uint8))
    assert out.dtype == np.int32 and out.reshape(-1).tolist() == [64008]


def test_reference_overflowing_int32_is_refused():
    wl = parse_spec("h=1,ci=1,co=1,k=1,dtype=s8s8,bias=1")
    with pytest.raises(OverflowError):
        conv2d_reference(wl, np.array([-128], np.int8).reshape(1, 1, 1, 1), np.array([-128], np.int8).reshape(1, 1, 1, 1),
                         x_zero_point=np.array([0], np.int8), bias=np.array([2**31 - 1], np.int64))


def test_requantize_follows_quantize_linear():
    """ONNX QuantizeLinear: round half to even, add the zero point, saturate."""
    acc = np.array([5, 15, 25, -5, -15, 1000, -1000, 0])
    got = requantize(acc, np.float32(0.1), 10, 0, 255)
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, -1.5 -> -2 (half to even), then + 10, saturated
    assert got.tolist() == [10, 12, 12, 10, 8, 110, 0, 10]
    assert requantize(np.array([2000, -2000]), np.float32(0.1), -3, -128, 127).tolist() == [127, -128]


def test_relu_and_relu6_fold_into_the_saturation():
    relu = parse_spec("h=4,ci=2,co=2,k=1,dtype=int8,out=uint8,act=relu")
    assert saturation_bounds(relu, 7, None) == (7, 255)
    relu6 = parse_spec("h=4,ci=2,co=2,k=1,dtype=int8,out=int8,act=relu6")
    assert saturation_bounds(relu6, -5, np.float32(6 / 100)) == (-5, 95)  # 0 -> zp, 6 -> zp + 100
    # clipping the real value then quantizing == quantizing then clamping to the folded bounds
    rng = np.random.default_rng(0)
    acc = rng.integers(-4000, 4000, 1000)
    m, ys, zp = np.float32(0.0123), np.float32(6 / 100), -5
    real = acc.astype(np.float32) * m * ys  # the dequantized output
    direct = np.clip(np.rint(np.clip(real, 0, 6) / ys) + zp, -128, 127)
    folded = requantize(acc, m, zp, *saturation_bounds(relu6, zp, ys))
    assert np.abs(direct - folded).max() <= 1  # the same up to the float32 rounding of real / ys
    assert (direct == folded).mean() > 0.99


# -- kernels against the reference (tolerance 0) -------------------------------------------------------
LAYERS = [
    "h=9,w=7,ci=5,co=6,k=3,dtype=int8",  # odd CI (half a pair), CO below one vector, no padding
    "n=2,h=10,w=9,ci=8,co=20,k=3,pad=1,dtype=int8",  # batch 2, CO across a partial vector
    "h=11,w=13,ci=4,co=16,k=3,stride=2,pad=1,dtype=s8s8",  # signed data
    "h=9,w=8,ci=6,co=24,k=3,pad=0x1x2x0,dtype=int8,out=int32,bias=1,act=relu",  # asymmetric padding
    "h=12,ci=6,co=8,k=3,pad=2,dilation=2,dtype=s8s8,out=int8,bias=1",  # dilation, per-tensor requantize
    "h=13,w=5,ci=3,co=7,kh=3,kw=1,stride=1x2,pad=1,dtype=int8,out=uint8,scale=channel,act=relu",
    "h=8,ci=16,co=16,k=3,pad=1,dtype=s8s8,out=int8,scale=channel,bias=1,act=relu6",
    "n=2,h=7,ci=16,co=24,k=1,dtype=int8,out=float32,scale=channel,bias=1",  # pointwise, dequantized
    "h=7,ci=10,co=8,k=1,stride=2,dtype=s8s8,out=float32,act=relu",
    # depthwise (MobileNet's): stride 1 and 2, channel multiplier 2, batch 2, requantized
    "n=2,h=9,w=8,ci=16,co=16,k=3,pad=1,groups=16,dtype=int8,out=uint8,scale=channel,bias=1,act=relu6",
    "h=11,w=7,ci=8,co=16,k=3,stride=2,pad=0x1x1x0,groups=8,dtype=s8s8,out=int8,act=relu",
]


@pytest.mark.parametrize("algorithm", INT8_ALGORITHMS)
@pytest.mark.parametrize("layer", LAYERS)
def test_int8_kernels_are_exact(algorithm, layer):
    wl = parse_spec(layer)
    if get_algorithm(algorithm).supports(wl) is not None:
        pytest.skip(get_algorithm(algorithm).supports(wl))
    checks = check_algorithm(algorithm, wl)
    assert all(c.max_error == 0.0 for c in checks)


@pytest.mark.parametrize("algorithm", INT8_ALGORITHMS)
@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_int8_random_configs_are_exact(algorithm, seed):  # the fast loop: one seed
    for layer in ("h=10,ci=8,co=32,k=3,pad=1,dtype=int8,out=uint8,scale=channel,bias=1",
                  "n=2,h=9,w=11,ci=12,co=16,k=3,stride=2,pad=1x0x2x1,dtype=s8s8"):
        check_algorithm(algorithm, _fit(algorithm, layer), config="random", seed=seed)


def _fit(algorithm: str, layer: str) -> str:
    """The layer as the algorithm takes it: depthwise templates get its depthwise twin (groups = ci = co)."""
    if not algorithm.startswith("depthwise"):
        return layer
    wl = parse_spec(layer)
    return parse_spec(layer).spec.replace(f"co={wl.co}", f"co={wl.ci}").replace(
        "dtype=", f"groups={wl.ci},dtype=")


def _run(wl, algorithm, data, weight, extra):
    from .support.checks import host_target

    kernel = in_memory_kernel(Choice(Task(wl, algorithm), None, None), host_target())
    outs = []
    for function in ("conv2d", kernel.run_function):
        tensors = kernel.tensors(data, weight, extra)
        if function != "conv2d":
            kernel.prepare(tensors)
        kernel.call(function, tensors)
        outs.append(tensors["out"].numpy())
    return outs


@pytest.mark.parametrize("algorithm", INT8_ALGORITHMS)
def test_saturation_is_hit_and_exact(algorithm):
    """Extreme inputs: every data value 255 or 0, weights -128 or 127, a zero point of 0, so pair sums
    reach 255 * -128 * 2 (what vpmaddubsw would saturate) and the requantized outputs pile up at both
    ends of uint8; a kernel that saturates an intermediate, or rounds half away from zero, differs."""
    wl = parse_spec(_fit(algorithm, "h=6,w=5,ci=16,co=16,k=3,pad=1,dtype=int8,out=uint8,scale=channel,bias=1"))
    rng = np.random.default_rng(5)
    data = rng.choice(np.array([0, 255], np.uint8), wl.data_shape)
    weight = rng.choice(np.array([-128, 127], np.int8), wl.weight_shape)
    extra = epilogue_inputs(wl)
    extra["x_zero_point"] = np.array([0], np.uint8)
    expected = conv2d_reference(wl, data, weight, **extra)
    assert (expected == 0).mean() > 0.1 and (expected == 255).mean() > 0.1
    for got in _run(wl, algorithm, data, weight, extra):
        np.testing.assert_array_equal(got, expected)
    # ... and without requantizing, the int32 sums themselves, past any 16-bit range
    bare = wl.bare
    acc = conv2d_reference(bare, data, weight, x_zero_point=extra["x_zero_point"])
    assert np.abs(acc).max() > (2**16 if wl.groups == 1 else 2**15)
    for got in _run(bare, algorithm, data, weight, {"x_zero_point": extra["x_zero_point"]}):
        np.testing.assert_array_equal(got, acc)


@pytest.mark.parametrize("algorithm", INT8_ALGORITHMS)
def test_ties_round_half_to_even(algorithm):
    """A 1x1 conv of one channel with weight 1 and scale 0.5: acc/2 lands on .5 for every odd acc."""
    wl = parse_spec(_fit(algorithm, "h=4,w=8,ci=1,co=1,k=1,dtype=s8s8,out=int8")
                    if not algorithm.startswith("depthwise") else "h=4,w=8,ci=2,co=2,k=1,groups=2,dtype=s8s8,out=int8")
    data = np.repeat(np.arange(-16, 16, dtype=np.int8), wl.ci).reshape(wl.data_shape)
    weight = np.ones(wl.weight_shape, np.int8)
    extra = {"x_zero_point": np.array([0], np.int8), "scale": np.array([0.5], np.float32),
             "y_zero_point": np.array([0], np.int8)}
    expected = conv2d_reference(wl, data, weight, **extra)
    assert expected.reshape(-1)[16 * wl.co:20 * wl.co:wl.co].tolist() == [0, 0, 1, 2]  # 0, .5, 1, 1.5 -> 0, 0, 1, 2
    for got in _run(wl, algorithm, data, weight, extra):
        np.testing.assert_array_equal(got, expected)


def test_the_check_can_fail():
    """A kernel fed another zero point than the reference's: verify reports the mismatch."""
    from .support.checks import host_target

    wl = parse_spec("h=6,ci=4,co=8,k=3,pad=1,dtype=int8")
    kernel = in_memory_kernel(Choice(Task(wl, "direct-int8"), None, None), host_target())
    data, weight = random_inputs(wl)
    extra = epilogue_inputs(wl)
    tensors = kernel.tensors(data, weight, {"x_zero_point": extra["x_zero_point"] + 1})
    kernel.call("conv2d", tensors)
    assert not np.array_equal(tensors["out"].numpy(), conv2d_reference(wl, data, weight, **extra))
    assert all(c.ok and c.tolerance == 0.0 for c in verify(kernel))


# -- the dot product the AVX2 kernel became -------------------------------------------------------------
def test_avx2_inner_loop_is_vpmaddwd():
    """Built for Zen 3 (AVX2, no VNNI): the tensorized step is vpbroadcastd + vpmaddwd + vpaddd, with no
    vpmaddubsw (its int16 saturation would break exactness)."""
    from tuning.deploy.library import build
    from tuning.target import resolve_target

    target = resolve_target('{"kind": "llvm", "mcpu": "znver3", "num-cores": 2}', 2)
    wl = parse_spec("h=14,ci=32,co=32,k=3,pad=1,dtype=int8")
    asm = build(Choice(Task(wl, "direct-int8", target.machine), None, None), target).mod.inspect_source("asm")
    assert len(re.findall(r"\bvpmaddwd\s+%ymm", asm)) >= 8
    assert "vpmaddubsw" not in asm


@pytest.mark.parametrize("lanes,target,encoding", [
    (16, {"kind": "llvm", "mcpu": "sapphirerapids"}, r"vpdpbusd\s+\S+, %zmm"),  # AVX512-VNNI
    (8, {"kind": "llvm", "mcpu": "alderlake"}, r"\{vex\}\s*vpdpbusd\s+\S+, %ymm"),  # AVX-VNNI (VEX)
    (8, {"kind": "llvm", "mcpu": "znver3", "mattr": ["+avx512f", "+avx512bw", "+avx512vl", "+avx512vnni"]},
     r"vpdpbusd\s+\S+, %ymm"),
])
def test_vnni_intrinsics_build_to_vpdpbusd(lanes, target, encoding):
    """Build only (this Zen 3 has no VNNI, the code cannot run here): the byte-typed VNNI intrinsics
    pass LLVM's verification, which TVM 0.27's own int32-typed dot_16x4_vnni does not, and become
    vpdpbusd."""
    import tvm

    from schedules.int8_intrinsics import vnni_gemm

    asm = tvm.compile(vnni_gemm(4, 32, 64, lanes), target=tvm.target.Target(target)).mod.inspect_source("asm")
    assert re.search(encoding, asm), asm[:2000]
    assert "vpmaddubsw" not in asm


def test_run_state_of_an_int8_task_builds_for_the_generic_host():
    """The tuner fills a run function's integer state from the prepare phase, built for a generic
    x86-64: an AVX2-tensorized schedule there aborted LLVM ("Do not know how to split")."""
    from tuning.deploy.state import run_state

    from .support.checks import host_target

    wl = parse_spec("h=6,ci=4,co=8,k=3,pad=1,dtype=int8,out=uint8,bias=1")
    states = run_state([Task(wl, "direct-int8", host_target().machine)], host_target())
    (state,) = states.values()
    packed = [a for a in state.values() if a.dtype == np.int16 and a.ndim == 6]
    assert packed and packed[0].any()


@pytest.mark.parametrize("spec, weight_bits", [
    ("h=9,w=11,ci=16,co=24,k=3,pad=1,stride=2,dtype=s8s8,out=int8,scale=channel,bias=1", 8),
    ("h=9,w=9,ci=16,co=24,k=1,dtype=int8,out=int32", 8),
    # MLAS's AVX2 U8S8 kernel saturates pairs of products at int16 (vpmaddubsw): 7-bit weights
    ("h=10,w=9,ci=32,co=16,k=3,pad=1,dtype=int8,out=uint8,bias=1", 7),
])
def test_the_onnxruntime_int8_rival_computes_the_same_layer(spec, weight_bits):
    """bench's int8 rival (QLinearConv / ConvInteger) runs the layer convtune runs: bit-identical
    to the exact reference, so its time is a like-for-like number."""
    pytest.importorskip("onnxruntime")
    from schedules.reference import epilogue_inputs, quantized_reference, random_inputs
    from tuning.bench import onnxruntime_int8_call

    wl = parse_spec(spec)
    data, weight = random_inputs(wl)
    weight = (weight.astype(np.int16) >> (8 - weight_bits)).astype(np.int8)
    got = onnxruntime_int8_call(wl, data, weight, 1)["onnxruntime"]()[0]
    want = quantized_reference(wl, data, weight, **epilogue_inputs(wl)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, want)
    if "s8s8" in spec:  # QLinearConv writes its input's type: int8 data to uint8 has no rival, not a wrong one
        assert onnxruntime_int8_call(parse_spec(spec.replace("out=int8", "out=uint8")), data, weight, 1) == {}


@pytest.mark.parametrize("spec", [
    "h=10,w=9,ci=32,co=16,k=3,pad=1,dtype=int8,out=uint8,bias=1",
    "n=2,h=9,w=11,ci=16,co=24,k=3,stride=2,pad=0x1x2x1,dtype=int8,out=uint8,scale=channel,bias=1,act=relu",
    "h=12,ci=8,co=16,k=3,pad=2,dilation=2,dtype=int8,out=uint8,scale=channel",
    "h=28,w=28,ci=64,co=256,k=1,dtype=int8,out=uint8,scale=channel,bias=1",  # 1x1
    "h=14,ci=32,co=32,k=3,pad=1,groups=32,dtype=int8,out=uint8,bias=1,act=relu",  # depthwise
])
def test_the_pytorch_int8_rival_computes_the_same_layer(spec):
    """bench's PyTorch int8 rival (torch.ao's x86 engine) is bit-identical to the exact reference
    (7-bit weights: its AVX2 kernels saturate int16 pair sums as MLAS's do), bias and relu included;
    layers one quantized conv cannot say get no rival rather than a wrong one."""
    pytest.importorskip("torch")
    from schedules.reference import epilogue_inputs, quantized_reference, random_inputs
    from tuning.bench import torch_int8_call

    wl = parse_spec(spec)
    data, weight = random_inputs(wl)
    weight = (weight.astype(np.int16) >> 1).astype(np.int8)
    got = torch_int8_call(wl, data, weight, 1)["torch-int8"]().int_repr().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, quantized_reference(wl, data, weight, **epilogue_inputs(wl)))
    for other in ("dtype=s8s8,out=int8", "out=int32", "out=float32", "out=uint8,act=relu6"):
        changed = parse_spec(re.sub(r"dtype=int8,out=uint8(,scale=channel)?(,bias=1)?(,act=relu)?", f"dtype=int8,{other}"
                                    if not other.startswith("dtype") else other, spec))
        assert torch_int8_call(changed, *random_inputs(changed), 1) == {}, changed.spec


def test_bench_times_both_int8_rivals(tmp_path):
    """The wiring, not the numbers: an int8 layer's bench row has ORT's and PyTorch's int8 convs
    beside convtune's (in this process, and as the fresh-process runner builds each contender)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from tuning.bench import RIVALS, _contender_call, bench_layer

    from .support.checks import host_target

    wl = parse_spec("h=8,ci=16,co=16,k=1,dtype=int8,out=uint8,bias=1")
    row = bench_layer("l", wl, host_target(), str(tmp_path), "im2col-int8", rounds=1, min_repeat_ms=1.0)
    assert {"convtune", "onnxruntime", "torch-int8"} <= set(row["results"]) and "torch-int8" in RIVALS
    assert row["algorithm"] == "im2col-int8" and row["best_rival"] in ("onnxruntime", "torch-int8")
    call, settings = _contender_call("torch-int8", wl, 1, None)
    call()
    assert settings["torch_quantized_engine"] == "x86"
