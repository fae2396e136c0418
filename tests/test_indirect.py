import numpy as np
import pytest

from schedules import get_algorithm
from schedules.im2col import im2col_bytes
from schedules.indirect import channel_block, indirection_bytes
from schedules.template import Unsupported
from schedules.workload import parse_spec
from tuning.deploy.library import Choice, in_memory_kernel
from tuning.task import Task

from .support.checks import host_target


def _prepared(layer):
    wl = parse_spec(layer)
    choice = Choice(Task(wl, "indirect"), None, None)
    target = host_target()
    kernel = in_memory_kernel(choice, target)
    data = np.random.default_rng(0).uniform(-1, 1, wl.data_shape).astype("float32")
    weight = np.random.default_rng(1).uniform(-1, 1, wl.weight_shape).astype("float32")
    tensors = kernel.tensors(data, weight)
    kernel.prepare(tensors)
    return wl, kernel, tensors, data


def test_indirection_buffer_points_padding_at_one_zero_row():
    wl, kernel, tensors, data = _prepared("h=5,w=6,ci=3,co=8,k=3,stride=2,pad=0x1x2x1")
    rows = wl.n * wl.h * wl.w
    # The run function reads the input buffer, not the data: no padded copy, one extra row.
    assert [a["name"] for a in kernel.args("conv2d_packed")] == ["input_buffer", "indirection", "packed", "out"]
    assert kernel.args("conv2d_packed")[0]["shape"] == [rows + 1, wl.ci]
    buf = tensors["input_buffer"].numpy()
    np.testing.assert_array_equal(buf[:rows], data.reshape(rows, wl.ci))
    np.testing.assert_array_equal(buf[rows], 0)
    table = tensors["indirection"].numpy()
    assert table.shape == (wl.oh * wl.ow, wl.kh, wl.kw)
    (sh, sw), (top, left) = wl.stride, wl.pad[:2]
    for p in range(wl.oh * wl.ow):
        for kh in range(wl.kh):
            for kw in range(wl.kw):
                iy, ix = p // wl.ow * sh - top + kh, p % wl.ow * sw - left + kw
                inside = 0 <= iy < wl.h and 0 <= ix < wl.w
                assert table[p, kh, kw] == (iy * wl.w + ix if inside else rows)


def test_packed_weight_blocks():
    wl, _, tensors, _ = _prepared("h=4,ci=3,co=24,k=3,pad=1")
    nb = channel_block(wl.co)
    assert nb == 8
    weight = np.random.default_rng(1).uniform(-1, 1, wl.weight_shape).astype("float32")
    expected = weight.reshape(wl.kh, wl.kw, wl.ci, wl.co // nb, nb).transpose(3, 0, 1, 2, 4)
    np.testing.assert_array_equal(tensors["packed"].numpy(), expected)


def test_indirection_bytes_against_im2col():
    wl = parse_spec("h=56,ci=64,co=64,k=3,pad=1")
    assert indirection_bytes(wl) == 56 * 56 * 9 * 4 + 64 * 4
    assert im2col_bytes(wl) == wl.oh * wl.ow * wl.kh * wl.kw * wl.ci * 4
    assert im2col_bytes(wl) / indirection_bytes(wl) > 60  # about IC times smaller


def test_indirect_knobs_golden():
    """The space the search explores; a change here must be deliberate."""
    wl = parse_spec("h=56,ci=64,co=64,k=3,pad=1")
    algorithm = get_algorithm("indirect")
    assert algorithm.knob_names(wl) == ["tile_m", "tile_n", "tile_ic", "unroll"]
    assert algorithm.run_function == "conv2d_packed"
    assert list(algorithm.functions(wl)) == ["conv2d", "load_input", "build_indirection", "pack_weight",
                                             "conv2d_packed"]


def test_indirect_refuses():
    algorithm = get_algorithm("indirect")
    grouped = parse_spec("h=8,ci=8,co=8,k=3,pad=1,groups=2")
    assert algorithm.supports(grouped) == (
        "indirect: groups must be 1 (one indirection reference spans all IC channels), got groups=2")
    with pytest.raises(Unsupported):
        Task(grouped, "indirect")
    nchw = parse_spec("h=8,ci=8,co=8,k=3,pad=1", layout="NCHW")
    assert algorithm.supports(nchw) == "indirect: layout NCHW not supported (supports NHWC)"
