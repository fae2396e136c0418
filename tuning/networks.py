"""The built-in zoo: every conv layer of common CNNs at 224x224, batch 1, as workloads.

Layers with identical shapes inside a stage are listed once with their `count`, so a network
is a weighted set of distinct tuning tasks. (A model file's layers: tuning/model_import.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

from schedules.workload import Workload, WorkloadError, parse_spec


class ModelError(WorkloadError):
    """A model convtune cannot read; `field` names the model (or file), the message says why."""


@dataclass(frozen=True)
class Layer:
    name: str  # "<network>.<layer>"
    workload: Workload
    count: int = 1


def distinct_layers(layers: list[Layer]) -> list[Layer]:
    """Layers of equal workload are one task: counts summed, the first name kept."""
    merged: dict = {}
    for layer in layers:
        if layer.count <= 0:
            raise ValueError(f"{layer.name}: count must be positive, got {layer.count}")
        if layer.workload in merged:
            first = merged[layer.workload]
            merged[layer.workload] = Layer(first.name, first.workload, first.count + layer.count)
        else:
            merged[layer.workload] = layer
    return list(merged.values())


def _conv(h, ci, co, k, stride=1, pad=None, groups=1) -> str:
    pad = k // 2 if pad is None else pad
    return f"h={h},ci={ci},co={co},k={k},stride={stride},pad={pad},groups={groups}"


def _resnet18():
    yield "conv1", _conv(224, 3, 64, 7, 2), 1
    yield "layer1", _conv(56, 64, 64, 3), 4
    for i, (h, ci, co) in enumerate(((56, 64, 128), (28, 128, 256), (14, 256, 512)), start=2):
        yield f"layer{i}.0.conv1", _conv(h, ci, co, 3, 2), 1
        yield f"layer{i}.0.downsample", _conv(h, ci, co, 1, 2), 1
        yield f"layer{i}", _conv(h // 2, co, co, 3), 3


def _resnet50():
    yield "conv1", _conv(224, 3, 64, 7, 2), 1
    h, cin = 56, 64
    for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        stride = 1 if i == 1 else 2
        out = width * 4
        ho = h // stride
        yield f"layer{i}.0.conv1", _conv(h, cin, width, 1), 1
        yield f"layer{i}.0.conv2", _conv(h, width, width, 3, stride), 1
        yield f"layer{i}.0.downsample", _conv(h, cin, out, 1, stride), 1
        yield f"layer{i}.conv1", _conv(ho, out, width, 1), blocks - 1
        yield f"layer{i}.conv2", _conv(ho, width, width, 3), blocks - 1
        yield f"layer{i}.conv3", _conv(ho, width, out, 1), blocks
        h, cin = ho, out


def _mobilenet_v1():
    yield "conv0", _conv(224, 3, 32, 3, 2), 1
    h, cin = 112, 32
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    seen: dict[str, int] = {}
    for i, (cout, stride) in enumerate(plan, start=1):
        ho = h // stride
        for kind, spec in (("dw", _conv(h, cin, cin, 3, stride, groups=cin)), ("pw", _conv(ho, cin, cout, 1))):
            if spec in seen:  # the five 512->512 blocks are one task each for dw and pw
                seen[spec] += 1
                continue
            seen[spec] = 1
            yield f"conv{i}.{kind}", spec, seen
        h, cin = ho, cout


def _vgg16():
    h, cin = 224, 3
    for stage, (cout, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1):
        yield f"conv{stage}_1", _conv(h, cin, cout, 3), 1
        yield f"conv{stage}", _conv(h, cout, cout, 3), convs - 1
        h, cin = h // 2, cout


_BUILDERS = {"resnet18": _resnet18, "resnet50": _resnet50, "mobilenet_v1": _mobilenet_v1, "vgg16": _vgg16}
NETWORKS = tuple(_BUILDERS)


def network_layers(network: str, layout: str = "NHWC") -> list[Layer]:
    if network not in _BUILDERS:
        raise WorkloadError("network", f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
    rows = list(_BUILDERS[network]())
    layers = []
    for name, spec, count in rows:
        if isinstance(count, dict):  # mobilenet: counts known only after the whole walk
            count = count[spec]
        layers.append(Layer(f"{network}.{name}", parse_spec(spec, layout=layout), count))
    return layers


def find_layer(name: str, layout: str = "NHWC") -> Layer:
    network = name.split(".", 1)[0]
    for layer in network_layers(network, layout):
        if layer.name == name:
            return layer
    known = ", ".join(l.name for l in network_layers(network, layout))
    raise WorkloadError("layer", f"no layer {name!r} in {network}; known: {known}")


def resolve(text: str, layout: str | None = None) -> tuple[str, Workload]:
    """A zoo name (`resnet18.layer1`) or a key=value spec -> (display name, workload)."""
    if "=" in text:
        wl = parse_spec(text, layout=layout)
        return wl.spec, wl
    layer = find_layer(text, layout or "NHWC")
    return layer.name, layer.workload
