"""The machine a template schedules for: vector ISA, registers, FMA pipes and caches, from a target.

A template's tile sizes are budgets of this machine's resources, so they are derived here, once,
from the TVM target JSON instead of being guessed in every algorithm file:

  lanes       fp32 lanes of the vector the kernels use (AVX-512 16, AVX2 8, SSE 4, NEON 4): the
              unit of the innermost, vectorised loop; a channel tile is a multiple of it.
  registers   architectural vector registers (32 for AVX-512 and AArch64, 16 for AVX2/SSE): the
              register tile (accumulators + the weight vectors + one broadcast) must fit, or LLVM
              spills accumulators to the stack inside the reduction loop.
  fma_units   vector FMAs issued per cycle per core at `lanes` width: with the FMA latency it fixes
              how many independent accumulators keep the pipes full (`min_fma_chains`), and with
              `lanes` the peak a % of peak divides by (`peak_flops_per_cycle_per_core`).
  l1d, l2, l3 bytes (L1d and L2 per core, L3 total): the working sets of the cache tiles (a packed
              input tile, a weight block, a Winograd batch) are sized against them.

Every figure says where it came from in `source`: "llvm" (LLVM's feature list for the mcpu and
mattr), "table" (a row of this file, with its reason), "profile" (a named ARM board profile),
"sysfs" (this host's /sys/devices/system/cpu), "measured" (set by the caller, see
`with_fma_units`; tuning/peak.py measures it) or "assumed" (a conservative default). This module
imports nothing from tuning/: the caller there combines a measurement with `with_fma_units`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from dataclasses import dataclass, field

ISAS = ("avx512", "avx2", "sse", "neon")
LANES = {"avx512": 16, "avx2": 8, "sse": 4, "neon": 4}  # fp32 lanes of a zmm / ymm / xmm / q register
REGISTERS = {"avx512": 32, "avx2": 16, "sse": 16, "neon": 32}  # zmm0-31; ymm/xmm0-15; v0-v31
ISA_ARCH = {"avx512": "x86_64", "avx2": "x86_64", "sse": "x86_64", "neon": "aarch64"}
FMA_LATENCY = 4  # cycles; Skylake-SP, Ice Lake, Zen 3/4, Cortex-A76/N1 (Haswell 5, A72 7): table-free on purpose
KIB, MIB = 1024, 1024 * 1024

# Vector FMAs per cycle per core at the ISA's width: mcpu -> (isa the row is for, units, reason).
# Where LLVM's mcpu and the mattr give another ISA than the row's, the row does not apply (assumed).
FMA_TABLE: dict[str, tuple[str, int, str]] = {
    "haswell": ("avx2", 2, "two 256-bit FMA pipes (ports 0 and 1)"),
    "broadwell": ("avx2", 2, "two 256-bit FMA pipes (ports 0 and 1)"),
    "skylake": ("avx2", 2, "client Skylake: two 256-bit FMA pipes, no AVX-512"),
    "alderlake": ("avx2", 2, ("AVX-512 fused off; Golden Cove P-cores have two 256-bit FMA pipes "
                              "(Gracemont E-cores: 128-bit, half that)")),
    "raptorlake": ("avx2", 2, "as alderlake: P-cores two 256-bit FMA pipes, no AVX-512"),
    "znver1": ("avx2", 1, ("128-bit FP datapath: a 256-bit FMA is split in two halves, so its two "
                           "128-bit FMA pipes issue one 256-bit FMA per cycle")),
    "znver2": ("avx2", 2, "256-bit datapath, two FMA pipes"),
    "znver3": ("avx2", 2, "256-bit datapath, two FMA pipes (LLVM's vector width of 512 is wrong)"),
    "skylake-avx512": ("avx512", 2, ("Xeon Gold/Platinum: 512-bit FMA on fused ports 0+1 plus port 5 "
                                     "(some Silver/Bronze SKUs have only the first: measure)")),
    "cascadelake": ("avx512", 2, "as skylake-avx512: two 512-bit FMA units on Gold/Platinum"),
    "cooperlake": ("avx512", 2, "as cascadelake: two 512-bit FMA units"),
    "icelake-server": ("avx512", 2, "Sunny Cove server: two 512-bit FMA units (port 0+1 and port 5)"),
    "sapphirerapids": ("avx512", 2, "Golden Cove server: two 512-bit FMA units"),
    "emeraldrapids": ("avx512", 2, "as sapphirerapids: two 512-bit FMA units (164 GFLOP/s a core measured)"),
    "graniterapids": ("avx512", 2, "Redwood Cove server: two 512-bit FMA units"),
    "icelake-client": ("avx512", 1, "client cores fuse ports 0+1 into one 512-bit FMA; no port-5 FMA"),
    "tigerlake": ("avx512", 1, "as icelake-client: one 512-bit FMA unit"),
    "rocketlake": ("avx512", 1, "as icelake-client: one 512-bit FMA unit"),
    "znver4": ("avx512", 1, ("512-bit FMAs execute on the two 256-bit pipes in two halves: one "
                             "512-bit FMA per cycle (the same lanes/s as two 256-bit ones)")),
    "znver5": ("avx512", 2, ("full 512-bit datapath, two 512-bit FMA pipes (mobile Zen 5 keeps 256-bit "
                             "pipes: one, measure)")),
    "generic-x86": ("sse", 1, "SSE has no FMA: a mulps + addps pair per cycle (two 128-bit FP pipes)"),
    "cortex-a53": ("neon", 1, ("in-order, 64-bit NEON datapath: a 128-bit FMLA takes two cycles, so "
                               "effectively half a unit")),
    "cortex-a55": ("neon", 1, "one 128-bit FMLA per cycle (64-bit pipes paired)"),
    "cortex-a72": ("neon", 2, "two 128-bit FP/NEON pipes (F0, F1), both FMLA-capable"),
    "cortex-a76": ("neon", 2, "two 128-bit FMLA pipes"),
    "neoverse-n1": ("neon", 2, "two 128-bit FMLA pipes (the Cortex-A76 core)"),
    "generic-aarch64": ("neon", 2, "a typical out-of-order AArch64 core has two 128-bit FMLA pipes"),
}
# An mcpu the table does not know, or a row whose ISA the mattr changed: the low end of the ISA.
DEFAULT_FMA: dict[str, tuple[int, str]] = {
    "avx512": (1, "one 512-bit FMA per cycle, the lower of the two AVX-512 designs; measure on the host"),
    "avx2": (2, "two 256-bit FMA pipes: every AVX2 core since Haswell but Zen 1"),
    "sse": (1, "SSE has no FMA: a mulps + addps pair per cycle"),
    "neon": (1, "one 128-bit FMLA per cycle, as the little cores (Cortex-A53/A55)"),
}

# Caches (l1d per core, l2 per core or per cluster, l3 total; 0 = none) of the named ARM profiles.
ARM_CACHES: dict[str, tuple[int, int, int, str]] = {
    "cortex-a53": (32 * KIB, 512 * KIB, 0, "32K L1d, 512K L2 shared by the cluster (e.g. 4xA53 boards), no L3"),
    "cortex-a72": (32 * KIB, 1 * MIB, 0, "32K L1d, 1-2M L2 shared by the cluster (Raspberry Pi 4: 1M), no L3"),
    "cortex-a76": (64 * KIB, 512 * KIB, 2 * MIB, ("64K L1d, 256-512K L2 per core (Raspberry Pi 5: 512K), "
                                                  "2-4M L3 (Raspberry Pi 5: 2M)")),
    "neoverse-n1": (64 * KIB, 1 * MIB, 32 * MIB, ("64K L1d, 1M L2 per core, 32M system-level cache "
                                                  "(AWS Graviton2, Ampere Altra)")),
}
# Typical caches of x86 mcpus when the target is not this host (one common part, named).
X86_CACHES: dict[str, tuple[int, int, int, str]] = {
    "haswell": (32 * KIB, 256 * KIB, 8 * MIB, "32K L1d, 256K L2, 8M L3 (Core i7-4770)"),
    "broadwell": (32 * KIB, 256 * KIB, 6 * MIB, "32K L1d, 256K L2, 6M L3 (Core i7-5775C)"),
    "skylake": (32 * KIB, 256 * KIB, 8 * MIB, "32K L1d, 256K L2, 8M L3 (Core i7-6700)"),
    "skylake-avx512": (32 * KIB, 1 * MIB, 27 * MIB + 512 * KIB, "32K L1d, 1M L2, 27.5M L3 (Xeon Gold 6148)"),
    "cascadelake": (32 * KIB, 1 * MIB, 27 * MIB + 512 * KIB, "32K L1d, 1M L2, 27.5M L3 (Xeon Gold 6248)"),
    "icelake-server": (48 * KIB, 1 * MIB + 256 * KIB, 54 * MIB, "48K L1d, 1.25M L2, 54M L3 (Xeon Platinum 8375C)"),
    "sapphirerapids": (48 * KIB, 2 * MIB, 105 * MIB, "48K L1d, 2M L2, 105M L3 (Xeon Platinum 8480+)"),
    "emeraldrapids": (48 * KIB, 2 * MIB, 320 * MIB, "48K L1d, 2M L2, 320M L3 (Xeon Platinum 8592+)"),
    "znver2": (32 * KIB, 512 * KIB, 16 * MIB, "32K L1d, 512K L2, 16M L3 per 4-core CCX"),
    "znver3": (32 * KIB, 512 * KIB, 32 * MIB, "32K L1d, 512K L2, 32M L3 per 8-core CCD"),
    "znver4": (32 * KIB, 1 * MIB, 32 * MIB, "32K L1d, 1M L2, 32M L3 per 8-core CCD"),
    "znver5": (48 * KIB, 1 * MIB, 32 * MIB, "48K L1d, 1M L2, 32M L3 per 8-core CCD"),
}
DEFAULT_CACHES = (32 * KIB, 256 * KIB, 0, "32K L1d, 256K L2, no L3 counted: the low end")

SYSFS_CPU = "/sys/devices/system/cpu"


@dataclass(frozen=True)
class Machine:
    arch: str  # "x86_64" | "aarch64"
    mcpu: str  # LLVM's CPU name, "generic" if the target names none
    isa: str  # "avx512" | "avx2" | "sse" | "neon": the widest vector ISA the target lets LLVM use
    lanes: int  # fp32 lanes of that vector
    registers: int  # architectural vector registers
    fma_units: int  # vector FMAs issued per cycle per core at `lanes` width
    l1d: int  # bytes, per core
    l2: int  # bytes, per core (per cluster on the small ARM cores)
    l3: int  # bytes, total; 0 = none
    threads: int
    source: dict = field(default_factory=dict, hash=False)  # figure -> "kind: reason"

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_target(cls, config: dict, threads: int, host: bool) -> Machine:
        """The machine `config` (a TVM target JSON dict) describes, run with `threads` threads.

        The ISA is what LLVM knows of the mcpu's features, with the mattr applied (a missing mcpu
        on x86 is generic x86-64: SSE); FMA units come from `FMA_TABLE`; caches from sysfs when
        `host` is true and the target's architecture is this machine's, else from the tables.
        """
        from tvm.target import Target, codegen

        target = Target(config)
        arch = _arch(config.get("mtriple") or str(codegen.llvm_get_system_triple()))
        mcpu = config.get("mcpu") or "generic"
        source: dict[str, str] = {}
        if arch == "aarch64":
            isa = "neon"  # Advanced SIMD is mandatory in AArch64; SVE is not used by the kernels
            source["isa"] = "llvm: aarch64 (NEON is architectural)"
            if not codegen.llvm_cpu_has_features("neon", target):
                source["isa"] += "; LLVM reports no neon for this mcpu/mattr, kept anyway"
        else:
            if codegen.llvm_cpu_has_features("avx512f", target):
                isa = "avx512"
            elif codegen.llvm_cpu_has_features(["avx2", "fma"], target):
                isa = "avx2"
            else:
                isa = "sse"
            attrs = ",".join(config.get("mattr") or []) or "none"
            source["isa"] = f"llvm: features of mcpu {mcpu} with mattr {attrs}"
        source["lanes"] = source["registers"] = f"isa: {isa}"

        key = mcpu if mcpu != "generic" else f"generic-{'aarch64' if arch == 'aarch64' else 'x86'}"
        row = FMA_TABLE.get(key)
        if row and row[0] == isa:
            fma_units = row[1]
            source["fma_units"] = f"table: {key}: {row[2]}"
        else:
            fma_units, reason = DEFAULT_FMA[isa]
            why = f"the {key} row is for {row[0]}, not {isa}" if row else f"{key} not in the table"
            source["fma_units"] = f"assumed: {why}; {reason}"

        if host and arch == _arch(os.uname().machine):
            *found, sysfs = host_caches()
            sizes = dict(zip(("l1d", "l2", "l3"), found))
            fallback = _cache_row(arch, mcpu)
            for i, name in enumerate(("l1d", "l2", "l3")):  # a level sysfs lacks (some VMs): the tables
                if name in sysfs:
                    source[name] = sysfs[name]
                else:
                    sizes[name], source[name] = fallback[i], fallback[3]
            l1d, l2, l3 = sizes["l1d"], sizes["l2"], sizes["l3"]
        else:
            l1d, l2, l3, why = _cache_row(arch, mcpu)
            source["l1d"] = source["l2"] = source["l3"] = why
        source["threads"] = "target: the caller's thread count"
        return cls(arch=arch, mcpu=mcpu, isa=isa, lanes=LANES[isa], registers=REGISTERS[isa],
                   fma_units=fma_units, l1d=l1d, l2=l2, l3=l3, threads=int(threads), source=source)

    def with_fma_units(self, n: int, source: str = "measured") -> Machine:
        """This machine with `fma_units` replaced (e.g. by tuning.peak.measured_fma_units on the
        host) and its source recorded."""
        if n < 1:
            raise ValueError(f"fma_units must be positive, got {n}")
        return dataclasses.replace(self, fma_units=int(n), source={**self.source, "fma_units": source})

    # -- what templates use --------------------------------------------------------------------

    def accumulator_budget(self, cols: int | None = None) -> int:
        """Vector registers left for accumulators in a micro-kernel that loads `cols` weight vectors
        per reduction step and broadcasts one input scalar at a time into one register:
        registers - cols - 1. (`cols` None: that of `register_tile()`.) An accumulator tile of
        rows x cols must fit in it, i.e. rows*cols + cols + 1 <= registers; one more live vector
        and LLVM spills accumulators inside the reduction loop, a load and a store per FMA."""
        if cols is None:
            cols = self.register_tile()[1]
        return self.registers - cols - 1

    def register_tile(self, max_rows: int = 8) -> tuple[int, int]:
        """A good (rows, vector cols) accumulator tile: rows broadcast inputs (output pixels) x cols
        weight vectors (cols*lanes output channels), all rows*cols accumulators held in registers.

        The rule: maximise rows*cols (the FMAs per reduction step per loaded vector) subject to
          - rows*cols + cols + 1 <= registers (`accumulator_budget`),
          - rows <= max_rows (an output row of 7 or 14 pixels leaves long remainders beyond ~8),
          - cols a power of two (channel counts are multiples of 16..64, so cols*lanes divides them),
          - loads per step (rows + cols) no more than FMAs (rows*cols): a 1-wide tile is load-bound,
        ties going to more rows (a narrower channel tile fits more layers). It gives the classic
        6x16 SGEMM kernel on AVX2 (6, 2), 6 x 64 channels on AVX-512 (6, 4: oneDNN's brgemm tile,
        24 accumulators) and 6 x 16 on NEON (6, 4); with max_rows=14 the 32-register ISAs reach
        28 accumulators (14, 2). At the default max_rows every ISA's tile (12 or 24 accumulators)
        has at least the `min_fma_chains()` of every row of `FMA_TABLE` (8 at most)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        best, best_relaxed = None, None
        cols = 1
        while cols + 2 <= self.registers:
            rows = min(max_rows, (self.registers - cols - 1) // cols)
            if rows >= 1:
                key = (rows * cols, rows)
                if best_relaxed is None or key > best_relaxed[0]:
                    best_relaxed = (key, (rows, cols))
                if rows + cols <= rows * cols and (best is None or key > best[0]):
                    best = (key, (rows, cols))
            cols *= 2
        return (best or best_relaxed)[1]

    def min_fma_chains(self) -> int:
        """Independent accumulators needed to keep the FMA pipes busy: each FMA waits for the
        previous one on its accumulator (latency `FMA_LATENCY` = 4 cycles), and `fma_units` issue
        every cycle, so 4 x fma_units chains must be in flight. A register tile with fewer
        accumulators runs at (accumulators / min_fma_chains) of peak however well it is fed."""
        return FMA_LATENCY * self.fma_units

    def peak_flops_per_cycle_per_core(self) -> int:
        """2 (multiply + add) x lanes x fma_units: the FP32 FLOPs per cycle a core can retire."""
        return 2 * self.lanes * self.fma_units

    # -- records -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Machine:
        """The inverse of `to_dict`; unknown keys (a newer writer's) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data) - {"source"}
        if missing:
            raise ValueError(f"machine record lacks {sorted(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("isa") not in ISAS:
            raise ValueError(f"machine record: unknown isa {kwargs.get('isa')!r}")
        kwargs["source"] = dict(kwargs.get("source") or {})
        return cls(**kwargs)


# -- helpers ---------------------------------------------------------------------------------------

def _arch(triple: str) -> str:
    """x86_64 or aarch64 from an LLVM triple or a uname machine."""
    head = triple.split("-")[0].lower()
    if head in ("aarch64", "arm64", "aarch64_be"):
        return "aarch64"
    if head in ("x86_64", "amd64"):
        return "x86_64"
    raise ValueError(f"unsupported architecture {head!r} (triple {triple!r}): x86_64 or aarch64 only")


def _cache_row(arch: str, mcpu: str) -> tuple[int, int, int, str]:
    if arch == "aarch64" and mcpu in ARM_CACHES:
        *sizes, why = ARM_CACHES[mcpu]
        return (*sizes, f"profile: {mcpu}: {why}")
    if arch == "x86_64" and mcpu in X86_CACHES:
        *sizes, why = X86_CACHES[mcpu]
        return (*sizes, f"table: {mcpu}: {why}")
    *sizes, why = DEFAULT_CACHES
    return (*sizes, f"assumed: {mcpu} not in the cache tables; {why}")


def parse_size(text: str) -> int:
    """sysfs cache size ("32K", "1024K", "32M", "1G", or plain bytes) in bytes."""
    text = text.strip().upper()
    scale = {"K": KIB, "M": MIB, "G": 1024 * MIB}.get(text[-1:], 1)
    return int(text[:-1] if scale != 1 else text) * scale


def host_caches(root: str = SYSFS_CPU) -> tuple[int, int, int, dict]:
    """(l1d, l2, l3, source) of this host from sysfs: cpu0's L1d and L2, and the L3 total, the sum
    over its distinct instances (one per CCD / socket). A level sysfs lacks is 0 and has no source
    entry."""
    def read(path: str) -> str:
        with open(path) as f:
            return f.read().strip()

    l1d = l2 = 0
    source: dict[str, str] = {}
    for index in sorted(glob.glob(os.path.join(root, "cpu0", "cache", "index*"))):
        try:
            level, kind, size = read(f"{index}/level"), read(f"{index}/type"), parse_size(read(f"{index}/size"))
        except (OSError, ValueError):
            continue
        if level == "1" and kind in ("Data", "Unified"):
            l1d, source["l1d"] = size, f"sysfs: {index}/size"
        elif level == "2" and kind in ("Data", "Unified"):
            l2, source["l2"] = size, f"sysfs: {index}/size"
    instances: dict[str, int] = {}
    for index in glob.glob(os.path.join(root, "cpu[0-9]*", "cache", "index*")):
        try:
            if read(f"{index}/level") != "3":
                continue
            size = parse_size(read(f"{index}/size"))
            shared = read(f"{index}/shared_cpu_list") if os.path.exists(f"{index}/shared_cpu_list") else index
        except (OSError, ValueError):
            continue
        instances[shared] = size
    l3 = sum(instances.values())
    if instances:
        source["l3"] = f"sysfs: {len(instances)} L3 instance(s) under {root}/cpu*/cache"
    return l1d, l2, l3, source


@functools.cache
def host_machine() -> Machine:
    """This host as the default machine of a template (LLVM's detected CPU, every core): what a
    schedule is derived for when no target says otherwise (tests, tools, the emulated device)."""
    from tvm.target import codegen

    if os.uname().machine == "aarch64":
        config = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    else:
        config = {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}
    return Machine.from_target(config, os.cpu_count() or 1, host=True)
