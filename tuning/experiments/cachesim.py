"""L1 data-cache misses of a compiled kernel alone: valgrind's cache simulator, or hardware counters.

Neither the Python interpreter nor TVM is in the measured process: a small C driver (compiled here
with gcc) dlopens the exported library, allocates its arguments, fills the three hooks through
which a TVM library calls its runtime (parallel launch: serial, the work of one thread; workspace
allocation: aligned malloc; the error setter), runs the prepare functions and one warm-up call of
the run function, then calls the run function inside `convtune_measured_region`.

Simulation (`simulate`): `valgrind --tool=callgrind --cache-sim=yes --collect-atstart=no
--toggle-collect=convtune_measured_region`. Callgrind's cache simulation is cachegrind's
(I1/D1/LL, write-allocate, LRU); callgrind is used because it can restrict collection to one
function and reports costs per object file: only the costs inside the kernel's own library
(its exported wrappers, its compute functions, and the private parallel-loop bodies, which have no
symbol for cachegrind's per-function output) are counted. The simulated cache parameters (valgrind
reads them from the host's CPUID) are reported with the numbers.

Valgrind cannot decode AVX-512, so simulated kernels are built for the host CPU with AVX-512
switched off (`cachesim_target`); vector loads are 256-bit there.

Counters (`perf_measure`), where `perf stat -e L1-dcache-loads,L1-dcache-load-misses` works:
the driver is run with N measured calls and with none; the difference over N is one call.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import tempfile

from ..target import Target

MEASURED_REGION = "convtune_measured_region"
VALGRIND_MISSING = ("valgrind not found: install it (Debian/Ubuntu: apt-get install -y valgrind) "
                    "for the simulated cache-miss figures")
# libc routines LLVM calls for a kernel's zero-fill and copies (memset/memcpy intrinsics).
HELPERS = re.compile(r"\bmem(set|cpy|move)|__mem(set|cpy|move)")
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")

DRIVER_C = r"""
/* convtune cache-measurement driver: runs one TVM-exported kernel with no TVM runtime loaded. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

/* tvm/runtime/c_backend_api.h: TVMParallelGroupEnv, FTVMParallelLambda */
typedef struct { void* sync_handle; int32_t num_task; } ParallelEnv;
typedef int (*ParallelLambda)(int task_id, ParallelEnv* penv, void* cdata);

#define BAD_PLAN do { \
    fprintf(stderr, "driver: malformed plan (or over its limits: 64 tensors of 8 dims, 32 calls of 16 args)\n"); \
    return 2; \
  } while (0)

static int serial_launch(ParallelLambda f, void* cdata, int num_task) {
  (void)num_task;
  ParallelEnv env = {NULL, 1};
  return f(0, &env, cdata);
}
static int serial_barrier(int task_id, ParallelEnv* penv) { (void)task_id; (void)penv; return 0; }
static void* alloc_workspace(int dev_type, int dev_id, uint64_t nbytes, int code, int bits) {
  (void)dev_type; (void)dev_id; (void)code; (void)bits;
  void* p = NULL;
  return posix_memalign(&p, 64, nbytes ? nbytes : 64) ? NULL : p;
}
static int free_workspace(int dev_type, int dev_id, void* p) { (void)dev_type; (void)dev_id; free(p); return 0; }

static char last_error[8192];
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message) {
  snprintf(last_error, sizeof(last_error), "%s: %s", kind, message);
}
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  size_t len = (size_t)snprintf(last_error, sizeof(last_error), "%s: ", kind);
  for (int32_t i = 0; i < n && len < sizeof(last_error); i++)
    if (parts[i]) len += (size_t)snprintf(last_error + len, sizeof(last_error) - len, "%s", parts[i]);
}

typedef struct { TVMFFISafeCallType fn; const char* name; int nargs; TVMFFIAny args[16]; } Call;

static int invoke(Call* c) {
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  result.type_index = kTVMFFINone;
  int rc = c->fn(NULL, c->args, c->nargs, &result);
  if (rc) fprintf(stderr, "driver: %s failed: %s\n", c->name, last_error);
  return rc;
}

/* The only function the simulator collects in (--toggle-collect). */
__attribute__((noinline)) int convtune_measured_region(Call* c, int reps) {
  int rc = 0;
  for (int i = 0; i < reps && !rc; i++) rc = invoke(c);
  return rc;
}

static void set_hook(void* lib, const char* name, void* value) {
  void** slot = (void**)dlsym(lib, name);
  if (slot) *slot = value;
}

int main(int argc, char** argv) {
  if (argc != 4) { fprintf(stderr, "usage: driver LIBRARY PLAN REPS\n"); return 2; }
  int reps = atoi(argv[3]);
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { fprintf(stderr, "driver: %s\n", dlerror()); return 1; }
  set_hook(lib, "__TVMBackendParallelLaunch", (void*)serial_launch);
  set_hook(lib, "__TVMBackendParallelBarrier", (void*)serial_barrier);
  set_hook(lib, "__TVMBackendAllocWorkspace", (void*)alloc_workspace);
  set_hook(lib, "__TVMBackendFreeWorkspace", (void*)free_workspace);

  FILE* plan = fopen(argv[2], "r");
  if (!plan) { perror(argv[2]); return 1; }
  DLTensor tensors[64];
  int64_t shapes[64][8];
  int ntensors = 0;
  Call calls[32];
  int ncalls = 0, measured = -1;
  char kind[8];
  uint64_t seed = 12345;
  while (fscanf(plan, "%7s", kind) == 1) {
    if (kind[0] == 'B') {  /* B code bits ndim dims... */
      int code, bits, ndim;
      if (fscanf(plan, "%d %d %d", &code, &bits, &ndim) != 3 || ndim > 8 || ntensors >= 64) BAD_PLAN;
      DLTensor* t = &tensors[ntensors];
      size_t count = 1;
      for (int d = 0; d < ndim; d++) {
        long long v;
        if (fscanf(plan, "%lld", &v) != 1) BAD_PLAN;
        shapes[ntensors][d] = v;
        count *= (size_t)v;
      }
      size_t bytes = count * (size_t)(bits / 8);
      void* data = NULL;
      if (posix_memalign(&data, 64, bytes ? bytes : 64)) return 3;
      memset(data, 0, bytes);
      if (code == kDLFloat && bits == 32) {  /* values in [-1, 1]: the kernels' usual inputs */
        float* f = (float*)data;
        for (size_t i = 0; i < count; i++) {
          seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
          f[i] = (float)((seed >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
        }
      }
      t->data = data;
      t->device.device_type = kDLCPU;
      t->device.device_id = 0;
      t->ndim = ndim;
      t->dtype.code = (uint8_t)code;
      t->dtype.bits = (uint8_t)bits;
      t->dtype.lanes = 1;
      t->shape = shapes[ntensors];
      t->strides = NULL;
      t->byte_offset = 0;
      ntensors++;
    } else if (kind[0] == 'C' || kind[0] == 'M') {  /* C|M function nargs indices... */
      char name[256], symbol[300];
      int nargs;
      if (fscanf(plan, "%255s %d", name, &nargs) != 2 || nargs > 16 || ncalls >= 32) BAD_PLAN;
      Call* c = &calls[ncalls];
      snprintf(symbol, sizeof(symbol), "__tvm_ffi_%s", name);
      c->fn = (TVMFFISafeCallType)dlsym(lib, symbol);
      if (!c->fn) { fprintf(stderr, "driver: %s has no function %s\n", argv[1], symbol); return 1; }
      c->name = strdup(name);
      c->nargs = nargs;
      for (int i = 0; i < nargs; i++) {
        int index;
        if (fscanf(plan, "%d", &index) != 1 || index < 0 || index >= ntensors) BAD_PLAN;
        memset(&c->args[i], 0, sizeof(TVMFFIAny));
        c->args[i].type_index = kTVMFFIDLTensorPtr;
        c->args[i].v_ptr = &tensors[index];
      }
      if (kind[0] == 'M') measured = ncalls;
      ncalls++;
    } else {
      fprintf(stderr, "driver: bad plan entry %s\n", kind);
      BAD_PLAN;
    }
  }
  if (measured < 0) { fprintf(stderr, "driver: the plan names no measured call\n"); BAD_PLAN; }
  /* Setup, not collected: prepare functions, then one warm-up call of the measured function. */
  for (int i = 0; i < ncalls; i++)
    if (i != measured && invoke(&calls[i])) return 1;
  if (invoke(&calls[measured])) return 1;
  if (convtune_measured_region(&calls[measured], reps)) return 1;
  return 0;
}
"""


# -- tools ---------------------------------------------------------------------------------------------
def valgrind_path() -> str | None:
    return shutil.which("valgrind")


@functools.lru_cache(maxsize=None)
def valgrind_version() -> str | None:
    path = valgrind_path()
    if not path:
        return None
    return subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()


@functools.lru_cache(maxsize=None)
def perf_counters_available() -> bool:
    """True when `perf stat` can count L1 data-cache loads and misses here (not on most VMs)."""
    if not shutil.which("perf"):
        return False
    try:
        out = subprocess.run(["perf", "stat", "-x,", "-e", "L1-dcache-loads,L1-dcache-load-misses", "true"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    rows = [line.split(",") for line in out.stderr.splitlines() if "L1-dcache" in line]
    return out.returncode == 0 and len(rows) == 2 and all(r[0].strip().isdigit() for r in rows)


def _sysfs_cache(level: int, kinds: tuple[str, ...]) -> tuple[int, int, int] | None:
    """(size bytes, ways, line bytes) of cpu0's cache at `level` of one of `kinds`, from sysfs."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    if not os.path.isdir(base):
        return None
    for index in sorted(os.listdir(base)):
        def read(name: str) -> str:
            return open(os.path.join(base, index, name)).read().strip()
        try:
            if int(read("level")) != level or read("type") not in kinds:
                continue
            size = read("size")
            size_bytes = int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20}[size[-1]] if size[-1] in "KM" else int(size)
            return size_bytes, int(read("ways_of_associativity")), int(read("coherency_line_size"))
        except (OSError, ValueError, KeyError):
            return None
    return None


def cache_flags() -> list[str]:
    """--I1/--D1/--LL from the host's sysfs (LL: its last level), so that the simulated caches are
    this machine's; a level valgrind could not simulate (sets not a power of two) is left to
    valgrind's own CPUID detection, which on some AMD VMs reports a 256 MiB direct-mapped LL."""
    levels = [lvl for lvl in (4, 3, 2) if _sysfs_cache(lvl, ("Unified",))]
    wanted = {"I1": _sysfs_cache(1, ("Instruction",)), "D1": _sysfs_cache(1, ("Data",)),
              "LL": _sysfs_cache(levels[0], ("Unified",)) if levels else None}
    flags = []
    for name, cache in wanted.items():
        if cache is None:
            continue
        size, ways, line = cache
        sets = size // (ways * line) if ways and line else 0
        if sets > 0 and sets & (sets - 1) == 0 and size == sets * ways * line:
            flags.append(f"--{name}={size},{ways},{line}")
    return flags


def cachesim_target(host: Target) -> Target:
    """The host CPU without AVX-512 (valgrind cannot decode it), one thread (valgrind serialises
    threads anyway; the driver runs parallel loops as one task)."""
    config = {k: v for k, v in host.config.items() if k not in ("mattr", "num-cores")}
    config["mattr"] = ["-avx512f"]
    config["num-cores"] = 1
    return Target(f"{host.name}-no-avx512", config, 1)


@functools.lru_cache(maxsize=None)
def driver_binary() -> str:
    """Compile the driver once per process (gcc, with tvm-ffi's C headers)."""
    import tvm_ffi  # noqa: PLC0415

    include = os.path.join(os.path.dirname(tvm_ffi.__file__), "include")
    directory = tempfile.mkdtemp(prefix="convtune-cachesim-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    src, exe = os.path.join(directory, "driver.c"), os.path.join(directory, "driver")
    with open(src, "w") as f:
        f.write(DRIVER_C)
    built = subprocess.run(["gcc", "-std=gnu11", "-O1", "-g", f"-I{include}", src, "-o", exe, "-rdynamic", "-ldl",
                            "-lm"], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"cachesim: the driver does not compile (gcc):\n{built.stderr[-3000:]}")
    return exe


# -- plans ------------------------------------------------------------------------------------------------
DLPACK_CODES = {"int": 0, "uint": 1, "float": 2}


def _dtype(dtype: str) -> tuple[int, int]:
    match = re.fullmatch(r"(int|uint|float)(\d+)", dtype)
    if not match:
        raise ValueError(f"cachesim: unsupported dtype {dtype!r}")
    return DLPACK_CODES[match.group(1)], int(match.group(2))


def write_plan(path: str, buffers: dict[str, tuple[tuple[int, ...], str]],
               setup: list[tuple[str, list[str]]], measured: tuple[str, list[str]]) -> None:
    """buffers: name -> (shape, dtype), in allocation order; setup: calls run first (prepare
    functions), each (function, argument names); measured: the call collected."""
    index = {name: i for i, name in enumerate(buffers)}
    lines = []
    for shape, dtype in buffers.values():
        code, bits = _dtype(dtype)
        lines.append(f"B {code} {bits} {len(shape)} " + " ".join(str(int(d)) for d in shape))
    for fn, args in setup:
        lines.append(f"C {fn} {len(args)} " + " ".join(str(index[a]) for a in args))
    fn, args = measured
    lines.append(f"M {fn} {len(args)} " + " ".join(str(index[a]) for a in args))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plan_from_sidecar(side: dict) -> tuple[dict, list, tuple]:
    """A library's tensors, its prepare calls and its run call, from its sidecar (as Kernel runs it)."""
    run = side["run_function"]
    buffers: dict[str, tuple[tuple[int, ...], str]] = {}
    for fn in side["functions"].values():
        for arg in fn["args"]:
            buffers.setdefault(arg["name"], (tuple(arg["shape"]), arg["dtype"]))
    def names(fn: str) -> list[str]:
        return [a["name"] for a in side["functions"][fn]["args"]]
    setup = [(fn, names(fn)) for fn in side["functions"] if fn not in ("conv2d", run)]
    return buffers, setup, (run, names(run))


# -- callgrind output -----------------------------------------------------------------------------------
def parse_callgrind(path: str, library: str) -> dict:
    """Self costs per (object, function) from an uncompressed callgrind output file; the totals
    of the objects that are `library`, and of everything collected."""
    library = os.path.realpath(library)
    events: list[str] = []
    desc: dict[str, str] = {}
    costs: dict[tuple[str, str], list[int]] = {}
    ob = fn = ""
    skip_next = False
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        if line.startswith("events:"):
            events = line.split()[1:]
            continue
        if line.startswith("desc:"):
            key, _, value = line[5:].strip().partition(":")
            desc[key.strip()] = value.strip()
            continue
        head, sep, value = line.partition("=")
        if sep and head in ("ob", "fn"):
            if head == "ob":
                ob = value.strip()
            else:
                fn = value.strip()
            continue
        if sep and head == "calls":
            skip_next = True  # the next cost line is the callee's inclusive cost
            continue
        if sep and head.isalpha():
            continue  # fl, fi, fe, cob, cfi, cfl, cfn, ... positions and totals
        if not line[0].isdigit() and line[0] not in "+-*":
            continue
        if skip_next:
            skip_next = False
            continue
        numbers = line.split()[1:]  # first field: the position (line number)
        values = costs.setdefault((ob, fn), [0] * len(events))
        for i, v in enumerate(numbers[: len(events)]):
            values[i] += int(v)
    def total(select) -> dict:
        sums = [0] * len(events)
        for key, values in costs.items():
            if select(key):
                sums = [a + b for a, b in zip(sums, values)]
        return dict(zip(events, sums))
    def inside(key) -> bool:
        return bool(key[0]) and os.path.realpath(key[0]) == library

    kernel = total(inside)
    helpers = total(lambda key: not inside(key) and HELPERS.search(key[1]) is not None)
    everything = total(lambda key: True)
    functions = sorted(((fn_, dict(zip(events, v))) for (ob_, fn_), v in costs.items()
                        if ob_ and os.path.realpath(ob_) == library), key=lambda kv: -kv[1].get("Ir", 0))
    return {"events": events, "caches": desc, "kernel": kernel, "helpers": helpers, "collected": everything,
            "functions": [{"function": f, **c} for f, c in functions]}


def miss_rates(counts: dict, calls: int) -> dict:
    """Per-call counts and the miss rates: L1 data misses over L1 data accesses (reads + writes),
    the read-only rate, and LL (last level) misses over data accesses."""
    dr, dw = counts.get("Dr", 0), counts.get("Dw", 0)
    d1r, d1w = counts.get("D1mr", 0), counts.get("D1mw", 0)
    dlr, dlw = counts.get("DLmr", 0), counts.get("DLmw", 0)
    accesses = dr + dw
    return {
        "per_call": {k: counts.get(k, 0) / calls for k in EVENTS},
        "l1_miss_rate": (d1r + d1w) / accesses if accesses else None,
        "l1_read_miss_rate": d1r / dr if dr else None,
        "ll_miss_rate": (dlr + dlw) / accesses if accesses else None,
    }


# -- measurements ---------------------------------------------------------------------------------------
def simulate(library: str, buffers: dict, setup: list, measured: tuple, calls: int = 1,
             workdir: str | None = None, timeout: float = 1800) -> dict:
    """Valgrind's simulated I1/D1/LL misses of `calls` calls of the measured function, counted in
    `library`'s own code only. Raises FileNotFoundError (VALGRIND_MISSING) without valgrind."""
    valgrind = valgrind_path()
    if valgrind is None:
        raise FileNotFoundError(VALGRIND_MISSING)
    workdir = workdir or tempfile.mkdtemp(prefix="convtune-cachesim-")
    os.makedirs(workdir, exist_ok=True)
    plan = os.path.join(workdir, "plan.txt")
    write_plan(plan, buffers, setup, measured)
    out = os.path.join(workdir, "callgrind.out")
    options = ["--tool=callgrind", "--cache-sim=yes", *cache_flags(), "--collect-atstart=no",
               f"--toggle-collect={MEASURED_REGION}", "--compress-strings=no", "--compress-pos=no"]
    command = [valgrind, *options, f"--callgrind-out-file={out}", driver_binary(), os.path.abspath(library),
               plan, str(calls)]
    env = dict(os.environ, TVM_NUM_THREADS="1")
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"cachesim: valgrind failed ({run.returncode}):\n{run.stderr[-3000:]}")
    parsed = parse_callgrind(out, library)
    kernel = parsed["kernel"]
    if not kernel.get("Ir"):
        raise RuntimeError(f"cachesim: nothing was collected inside {library} (see {out})")
    collected_ir = parsed["collected"].get("Ir", 0)
    return {
        "tool": "valgrind callgrind --cache-sim=yes (cachegrind's simulator), "
                f"collection toggled on {MEASURED_REGION}, costs of the kernel library only",
        "valgrind": valgrind_version(),
        "command": " ".join(["valgrind", *options]) + " DRIVER LIBRARY PLAN CALLS",
        "calls": calls,
        "caches": parsed["caches"],
        "counts": kernel,
        **miss_rates(kernel, calls),
        "kernel_share_of_collected_instructions": kernel["Ir"] / collected_ir if collected_ir else None,
        # The libc memset/memcpy the kernel calls (LLVM's lowering of its zero-fills and copies),
        # counted separately: valgrind counts a `rep stos`/`rep movs` byte by byte, which would
        # swamp the access count with accesses the hardware makes 64 bytes at a time.
        "helpers": {"counts": parsed["helpers"], **miss_rates(parsed["helpers"], calls)},
        "functions": parsed["functions"][:8],
    }


def simulate_library(library: str, side: dict, calls: int = 1, workdir: str | None = None) -> dict:
    """`simulate` for a convtune library: prepare functions, then its run function measured."""
    buffers, setup, measured = plan_from_sidecar(side)
    result = simulate(library, buffers, setup, measured, calls, workdir)
    result["function"] = measured[0]
    return result


def perf_measure(library: str, side: dict, calls: int = 20, workdir: str | None = None) -> dict | None:
    """Hardware L1-dcache loads and load misses of one call of the run function (perf stat over
    the driver with `calls` measured calls minus the driver with none); None without counters."""
    if not perf_counters_available():
        return None
    workdir = workdir or tempfile.mkdtemp(prefix="convtune-perf-")
    os.makedirs(workdir, exist_ok=True)
    plan = os.path.join(workdir, "plan.txt")
    write_plan(plan, *plan_from_sidecar(side))

    def count(reps: int) -> dict[str, int]:
        run = subprocess.run(["perf", "stat", "-x,", "-e", "L1-dcache-loads,L1-dcache-load-misses",
                              driver_binary(), os.path.abspath(library), plan, str(reps)],
                             capture_output=True, text=True, env=dict(os.environ, TVM_NUM_THREADS="1"))
        if run.returncode != 0:
            raise RuntimeError(f"perf stat failed: {run.stderr[-2000:]}")
        return parse_perf_csv(run.stderr)

    base, many = count(0), count(calls)
    loads = (many["L1-dcache-loads"] - base["L1-dcache-loads"]) / calls
    misses = (many["L1-dcache-load-misses"] - base["L1-dcache-load-misses"]) / calls
    return {"tool": f"perf stat -e L1-dcache-loads,L1-dcache-load-misses (driver with {calls} calls minus 0 calls)",
            "calls": calls, "l1_loads_per_call": loads, "l1_load_misses_per_call": misses,
            "l1_load_miss_rate": misses / loads if loads > 0 else None}


def parse_perf_csv(text: str) -> dict[str, int]:
    """`perf stat -x,` lines: value,unit,event,..."""
    found = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[2].startswith("L1-dcache") and parts[0].strip().isdigit():
            found[parts[2].split(":")[0]] = int(parts[0])
    for event in ("L1-dcache-loads", "L1-dcache-load-misses"):
        if event not in found:
            raise RuntimeError(f"perf stat reported no {event}: {text[-500:]}")
    return found
