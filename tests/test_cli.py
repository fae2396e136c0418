"""The command line's contract: what it refuses, what it says, and what its help promises."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import tuning.cli as cli
from schedules.template import Unsupported
from schedules.workload import parse_spec
from tuning.task import algorithm_names, tasks_for

ROOT = Path(__file__).resolve().parents[1]


def test_a_typo_in_an_algorithm_list_is_refused(capsys):
    """`direct,winogard` once tuned direct alone, silently."""
    assert cli.main(["tune", "h=8,ci=8,co=8,k=3,pad=1", "--algorithm", "direct,winogard", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "winogard: unknown algorithm" in err
    with pytest.raises(Unsupported, match="winogard: unknown algorithm"):
        algorithm_names("direct,winogard")


def test_an_algorithm_list_skips_known_ones_that_do_not_fit():
    wl = parse_spec("h=8,ci=8,co=8,k=3,stride=2,pad=1")  # Winograd needs stride 1
    assert [t.algorithm for t in tasks_for(wl, "direct,winograd")] == ["direct"]
    assert algorithm_names(" direct , im2col ") == ["direct", "im2col"]


@pytest.mark.parametrize("device_info,noted", [({"emulated": True, "machine": "aarch64"}, True),
                                               ({"machine": "aarch64"}, False), ({}, False)])
def test_emulated_note_only_for_an_emulated_device(capsys, device_info, noted):
    """Every RPC tune once printed the EMULATED note, real boards included."""
    from tuning.remote.emulator import EMULATED_NOTE

    cli._print_emulated_note(SimpleNamespace(device_info=device_info))
    assert (EMULATED_NOTE in capsys.readouterr().out) == noted


def test_no_note_for_a_local_run(capsys):
    cli._print_emulated_note(None)
    assert capsys.readouterr().out == ""


def test_the_docstring_lists_every_command():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    listed = set(re.findall(r"^  (\w+) ", cli.__doc__, re.M))
    assert set(commands) == listed


def test_defaults_come_from_the_dataclasses_they_configure():
    from tuning.search.measure import MeasureConfig
    from tuning.search.tune import SearchOptions

    args = cli.build_parser().parse_args(["tune"])
    measure, options = MeasureConfig(), SearchOptions()
    assert (args.min_repeat_ms, args.run_timeout, args.flush_cache) == (
        measure.min_repeat_ms, measure.run_timeout, measure.flush_cache)
    assert (args.batch, args.strategy, args.cost_model) == (options.trials_per_iter, options.strategy,
                                                             options.cost_model)


def test_every_documented_file_exists():
    """pyproject.toml once pointed at a docs/records.md that did not exist."""
    for source in ("README.md", "pyproject.toml", "docs/architecture.md", "docs/formats.md"):
        text = (ROOT / source).read_text()
        for path in set(re.findall(r"\b((?:docs|scripts|tests|schedules|tuning)/[\w./-]+\.(?:md|py|sh|json))\b", text)):
            assert (ROOT / path).exists(), f"{source} names {path}, which does not exist"


def test_peak_json(capsys):
    assert cli.main(["peak", "--json", "--threads", "1"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["isa"] in ("avx512", "avx2", "sse", "neon") and float(report["gflops"]["1"]) > 0


def test_peak_of_a_cross_target_is_unknown(capsys):
    assert cli.main(["peak", "--target", "aarch64-a72", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["isa"] == "neon" and set(report["gflops"].values()) == {None}
