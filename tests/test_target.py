"""tuning/target.py: what a target may be."""

from __future__ import annotations

import pytest

from tuning.target import TargetError, resolve_target


@pytest.mark.parametrize("text, message", [
    ('{"kind": "c"}', "kind 'c' is not supported"),
    ('{"kind": "cuda"}', "kind 'cuda' is not supported"),
    ('{"kind": "llvm", "num-cores": 0}', "num-cores must be a positive integer"),
    ('{"kind": "llvm", "num-cores": -2}', "num-cores must be a positive integer"),
    ('{"kind": "llvm", "num-cores": "2"}', "num-cores must be a positive integer"),
    ('{"kind": "llvm", "num-cores": true}', "num-cores must be a positive integer"),
])
def test_targets_are_llvm_with_a_positive_core_count(text, message):
    with pytest.raises(TargetError, match=message):
        resolve_target(text)


def test_a_known_mcpu_is_accepted():
    assert resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}').tag.startswith(
        "aarch64-cortex-a72")
