"""The machine's measured FP32 peak: an FMA micro-benchmark of the ISA the kernels use, per thread count.

Independent accumulator chains (more than FMA latency x pipes) of the ISA's widest FMA -- 512-bit
`_mm512_fmadd_ps` for AVX-512, 256-bit `_mm256_fmadd_ps` for AVX2, `vfmaq_f32` for NEON, a
mulps + addps pair for SSE -- compiled with the host gcc; the percentage of peak in every table
divides by this number. A 256-bit loop reads half the truth on a core with two 512-bit FMA units
(Intel Xeon since Skylake-SP), and the same as a 512-bit one on AMD Zen 4, which splits each
512-bit FMA over its two 256-bit pipes: comparing the two widths tells the two designs apart
(`measured_fma_units`), which schedules.machine.Machine.with_fma_units then records.

    python -m tuning.peak [--isa avx512|avx2|sse|neon] [--threads 1 2]   # prints peak_report as JSON
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile

from schedules.machine import FMA_TABLE

ISAS = ("avx512", "avx2", "sse", "neon")
# isa -> (header, vector type, lanes, chains, set1, fma(acc[i], a, b), add, store, gcc flags).
# Chains: at least FMA latency (4-5 cycles) x 2 pipes, within the register file (32 zmm / v; 16 ymm / xmm).
KERNELS = {
    "avx512": ("immintrin.h", "__m512", 16, 24, "_mm512_set1_ps", "_mm512_fmadd_ps(acc[i], a, b)",
               "_mm512_add_ps", "_mm512_storeu_ps", ["-mavx512f"]),
    "avx2": ("immintrin.h", "__m256", 8, 12, "_mm256_set1_ps", "_mm256_fmadd_ps(acc[i], a, b)",
             "_mm256_add_ps", "_mm256_storeu_ps", ["-mavx2", "-mfma"]),
    # SSE has no FMA: a dependent multiply and add, two FLOPs a lane like one FMA.
    "sse": ("immintrin.h", "__m128", 4, 12, "_mm_set1_ps", "_mm_add_ps(_mm_mul_ps(acc[i], a), b)",
            "_mm_add_ps", "_mm_storeu_ps", ["-mno-avx", "-mno-fma"]),
    "neon": ("arm_neon.h", "float32x4_t", 4, 24, "vdupq_n_f32", "vfmaq_f32(acc[i], a, b)",
             "vaddq_f32", "vst1q_f32", []),
}
# A 512-bit loop delivering this many times the lanes/s of the 256-bit one: two 512-bit FMA units
# (the ideal is 2.0; Intel's AVX-512 frequency licence takes some of it). About 1.0: one unit.
TWO_UNITS_RATIO = 1.6
RUN_SECONDS = 0.05  # per timed run: calibration + warm-up + 5 runs come to about 0.35 s

TEMPLATE = r"""
#include <%(header)s>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#define CHAINS %(chains)d
#define LANES %(lanes)d
static double run(long iters) {
  double flops = 0;
  #pragma omp parallel reduction(+:flops)
  {
    %(vec)s acc[CHAINS];
    %(vec)s a = %(set1)s(1.0000001f), b = %(set1)s(0.9999999f);
    for (int i = 0; i < CHAINS; i++) acc[i] = %(set1)s((float)i);
    for (long it = 0; it < iters; it++) {
      #pragma GCC unroll %(chains)d
      for (int i = 0; i < CHAINS; i++) acc[i] = %(fma)s;
    }
    float sink[LANES]; %(vec)s s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = %(add)s(s, acc[i]);
    %(store)s(sink, s);
    if (sink[0] == 12345.f) printf("!");
    flops += (double)iters * CHAINS * LANES * 2;
  }
  return flops;
}
int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 0.05, t = 0;
  long iters = 1000;
  /* Calibrate, which also warms the cores up: an idle core runs wide FMAs slowly for a while. */
  for (;;) {
    double t0 = omp_get_wtime(); run(iters); t = omp_get_wtime() - t0;
    if (t > seconds / 4) break;
    iters *= 2;
  }
  iters = (long)(iters * seconds / t) + 1;
  run(iters);
  double best = 0;
  for (int r = 0; r < 5; r++) {
    double t0 = omp_get_wtime(); double f = run(iters); double dt = omp_get_wtime() - t0;
    if (f / dt > best) best = f / dt;
  }
  printf("%%.3f\n", best / 1e9);
  return 0;
}
"""


# -- the host --------------------------------------------------------------------------------------

def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpuinfo_flags(text: str | None = None) -> set[str]:
    """The first processor's feature flags ("flags" on x86, "Features" on aarch64)."""
    for line in (_cpuinfo() if text is None else text).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def isa_from_flags(flags: set[str], machine: str) -> str:
    """The widest FMA ISA of a CPU with these /proc/cpuinfo flags: avx512f -> avx512, avx2 and fma
    -> avx2, else sse; aarch64 -> neon (Advanced SIMD is architectural there)."""
    if machine in ("aarch64", "arm64"):
        return "neon"
    if machine not in ("x86_64", "amd64"):
        raise ValueError(f"no FMA benchmark for a {machine} host (x86_64 or aarch64 only)")
    if "avx512f" in flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "sse"


def host_isa() -> str:
    """The widest FMA ISA this host supports, from /proc/cpuinfo."""
    return isa_from_flags(cpuinfo_flags(), os.uname().machine)


def host_isas() -> tuple[str, ...]:
    """Every ISA this host can run the benchmark with, widest first."""
    widest = host_isa()
    return ("neon",) if widest == "neon" else ISAS[ISAS.index(widest):3]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (aarch64 has none: its implementer and part)."""
    fields: dict[str, str] = {}
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    if "CPU part" in fields:
        return f"{os.uname().machine} (implementer {fields.get('CPU implementer', '?')}, part {fields['CPU part']})"
    return os.uname().machine


def _check(isa: str) -> str:
    if isa not in ISAS:
        raise ValueError(f"unknown ISA {isa!r}; known: {', '.join(ISAS)}")
    if isa not in host_isas():
        raise ValueError(f"this host ({os.uname().machine}, {cpu_model()}) cannot run {isa} FMAs; "
                         f"it supports {', '.join(host_isas())}")
    return isa


# -- the benchmark ---------------------------------------------------------------------------------

def benchmark_source(isa: str) -> str:
    """The C source of the benchmark for `isa`."""
    if isa not in KERNELS:
        raise ValueError(f"unknown ISA {isa!r}; known: {', '.join(ISAS)}")
    header, vec, lanes, chains, set1, fma, add, store, _ = KERNELS[isa]
    return TEMPLATE % {"header": header, "vec": vec, "lanes": lanes, "chains": chains, "set1": set1,
                       "fma": fma, "add": add, "store": store}


def fp32_peak_gflops(threads: int, isa: str | None = None) -> float:
    """The FP32 peak in GFLOP/s at `threads` OpenMP threads with the widest FMA of `isa` (None: the
    widest this host supports). Best of 5 runs of ~0.05 s after a warm-up. Multi-threaded figures
    are checked against the single-thread one: a busy core halves them, so such a reading is
    retried, and the warning says the machine was not idle. An ISA the host lacks: ValueError."""
    return _peak(int(threads), _check(isa or host_isa()))


@functools.cache
def _peak(threads: int, isa: str) -> float:
    with tempfile.TemporaryDirectory(prefix=f"convtune-peak-{isa}-") as directory:  # nothing left in /tmp
        exe = _compile(isa, directory)
        value = _measure(exe, threads)
        if threads > 1:
            single = _peak(1, isa)
            for _ in range(2):
                if value >= 0.75 * threads * single:
                    break
                value = max(value, _measure(exe, threads))
            if value < 0.75 * threads * single:
                _CONTENDED.add((threads, isa))
                print(f"warning: FP32 {isa} peak at {threads} threads measured {value:.0f} GFLOP/s, under "
                      f"{threads} x the single-thread {single:.0f}: another process is using the cores; "
                      "every timing of this run is suspect", file=sys.stderr)
    return value


_CONTENDED: set[tuple[int, str]] = set()  # (threads, isa) whose peak was measured on busy cores


def peak_contended(target, threads: int | None = None) -> bool:
    """Whether `target_peak(target, threads)` was measured while another process used the cores (it
    then reads low: no record should be judged by it)."""
    return (threads or target.threads, target.machine.isa) in _CONTENDED


# The clock no CPU sustains under an all-core FMA load (the fastest boost clocks are 5.5-6.2 GHz on
# one core): with the lanes, FMA units and threads it bounds what any record can truly reach.
MAX_CLOCK_GHZ = 6.0


def ceiling_gflops(machine, threads: int | None = None) -> float:
    """The FP32 rate no kernel for `machine` can exceed at `threads` (default the machine's): 2 x
    lanes x FMA units x threads x MAX_CLOCK_GHZ. From the machine's description alone, so it holds
    whatever the load while it is read; FMA units from the table where it knows the mcpu, else the
    most any core of the ISA has (an assumed count may be low)."""
    units = machine.fma_units
    if not machine.source.get("fma_units", "").startswith("table:"):
        units = max([units] + [row[1] for row in FMA_TABLE.values() if row[0] == machine.isa])
    return 2 * machine.lanes * units * (threads or machine.threads) * MAX_CLOCK_GHZ


@functools.cache
def measured_fma_units(isa: str, mcpu: str | None = None) -> int | None:
    """Vector FMA units per core at `isa`'s width: the table's count (schedules.machine.FMA_TABLE)
    wherever it knows `mcpu` at this ISA -- never a timing, so no template changes with the load
    of the moment -- else a measurement where one can tell; None where neither can.

    avx512: the single-thread 512-bit loop against the 256-bit one. Every AVX-512 core has two
    256-bit FMA pipes; a 512-bit loop with >= TWO_UNITS_RATIO x the lanes/s has two 512-bit units
    (Intel Xeon Gold/Platinum), about the same lanes/s means one (AMD Zen 4 splits 512-bit FMAs
    over its 256-bit pipes; Intel client cores and some Xeon Silver). Other ISAs: None (a per-cycle
    figure needs the clock, which a VM does not report reliably)."""
    _check(isa)
    row = FMA_TABLE.get(mcpu or "")
    if row and row[0] == isa:
        return row[1]
    if isa != "avx512":
        return None
    ratio = fp32_peak_gflops(1, "avx512") / fp32_peak_gflops(1, "avx2")
    return 2 if ratio >= TWO_UNITS_RATIO else 1


def target_peak(target, threads: int | None = None) -> float | None:
    """The peak of the ISA `target`'s kernels use, measured on this host at `threads` (default the
    target's); None for a target that is not this machine (its peak is unknown here). An ISA below
    the host's (mcpu haswell on an AVX-512 host) is measured at that ISA."""
    if not target.is_host or target.machine.isa not in host_isas():
        return None
    return fp32_peak_gflops(threads or target.threads, target.machine.isa)


def peak_report(threads_list, isa: str | None = None) -> dict:
    """{"isa", "cpu", "gflops": {"<threads>": GFLOP/s}} for each thread count."""
    isa = _check(isa or host_isa())
    return {"isa": isa, "cpu": cpu_model(),
            "gflops": {str(t): fp32_peak_gflops(int(t), isa) for t in threads_list}}


def _compile(isa: str, directory: str) -> str:
    src, exe = os.path.join(directory, "peak.c"), os.path.join(directory, "peak")
    with open(src, "w") as f:
        f.write(benchmark_source(isa))
    subprocess.run(["gcc", "-O2", *KERNELS[isa][8], "-fopenmp", src, "-o", exe], check=True)
    return exe


def _measure(exe: str, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="true")
    out = subprocess.run([exe, str(RUN_SECONDS)], check=True, capture_output=True, text=True, env=env)
    return float(out.stdout.strip())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Measure the FP32 FMA peak of this host.")
    parser.add_argument("--isa", choices=ISAS, default=None, help="default: the widest the host supports")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts (default: 1 and all cores)")
    args = parser.parse_args()
    counts = args.threads or sorted({1, os.cpu_count() or 1})
    print(json.dumps(peak_report(counts, args.isa)))
