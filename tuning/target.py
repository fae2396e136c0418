"""Targets: where kernels run. A name (x86, aarch64, aarch64-a72, ...) or a TVM target JSON dict.

A target also fixes how a library is linked (host gcc, or a cross gcc for a board) and the thread
count kernels are measured and run with: TVM's runtime alone would start half the cores.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property

import tvm

from schedules.machine import Machine


class TargetError(ValueError):
    pass


class LibraryError(ValueError):
    """A compiled library that cannot be used as asked (no sidecar, wrong architecture, ...)."""


class LibraryArchError(LibraryError):
    """A library built for another architecture than the machine meant to run it."""


AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
# Named ARM profiles: the CPU LLVM tunes for and the core count a board of that kind has.
ARM_PROFILES = {
    "aarch64": (None, 4),
    "aarch64-a53": ("cortex-a53", 4),
    "aarch64-a72": ("cortex-a72", 4),
    "aarch64-a76": ("cortex-a76", 4),
    "aarch64-n1": ("neoverse-n1", 4),
}
AARCH64_CC = "aarch64-linux-gnu-gcc"


@dataclass(frozen=True)
class Target:
    name: str  # what the user typed, or "custom"
    config: dict = field(hash=False)  # the TVM target JSON
    threads: int = 1

    @property
    def tvm(self) -> tvm.target.Target:
        return tvm.target.Target(self.config)

    @property
    def arch(self) -> str:
        return arch_of(self.config)

    @cached_property
    def machine(self) -> Machine:
        """What the templates schedule for: vector ISA, registers, FMA units, caches, threads."""
        return Machine.from_target(self.config, self.threads, host=self.is_host)

    @property
    def is_host(self) -> bool:
        return self.arch == host_arch()

    @property
    def cross_compiler(self) -> str | None:
        return None if self.is_host else AARCH64_CC if self.arch == "aarch64" else None

    @property
    def tag(self) -> str:
        """Directory name under logs/: records of different CPUs or thread counts never mix."""
        cpu = self.config.get("mcpu", "generic")
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.arch}-{cpu}-t{self.threads}")

    def to_dict(self) -> dict:
        return {"name": self.name, "config": self.config, "threads": self.threads, "tag": self.tag,
                "machine": self.machine.to_dict()}


def host_arch() -> str:
    return os.uname().machine


def host_cores() -> int:
    return os.cpu_count() or 1


def resolve_target(text: str = "x86", threads: int | None = None) -> Target:
    """`x86`/`host`: this CPU (LLVM's detected mcpu, all cores); `aarch64[-a72|-a53|-a76|-n1]`; or JSON."""
    text = (text or "x86").strip()
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise TargetError(f"--target: not valid JSON ({err.msg} at column {err.colno})") from None
        if config.get("kind") != "llvm":
            raise TargetError(f"--target: kind {config.get('kind')!r} is not supported: convtune builds CPU kernels "
                              'with LLVM ("kind": "llvm")')
        cores = config.get("num-cores")
        if cores is not None and (not isinstance(cores, int) or isinstance(cores, bool) or cores <= 0):
            raise TargetError(f"--target: num-cores must be a positive integer, got {cores!r}")
        _check_mcpu(config)
        try:
            tvm.target.Target(config)
        except Exception as err:  # noqa: BLE001 - TVM's target parser raises several types
            raise TargetError(f"--target: TVM rejects this target: {err}") from None
        cores = int(config.get("num-cores", threads or host_cores()))
        return Target("custom", config, threads or cores)
    if text in ("x86", "host", "x86_64"):
        if host_arch() != "x86_64":
            raise TargetError(f"--target x86: this host is {host_arch()}, not x86_64")
        cores = host_cores()
        cpu = tvm.target.codegen.llvm_get_system_cpu()
        config = {"kind": "llvm", "mcpu": cpu, "num-cores": cores}
        return Target("x86", config, threads or cores)
    if text in ARM_PROFILES:
        cpu, cores = ARM_PROFILES[text]
        config = dict(AARCH64, **({"mcpu": cpu} if cpu else {}), **{"num-cores": threads or cores})
        return Target(text, config, threads or cores)
    known = ", ".join(["x86"] + list(ARM_PROFILES))
    raise TargetError(f"--target: unknown target {text!r}; known: {known}, or a JSON dict like "
                      '\'{"kind": "llvm", "mcpu": "znver3", "num-cores": 2}\'')


def _check_mcpu(config: dict) -> None:
    """An mcpu LLVM does not know for the triple is a TargetError. TVM accepts it, logs one line and
    builds generic code, which would then be tuned and filed under logs/<arch>-<that name>-tN as if
    it were that CPU."""
    cpu = config.get("mcpu")
    if cpu is None:
        return
    from tvm.target import codegen

    triple = config.get("mtriple") or codegen.llvm_get_system_triple()
    if not isinstance(triple, str) or not codegen.llvm_is_valid_cpu("generic", triple):
        return  # a triple this LLVM has no backend for: listing its CPUs would crash the process
    if not isinstance(cpu, str) or not codegen.llvm_is_valid_cpu(cpu, triple):
        import difflib

        known = codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple}))
        close = difflib.get_close_matches(str(cpu), known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        of = f"tvm.target.Target({{'kind': 'llvm', 'mtriple': '{triple}'}})" if config.get("mtriple") else ""  # host
        raise TargetError(f"--target: mcpu {cpu!r} is not a CPU LLVM knows for {triple}; {hint}the known CPUs "
                          f"are LLVM's list for that triple (python -c \"import tvm; "
                          f"print(tvm.target.codegen.llvm_get_cpu_archlist({of}))\"), or leave mcpu out for generic code")


def set_threads(threads: int) -> None:
    """Fix the TVM runtime's thread pool in this process and in the workers it starts."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    tvm.get_global_func("runtime.config_threadpool")(0, threads)


def arch_of(config: dict) -> str:
    """The architecture a TVM target dict builds for: its triple's first field; no triple, the host's
    (LLVM's default triple is the host's)."""
    triple = config.get("mtriple", "")
    return triple.split("-")[0] if triple else host_arch()


# -- libraries and architectures ------------------------------------------------------------------
_ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm", 62: "x86_64",
                 183: "aarch64", 243: "riscv64"}


# e_type .. e_shstrndx after e_ident, for ELFCLASS32 and ELFCLASS64; a program header's
# (p_type, p_offset, p_filesz) at their offsets.
_ELF_HEADER = {1: ("HHIIIIIHHHHHH", 52), 2: ("HHIQQQIHHHHHH", 64)}
_ELF_PHDR = {1: ("I", 0, "I", 4, "I", 16), 2: ("I", 0, "Q", 8, "Q", 32)}
ET_DYN, PT_LOAD = 3, 1


def elf_machine(path: str) -> str:
    """The architecture a shared library was built for, from its ELF header (`e_machine`). Refuses
    a file that is not a whole ELF shared library: loading a truncated one (its section header
    table, or a loaded segment, past the end of the file) would kill the process with SIGBUS."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(64)
            if len(header) < 20 or header[:4] != b"\x7fELF":
                raise LibraryArchError(f"{path}: not an ELF shared library (a .so built by `convtune compile`)")
            elf_class, order = header[4], {1: "<", 2: ">"}.get(header[5])
            if elf_class not in _ELF_HEADER or order is None:
                raise LibraryArchError(f"{path}: not a valid ELF file (class {elf_class}, data {header[5]})")
            fmt, length = _ELF_HEADER[elf_class]
            if len(header) < length:
                raise LibraryArchError(f"{path}: truncated ELF file ({size} bytes, shorter than its header)")
            (e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
             _) = struct.unpack(order + fmt, header[16:length])
            if e_type != ET_DYN:
                raise LibraryArchError(f"{path}: an ELF file of type {e_type}, not a shared library (a .so built "
                                       "by `convtune compile`)")
            end = max(shoff + shnum * shentsize, phoff + phnum * phentsize)
            if size >= end and phnum:
                f.seek(phoff)
                table = f.read(phnum * phentsize)
                t_fmt, t_at, o_fmt, o_at, s_fmt, s_at = _ELF_PHDR[elf_class]
                for i in range(phnum):
                    entry = table[i * phentsize:(i + 1) * phentsize]
                    if struct.unpack_from(order + t_fmt, entry, t_at)[0] == PT_LOAD:
                        offset = struct.unpack_from(order + o_fmt, entry, o_at)[0]
                        end = max(end, offset + struct.unpack_from(order + s_fmt, entry, s_at)[0])
    except OSError as err:
        raise LibraryArchError(f"{path}: cannot read ({err.strerror})") from None
    except struct.error:
        raise LibraryArchError(f"{path}: not a valid ELF file (its program headers are malformed)") from None
    if size < end:
        raise LibraryArchError(f"{path}: truncated: {size} bytes, but its ELF header describes {end}; rebuild it "
                               "with `convtune compile`")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def sidecar_arch(side: dict | None) -> str | None:
    """The architecture a library's sidecar says its target builds for (None without a sidecar)."""
    config = (side or {}).get("target", {}).get("config")
    return arch_of(config) if config else None


def compile_hint(device: str) -> str:
    if device == "aarch64":
        return "compile it with --target aarch64 (or aarch64-a72, ...)"
    if device == "x86_64":
        return "compile it with --target x86"
    return f"compile it for {device}"


def check_arch(path: str, device: str | None, source: str, remedy: str = "") -> str:
    """Refuse a library that `device` (an architecture; None: unknown, nothing checked) cannot load;
    returns the library's architecture. `source` names who runs it ("this host", "the device")."""
    arch = elf_machine(path)
    if device and arch != device:
        raise LibraryArchError(f"{os.path.basename(path)} is built for {arch}, but {source} is {device}: "
                               f"{compile_hint(device)}{remedy}")
    return arch
