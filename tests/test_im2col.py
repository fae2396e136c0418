import pytest

from schedules import get_algorithm
from schedules.im2col import im2col_bytes
from schedules.workload import parse_spec


def test_im2col_phases():
    """The 1x1 stride-1 layer has no im2col workspace, nor a layer unfolded per block (CO <= OH*OW in
    NHWC); a weight-heavy one passes the whole matrix to the run function."""
    algorithm = get_algorithm("im2col")
    assert algorithm.run_function == "conv2d_packed"
    for spec, run_args in (("h=4,ci=8,co=32,k=3,pad=1", ["data", "packed", "col", "out"]),
                           ("h=8,ci=8,co=16,k=3,pad=1", ["data", "packed", "out"]),
                           ("h=8,ci=8,co=16,k=3,pad=1,layout=NCHW", ["data", "packed", "col", "out"]),
                           ("h=8,ci=8,co=16,k=1", ["data", "packed", "out"])):
        fns = algorithm.functions(parse_spec(spec))
        assert list(fns) == ["conv2d", "pack_weight", "conv2d_packed"]
        assert [a.name for a in fns["conv2d"].args] == ["data", "weight", "out"]
        assert [a.name for a in fns["pack_weight"].args] == ["weight", "packed"]
        assert [a.name for a in fns["conv2d_packed"].args] == run_args
    # OC=20 pads to whole 8-channel panels in NHWC, 4-channel ones in NCHW
    assert algorithm.functions(parse_spec("h=8,ci=3,co=20,k=3"))["pack_weight"].args[1].shape == (3, 27, 8)
    assert algorithm.functions(parse_spec("h=8,ci=3,co=20,k=3", "NCHW"))["pack_weight"].args[1].shape == (5, 27, 4)


def test_im2col_bytes():
    for layout in ("NHWC", "NCHW"):
        assert im2col_bytes(parse_spec("h=56,ci=64,co=64,k=3,pad=1", layout)) == 56 * 56 * 9 * 64 * 4
        assert im2col_bytes(parse_spec("n=2,h=56,ci=64,co=128,k=1,stride=2", layout)) == 2 * 28 * 28 * 64 * 4
        assert im2col_bytes(parse_spec("h=56,ci=64,co=256,k=1", layout)) == 0
    assert im2col_bytes(parse_spec("h=7,ci=512,co=512,k=1")) == 0
    # NCHW pads 7 output rows to 8 so that 8x7 pixels fill whole 8-wide vectors
    assert im2col_bytes(parse_spec("h=7,ci=512,co=512,k=1", "NCHW")) == 8 * 7 * 512 * 4


@pytest.mark.parametrize("spec", ["h=8,ci=8,co=12,k=3,pad=1,groups=4", "h=9,ci=16,co=16,k=3,pad=1,groups=16"])
def test_im2col_refuses_groups(spec):
    reason = get_algorithm("im2col").supports(parse_spec(spec))
    assert reason is not None and reason.startswith("im2col: ") and "only groups=1" in reason
