import numpy as np
import pytest
import tvm
from tvm import s_tir

from schedules import family, get_algorithm
from schedules.template import Knobs, Unsupported
from schedules.winograd import (
    ERROR_GROWTH,
    TILES,
    multiplications_per_output,
    tile_grid,
    transform_matrices,
)
from schedules.workload import parse_spec

from .support.checks import check_algorithm

NAMES = [f"winograd-f{m}" for m in TILES]

# (layer, tile sizes): every tile size meets partial edge tiles; between them the layers cover
# no / symmetric / asymmetric / wide padding, odd sizes and channel counts, batch 2, a 1x1 output
# and a tile grid widened with zero tiles (58 -> 29 columns of F(2) -> 30).


@pytest.mark.slow  # builds and runs every tile size over growing layers
def test_winograd_error_growth_measured():
    """error_growth is the worst ratio of Winograd's float32 error to direct's measured over layers
    with CI from 1 to 512 (F2 1.9x, F4 14x, F6 41x, at CI=1; larger CI dilutes the transforms'
    share). Here, on one layer and seed: the ordering F2 < F4 < F6, and each error within its
    growth times direct's error on the same inputs (check_algorithm also holds each to
    error_bound * growth)."""
    layer, seed = "h=16,ci=8,co=24,k=3,pad=1", 3
    direct = max(c.max_error for c in check_algorithm("direct", layer, seed=seed))
    errors = [max(c.max_error for c in check_algorithm(name, layer, seed=seed)) for name in NAMES]
    assert errors[0] < errors[1] < errors[2], errors
    for m, err in zip(TILES, errors):
        assert err <= ERROR_GROWTH[m] * direct, (m, err, direct)
    assert [get_algorithm(n).error_growth(parse_spec(layer)) for n in NAMES] == [ERROR_GROWTH[m] for m in TILES]


def test_winograd_knobs_golden():
    """The space the search explores; a change here must be deliberate."""
    wl = parse_spec("h=56,ci=64,co=64,k=3,pad=1")
    for name in NAMES:
        assert get_algorithm(name).knob_names(wl) == ["tile_th", "tile_tw", "tile_co", "tile_ci", "unroll"]
    assert [a.name for a in family("winograd")] == NAMES
    assert all(get_algorithm(n).run_function == "conv2d_packed" for n in NAMES)


def test_winograd_trace_replays_other_decisions():
    """Evolutionary search replays a trace with mutated decisions: the structure must not depend on
    them (the GEMM's loops, created by compute_at, are split by the block's sampled factors)."""
    alg, wl = get_algorithm("winograd-f4"), parse_spec("h=30,w=22,ci=8,co=32,k=3,pad=1")
    func = alg.functions(wl)[alg.run_function].func
    sch = s_tir.Schedule(func, seed=1)
    alg.schedule(sch, wl, Knobs(sch))
    base = alg.sample_config(wl, 1)
    other = next(c for c in (alg.sample_config(wl, s) for s in range(2, 50))  # other register tile
                 if c["tile_th"][2] != base["tile_th"][2] and c["tile_tw"][2] != base["tile_tw"][2])
    trace = sch.trace
    samples = [i for i in trace.insts if i.kind.name in ("SamplePerfectTile", "SampleCategorical")]
    for inst, value in zip(samples, other.values()):
        trace = trace.with_decision(inst, value, remove_postproc=True)
    replayed = s_tir.Schedule(func)
    trace.apply_to_schedule(replayed, remove_postproc=True)
    tvm.ir.assert_structural_equal(replayed.mod, alg.apply(func, wl, other).mod)


def test_winograd_refuses():
    wl = parse_spec("h=12,ci=4,co=4,k=5,stride=2,pad=2")
    with pytest.raises(Unsupported, match=r"winograd-f4: Winograd needs a 3x3 kernel, stride 1, dilation 1, "
                                          r"groups 1; got 5x5 stride 2$"):
        get_algorithm("winograd-f4").require(wl)
    assert get_algorithm("winograd-f2").supports(parse_spec("h=12,ci=4,co=4,k=3,pad=2,dilation=2")).endswith(
        "got 3x3 dilation 2")
    assert get_algorithm("winograd-f6").supports(parse_spec("h=8,ci=8,co=8,k=3,pad=1,groups=8")).endswith(
        "got 3x3 groups 8")
    assert get_algorithm("winograd-f4").supports(parse_spec("h=8,ci=8,co=8,k=3,stride=1x2,pad=1")).endswith(
        "got 3x3 stride 1x2")
    assert "layout NCHW not supported" in get_algorithm("winograd-f2").supports(
        parse_spec("h=8,ci=8,co=8,k=3,pad=1", layout="NCHW"))
    assert get_algorithm("winograd-f2").supports(parse_spec("h=8,ci=8,co=8,k=3,pad=0x1x2x0")) is None


def test_multiplications_per_output():
    assert multiplications_per_output(1) == 9  # F(1x1, 3x3) is direct convolution
    savings = [9 / multiplications_per_output(m) for m in TILES]
    assert savings == pytest.approx([2.25, 4.0, 81 / 16])  # 16/4, 36/16, 64/36 per output


@pytest.mark.parametrize("m", TILES)
def test_transform_matrices(m):
    """Y = A^T [(G g G^T) * (B^T d B)] A is the m x m valid correlation of d (alpha x alpha) with g."""
    a, b, g = transform_matrices(m)
    assert a.shape == (m + 2, m) and b.shape == (m + 2, m + 2) and g.shape == (m + 2, 3)
    rng = np.random.default_rng(m)
    d, w = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    y = a.T @ ((g @ w @ g.T) * (b.T @ d @ b)) @ a
    ref = np.array([[np.sum(d[i:i + 3, j:j + 3] * w) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_tile_grid_widened_for_register_tiles():
    assert tile_grid(parse_spec("h=112,ci=8,co=8,k=3,pad=1"), 6) == (19, 20)  # 19 is prime
    assert tile_grid(parse_spec("h=56,ci=8,co=8,k=3,pad=1"), 4) == (14, 14)  # 7 x 2 already
    assert tile_grid(parse_spec("h=9,w=7,ci=8,co=8,k=3"), 2) == (4, 3)
