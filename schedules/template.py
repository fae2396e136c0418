"""What every algorithm file provides, and the knobs its schedule template samples.

An algorithm is a compute (TE) plus a schedule template. Knobs are MetaSchedule sampling
instructions (`sample_perfect_tile`, `sample_categorical`) named by the template, so that a
tuning record's trace decisions read back as a config `{knob: value}` that can be re-applied to
any function built from the same compute (the one-shot `conv2d`, or the run phase alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tvm import s_tir, te, tirx

from .machine import Machine, host_machine
from .workload import Workload

# Categorical unroll knob: MetaSchedule's own convention, so its MutateUnroll mutator and its
# RewriteParallelVectorizeUnroll postprocessor understand it.
UNROLL_KEY = "meta_schedule.unroll_explicit"
UNROLL_STEPS = (0, 16, 64, 512)


class Unsupported(ValueError):
    """A layer outside an algorithm's limits; the message names the algorithm and the limit."""

    def __init__(self, algorithm: str, reason: str):
        super().__init__(f"{algorithm}: {reason}")
        self.algorithm = algorithm
        self.reason = reason


class Knobs:
    """The tunable decisions of one template application, and the machine it schedules for.

    mode "sample": decisions left to MetaSchedule (a search space); "default": the template's
    own heuristic config; "fixed": replay `config` (knob name -> decision). `machine` (default:
    this host) is what the template derives its default tiles and bounds from; the knob names
    and their number never depend on it, so a record replays on any machine.
    """

    def __init__(self, sch: s_tir.Schedule, config: dict | None = None, default: bool = False,
                 machine: Machine | None = None):
        self.sch = sch
        self.config = config
        self.default = default
        self.machine = machine or host_machine()
        self.names: list[str] = []

    def _decision(self, name: str, fallback):
        self.names.append(name)
        if self.config is not None:
            if name not in self.config:
                raise KeyError(f"config has no value for knob {name!r}; it has {sorted(self.config)}")
            return self.config[name]
        return fallback() if self.default else None

    def split(self, name: str, loop, n: int, max_inner: int = 64, prefer: tuple[int, ...] = ()) -> list:
        """Tile `loop` into `n` perfect factors; `prefer` gives the default innermost-first wishes."""
        extent = int(self.sch.get(loop).extent)
        decision = self._decision(name, lambda: default_tile(extent, n, prefer, max_inner))
        factors = self.sch.sample_perfect_tile(loop, n=n, max_innermost_factor=max_inner,
                                               decision=list(decision) if decision is not None else None)
        return self.sch.split(loop, factors, preserve_unit_iters=True)

    def choice(self, name: str, candidates: tuple[int, ...], default_index: int = 0):
        index = self._decision(name, lambda: default_index)
        probs = [1.0 / len(candidates)] * len(candidates)
        return self.sch.sample_categorical(list(candidates), probs, decision=index)

    def unroll(self, default_index: int = 1) -> None:
        """How far LLVM may unroll the outer loop nests (MetaSchedule's root-block annotation,
        turned into pragmas by its RewriteParallelVectorizeUnroll postprocessor)."""
        step = self.choice("unroll", UNROLL_STEPS, default_index)
        self.sch.annotate(self.sch.get_sblock("root"), UNROLL_KEY, step)


def largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of `n` not above `cap` (1 at least)."""
    return max(d for d in range(1, max(1, min(cap, n)) + 1) if n % d == 0)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def register_tile(machine: Machine, rows_extent: int, vector_extent: int, max_rows: int = 8,
                  max_vectors: int = 4, step: int = 1) -> tuple[int, int]:
    """The default accumulator tile of a micro-kernel: (rows, width) with rows | rows_extent (the
    broadcast axis: output pixels, or output channels in NCHW) and width | vector_extent (the
    vectorised axis), width a multiple of `step` (a packed panel) where the extent allows.

    The tile lives in registers: rows x ceil(width / lanes) accumulators, plus one weight vector
    per accumulator column and one broadcast register, must fit the machine's vector registers,
    or LLVM spills accumulators inside the reduction loop. Among the tiles that fit: the most FMA
    lanes per reduction step (rows x width), then the fewest idle lanes (a width that fills whole
    vectors), then the fewest loads per step (rows + vectors). AVX2 (16 registers, 8 lanes) gets
    4 x 16 where the extents allow, AVX-512 (32, 16) 4 x 64, NEON (32, 4) 6 x 16."""
    lanes, best = machine.lanes, None
    widths = [w for w in divisors(vector_extent) if w <= max_vectors * lanes and w % step == 0] or [step]
    for rows in (r for r in divisors(rows_extent) if r <= max_rows):
        for width in widths:
            vectors = -(-width // lanes)
            if rows * vectors + vectors + 1 > machine.registers:
                continue
            key = (rows * width, width / (vectors * lanes), -(rows + vectors), rows)
            if best is None or key > best[0]:
                best = (key, (rows, width))
    return best[1] if best else (1, widths[0])


def default_tile(extent: int, n: int, prefer: tuple[int, ...], max_inner: int) -> list[int]:
    """Perfect factors of `extent`, innermost first as close to `prefer` as divisibility allows."""
    factors = [1] * n
    rest = extent
    wishes = list(prefer) + [1] * (n - 1 - len(prefer))
    for pos, wish in enumerate(wishes[: n - 1]):
        cap = min(wish, rest, max_inner if pos == 0 else rest)
        best = largest_divisor(rest, cap)
        factors[n - 1 - pos] = best
        rest //= best
    factors[0] = rest
    return factors


def config_from_trace(trace: s_tir.Trace, names: list[str]) -> dict:
    """Pair a tuned trace's sampling decisions, in order, with the template's knob names."""
    values = []
    for inst in trace.insts:
        if inst.kind.name in ("SamplePerfectTile", "SampleCategorical"):
            decision = trace.decisions.get(inst) if hasattr(trace.decisions, "get") else trace.decisions[inst]
            if inst.kind.name == "SamplePerfectTile":
                values.append([int(v) for v in decision])
            else:
                values.append(int(decision))
    if len(values) != len(names):
        raise ValueError(f"trace has {len(values)} decisions but the template names {len(names)} knobs")
    return dict(zip(names, values))


@dataclass(frozen=True)
class Arg:
    name: str
    shape: tuple[int, ...]
    dtype: str
    written: bool = False  # computed by the function (its output, a workspace), not read from the caller

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Phase:
    """One exported function: its PrimFunc and its arguments, in order."""

    func: tirx.PrimFunc
    args: list[Arg]


def epilogue(wl: Workload, out: te.Tensor) -> tuple[dict[str, te.Tensor], te.Tensor]:
    """The workload's epilogue as a stage after the conv's output, and its extra arguments
    (`bias` [CO], `residual` [out shape]): `({}, out)` for a bare conv. Every algorithm ends its
    run function with it; `fuse_epilogue` then inlines it into the block that writes the conv's
    output (after the template placed that block in its tile), so no extra pass over the output."""
    ep = wl.epilogue
    if ep.empty:
        return {}, out
    args: dict[str, te.Tensor] = {}
    if ep.bias:
        args["bias"] = te.placeholder((wl.co,), wl.dtype, name="bias")
    if ep.residual:
        args["residual"] = te.placeholder(wl.out_shape, wl.dtype, name="residual")
    channel_axis = 3 if wl.layout == "NHWC" else 1

    def value(*idx):
        v = out[idx]
        if ep.bias:
            v = v + args["bias"][idx[channel_axis]]
        if ep.residual:
            v = v + args["residual"][idx]
        return activation(ep, v, wl.dtype)

    return args, te.compute(wl.out_shape, value, name="epilogue")


def activation(ep, v, dtype: str = "float32"):
    """The epilogue's activation of one float32 value `v`, as vector-friendly expressions.

    Selects, not max/min: LLVM's maxnum-style max(NaN, 0) is 0, so a NaN (a diverged model, a NaN
    input) would leave as a plausible number; ONNX Runtime and the float64 reference carry it
    through, and so does a compare that is false for NaN. hardswish and silu multiply by `v`
    itself, so a NaN stays NaN whatever its factor is."""
    if ep.activation == "relu":
        zero = tirx.const(0.0, dtype)
        return tirx.Select(v < zero, zero, v)
    if ep.activation == "clip":
        lo, hi = tirx.const(ep.clip[0], dtype), tirx.const(ep.clip[1], dtype)
        return tirx.Select(v < lo, lo, tirx.Select(v > hi, hi, v))
    if ep.activation == "hardswish":  # x * clip(x + 3, 0, 6) / 6, as ONNX's HardSwish (alpha 1/6, beta 1/2)
        zero, six = tirx.const(0.0, dtype), tirx.const(6.0, dtype)
        t = v + tirx.const(3.0, dtype)
        return v * (tirx.Select(t < zero, zero, tirx.Select(t > six, six, t)) / six)
    if ep.activation == "silu":  # x * sigmoid(x) = x / (1 + exp(-x))
        return v / (tirx.const(1.0, dtype) + fast_exp(-v))
    return v


def fast_exp(x):
    """exp(x) for float32 as a polynomial LLVM vectorises (libm's expf is one scalar call per
    lane): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes' degree-7 polynomial, 2^n built in the
    exponent bits. Relative error about 2e-7 (TOPI's fast_exp, written for one value so that it
    inlines into a kernel's write-back). x is clamped to [-88.38, 88.38]; NaN reads as -88.38."""
    f32, i32 = "float32", "int32"
    lo, hi = tirx.const(-88.3762626647950, f32), tirx.const(88.3762626647949, f32)
    x = tirx.Select(x > lo, tirx.Select(x < hi, x, hi), lo)
    n = tirx.floor(x * tirx.const(1.44269504088896341, f32) + tirx.const(0.5, f32))
    r = x - n * tirx.const(0.693359375, f32) + n * tirx.const(2.12194440e-4, f32)
    p = tirx.const(1.9875691500e-4, f32)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + tirx.const(c, f32)
    p = p * r * r + r + tirx.const(1.0, f32)
    two_n = tirx.reinterpret(f32, tirx.shift_left(n.astype(i32) + tirx.const(127, i32), tirx.const(23, i32)))
    return p * two_n


def quant_placeholders(wl: Workload) -> dict[str, te.Tensor]:
    return {name: te.placeholder(shape, dtype, name=name) for name, shape, dtype in wl.quant_args}


def quantized_epilogue(wl: Workload, acc, q: dict[str, te.Tensor], name: str = "output") -> te.Tensor:
    """The quantized epilogue (schedules.workload.Quant) as a stage of the output's shape (NHWC):
    `acc(n, y, x, c)` gives the int32 accumulator of an output element, `q` the quant arguments
    (`quant_placeholders`). Shared by the int8 templates; each places it in its register tile."""
    quant, ep = wl.quant, wl.epilogue
    f32 = "float32"

    def value(n, y, x, c):
        v = acc(n, y, x, c)
        if ep.bias:
            v = v + q["bias"][c]
        if quant.out == "int32":
            return tirx.max(v, tirx.const(0, "int32")) if ep.activation == "relu" else v
        scale = q["scale"][c if quant.scale == "channel" else 0]
        f = v.astype(f32) * scale  # one float32 multiply: the rounding the reference makes
        if quant.out == "float32":
            return activation(ep, f, f32)
        # Requantize: round half to even (llvm.nearbyint in the default rounding mode: vroundps),
        # add the zero point, saturate to the type narrowed by the folded activation. The clamp is
        # done in float32 (exact: integer values below 2**24, and anything larger saturates), so a
        # product beyond int32 never reaches the float->int conversion.
        zp = q["y_zero_point"][0].astype("int32")
        info_lo, info_hi = (0, 255) if quant.out == "uint8" else (-128, 127)
        lo, hi = tirx.const(info_lo, "int32"), tirx.const(info_hi, "int32")
        if ep.activation == "relu":
            lo = tirx.max(lo, zp)
        elif ep.activation == "clip":
            ys = q["y_scale"][0]
            lo = tirx.max(lo, zp + tirx.nearbyint(tirx.const(ep.clip[0], f32) / ys).astype("int32"))
            hi = tirx.min(hi, zp + tirx.nearbyint(tirx.const(ep.clip[1], f32) / ys).astype("int32"))
        r = tirx.nearbyint(f) + zp.astype(f32)
        r = tirx.min(tirx.max(r, lo.astype(f32)), hi.astype(f32))
        return r.astype("int32").astype(quant.out)

    return te.compute(wl.out_shape, value, name=name)


EPILOGUE_BLOCK = "epilogue"


def fuse_epilogue(sch: s_tir.Schedule) -> None:
    """Inline the epilogue stage into its producer, the block that writes the conv's output. Each
    template leaves that block spatial (a register tile's write-back, Winograd's inverse transform,
    a GEMM tile's copy into the output), inside the tile loops; the epilogue then reads bias and
    residual at the element being stored, so the activation runs on the tile while it is in
    registers. It adds no knob: a fused conv has its bare conv's design space."""
    if has_block(sch, EPILOGUE_BLOCK):
        sch.reverse_compute_inline(sch.get_sblock(EPILOGUE_BLOCK))


def phase(name: str, **tensors: te.Tensor) -> Phase:
    """A function `name(*tensors)` from TE tensors, arguments named by the keywords, in order."""
    func = te.create_prim_func(list(tensors.values())).with_attr("global_symbol", name)
    args = [Arg(arg, tuple(int(d) for d in t.shape), str(t.dtype), not isinstance(t.op, te.PlaceholderOp))
            for arg, t in tensors.items()]
    return Phase(func, args)


@dataclass
class Algorithm:
    """An algorithm file's contract with the pipeline (see schedules/direct.py for the simplest)."""

    name: str
    layouts: tuple[str, ...]
    description: str
    # wl -> None, or raise Unsupported
    check: Callable[[Workload], None]
    # wl -> {function name: Phase}; always has "conv2d" (plain-layout weight, one shot)
    functions: Callable[[Workload], dict[str, Phase]]
    # (sch, wl, knobs) -> None: schedules every block of whichever function it is given
    schedule: Callable[[s_tir.Schedule, Workload, Knobs], None]
    # the function called per input, whose run time is tuned: "conv2d", or "conv2d_packed" for
    # two-phase algorithms (their prepare functions run once); the sidecar's "run_function"
    run_function: str = "conv2d"
    # amplification of float32 error over direct (tests' tolerance; Winograd > 1)
    error_growth: Callable[[Workload], float] = field(default=lambda wl: 1.0)
    # how many times fewer multiplications than the direct algorithm it does (Winograd: 9 / its
    # multiplications per output): the most its rate in direct-algorithm FLOP/s can exceed the peak
    multiplication_saving: float = 1.0
    # how many times the FP32 FMA peak its own arithmetic can run at, in multiply-adds per cycle:
    # direct-int8's vpmaddwd does 16 int16 multiply-adds where an FMA does 8 (2); records faster
    # than the FP32 peak times this (and multiplication_saving) are refused as impossible
    peak_ratio: float = 1.0
    # Raised by hand whenever the template or its default config changes what a config builds:
    # records made under another version are set aside (the tuned function carries the version
    # from 2 on, so they are another workload in the database; version 1 is the unmarked function
    # every record before versions had, shipped records included).
    template_version: int = 1
    # the workload dtypes its compute takes (schedules.workload.DTYPES): float32 templates refuse
    # int8 layers, so `--algorithm auto` offers a quantized layer only the int8-capable ones
    dtypes: tuple[str, ...] = ("float32",)
    # machine -> None, or why `--algorithm auto` and the untuned rule leave it out on that machine
    # (it builds and is correct there, but without the instruction it is built around: the VNNI
    # member of im2col-int8 on a CPU without vpdpbusd). Asked for by name it is still built.
    machine_check: Callable[[Machine], str | None] | None = None

    def __post_init__(self):
        # Every caller (search spaces, replay, default configs) schedules through this field: the
        # epilogue is fused after the template, whatever the template.
        template = self.schedule

        def schedule(sch: s_tir.Schedule, wl: Workload, knobs: Knobs) -> None:
            template(sch, wl, knobs)
            fuse_epilogue(sch)

        schedule.__doc__ = template.__doc__
        self.schedule = schedule

    def supports(self, wl: Workload) -> str | None:
        """None if the layer fits, else why not."""
        if wl.layout not in self.layouts:
            return f"{self.name}: layout {wl.layout} not supported (supports {', '.join(self.layouts)})"
        if wl.dtype not in self.dtypes:
            return f"{self.name}: dtype {wl.dtype} not supported (supports {', '.join(self.dtypes)})"
        try:
            self.check(wl)
        except Unsupported as err:
            return str(err)
        return None

    def suits(self, machine: Machine | None = None) -> bool:
        """Whether `auto` offers it on `machine` (default: this host); see `machine_check`."""
        return self.machine_check is None or self.machine_check(machine or host_machine()) is None

    def require(self, wl: Workload) -> None:
        reason = self.supports(wl)
        if reason:
            raise Unsupported(self.name, reason.split(": ", 1)[1])

    def default_config(self, wl: Workload, machine: Machine | None = None) -> dict:
        """The template's own heuristic config for `machine` (default: this host): what an
        untuned library is built with."""
        func = self.functions(wl)[self.run_function].func
        knobs = Knobs(s_tir.Schedule(func), default=True, machine=machine)
        self.schedule(knobs.sch, wl, knobs)
        return config_from_trace(knobs.sch.trace, knobs.names)

    def knob_names(self, wl: Workload) -> list[str]:
        return list(self.default_config(wl))

    def sample_config(self, wl: Workload, seed: int, machine: Machine | None = None) -> dict:
        """A random point of the template's space (what the search might try)."""
        func = self.functions(wl)[self.run_function].func
        sch = s_tir.Schedule(func, seed=max(seed, 1))
        knobs = Knobs(sch, machine=machine)
        self.schedule(sch, wl, knobs)
        return config_from_trace(sch.trace, knobs.names)

    def apply(self, func: tirx.PrimFunc, wl: Workload, config: dict | None,
              machine: Machine | None = None) -> s_tir.Schedule:
        """Schedule `func` with `config` (None: the template's default config for `machine`)."""
        sch = s_tir.Schedule(func)
        self.schedule(sch, wl, Knobs(sch, config=config, default=config is None, machine=machine))
        return sch


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - TVM raises its own error type for a missing block
        return False
