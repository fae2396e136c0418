"""tuning/deploy/verify.py and the checks before a library is loaded (tuning/deploy/kernel.py's sidecar,
a bundle entry's): a library is checked before it runs, and `verify` says so in one line."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from schedules.workload import parse_spec
from tuning import cli
from tuning.deploy.kernel import LibraryError, check_sidecar, read_sidecar
from tuning.deploy.library import Choice, export, in_memory_kernel, sidecar
from tuning.deploy.verify import Check, check_library, print_checks
from tuning.target import elf_machine
from tuning.task import Task

from .support.checks import host_target, one_line_error

LAYER = "h=8,ci=8,co=8,k=3,pad=1"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    target = host_target()
    path = str(tmp_path_factory.mktemp("lib") / "k.so")
    export(Choice(Task(parse_spec(LAYER), "direct", target.machine), None, None), target, path)
    return path


def _copy(library, tmp_path, side_edit=None, truncate=None) -> str:
    path = str(tmp_path / "k.so")
    shutil.copy(library, path)
    side = json.load(open(library[:-3] + ".json"))
    if side_edit:
        side_edit(side)
    json.dump(side, open(str(tmp_path / "k.json"), "w"))
    if truncate:
        with open(path, "r+b") as f:
            f.truncate(truncate(os.path.getsize(path)))
    return path


@pytest.mark.parametrize("cut", [lambda n: n - 1, lambda n: n // 2, lambda n: 40])
def test_a_truncated_library_is_refused_in_one_line(cut, library, tmp_path, capsys):
    path = _copy(library, tmp_path, truncate=cut)
    with pytest.raises(LibraryError, match="truncated"):
        elf_machine(path)
    assert cli.main(["verify", path]) == 2
    one_line_error(capsys, "truncated")


def test_a_whole_library_verifies_with_a_summary(library, tmp_path, capsys):
    assert cli.main(["verify", _copy(library, tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1/1 functions ok"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(workload=[1, 2]), "workload: must be a dict"),
    (lambda s: s["workload"].pop("h"), "workload: "),
    (lambda s: s.update(functions=[]), "functions: must be a dict"),
    (lambda s: s["functions"]["conv2d"].update(args="data"), "functions.conv2d: must be"),
    (lambda s: s["functions"]["conv2d"]["args"][0].update(shape=["1"]), "functions.conv2d.args[0]: must be"),
    (lambda s: s["functions"]["conv2d"]["args"][0].update(dtype="float77"), "unknown dtype"),
    (lambda s: s.update(run_function="conv2d_packed"), "run_function: 'conv2d_packed' is not one of"),
    (lambda s: s.update(threads=0), "threads: must be a positive integer"),
    (lambda s: s.update(target="x86"), "target: must be a dict"),
])
def test_sidecar_fields_and_types_are_checked(edit, message, library, tmp_path, capsys):
    path = _copy(library, tmp_path, side_edit=edit)
    with pytest.raises(LibraryError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_sidecar(path)
    assert cli.main(["verify", path]) == 2
    one_line_error(capsys, message)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["functions"]["conv2d"]["args"][1].update(shape=[3, 3, 8, 16]),
     "conv2d: argument 'weight' is float32[3, 3, 8, 16] in the sidecar, but direct computes"),
    (lambda s: s["functions"]["conv2d"]["args"].reverse(), "conv2d: the sidecar's arguments (out, weight, data)"),
    (lambda s: s["functions"].update(pack_weight={"args": []}), "names function 'pack_weight'"),
])
def test_sidecar_arguments_must_be_the_computes(edit, message, library, tmp_path, capsys):
    assert cli.main(["verify", _copy(library, tmp_path, side_edit=edit)]) == 2
    one_line_error(capsys, message)


def test_a_function_the_library_lacks_is_refused(target):
    wl = parse_spec(LAYER)
    kernel = in_memory_kernel(Choice(Task(wl, "direct", target.machine), None, None), target)
    kernel.side = sidecar(Choice(Task(wl, "winograd-f2", target.machine), None, None), target, "k.so", None)
    with pytest.raises(LibraryError, match="does not export 'pack_weight'"):
        check_library(kernel)


def test_print_checks_ends_with_a_summary(capsys):
    status = print_checks([("a", [Check("conv2d", 0.0, 1.0)]), ("b", [Check("conv2d", 2.0, 1.0)])])
    assert status == 1 and capsys.readouterr().out.splitlines()[-1] == "1/2 functions ok"


def test_check_sidecar_names_a_bundle_entry():
    with pytest.raises(LibraryError, match="manifest.json: layer 0: sidecar lacks 'algorithm'"):
        check_sidecar({"workload": {}, "functions": {}, "run_function": "conv2d", "target": {}},
                      "manifest.json: layer 0")


def test_sidecar_paths_cannot_leave_the_library_directory(tmp_path):
    lib = tmp_path / "k.so"
    lib.write_bytes(b"")
    side = {"workload": {}, "functions": {}, "run_function": "conv2d", "target": {}, "library": "../../etc/k.so"}
    (tmp_path / "k.json").write_text(json.dumps(side))
    with pytest.raises(LibraryError, match="must be a file name beside the sidecar"):
        read_sidecar(str(lib))
    (tmp_path / "k.json").write_text("{not json")
    with pytest.raises(LibraryError, match="not valid JSON"):
        read_sidecar(str(lib))
