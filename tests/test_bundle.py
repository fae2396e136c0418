"""tuning/deploy/bundle.py: a network's layers compiled into a directory of libraries + manifest.json."""

from __future__ import annotations

import json

import pytest

from schedules.workload import parse_spec
from tuning.deploy.bundle import BundleError, read_manifest


def test_a_bundle_without_layers_is_refused(tmp_path):
    json.dump({"manifest_version": 1, "layers": [], "target": {}}, open(tmp_path / "manifest.json", "w"))
    with pytest.raises(BundleError, match="'layers' is empty"):
        read_manifest(str(tmp_path))


def test_a_killed_bundle_compile_leaves_no_manifest_naming_old_libraries(tmp_path, monkeypatch):
    from tuning.deploy import bundle
    from tuning.networks import Layer

    out = tmp_path / "bundle"
    out.mkdir()
    (out / bundle.MANIFEST).write_text('{"layers": []}')

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while building the first library

    monkeypatch.setattr(bundle, "export", killed)
    monkeypatch.setattr(bundle, "choose", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        bundle.compile_bundle([Layer("l", parse_spec("h=8,ci=8,co=8,k=3,pad=1"))], "auto", None, "logs", str(out))
    assert not (out / bundle.MANIFEST).exists()
