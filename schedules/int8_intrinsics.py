"""x86 tensor intrinsics for int8 convolutions: the dot products a template tensorizes its inner
reduction into.

Each intrinsic computes, for one accumulator vector C (int32 lanes, one output channel each):

    C[i] += sum_k int32(A[k]) * int32(B[i, k])        (A: one pixel's k inputs, broadcast;
                                                        B: k inputs x lanes channels, packed)

`k` is the group the instruction reduces in one step, and the weights are packed so that a group
of every lane is contiguous ([.., ic/k, lanes, k]: one vector load).

  avx2_pmaddwd_8x2   A int16 x2, B int16 [8, 2] -> vpmaddwd ymm + vpaddd. Exact for any int16
                     operands except -32768 * -32768 pairs (never here: data minus its zero point is
                     in [-255, 255], weights in [-128, 127], a pair sum at most 65280 in magnitude).
                     What the AVX2 int8 templates use (Zen 3 has neither AVX-512 nor VNNI).
  vnni_vpdpbusd_16x4 A uint8 x4, B int8 [16, 4] -> vpdpbusd zmm (AVX512-VNNI): 64 u8*s8 products
                     summed into 16 int32 lanes per instruction, exact (no 16-bit intermediate).
  avxvnni_vpdpbusd_8x4  the same on ymm (AVX-VNNI, or AVX512-VNNI with VL).
  avxvnni_vpdpbusd_16x4 16 lanes as two ymm vpdpbusd (AVX-VNNI): the zmm step's shape on a ymm-only CPU.

Why not vpmaddubsw (u8 x s8 -> s16 pair sums, then vpmaddwd by ones), the pre-VNNI int8 idiom and
TVM's `dot_16x4_avx512`: its pair sum saturates at int16. 255 * 127 * 2 = 64770 > 32767, so
full-range inputs give wrong sums (oneDNN's AVX2 path avoids it by halving the weights to 7 bits,
an accuracy loss); results must be bit-identical to the integer reference here, so the AVX2 path
widens to int16 and multiplies with vpmaddwd, which is exact.

TVM 0.27's own `dot_16x4_vnni` passes int32x16 operands to `llvm.x86.avx512.vpdpbusd.512`, whose
LLVM 22 signature takes <64 x i8>: it fails LLVM verification. The VNNI intrinsics here pass the
operands as uint8x64 / int8x64 (the note in shared/notes/tvm-0.27.md).

Importing this module registers the intrinsics (idempotently) without importing
`tvm.s_tir.tensor_intrin`, whose CUDA intrinsics take half a minute to import.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

AVX2_PMADDWD_8x2 = "convtune_avx2_pmaddwd_8x2"
VNNI_VPDPBUSD_16x4 = "convtune_vnni_vpdpbusd_16x4"
AVXVNNI_VPDPBUSD_8x4 = "convtune_avxvnni_vpdpbusd_8x4"


# -- AVX2: int16 pairs, vpmaddwd ------------------------------------------------------------------
@T.prim_func(s_tir=True)
def _pmaddwd_8x2_desc(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _pmaddwd_8x2_impl(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        # the pixel's two int16 inputs as one 32-bit word, broadcast to every lane: vpbroadcastd
        pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        a = T.reinterpret(T.broadcast(pair, 8), dtype="int16x16")
        b = B.vload([0, 0], dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a, b, dtype="int32x8")


# -- VNNI: uint8 x int8 quads, vpdpbusd -----------------------------------------------------------
def _vnni(lanes: int, llvm_intrinsic: str):
    bytes_ = lanes * 4

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            quad = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a = T.reinterpret(T.broadcast(quad, lanes), dtype=f"uint8x{bytes_}")
            b = B.vload([0, 0], dtype=f"int8x{bytes_}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic), C.vload([0], dtype=f"int32x{lanes}"), a, b,
                dtype=f"int32x{lanes}")

    return desc, impl


AVXVNNI_VPDPBUSD_16x4 = "convtune_avxvnni_vpdpbusd_16x4"


def _avxvnni_16x4():
    """16 int32 lanes on AVX-VNNI (ymm only): two vpdpbusd ymm, one per half. What
    im2col-int8-vnni tensorizes into there (its packed weight has 16-lane panels, the zmm width)."""
    desc, _ = _vnni(16, "llvm.x86.avx512.vpdpbusd.512")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            quad = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a = T.reinterpret(T.broadcast(quad, 8), dtype="uint8x32")
            C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"), C.vload([0], dtype="int32x8"), a,
                B.vload([0, 0], dtype="int8x32"), dtype="int32x8")
            C[T.ramp(T.int32(8), 1, 8)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"), C.vload([8], dtype="int32x8"), a,
                B.vload([8, 0], dtype="int8x32"), dtype="int32x8")

    return desc, impl


def register() -> None:
    """Register every intrinsic of this module (a no-op when already registered)."""
    entries = [(AVX2_PMADDWD_8x2, _pmaddwd_8x2_desc, _pmaddwd_8x2_impl),
               (VNNI_VPDPBUSD_16x4, *_vnni(16, "llvm.x86.avx512.vpdpbusd.512")),
               (AVXVNNI_VPDPBUSD_8x4, *_vnni(8, "llvm.x86.avx512.vpdpbusd.256")),
               (AVXVNNI_VPDPBUSD_16x4, *_avxvnni_16x4())]
    for name, desc, impl in entries:
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, desc, impl)


register()


def vnni_gemm(m: int, n: int, k: int, lanes: int = 16):
    """A u8 x s8 -> s32 GEMM tensorized with the VNNI intrinsic of `lanes` (16: vpdpbusd zmm, 8: ymm):
    C[m, nb, i] = sum_k A[m, k] * B[nb, k/4, i, k%4]. What a VNNI template's inner step is; built,
    not run, on machines without VNNI (tests/test_int8.py checks the instruction LLVM emits)."""
    from tvm import s_tir, te

    a = te.placeholder((m, k // 4, 4), "uint8", name="A")
    b = te.placeholder((n // lanes, k // 4, lanes, 4), "int8", name="B")
    ko = te.reduce_axis((0, k // 4), name="ko")
    ki = te.reduce_axis((0, 4), name="ki")
    c = te.compute((m, n // lanes, lanes), lambda x, nb, i: te.sum(
        a[x, ko, ki].astype("int32") * b[nb, ko, i, ki].astype("int32"), axis=[ko, ki]), name="C")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]))
    block = sch.get_sblock("C")
    x, nb, i, r0, r1 = sch.get_loops(block)
    sch.reorder(x, nb, r0, i, r1)
    sch.decompose_reduction(block, r0)
    sch.tensorize(i, VNNI_VPDPBUSD_16x4 if lanes == 16 else AVXVNNI_VPDPBUSD_8x4)
    return sch.mod
