"""tuning/deploy/library.py: the record a library is built from. Records never make a layer slower:
every applicable template's untuned default competes with the records (measured once, then kept as a
record), a record of a changed template is set aside, and without records a measured rule picks the
algorithm."""

from __future__ import annotations

import json
import os

import pytest

from schedules import get_algorithm
from schedules.machine import Machine
from schedules.workload import parse_spec
from tuning.deploy.library import choose, untuned_algorithm
from tuning.records import LayerRecords
from tuning.task import Task

from .support.records import write_record

LAYER = "h=14,w=14,ci=16,co=16,k=3,pad=1"


@pytest.mark.slow  # builds and measures every template's default config
def test_a_record_worse_than_another_algorithms_default_loses_to_it(tmp_path, target, capsys):
    wl = parse_spec(LAYER)
    logs = str(tmp_path / "logs")
    # one poor record: direct at a random config, 0.5 s a call (any default is far faster)
    write_record(logs, target, wl, "direct", seconds=0.5, seed=7)
    choice = choose(wl, "auto", target, logs)
    said = capsys.readouterr().err
    assert choice.tuned and choice.record.seconds < 0.05, (choice.task.algorithm, choice.record.seconds)
    assert choice.config == choice.task.default_config()
    assert said.count("untuned default") >= 3  # every template that fits this layer was measured
    # kept: a second choice measures nothing and picks the same
    again = choose(wl, "auto", target, logs)
    assert "untuned default" not in capsys.readouterr().err
    assert again.task.algorithm == choice.task.algorithm and again.record.seconds == choice.record.seconds


def test_a_record_of_a_changed_template_is_set_aside(tmp_path, target, monkeypatch):
    wl = parse_spec(LAYER)
    logs = str(tmp_path / "logs")
    store = write_record(logs, target, wl, "direct", seconds=6e-6, seed=7)  # 150 GFLOP/s: beats the default, within the peak
    info = json.load(open(os.path.join(store.directory, "task.json")))
    assert info["algorithms"]["direct"]["template_version"] == 1
    assert choose(wl, "direct", target, logs).record.seconds == pytest.approx(6e-6)
    monkeypatch.setattr(get_algorithm("direct"), "template_version", 2)
    assert LayerRecords.existing(logs, target, wl).best(Task(wl, "direct", target.machine)) is None
    assert not choose(wl, "direct", target, logs).tuned  # set aside: no record of this template


@pytest.mark.parametrize("spec,registers,expected", [
    ("h=56,w=56,ci=128,co=128,k=3,pad=1,groups=32", 16, "grouped"),  # ResNeXt
    ("h=14,w=14,ci=104,co=104,k=3,pad=1,groups=13", 32, "grouped"),  # RegNet
    ("h=28,w=28,ci=192,co=96,k=1", 16, "im2col"),  # GoogLeNet's 1x1 (spatial pack's default: 3 GFLOP/s)
    ("h=28,w=28,ci=192,co=96,k=1", 32, "im2col"),
    ("h=3136,w=1,ci=96,co=384,k=1", 16, "im2col"),  # a matmul's rows
    ("h=28,w=28,ci=32,co=32,k=3,pad=1,groups=32", 16, "depthwise"),
    ("h=28,w=28,ci=64,co=128,k=1,stride=2", 16, "im2col"),  # strided 1x1 (was indirect before 6 x 16)
    ("h=56,w=56,ci=64,co=128,k=3,pad=1,stride=2", 16, "im2col"),
    ("h=28,w=28,ci=64,co=128,k=3,pad=1,stride=2", 32, "spatial-pack"),
    ("h=56,w=56,ci=64,co=64,k=3,pad=1", 16, "winograd-f4"),
    ("h=14,w=14,ci=256,co=256,k=3,pad=1", 16, "winograd-f2"),  # F4 pads 14 to 16 (50 against 104 GFLOP/s)
    ("h=7,w=7,ci=512,co=512,k=3,pad=1", 16, "im2col"),
    ("h=224,w=224,ci=3,co=64,k=7,pad=3,stride=2", 16, "direct"),
])
def test_untuned_rule(spec, registers, expected):
    isa = "avx2" if registers == 16 else "avx512"
    machine = Machine(arch="x86_64", mcpu="test", isa=isa, lanes=8 if isa == "avx2" else 16, registers=registers,
                      fma_units=2, l1d=32768, l2=1 << 20, l3=32 << 20, threads=2)
    assert untuned_algorithm(parse_spec(spec), machine) == expected
