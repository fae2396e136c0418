"""Property tests: random valid layers, every algorithm that accepts them, against the reference."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schedules import ALGORITHMS
from schedules.workload import Workload, WorkloadError

from .support.checks import check_algorithm


@st.composite
def layers(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, "dw"]))
    cig = draw(st.integers(1, 6))
    if groups == "dw":
        ci = co = draw(st.integers(2, 12))
        groups = ci
    else:
        ci, co = cig * groups, draw(st.integers(1, 5)) * groups
    k = draw(st.sampled_from([(1, 1), (3, 3), (3, 3), (5, 5), (1, 3), (3, 1)]))
    try:
        return Workload(
            n=draw(st.integers(1, 2)), h=draw(st.integers(3, 12)), w=draw(st.integers(3, 12)), ci=ci, co=co,
            kh=k[0], kw=k[1], stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            pad=tuple(draw(st.integers(0, 2)) for _ in range(4)),
            dilation=draw(st.sampled_from([(1, 1), (1, 1), (2, 2), (1, 2)])), groups=groups,
            layout=draw(st.sampled_from(["NHWC", "NCHW"])))
    except WorkloadError:
        return None  # kernel larger than the padded input: a valid refusal, not a case


@pytest.mark.slow
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(layers(), st.integers(1, 1000))
def test_every_algorithm_that_accepts_a_layer_computes_it(wl, seed):
    assume(wl is not None)
    accepted = [a for a in ALGORITHMS.values() if a.supports(wl) is None]
    assert "direct" in [a.name for a in accepted]  # direct takes every valid layer
    for algorithm in accepted:
        check_algorithm(algorithm.name, wl, config="random", seed=seed)


@settings(max_examples=300, deadline=None)
@given(st.integers(-3, 40), st.integers(-3, 40), st.integers(0, 9), st.integers(0, 4), st.integers(0, 5),
       st.integers(-1, 3), st.integers(0, 3))
def test_workload_validation_accepts_exactly_the_computable_layers(h, ci, k, stride, groups, pad, dil):
    # computable, written out independently of Workload.validate (co is 4)
    computable = (h > 0 and ci > 0 and k > 0 and stride > 0 and groups > 0 and pad >= 0 and dil > 0
                  and ci % groups == 0 and 4 % groups == 0 and (k - 1) * dil + 1 <= h + 2 * pad)
    try:
        wl = Workload(n=1, h=h, w=h, ci=ci, co=4, kh=k, kw=k, stride=stride, pad=pad, dilation=dil, groups=groups)
    except WorkloadError as err:
        assert not computable, (err.field, err.rule)
        assert err.field in ("h", "ci", "co", "kh", "kw", "stride", "pad", "dilation", "groups")
        return
    assert computable
    assert wl.oh >= 1 and wl.ow >= 1 and wl.ci % wl.groups == 0 and wl.co % wl.groups == 0
