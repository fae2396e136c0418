"""schedules.machine: the machine description of each named target, and the budgets derived from it."""

from __future__ import annotations

import glob
import json
import os

import pytest

from schedules.machine import ARM_CACHES, FMA_TABLE, Machine, host_caches, parse_size

X86 = {"kind": "llvm", "num-cores": 2}
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}


def x86(mcpu=None, **extra):
    return dict(X86, **({"mcpu": mcpu} if mcpu else {}), **extra)


def arm(mcpu=None):
    return dict(AARCH64, **({"mcpu": mcpu} if mcpu else {}))


# (config, isa, lanes, registers, fma_units, peak flops/cycle/core)
NAMED = {
    "haswell": (x86("haswell"), "avx2", 8, 16, 2, 32),
    "skylake-avx512": (x86("skylake-avx512"), "avx512", 16, 32, 2, 64),
    "emeraldrapids": (x86("emeraldrapids"), "avx512", 16, 32, 2, 64),
    "znver4": (x86("znver4"), "avx512", 16, 32, 1, 32),
    "znver3": (x86("znver3"), "avx2", 8, 16, 2, 32),  # LLVM's vector width says 512: not used
    "x86-generic": (x86(), "sse", 4, 16, 1, 8),
    "aarch64": (arm(), "neon", 4, 32, 2, 16),
    "aarch64-a53": (arm("cortex-a53"), "neon", 4, 32, 1, 8),
    "aarch64-a72": (arm("cortex-a72"), "neon", 4, 32, 2, 16),
    "aarch64-a76": (arm("cortex-a76"), "neon", 4, 32, 2, 16),
    "aarch64-n1": (arm("neoverse-n1"), "neon", 4, 32, 2, 16),
}


@pytest.mark.parametrize("name", NAMED)
def test_named_target(name):
    config, isa, lanes, registers, fma_units, peak = NAMED[name]
    m = Machine.from_target(config, threads=config["num-cores"], host=False)
    assert (m.isa, m.lanes, m.registers, m.fma_units) == (isa, lanes, registers, fma_units)
    assert m.peak_flops_per_cycle_per_core() == peak
    assert m.min_fma_chains() == 4 * fma_units
    assert m.arch == ("aarch64" if isa == "neon" else "x86_64")
    assert m.mcpu == config.get("mcpu", "generic")
    assert m.threads == config["num-cores"]
    assert m.source["fma_units"].startswith("table:")
    assert m.source["isa"].startswith("llvm:")
    assert m.l1d > 0 and m.l2 > m.l1d and m.l3 >= 0


@pytest.mark.parametrize("mcpu", sorted(ARM_CACHES))
def test_arm_profile_caches(mcpu):
    m = Machine.from_target(arm(mcpu), threads=4, host=False)
    assert (m.l1d, m.l2, m.l3) == ARM_CACHES[mcpu][:3]
    assert all(m.source[k].startswith("profile:") for k in ("l1d", "l2", "l3"))


def test_cache_figures():
    kib, mib = 1024, 1024 * 1024
    a53 = Machine.from_target(arm("cortex-a53"), 4, host=False)
    assert (a53.l1d, a53.l2, a53.l3) == (32 * kib, 512 * kib, 0)
    a76 = Machine.from_target(arm("cortex-a76"), 4, host=False)
    assert (a76.l1d, a76.l2, a76.l3) == (64 * kib, 512 * kib, 2 * mib)
    zen3 = Machine.from_target(x86("znver3"), 2, host=False)
    assert (zen3.l1d, zen3.l2, zen3.l3) == (32 * kib, 512 * kib, 32 * mib)
    emr = Machine.from_target(x86("emeraldrapids"), 2, host=False)
    assert (emr.l1d, emr.l2) == (48 * kib, 2 * mib)
    unknown = Machine.from_target(x86("bonnell"), 2, host=False)
    assert (unknown.l1d, unknown.l2, unknown.l3) == (32 * kib, 256 * kib, 0)
    assert unknown.source["l1d"].startswith("assumed:")


def test_mattr_and_unknown_mcpu():
    no512 = Machine.from_target(x86("znver4", mattr=["-avx512f"]), 2, host=False)
    assert (no512.isa, no512.lanes, no512.registers) == ("avx2", 8, 16)
    assert no512.source["fma_units"].startswith("assumed:")  # the znver4 row is for AVX-512
    plus512 = Machine.from_target(x86("haswell", mattr=["+avx512f"]), 2, host=False)
    assert (plus512.isa, plus512.lanes, plus512.registers) == ("avx512", 16, 32)
    a78 = Machine.from_target(arm("cortex-a78"), 4, host=False)
    assert (a78.isa, a78.fma_units) == ("neon", 1)
    assert a78.source["fma_units"].startswith("assumed:")


def _kinds():
    for config, *_ in NAMED.values():
        yield Machine.from_target(config, threads=2, host=False)


def test_register_tile_fits_the_budget():
    for m in _kinds():
        for max_rows in range(1, 17):
            rows, cols = m.register_tile(max_rows=max_rows)
            assert 1 <= rows <= max_rows and cols >= 1
            assert rows * cols + cols + 1 <= m.registers, (m.isa, max_rows, rows, cols)
            assert rows * cols <= m.accumulator_budget(cols)
        rows, cols = m.register_tile()
        assert rows * cols >= m.min_fma_chains()


def test_register_tile_values():
    tiles = {m.isa: (m.register_tile(), m.register_tile(max_rows=14)) for m in _kinds()}
    assert tiles["avx2"] == ((6, 2), (6, 2))  # the classic 6x16 SGEMM kernel
    assert tiles["avx512"] == ((6, 4), (14, 2))
    assert tiles["neon"] == ((6, 4), (14, 2))
    assert tiles["sse"] == ((6, 2), (6, 2))
    avx2 = Machine.from_target(x86("haswell"), 2, host=False)
    assert avx2.accumulator_budget() == 13 and avx2.accumulator_budget(4) == 11


def test_round_trip_and_with_fma_units():
    for m in _kinds():
        back = Machine.from_dict(json.loads(json.dumps(m.to_dict())))
        assert back == m and back.source == m.source
    zen4 = Machine.from_target(x86("znver4"), 2, host=False)
    two = zen4.with_fma_units(2, "measured: test")
    assert (two.fma_units, two.source["fma_units"], zen4.fma_units) == (2, "measured: test", 1)
    assert two.peak_flops_per_cycle_per_core() == 64
    with pytest.raises(ValueError):
        Machine.from_dict({"arch": "x86_64"})
    with pytest.raises(ValueError):
        zen4.with_fma_units(0)


def test_table_rows_have_reasons():
    for mcpu, (isa, units, reason) in FMA_TABLE.items():
        assert isa in ("avx512", "avx2", "sse", "neon") and units in (1, 2) and len(reason) > 10, mcpu


def _sysfs_index(level, kind):
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        with open(f"{index}/level") as f, open(f"{index}/type") as g:
            if f.read().strip() == level and g.read().strip() == kind:
                with open(f"{index}/size") as h:
                    return parse_size(h.read())
    return None


@pytest.mark.skipif(not os.path.exists("/sys/devices/system/cpu/cpu0/cache/index0/size"),
                    reason="no sysfs cache description on this host")
def test_host_caches_from_sysfs():
    from tvm.target import codegen

    config = {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": os.cpu_count()}
    if os.uname().machine == "aarch64":
        config["mtriple"] = "aarch64-linux-gnu"
    m = Machine.from_target(config, threads=os.cpu_count(), host=True)
    assert m.l1d > 0 and m.l2 > m.l1d
    assert m.l1d == _sysfs_index("1", "Data") and m.source["l1d"].startswith("sysfs:")
    assert m.l2 == _sysfs_index("2", "Unified") and m.source["l2"].startswith("sysfs:")
    if m.source["l3"].startswith("sysfs:"):
        assert m.l3 >= _sysfs_index("3", "Unified") > m.l2


def test_host_caches_parsing(tmp_path):
    def cache(cpu, index, level, kind, size, shared):
        d = tmp_path / f"cpu{cpu}" / "cache" / f"index{index}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (d / name).write_text(f"{value}\n")

    for cpu in range(4):  # two L3 instances (two CCDs) of 32M each
        cache(cpu, 0, 1, "Data", "48K", cpu)
        cache(cpu, 1, 1, "Instruction", "32K", cpu)
        cache(cpu, 2, 2, "Unified", "2048K", cpu)
        cache(cpu, 3, 3, "Unified", "32M", "0-1" if cpu < 2 else "2-3")
    l1d, l2, l3, source = host_caches(str(tmp_path))
    assert (l1d, l2, l3) == (48 * 1024, 2 * 1024 * 1024, 64 * 1024 * 1024)
    assert set(source) == {"l1d", "l2", "l3"}
    assert parse_size("1024K") == 1 << 20 and parse_size("32M") == 32 << 20 and parse_size("512") == 512
