import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedules.workload import Workload, WorkloadError, parse_spec
from tuning.networks import NETWORKS, find_layer, network_layers, resolve


def test_spec_defaults_and_shapes():
    wl = parse_spec("h=56,w=56,ci=64,co=64,k=3,stride=1,pad=1")
    assert (wl.n, wl.stride, wl.pad, wl.dilation, wl.groups, wl.layout) == (1, (1, 1), (1, 1, 1, 1), (1, 1), 1, "NHWC")
    assert wl.out_shape == (1, 56, 56, 64) and wl.weight_shape == (3, 3, 64, 64)
    assert wl.flops == 2 * 56 * 56 * 64 * 64 * 9
    nchw = parse_spec("h=9,w=7,ci=4,co=6,kh=3,kw=1,stride=2,pad=1x0x2x1,layout=nchw")
    assert nchw.pad == (1, 0, 2, 1) and nchw.oh == (9 + 3 - 3) // 2 + 1 and nchw.ow == (7 + 1 - 1) // 2 + 1
    assert nchw.out_shape == (1, 6, nchw.oh, nchw.ow) and nchw.weight_shape == (6, 4, 3, 1)
    dw = parse_spec("h=14,ci=32,co=32,k=3,pad=1,groups=32")
    assert dw.is_depthwise and dw.weight_shape == (3, 3, 1, 32) and dw.flops == 2 * 14 * 14 * 32 * 9


def test_spec_round_trips_and_keys_are_canonical():
    a = parse_spec("h=56,ci=64,co=64,k=3,pad=1")
    b = parse_spec("co=64, ci=64, w=56, h=56, kh=3, kw=3, pad=1x1x1x1, stride=1, dilation=1x1")
    assert a == b and a.key == b.key
    assert parse_spec(a.spec) == a
    assert Workload.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("spec, field, rule", [
    ("h=8,ci=4,co=4,k=0", "kh", "positive"),
    ("h=-1,ci=4,co=4,k=3", "h", "positive"),
    ("h=4,ci=4,co=4,k=7", "kh", "larger than the padded input"),
    ("h=8,ci=6,co=8,k=3,groups=4", "groups", "divisible"),
    ("h=8,ci=8,co=6,k=3,groups=4", "groups", "divisible"),
    ("h=8,ci=4,co=4,k=3,layout=NCWH", "layout", "must be one of"),
    ("h=8,ci=4,co=4,k=3,foo=1", "foo", "unknown key"),
    ("h=8,ci=4,co=4", "k", "required"),
    ("h=8,ci=4,k=3", "co", "required"),
    ("h=8,ci=4,co=4,k=3,pad=1x2x3", "pad", "expects 1 or 2 or 4"),
    ("h=8,ci=4,co=4,k=3,stride=a", "stride", "integer"),
    ("h=8,ci=4,co=4,k=3,k=3", "k", "twice"),
    ("h=8,ci=4,co=4,k=3,stride=0", "stride", "positive"),
    ("h=8,ci=4,co=4,k=3,pad=-1", "pad", "non-negative"),
    ("h8,ci=4", "h8", "key=value"),
])
def test_bad_specs_name_field_and_rule(spec, field, rule):
    with pytest.raises(WorkloadError) as err:
        parse_spec(spec)
    assert err.value.field == field and rule in err.value.rule


def test_zoo_matches_the_published_networks():
    macs = {n: sum(l.count * l.workload.flops for l in network_layers(n)) / 2e9 for n in NETWORKS}
    assert abs(macs["resnet18"] - 1.81) < 0.01  # 1.81 GMACs of conv
    assert abs(macs["resnet50"] - 4.09) < 0.02
    assert abs(macs["mobilenet_v1"] - 0.57) < 0.01
    assert sum(l.count for l in network_layers("resnet50")) == 53
    assert find_layer("resnet18.layer1").workload == parse_spec("h=56,ci=64,co=64,k=3,pad=1")
    assert resolve("mobilenet_v1.conv1.dw")[1].is_depthwise
    with pytest.raises(WorkloadError, match="no layer"):
        find_layer("resnet18.layer9")
    with pytest.raises(WorkloadError, match="unknown network"):
        network_layers("alexnet")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="hwcikonpadstrgouly=,x0123456789-", max_size=60))
def test_spec_parser_fuzz_raises_only_workload_errors(text):
    try:
        wl = parse_spec(text)
    except WorkloadError:
        return
    assert wl.oh > 0 and wl.ow > 0 and parse_spec(wl.spec) == wl


# -- numbers in a spec, and sizes that overflow ---------------------------------------------------------
@pytest.mark.parametrize("spec, field", [
    ("h=\u0668,ci=8,co=8,k=3", "h"),  # ARABIC-INDIC DIGIT EIGHT: int() takes it
    ("h=8_0,ci=8,co=8,k=3", "h"),
    ("h=+8,ci=8,co=8,k=3", "h"),
    ("h=8,ci=8,co=8,k=3,pad=1:1", "pad"),
    ("h=8,ci=8,co=8,k=3,pad=1/1", "pad"),
    ("h=8,ci=8,co=8,k=3,stride=1x", "stride"),
])
def test_spec_numbers_are_ascii_decimal_integers_separated_by_x(spec, field):
    with pytest.raises(WorkloadError) as err:
        parse_spec(spec)
    assert err.value.field == field and "integer" in err.value.rule


def test_x_remains_the_separator():
    wl = parse_spec("h=9,w=7,ci=4,co=6,kh=3,kw=1,stride=2x1,pad=1x0x2x1")
    assert wl.stride == (2, 1) and wl.pad == (1, 0, 2, 1)


@pytest.mark.parametrize("spec, tensor", [
    ("h=100000,w=100000,ci=4096,co=8,k=1", "input"),
    ("h=46340,w=46340,ci=1,co=2,k=1", "output"),  # the input under 2**31 elements, the output over
    ("h=46340,w=46340,ci=1,co=1,k=3,pad=2", "padded input"),
    ("h=8,ci=65536,co=65536,k=1", "weight"),
])
def test_a_layer_overflowing_int32_indices_is_refused(spec, tensor):
    with pytest.raises(WorkloadError, match=f"the {tensor} would hold .*\\(2\\*\\*31 - 1\\)") as err:
        parse_spec(spec)
    assert err.value.field == "shape"
