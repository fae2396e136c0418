"""tuning.peak: host ISA detection, the benchmark source per ISA, and one short real measurement."""

from __future__ import annotations

import os
import re
import tempfile

import pytest

from schedules.machine import FMA_TABLE
from tuning import peak
from tuning.peak import ISAS

MACHINE = os.uname().machine


def _flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.split(":")[0].strip() in ("flags", "Features"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_host_isa_matches_cpuinfo():
    flags = _flags()
    if MACHINE == "aarch64":
        expected = "neon"
    elif "avx512f" in flags:
        expected = "avx512"
    elif "avx2" in flags and "fma" in flags:
        expected = "avx2"
    else:
        expected = "sse"
    assert peak.host_isa() == expected
    assert peak.host_isas()[0] == expected
    assert peak.cpuinfo_flags() == flags


def test_isa_from_flags():
    assert peak.isa_from_flags({"sse2", "avx", "avx2", "fma", "avx512f"}, "x86_64") == "avx512"
    assert peak.isa_from_flags({"sse2", "avx", "avx2", "fma"}, "x86_64") == "avx2"
    assert peak.isa_from_flags({"sse2", "avx", "avx2"}, "x86_64") == "sse"  # AVX2 without FMA
    assert peak.isa_from_flags({"sse2"}, "x86_64") == "sse"
    assert peak.isa_from_flags({"asimd", "fp"}, "aarch64") == "neon"
    with pytest.raises(ValueError):
        peak.isa_from_flags(set(), "riscv64")


@pytest.mark.parametrize("isa, intrinsic, header, flag, lanes", [
    ("avx512", "_mm512_fmadd_ps", "immintrin.h", "-mavx512f", 16),
    ("avx2", "_mm256_fmadd_ps", "immintrin.h", "-mfma", 8),
    ("sse", "_mm_mul_ps", "immintrin.h", None, 4),
    ("neon", "vfmaq_f32", "arm_neon.h", None, 4),
])
def test_source_per_isa(isa, intrinsic, header, flag, lanes):
    src = peak.benchmark_source(isa)
    assert intrinsic in src and f"#include <{header}>" in src
    others = {"_mm512_fmadd_ps", "_mm256_fmadd_ps", "_mm_mul_ps", "vfmaq_f32"} - {intrinsic}
    assert not any(o in src for o in others)
    assert f"#define LANES {lanes}" in src
    chains = int(re.search(r"#define CHAINS (\d+)", src).group(1))
    assert chains >= {"avx512": 16, "avx2": 12, "sse": 12, "neon": 16}[isa]
    assert f"#pragma GCC unroll {chains}" in src
    if flag:
        assert flag in peak.KERNELS[isa][8]
    with pytest.raises(ValueError):
        peak.benchmark_source("avx10")


def test_missing_isa_raises():
    missing = "neon" if MACHINE == "x86_64" else "avx512"
    with pytest.raises(ValueError, match=missing):
        peak.fp32_peak_gflops(1, missing)
    with pytest.raises(ValueError):
        peak.measured_fma_units(missing)
    with pytest.raises(ValueError):
        peak.fp32_peak_gflops(1, "avx10")


def test_one_thread_measurement():
    isa = peak.host_isa()
    value = peak.fp32_peak_gflops(1)
    # Bound: two FMA units of this width at 6 GHz.
    lanes = peak.KERNELS[isa][2]
    assert 1.0 < value < 2 * 2 * lanes * 6.0
    report = peak.peak_report([1])
    assert report["isa"] == isa and report["cpu"] and report["gflops"] == {"1": value}  # lru_cache


def _no_benchmark(*args, **kwargs):
    raise AssertionError("a timing was asked for")


@pytest.mark.parametrize("mcpu, units", [("znver4", 1), ("sapphirerapids", 2), ("znver3", 2), ("haswell", 2)])
def test_fma_units_come_from_the_table_not_a_timing(monkeypatch, mcpu, units):
    isa = FMA_TABLE[mcpu][0]
    monkeypatch.setattr(peak, "host_isas", lambda: ISAS[:3])  # the table decides on any x86 host
    monkeypatch.setattr(peak, "fp32_peak_gflops", _no_benchmark)
    peak.measured_fma_units.cache_clear()
    assert peak.measured_fma_units(isa, mcpu) == units


@pytest.mark.parametrize("avx512, avx2, units", [(330.0, 170.0, 2), (117.0, 117.0, 1)])
def test_measured_fma_units_avx512_for_an_mcpu_the_table_lacks(monkeypatch, avx512, avx2, units):
    # The ratio rule on given figures: the test holds however busy the machine is.
    monkeypatch.setattr(peak, "host_isas", lambda: ISAS[:3])
    monkeypatch.setattr(peak, "fp32_peak_gflops", lambda threads, isa: {"avx512": avx512, "avx2": avx2}[isa])
    peak.measured_fma_units.cache_clear()
    assert peak.measured_fma_units("avx512", "some-future-core") == units
    assert peak.measured_fma_units("avx2") is None
    peak.measured_fma_units.cache_clear()


def test_a_measurement_leaves_no_directory_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    getattr(peak._compile, "cache_clear", lambda: None)()
    peak._peak.__wrapped__(1, peak.host_isa())
    assert os.listdir(tmp_path) == []
