"""Fused epilogues: bias, residual and activation applied inside every algorithm's output tile.

Every kernel path (one-shot `conv2d`, and prepare + run for two-phase algorithms) is checked
against the float64 reference with the epilogue applied, over the epilogue kinds ResNet and
MobileNet use, both layouts, default and random configs; and the epilogue must be fused (no
pass over the output of its own), add no knob, and keep its records apart from the bare conv's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from schedules import ALGORITHMS, get_algorithm
from schedules.reference import apply_epilogue, conv2d_reference, epilogue_inputs, random_inputs
from schedules.template import EPILOGUE_BLOCK
from schedules.workload import Epilogue, Workload, WorkloadError, parse_spec
from tuning.deploy.library import Choice, choose, in_memory_kernel, schedule_functions
from tuning.deploy.verify import verify
from tuning.task import Task

from .support.records import write_record

EPILOGUES = {
    "bias": "bias=1",
    "bias+relu": "bias=1,act=relu",
    "bias+residual+relu": "bias=1,residual=1,act=relu",
    "clip": "act=clip:-0.5:0.75",
    "residual+relu6": "residual=1,act=relu6",
    "bias+hardswish": "bias=1,act=hardswish",  # MobileNet-v3
    "bias+silu": "bias=1,act=silu",  # EfficientNet, RegNet
}
# Odd sizes, asymmetric padding, strides, dilation, batch > 1: one shape per algorithm kind.
SHAPES = {
    "direct": "n=2,h=9,w=7,ci=5,co=12,k=3,pad=1x0x2x1,stride=2",
    "im2col": "h=9,w=11,ci=6,co=20,k=3,pad=1,dilation=2",
    "spatial-pack": "h=10,w=9,ci=8,co=16,k=3,pad=1",
    "winograd-f2": "h=9,w=10,ci=8,co=16,k=3,pad=1",
    "winograd-f4": "n=2,h=11,w=9,ci=8,co=16,k=3,pad=1",
    "winograd-f6": "h=13,w=12,ci=8,co=8,k=3,pad=1",
    "indirect": "h=9,w=8,ci=8,co=16,k=3,pad=1x1x0x0",
    "depthwise": "h=11,w=9,ci=16,co=16,k=3,pad=1,stride=2,groups=16",
    "grouped": "n=2,h=9,w=7,ci=16,co=24,k=3,pad=1x0x2x1,stride=2,groups=4",
}


# float32 templates (the int8 templates' quantized epilogue is tests/test_int8.py's)
FLOAT_ALGORITHMS = [name for name, a in ALGORITHMS.items() if "float32" in a.dtypes]


# The fast loop (`pytest -m "not slow"`) checks one of each: every algorithm and layout with the fullest
# epilogue (bias + residual + relu), every epilogue on direct NHWC; the whole cross product is `slow`.
FAST_EPILOGUE, FAST_ALGORITHM = "bias+residual+relu", "direct"


def _cases():
    for algorithm in FLOAT_ALGORITHMS:
        for layout in get_algorithm(algorithm).layouts:
            for label, epilogue in EPILOGUES.items():
                fast = label == FAST_EPILOGUE or (algorithm, layout) == (FAST_ALGORITHM, "NHWC")
                yield pytest.param(algorithm, layout, epilogue, id=f"{algorithm}-{layout}-{label}",
                                   marks=() if fast else pytest.mark.slow)


def _check(target, wl: Workload, algorithm: str, config=None) -> None:
    task = Task(wl, algorithm, target.machine)
    kernel = in_memory_kernel(Choice(task, None, config), target, "epilogue test")
    checks = verify(kernel)
    assert len(checks) == (1 if task.template.run_function == "conv2d" else 2)
    for check in checks:
        assert check.ok, f"{algorithm} {wl.spec} {check.function}: {check.max_error:.3g} > {check.tolerance:.3g}"


@pytest.mark.parametrize("algorithm,layout,epilogue", list(_cases()))
def test_epilogue_matches_the_reference(target, algorithm, layout, epilogue):
    wl = parse_spec(f"{SHAPES[algorithm]},{epilogue}", layout)
    _check(target, wl, algorithm)


@pytest.mark.parametrize("algorithm", [pytest.param(name, marks=() if name == FAST_ALGORITHM else pytest.mark.slow)
                                       for name in FLOAT_ALGORITHMS])
def test_epilogue_with_random_configs(target, algorithm):
    """The fusion holds whatever the knobs: the epilogue follows the write-back wherever it lands."""
    alg = get_algorithm(algorithm)
    wl = parse_spec(f"{SHAPES[algorithm]},bias=1,residual=1,act=relu", alg.layouts[0])
    for seed in (3, 11):
        _check(target, wl, algorithm, alg.sample_config(wl, seed, target.machine))


@pytest.mark.parametrize("algorithm", FLOAT_ALGORITHMS)
def test_epilogue_is_fused_and_adds_no_knob(target, algorithm):
    alg = get_algorithm(algorithm)
    wl = parse_spec(f"{SHAPES[algorithm]},bias=1,residual=1,act=relu6", alg.layouts[0])
    assert alg.knob_names(wl) == alg.knob_names(wl.bare)
    assert alg.default_config(wl, target.machine) == alg.default_config(wl.bare, target.machine)
    task = Task(wl, algorithm, target.machine)
    mod = schedule_functions(Choice(task, None, None))
    for gv, func in mod.functions.items():
        text = func.script()
        # the epilogue's own block is gone: inlined into the block that writes `out`
        assert f'sblock("{EPILOGUE_BLOCK}")' not in text, gv.name_hint
        args = [a.name for a in alg.functions(wl)[gv.name_hint].args]
        if "out" in args:
            assert "bias" in args and "residual" in args


def test_reference_epilogue_order():
    """bias, then residual, then the activation: relu(conv + b + r), not relu(conv + b) + r."""
    wl = parse_spec("h=4,ci=2,co=3,k=1,bias=1,residual=1,act=relu")
    out = np.full(wl.out_shape, -1.0)
    bias = np.array([0.5, 1.5, 0.0], np.float32)
    residual = np.full(wl.out_shape, 0.25, np.float32)
    got = apply_epilogue(wl, out, bias, residual)
    assert np.allclose(got[..., 0], 0.0) and np.allclose(got[..., 1], 0.75) and np.allclose(got[..., 2], 0.0)
    clip = parse_spec("h=4,ci=2,co=3,k=1,act=relu6")
    assert apply_epilogue(clip, np.full(clip.out_shape, 9.0)).max() == 6.0
    nchw = parse_spec("h=4,ci=2,co=3,k=1,bias=1", "NCHW")
    got = apply_epilogue(nchw, np.zeros(nchw.out_shape), bias)
    assert np.allclose(got[0, :, 0, 0], bias)


def test_epilogue_inputs_make_the_activation_bite():
    """Random bias/residual on the conv output's scale: ReLU zeroes a real share of the outputs,
    so a kernel that skipped it would fail the reference check."""
    wl = parse_spec("h=8,ci=16,co=16,k=3,pad=1,bias=1,residual=1,act=relu")
    data, weight = random_inputs(wl)
    out = conv2d_reference(wl, data, weight, **epilogue_inputs(wl))
    assert 0.2 < float((out == 0).mean()) < 0.8


def test_epilogue_in_specs_keys_and_dicts():
    wl = parse_spec("h=8,ci=4,co=8,k=3,pad=1,bias=1,residual=1,act=relu6")
    assert wl.epilogue == Epilogue(bias=True, residual=True, activation="clip", clip=(0.0, 6.0))
    assert parse_spec(wl.spec) == wl and Workload.from_dict(wl.to_dict()) == wl
    assert wl.key != wl.bare.key and wl.key.startswith(wl.bare.key) and "/" not in wl.key and ":" not in wl.key
    assert "epilogue" not in wl.bare.to_dict()  # bare records keep the dict they always had
    assert parse_spec("h=8,ci=4,co=8,k=3,act=clip:-1:2.5").epilogue.clip == (-1.0, 2.5)
    for bad, field in (("act=gelu", "act"), ("bias=2", "bias"), ("act=clip:3:1", "clip"), ("act=clip:x:1", "act"),
                       ("residual=yes", "residual")):
        with pytest.raises(WorkloadError) as err:
            parse_spec(f"h=8,ci=4,co=8,k=3,{bad}")
        assert err.value.field == field
    with pytest.raises(WorkloadError, match="epilogue.gain"):
        Workload.from_dict({**wl.to_dict(), "epilogue": {"gain": 2}})


def test_a_fused_conv_takes_its_bare_convs_record(tmp_path, target, monkeypatch):
    """Same knobs, same tile space: without records of its own, a fused conv is built with the
    bare conv's best config, and says so; its own records, once it has some, win. (About records
    alone: the untuned defaults that compete with them are test_library.py's.)"""
    monkeypatch.setattr("tuning.deploy.library.default_record", lambda store, task, target: None)
    wl = parse_spec("h=8,ci=8,co=16,k=3,pad=1,bias=1,act=relu")
    write_record(str(tmp_path), target, wl.bare, "direct", seconds=1e-4, seed=5)
    choice = choose(wl, "auto", target, str(tmp_path))
    assert choice.tuned and choice.source == "bare conv" and choice.task.workload == wl
    bare = choose(wl.bare, "auto", target, str(tmp_path))
    assert choice.config == bare.config
    _check(target, wl, "direct", choice.config)
    write_record(str(tmp_path), target, wl, "direct", seconds=2e-4, seed=7)
    own = choose(wl, "auto", target, str(tmp_path))
    assert own.tuned and own.source == "" and own.config != bare.config


def test_bare_workload_is_unchanged_by_the_epilogue_field():
    wl = parse_spec("h=8,ci=4,co=8,k=3")
    assert wl.bare is wl and wl.epilogue.empty and dataclasses.replace(wl, epilogue=Epilogue()) == wl


@pytest.mark.parametrize("epilogue", ["bias=1,act=relu", "act=relu6"])
def test_a_nan_input_stays_nan_through_the_activation(target, epilogue):
    """max(NaN, 0) is 0 in LLVM's maxnum: a NaN would leave the kernel as a plausible number, where
    ONNX Runtime and the reference give NaN."""
    wl = parse_spec(f"h=6,w=6,ci=4,co=8,k=3,pad=1,{epilogue}")
    kernel = in_memory_kernel(Choice(Task(wl, "direct", target.machine), None, None), target, "nan test")
    data, weight = random_inputs(wl, 0)
    data[0, 2, 3, 1] = np.nan
    extra = epilogue_inputs(wl, 0)
    expected = conv2d_reference(wl, data, weight, **extra)
    tensors = kernel.tensors(data, weight, extra)
    kernel.call("conv2d", tensors)
    got = tensors["out"].numpy()
    assert np.isnan(expected).sum() == 9 * wl.co  # the 3x3 window around the NaN, every channel
    assert np.array_equal(np.isnan(got), np.isnan(expected))


def test_fast_exp_is_close_to_exp_and_vectorises(target):
    """The SiLU epilogue's exp: a polynomial LLVM vectorises, within a few float32 ulps of exp
    over the range that matters, saturating outside it."""
    import tvm
    from tvm import te

    from schedules.template import fast_exp

    x = np.concatenate([np.linspace(-87, 87, 4093), [-200.0, 200.0, 0.0]]).astype(np.float32)
    a = te.placeholder((x.size,), "float32", name="a")
    b = te.compute(a.shape, lambda i: fast_exp(a[i]), name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("b"))[0], [None, 8])[1])
    lib = tvm.compile(sch.mod, target=target.tvm)
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    got, want = out.numpy()[:-3].astype(np.float64), np.exp(x[:-3].astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 1e-6
    assert out.numpy()[-3] == 0.0 and out.numpy()[-2] > 1e38 and out.numpy()[-1] == 1.0
    assert "vfmadd" in lib.mod.inspect_source("asm") or target.machine.isa not in ("avx2", "avx512")


@pytest.mark.parametrize("act", ["hardswish", "silu"])
def test_hardswish_and_silu_in_specs_and_refused_on_int8(act):
    wl = parse_spec(f"h=8,w=8,ci=4,co=8,k=3,bias=1,act={act}")
    assert wl.epilogue.activation == act and act in wl.key and parse_spec(wl.spec) == wl
    with pytest.raises(WorkloadError, match=f"{act} on an int8 conv"):
        parse_spec(f"h=8,w=8,ci=4,co=8,k=3,dtype=int8,out=float32,act={act}")
    x = np.array([-4.0, -1.0, 2.0, 5.0, np.nan, 0.0, 1.0, 7.0])
    reference = apply_epilogue(wl, x.reshape(1, 1, 1, 8), bias=np.zeros(8))
    want = x * np.clip(x + 3, 0, 6) / 6 if act == "hardswish" else x / (1 + np.exp(-x))
    np.testing.assert_allclose(reference.ravel(), want)
