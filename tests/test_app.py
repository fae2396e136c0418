"""tuning/app.py: the application layer the command line, the benchmarks and the experiments call.
Plain values in (a Scope, a Target, a DeviceAddress), results out; no argparse namespace."""

from __future__ import annotations

import numpy as np
import pytest

from schedules.workload import parse_spec
from tuning import app
from tuning.app import Machine, Scope, UsageError
from tuning.remote.address import REQUEST_TIMEOUT, DeviceAddress, RPCError

from .support.records import write_record

LAYER = "h=8,ci=8,co=8,k=3,pad=1"


def test_a_scope_is_the_model_else_the_network_else_the_layer():
    assert Scope.of(layer=LAYER, network="resnet18", model="m.onnx").kind == "model"
    assert Scope.of(layer=LAYER, network="resnet18").kind == "network"
    assert Scope.of(layer=LAYER) == Scope("layer", LAYER)
    assert Scope.of().source == app.DEFAULT_LAYER


def test_a_layer_scope_reads_its_workload_and_a_network_its_layers():
    name, wl = Scope.of(layer="resnet18.layer1").layer()
    assert name == "resnet18.layer1" and wl.spec.startswith("h=56,w=56,ci=64,co=64")
    layers = Scope.of(network="resnet18").layers()
    assert layers[0].name == "resnet18.conv1" and len(layers) == 11


def test_a_device_address_names_one_device():
    assert not DeviceAddress() and DeviceAddress(rpc="127.0.0.1:9090")
    assert DeviceAddress().request_timeout == REQUEST_TIMEOUT
    assert DeviceAddress(tracker="h:9190", key="k").resolve("use") == ("tracker", "h", 9190)
    assert DeviceAddress(rpc="[::1]:9090").resolve("use") == ("direct", "::1", 9090)
    with pytest.raises(RPCError, match="needs --rpc-key"):
        DeviceAddress(tracker="h:9190").resolve("use")
    with pytest.raises(RPCError, match="not both"):
        DeviceAddress(tracker="h:9190", key="k", rpc="h:9090").resolve("use")
    with pytest.raises(RPCError, match="no device"):
        DeviceAddress().resolve("use")


def test_a_remote_target_needs_a_device_and_a_tracker_its_key():
    from tuning.search.tune import SearchOptions
    from tuning.target import resolve_target

    with pytest.raises(UsageError, match="not this machine"):
        app.runner_for(DeviceAddress(), resolve_target("aarch64"), SearchOptions())
    with pytest.raises(UsageError, match="needs --rpc-key"):
        app.runner_for(DeviceAddress(tracker="127.0.0.1:9"), resolve_target("x86"), SearchOptions())
    assert app.runner_for(DeviceAddress(), resolve_target("x86"), SearchOptions()) is None


def test_a_thread_count_must_be_positive():
    with pytest.raises(UsageError, match="--threads: must be positive"):
        app.resolve(Machine("x86", threads=0), "records")


@pytest.mark.parametrize("path, says", [("k.json", "must end in .so"), ("sub.so", "is a directory")])
def test_an_output_convtune_cannot_write_is_refused(tmp_path, path, says):
    (tmp_path / "sub.so").mkdir()
    with pytest.raises(UsageError, match=says):
        app.output_path(str(tmp_path / path), "-o", ".so")
    assert app.output_path(str(tmp_path / "k.so"), "-o", ".so") == str(tmp_path / "k.so")


def test_inputs_are_named_where_a_model_has_several(tmp_path):
    path = str(tmp_path / "x.npy")
    np.save(path, np.zeros((1, 2), np.float32))
    assert list(app.model_inputs(["x"], [path])) == ["x"]
    assert list(app.model_inputs(["a", "b"], [f"b={path}"])) == ["b"]
    with pytest.raises(UsageError, match="give each as --input NAME=PATH"):
        app.model_inputs(["a", "b"], [path])
    with pytest.raises(UsageError, match="has no input 'c'"):
        app.model_inputs(["a", "b"], [f"c={path}"])


def test_a_scope_lists_its_own_records_only(tmp_path, target):
    logs = str(tmp_path)
    write_record(logs, target, parse_spec(LAYER))
    write_record(logs, target, parse_spec("h=8,ci=8,co=16,k=3,pad=1"))
    assert len(app.records(logs)) == 2
    rows = Scope.of(layer=LAYER).records(logs)
    assert [r["layer"] for r in rows] == [parse_spec(LAYER).spec]


def test_verify_of_nothing_is_refused():
    with pytest.raises(UsageError, match="no such file"):
        app.verify("/nonexistent/k.so")
