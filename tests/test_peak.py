"""tuning.peak: host ISA detection, the benchmark source per ISA, and one short real measurement."""

from __future__ import annotations

import os
import re

import pytest

from tuning import peak

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


@pytest.mark.skipif(peak.host_isa() != "avx512", reason="needs an AVX-512 host")
def test_measured_fma_units_avx512():
    units = peak.measured_fma_units("avx512")
    assert units in (1, 2)
    ratio = peak.fp32_peak_gflops(1, "avx512") / peak.fp32_peak_gflops(1, "avx2")
    assert units == (2 if ratio >= peak.TWO_UNITS_RATIO else 1)
    with open("/proc/cpuinfo") as f:
        text = f.read()
    if "AuthenticAMD" in text and re.search(r"^cpu family\s*:\s*25$", text, re.MULTILINE):
        assert units == 1  # Zen 4 (family 19h with AVX-512): 512-bit FMAs on 256-bit pipes
    assert peak.measured_fma_units("avx2") is None
