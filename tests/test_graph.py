"""tuning/graph.py against tuning/model_import.py: the two readers of a model file must see the same
convs. `convtune layers FILE` (and `tune/compile --network FILE`) list model_import's; `compile
--model FILE` builds graph's conv chains. Checked for every model file the tests build."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("onnx")

from tuning.model_import import ModelError, load_model, load_network  # noqa: E402

from .support import models  # noqa: E402
from .support.models import four_convs as tiny_search_onnx  # noqa: E402
from .test_model_import import tiny_onnx  # noqa: E402


def _small_resnet(path):
    return models.small_resnet(path)


def _mlp_block(path):
    return models.mlp_block(path)


def _tiny_network(path):
    onnx, model = tiny_onnx(batch=1)
    onnx.save(model, path)
    return path


def _tiny_search(path):
    tiny_search_onnx(path)
    return path


BUILDERS = {"small_resnet": _small_resnet, "mlp_block": _mlp_block, "tiny_network": _tiny_network,
            "tiny_search": _tiny_search}


def _layers_convs(path) -> Counter:
    """What `convtune layers FILE` lists: each distinct conv's shape, times its count (a model without
    a Conv node is refused: none)."""
    try:
        layers = load_network(path)
    except ModelError as err:
        if "has no Conv" not in str(err):
            raise
        return Counter()
    return Counter({l.workload.bare.spec: l.count for l in layers})


def _model_convs(path) -> Counter:
    """What `compile --model FILE` builds a kernel for: the graph's convs (not its matmuls, which
    it runs as 1x1 convs and `layers` does not list), by their bare conv's shape."""
    return Counter(c.workload.bare.spec for c in load_model(path).chains() if c.shape is None)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_layers_and_compile_model_see_the_same_convs(tmp_path, name):
    path = BUILDERS[name](str(tmp_path / f"{name}.onnx"))
    assert _layers_convs(path) == _model_convs(path)


@pytest.mark.slow  # compiles a whole model
def test_same_padded_convs_read_their_padding_inline_and_match_onnxruntime(tmp_path, target):
    """auto_pad SAME_UPPER / SAME_LOWER convs are convs with explicit pads to the model front end,
    as to `layers`: no pad op left to TVM (it ran in NCHW, a transpose each side), and the model
    computes what ONNX Runtime computes."""
    import numpy as np
    import tvm

    pytest.importorskip("onnxruntime")
    from tuning.deploy.model import ModelLibrary, build_model
    from tuning.graph import ops_module

    path = _tiny_network(str(tmp_path / "same.onnx"))
    graph = load_model(path)
    pads = [c.workload.pad for c in graph.chains()]
    assert pads[-2:] == [(0, 1, 1, 1), (1, 1, 0, 0)]  # UPPER: the odd pixel at the end; LOWER: at the start
    ops = [gv.name_hint for gv, f in ops_module(graph).functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not [name for name in ops if "pad" in name], ops
    executable, side = build_model(graph, target, "/nonexistent-logs", quiet=True)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 4, 9, 10)).astype(np.float32)
    ours = ModelLibrary(executable, side).run({"x": x})[0]
    theirs = models.onnxruntime_outputs(path, {"x": x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
