"""Transfer from similar layers: which layers count as similar, how a config is fitted to new
extents, and that a transferred search measures the adapted configs first and trains its cost
model on the neighbours' trials."""

from __future__ import annotations

import json
import os

import pytest
from tvm.s_tir import meta_schedule as ms

from schedules.template import config_from_trace
from schedules.workload import parse_spec
from tuning.records import LayerRecords
from tuning.search.transfer import (
    History,
    Transfer,
    adapt,
    distance,
    pretrain,
    seed_traces,
)
from tuning.search.tune import SearchOptions, tune
from tuning.task import Task

from .support.checks import check_algorithm

pytestmark = pytest.mark.slow  # tuning runs: `pytest -m "not slow"` skips them

NEIGHBOUR = parse_spec("h=16,w=16,ci=8,co=16,k=3,pad=1")
LAYER = parse_spec("h=8,w=8,ci=8,co=32,k=3,pad=1")


def test_distance_keeps_loop_nests_of_one_kind():
    a = parse_spec("h=56,w=56,ci=64,co=64,k=3,pad=1")
    assert distance(a, a) == 0
    assert distance(a, parse_spec("h=28,w=28,ci=128,co=128,k=3,pad=1")) == pytest.approx(4.0)
    assert distance(a, parse_spec("h=56,w=56,ci=64,co=64,k=1")) is None  # another kernel
    assert distance(a, parse_spec("h=56,w=56,ci=64,co=64,k=3,pad=1,stride=2")) is None
    assert distance(a, parse_spec("h=56,w=56,ci=64,co=64,k=3,pad=1,groups=64")) is None  # depthwise
    assert distance(a, parse_spec("h=56,w=56,ci=64,co=64,k=3,pad=1,layout=NCHW")) is None
    near, far = parse_spec("h=28,w=28,ci=64,co=64,k=3,pad=1"), parse_spec("h=7,w=7,ci=64,co=64,k=3,pad=1")
    assert distance(a, near) < distance(a, far)


@pytest.mark.parametrize("layer, config", [
    # 56-wide tiles fitted to 28: inner factors kept where they divide, else the largest divisor below
    ("h=28,w=28,ci=32,co=48,k=3,pad=1", {"tile_y": [8, 7], "tile_x": [2, 4, 7], "tile_c": [1, 4, 16],
                                         "tile_rc": [4, 16], "unroll": 2}),
    ("h=10,w=6,ci=6,co=20,k=3,pad=1,stride=2", {"tile_y": [8, 7], "tile_x": [2, 4, 7], "tile_c": [1, 4, 16],
                                                "tile_rc": [4, 16], "unroll": 3}),
])
def test_adapted_config_tiles_the_new_extents_and_is_correct(layer, config):
    wl = parse_spec(layer)
    task = Task(wl, "direct")
    adapted = config_from_trace(adapt(task, config).trace, task.knob_names)
    assert adapted["unroll"] == config["unroll"]
    extents = {"tile_y": wl.oh, "tile_x": wl.ow, "tile_c": wl.co, "tile_rc": wl.ci}
    for knob, extent in extents.items():
        factors = adapted[knob]
        assert len(factors) == len(config[knob])
        product = 1
        for f in factors:
            product *= f
        assert product == extent, (knob, factors, extent)
        # the innermost factor: the old one when it divides the new extent, else the largest divisor below it
        old = config[knob][-1]
        assert factors[-1] == max(d for d in range(1, min(old, extent) + 1) if extent % d == 0)
    check_algorithm("direct", wl, config=adapted)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("history") / "logs")
    from .support.checks import host_target

    tune([Task(NEIGHBOUR, "direct")], host_target(), logs, 4, SearchOptions(trials_per_iter=2, seed=3, quiet=True))
    return logs


def test_history_finds_the_neighbour_not_the_layer_itself(history, target):
    h = History.scan(history, target, LAYER)
    assert [n.workload for n in h.neighbours] == [NEIGHBOUR]
    assert History.scan(history, target, NEIGHBOUR).neighbours == []  # its own records never count
    assert History.scan(history, target, parse_spec("h=8,w=8,ci=8,co=32,k=1")).neighbours == []


def test_transferred_search_measures_the_adapted_configs_first(history, target, tmp_path):
    task = Task(LAYER, "direct")
    h = History.scan(history, target, LAYER)
    seeds = seed_traces(task, h, 2)
    assert 1 <= len(seeds) <= 2
    expected = [config_from_trace(s, task.knob_names) for s in seeds]
    # the neighbour's best config, fitted: its first seed
    source = Task(NEIGHBOUR, "direct")
    best = LayerRecords.existing(history, target, NEIGHBOUR).best(source)
    assert expected[0] == config_from_trace(adapt(task, config_from_trace(best.trace, source.knob_names)).trace,
                                            task.knob_names)

    store = tune([task], target, str(tmp_path / "logs"), len(seeds) + 2,
                 SearchOptions(trials_per_iter=2, seed=5, quiet=True, transfer=Transfer(history)))
    lines = [json.loads(line) for line in open(os.path.join(store.directory, "database_tuning_record.json"))]
    assert len(lines) == len(seeds) + 2
    workload = ms.database.Workload.from_json(
        json.loads(open(os.path.join(store.directory, "database_workload.json")).readline()))
    measured = [config_from_trace(ms.database.TuningRecord.from_json(body, workload).trace, task.knob_names)
                for _, body in lines]
    assert measured[:len(seeds)] == expected
    assert store.best(task) is not None  # and the reference check passed the top records


def test_no_transfer_means_no_seeds(history, target, tmp_path):
    task = Task(LAYER, "direct")
    assert seed_traces(task, History(), 8) == []
    assert seed_traces(Task(LAYER, "ms-auto"), History.scan(history, target, LAYER), 8) == []


def test_cost_model_pretrained_on_the_neighbours_trials(history, target):
    model = ms.cost_model.XGBModel(num_tuning_cores=2, num_warmup_samples=2, adaptive_training=False)
    fed = pretrain(model, History.scan(history, target, LAYER), ["direct"], target)
    assert fed >= 2 and model.booster is not None and model.data_size == fed
    assert pretrain(ms.cost_model.XGBModel(num_tuning_cores=2), History(), ["direct"], target) == 0


def test_unreadable_history_is_passed_over(history, target, tmp_path, capsys):
    logs = tmp_path / "logs"
    bad = logs / target.tag / "NHWC_broken"
    bad.mkdir(parents=True)
    (bad / "task.json").write_text("{not json")
    assert History.scan(str(logs), target, LAYER).neighbours == []
    assert "skipping" in capsys.readouterr().err


def test_another_cpus_records_are_a_head_start_not_a_result(history, target):
    """A CPU with no records of its own (here an AVX2 build) starts from the other CPUs' records:
    the same layer first, then its neighbours; the configs are refitted to this machine and
    measured, never applied as tuned."""
    from tuning.deploy.library import choose
    from tuning.target import resolve_target

    avx2 = resolve_target('{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}', 2)
    assert avx2.tag != target.tag
    same = History.scan(history, avx2, NEIGHBOUR)  # the layer itself, recorded on the other CPU
    assert [n.workload for n in same.neighbours] == [NEIGHBOUR]
    assert same.neighbours[0].target.tag == target.tag and same.neighbours[0].distance > 0
    seeds = seed_traces(Task(NEIGHBOUR, "direct", avx2.machine), same, 2)
    assert seeds, "the other CPU's best configs are measured first"
    for trace in seeds:  # refitted: inside this machine's template bounds (AVX2: 4 x 8 lanes)
        config = config_from_trace(trace, Task(NEIGHBOUR, "direct").knob_names)
        assert config["tile_c"][-1] <= 4 * avx2.machine.lanes
    assert not choose(NEIGHBOUR, "direct", avx2, history).tuned  # never applied silently
    # and a CPU with records of its own does not look elsewhere
    assert [n.workload for n in History.scan(history, target, LAYER).neighbours] == [NEIGHBOUR]
