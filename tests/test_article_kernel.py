"""The article's layout kernel (tuning/experiments/layout.py): exact, and the loop nest it describes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from schedules.workload import parse_spec
from tuning.experiments.layout import ARTICLE_BLOCK, article_kernel


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_article_kernel_computes_the_1x1_convolution(layout):
    wl = parse_spec("h=8,w=6,ci=12,co=20,k=1", layout)
    func, side = article_kernel(wl)
    shapes = [a["shape"] for a in side["functions"]["conv2d"]["args"]]
    assert [a["name"] for a in side["functions"]["conv2d"]["args"]] == ["data", "weight", "out"]
    rng = np.random.default_rng(1)
    data, weight = (rng.standard_normal(s).astype("float32") for s in shapes[:2])
    out = tvm.runtime.tensor(np.zeros(shapes[2], "float32"))
    tvm.compile(tvm.IRModule({"conv2d": func}), target={"kind": "llvm"}).mod["conv2d"](
        tvm.runtime.tensor(data), tvm.runtime.tensor(weight), out)
    # NCHW: filter [OC, IC] x input [IC, H*W]; NHWC: input [H*W, IC] x filter [IC, OC]
    # (NHWC: the filter stored OHWI, [OC, IC], as the article reads it along the channels)
    expected = weight.astype(np.float64) @ data if layout == "NCHW" else data.astype(np.float64) @ weight.T
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    # the same bytes as the layer's tensors: H*W x IC elements of input either way
    assert np.prod(shapes[0]) == wl.ci * wl.h * wl.w


def test_article_kernel_blocks_are_4x4_with_4_reduction_steps():
    func, _ = article_kernel(parse_spec("h=8,w=8,ci=16,co=16,k=1", "NCHW"))
    text = func.script()
    assert text.count(f"range({ARTICLE_BLOCK})") + text.count(f"unroll({ARTICLE_BLOCK})") >= 3


def test_article_kernel_refuses_layers_it_does_not_describe():
    with pytest.raises(ValueError, match="1x1 stride-1"):
        article_kernel(parse_spec("h=8,ci=8,co=8,k=3,pad=1"))
    with pytest.raises(ValueError, match="multiples of 4"):
        article_kernel(parse_spec("h=7,w=7,ci=16,co=16,k=1"))
