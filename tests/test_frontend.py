"""The one model front end (tuning/model_import.py): `convtune layers FILE` (and `--network FILE`)
and `compile --model FILE` read a model file the same way, so they list the same convs. Checked for
every model file the tests build: ONNX ones always, torch-made ones where torch is installed."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

pytest.importorskip("onnx")

from tuning import app, cli  # noqa: E402
from tuning.deploy.model.plan import plan  # noqa: E402
from tuning.model_import import ModelError, load_model  # noqa: E402

from .support import models  # noqa: E402


# -- the model files the tests build --------------------------------------------------------------------
def _save(model, path):
    import onnx

    onnx.save(model, path)
    return path


def _tiny_network(path):
    from .test_model_import import tiny_onnx

    return _save(tiny_onnx(batch=1)[1], path)


def _tiny_search(path):
    from .support.models import four_convs

    four_convs(path)
    return path


def _chunk(path):
    from .test_model_import import chunk_model

    return _save(chunk_model(), path)


def _aspp(path):
    from .test_model_import import aspp_model

    return _save(aspp_model(), path)


def _qdq_float(path):
    from .test_quantized import float_model

    return float_model(path)


def _qdq_hand_written(path):
    import numpy as np
    from onnx import numpy_helper

    from .test_quantized import _int8_weight, _qdq_model

    return _qdq_model(path, _int8_weight(), numpy_helper.from_array(np.full(3, 0.1, np.float32), "ws"),
                      numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
                      x_zero=numpy_helper.from_array(np.array(128, np.uint8), "xz"))


def _qdq_quantized(kind, per_channel):
    def build(path):
        pytest.importorskip("onnxruntime")
        from pathlib import Path

        from .test_quantized import quantized_model

        return quantized_model(Path(os.path.dirname(path)), kind, per_channel)

    return build


def _torch_tiny(exporter):
    def build(path):
        pytest.importorskip("torch")
        from .test_model_import import tiny_torch

        torch, model = tiny_torch()
        x = torch.randn(1, 3, 17, 16)
        if exporter == "pt2":
            torch.export.save(torch.export.export(model, (x,)), path)
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), path, dynamo=False)
        return path

    return build


ONNX_MODELS = {
    "small_resnet": models.small_resnet, "mlp_block": models.mlp_block, "swish_block": models.swish_block,
    "tiny_network": _tiny_network, "tiny_search": _tiny_search, "chunk": _chunk, "aspp": _aspp,
    "qdq_float": _qdq_float, "qdq_hand_written": _qdq_hand_written,
    "qdq_u8s8": _qdq_quantized("U8S8", False), "qdq_s8s8_per_channel": _qdq_quantized("S8S8", True),
}
TORCH_MODELS = {"torch_tiny.pt2": _torch_tiny("pt2"), "torch_tiny_legacy.onnx": _torch_tiny("onnx")}


def _build(tmp_path, name) -> str:
    if name in TORCH_MODELS:
        return TORCH_MODELS[name](str(tmp_path / name))
    return ONNX_MODELS[name](str(tmp_path / f"{name}.onnx"))


def _listed(report: dict) -> tuple[Counter, set]:
    """`convtune layers --json`: each distinct conv's spec times its count, and the names."""
    return Counter({l["spec"]: l["count"] for l in report["layers"]}), {l["name"] for l in report["layers"]}


# -- layers FILE and compile --model's plan ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ONNX_MODELS) + sorted(TORCH_MODELS))
def test_layers_and_the_model_plan_list_the_same_convs(tmp_path, target, name):
    """Every conv `layers` lists (by its bare shape, as often as the model runs it) is one the model
    library is planned to build a kernel for, under the same name, and no other conv is; the plan's
    matmuls (1x1 convs to the kernels) are not layers."""
    path = _build(tmp_path, name)
    network = os.path.splitext(os.path.basename(path))[0]
    try:
        listed, names = _listed(app.layers_report(path))
    except ModelError as err:  # a model without a conv (mlp_block: matmuls only) is refused: none
        assert "has no Conv node" in str(err)
        listed, names = Counter(), set()
    layers = plan(load_model(path), target, str(tmp_path / "no-logs"), cold=False)
    convs = [c for layer in layers for c in layer.chains if c.shape is None]
    assert listed == Counter(c.workload.bare.spec for c in convs)
    assert names <= {f"{network}.{c.name}" for c in convs}
    assert sum(listed.values()) == len(convs)
    assert len(names) == len(listed)


def test_the_network_scope_and_layers_read_the_same_layers(tmp_path):
    """`tune/compile --network FILE` (Scope.layers) and `convtune layers FILE` take one list."""
    path = models.small_resnet(str(tmp_path / "small_resnet.onnx"))
    layers = app.Scope("network", path).layers()
    report = app.layers_report(path)
    assert [(l.name, l.count, l.workload.spec) for l in layers] == [
        (l["name"], l["count"], l["spec"]) for l in report["layers"]]
    assert report["gflops"] == pytest.approx(sum(l.count * l.workload.flops for l in layers) / 1e9)
    assert [l.name for l in layers] == ["small_resnet.stem/conv", "small_resnet.block/conv", "small_resnet.head/conv"]


def test_names_follow_the_file_where_the_frontend_reorders_its_convs(tmp_path):
    """TVM's ONNX frontend emits ASPP's pooled-branch conv first; each conv keeps its own name."""
    path = _aspp(str(tmp_path / "aspp.onnx"))
    chains = {c.name: c.workload.bare.spec for c in load_model(path, "NCHW").chains()}
    assert chains == {"classifier.0.convs.0.0": "h=10,w=12,ci=4,co=4,k=1,layout=NCHW",
                      "classifier.0.convs.1.1": "h=1,w=1,ci=4,co=4,k=1,layout=NCHW",
                      "classifier.0.project.0": "h=10,w=12,ci=8,co=4,k=1,layout=NCHW"}


def test_a_torch_same_pad_is_the_convs_own_padding(tmp_path):
    """PyTorch's "same" for an even kernel is a pad op before the conv in torch.export's graph: the
    conv the model compiles pads inline, as the layer `layers` lists."""
    path = _torch_tiny("pt2")(str(tmp_path / "tiny.pt2"))
    chains = load_model(path, "NCHW").chains()
    assert [c.name for c in chains] == ["stem", "blocks.0.conv", "blocks.1.conv", "dw", "pw"]
    assert chains[3].workload.bare.spec == "h=9,w=8,ci=8,co=8,k=4,pad=1x1x2x2,groups=8,layout=NCHW"


@pytest.mark.slow  # compiles the whole model
@pytest.mark.parametrize("name", ["small_resnet", "swish_block", "qdq_u8s8"])
def test_the_compiled_models_layers_are_the_listed_layers(tmp_path, capsys, name):
    """`compile --model FILE` writes the convs it built into its sidecar: those `layers FILE` lists."""
    path = _build(tmp_path, name)
    network = os.path.splitext(os.path.basename(path))[0]
    assert cli.main(["layers", path, "--json"]) == 0
    listed, names = _listed(json.loads(capsys.readouterr().out))
    library = str(tmp_path / "m.so")
    assert cli.main(["compile", "--model", path, "-o", library, "--logs", str(tmp_path / "logs")]) == 0
    side = json.load(open(tmp_path / "m.json"))
    from schedules.workload import Workload

    convs = [row for row in side["layers"] if not row["name"].startswith("matmul")]
    assert listed == Counter(Workload.from_dict(row["workload"]).bare.spec for row in convs)
    assert names <= {f"{network}.{row['name']}" for row in convs}
