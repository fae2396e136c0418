"""An emulated aarch64 device: TVM's RPC server for ARM, run by qemu-user on this x86 host.

It proves the ARM path end to end without a board: cross-compile on the host, upload, load,
run and compare with the reference, and let MetaSchedule measure trials through a tracker.
qemu translates ARM code into x86 code (TCG), so its times say nothing about an ARM core:
every time measured on it must be printed with `EMULATED_NOTE`.

Setup (once, cached under `$CONVTUNE_CACHE/arm-emulator`, default `~/.cache/convtune/...`):
  - host tools from Debian: qemu-user-static, debootstrap, the aarch64 cross gcc (installed with
    apt-get when we are root, else a message says what to install);
  - a sysroot: Debian bookworm's arm64 python3.11 and the libraries it needs, unpacked with
    `dpkg -x` (no chroot, no binfmt needed);
  - TVM's aarch64 wheels installed from the host with `pip --target --platform`, the compiler
    library removed (the device only loads and runs), bytecode precompiled on the host (the
    same CPython 3.11) so the emulated interpreter starts in seconds rather than compiling.

The device is a small launcher run as `qemu-aarch64-static -L sysroot python3.11 launcher.py`:
TVM's stock `rpc_server` re-executes `sys.executable` for its worker, which fails without binfmt;
the launcher starts the same server in-process, loads `libtvm_runtime_extra.so` (MetaSchedule's
`random_fill_for_measure`) once, and registers `convtune.device_info` (machine, emulated, cpu)
so clients can check the architecture before they upload a library.
"""

from __future__ import annotations

import fcntl
import glob
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .address import on_free_port, parse_hostport
from .process import pid_alive, start_child, stop_child, tail
from .tracker import tracker_summary

EMULATED_NOTE = ("NOTE: measured on an EMULATED aarch64 device (qemu-user on an x86 host): these times "
                 "are not ARM timings; they only show the pipeline works. Tune on a real board to rank schedules.")

# The device runs the same TVM as the host (records and libraries must agree): pinned from the
# installed distributions, so the one pin is pyproject.toml's.
TVM_WHEELS = tuple(f"{name}=={importlib.metadata.version(name)}" for name in ("apache-tvm", "apache-tvm-ffi"))
DEVICE_WHEELS = TVM_WHEELS + ("cloudpickle", "psutil", "tornado")
DEBIAN_SUITE = "bookworm"
# The arm64 packages python3.11 needs, unpacked into the sysroot.
SYSROOT_PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0",
    "liblzma5", "libcrypt1", "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11-minimal",
    "media-types", "libsqlite3-0", "libuuid1", "libtinfo6", "libncursesw6", "libreadline8", "libdb5.3",
    "libnsl2", "libtirpc3",
)
# host tool -> Debian package
HOST_TOOLS = {
    "qemu-aarch64-static": "qemu-user-static",
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
}
DEFAULT_KEY = "aarch64-qemu"
DEFAULT_CPU = "cortex-a72"
QEMU_CPUS = ("cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1", "max")
READY = "ready.json"
LAYOUT_VERSION = 1  # bump when the cache's layout changes: a stale cache is rebuilt

LAUNCHER = r'''
"""convtune's emulated device: TVM's RPC server, started in-process (see tuning/emulator.py)."""
import ctypes, json, os, platform, sys

import tvm
import tvm_ffi
from tvm.rpc import server

args = json.loads(sys.argv[1])
# Each session is a forked child: it dies with the server rather than serve on alone.
libc = ctypes.CDLL(None)
os.register_at_fork(after_in_child=lambda: libc.prctl(1, 9))  # PR_SET_PDEATHSIG, SIGKILL
# random_fill_for_measure and friends; loaded once here, inherited by every forked session
ctypes.CDLL(args["extra"], ctypes.RTLD_GLOBAL)
info = {"machine": platform.machine(), "emulated": True, "cpu": args["cpu"],
        "threads": int(os.environ.get("TVM_NUM_THREADS", "1")), "tvm": tvm.__version__, "key": args["key"]}
tvm_ffi.register_global_func("convtune.device_info", lambda: json.dumps(info))
tracker = tuple(args["tracker"]) if args["tracker"] else None
port = server._popen_start_rpc_server(args["host"], args["port"], args["port_end"], tracker_addr=tracker,
                                      key=args["key"])
print(f"convtune-device listening {args['host']}:{port}", flush=True)
server.PopenRPCServerState.current.thread.join()
'''


class EmulatorError(RuntimeError):
    pass


class EmulatorUnavailable(EmulatorError):
    """This machine cannot host the emulator (no apt, not root, not x86_64)."""


def cache_root() -> Path:
    root = os.environ.get("CONVTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "convtune")
    return Path(root) / "arm-emulator"


@dataclass(frozen=True)
class Paths:
    base: Path

    @property
    def sysroot(self) -> Path:
        return self.base / "sysroot"

    @property
    def site(self) -> Path:
        return self.base / "site"

    @property
    def debs(self) -> Path:
        return self.base / "dl"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    @property
    def extra_library(self) -> Path:
        return self.site / "tvm" / "lib" / "libtvm_runtime_extra.so"

    @property
    def launcher(self) -> Path:
        return self.base / "launcher.py"

    @property
    def run(self) -> Path:
        """Logs and the state files of detached devices."""
        return self.base / "run"

    def ready(self) -> bool:
        try:
            stamp = json.loads((self.base / READY).read_text())
        except (OSError, ValueError):
            return False
        return (stamp.get("layout") == LAYOUT_VERSION and list(stamp.get("wheels", [])) == list(DEVICE_WHEELS)
                and self.python.exists() and self.extra_library.exists())


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[arm-emulator] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str, quiet: bool, **kwargs) -> str:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kwargs)
    if proc.returncode != 0:
        out = "\n".join(proc.stdout.strip().splitlines()[-20:])
        raise EmulatorError(f"{what} failed (exit {proc.returncode}): {' '.join(argv[:6])} ...\n{out}")
    return proc.stdout


def missing_tools() -> dict[str, str]:
    return {tool: pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}


def _install_host_tools(install: bool, quiet: bool) -> None:
    missing = missing_tools()
    if not missing:
        return
    packages = sorted(set(missing.values()))
    command = "apt-get install -y " + " ".join(packages)
    if not install:
        raise EmulatorUnavailable(f"missing {', '.join(missing)}: run `{command}` (as root)")
    if shutil.which("apt-get") is None:
        raise EmulatorUnavailable(f"missing {', '.join(missing)} and no apt-get on this machine: install "
                                  f"the Debian packages {', '.join(packages)} or their equivalents")
    if os.geteuid() != 0:
        raise EmulatorUnavailable(f"missing {', '.join(missing)}; installing them needs root: `sudo {command}`")
    _log(f"installing {' '.join(packages)} with apt-get", quiet)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-q"], "apt-get update", quiet, env=env)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], "apt-get install", quiet, env=env)
    still = missing_tools()
    if still:
        raise EmulatorError(f"apt-get installed {' '.join(packages)} but {', '.join(still)} is still missing")


def _deb(debs: Path, package: str) -> str:
    archives = debs / "var" / "cache" / "apt" / "archives"
    found = sorted(glob.glob(str(archives / f"{package}_*_arm64.deb"))
                   + glob.glob(str(archives / f"{package}_*_all.deb")))
    if not found:
        raise EmulatorError(f"debootstrap did not download {package} (looked in {archives})")
    return found[0]


def _build_sysroot(paths: Paths, quiet: bool) -> None:
    archives = paths.debs / "var" / "cache" / "apt" / "archives"
    have = {p for p in SYSROOT_PACKAGES if glob.glob(str(archives / f"{p}_*.deb"))}
    if have != set(SYSROOT_PACKAGES):
        _log(f"downloading Debian {DEBIAN_SUITE} arm64 packages (debootstrap --download-only)", quiet)
        shutil.rmtree(paths.debs, ignore_errors=True)
        _run(["debootstrap", "--arch=arm64", "--download-only", "--variant=minbase", "--include=python3",
              DEBIAN_SUITE, str(paths.debs)], "debootstrap", quiet)
    _log("unpacking the sysroot", quiet)
    tmp = paths.base / "sysroot.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for package in SYSROOT_PACKAGES:
        _run(["dpkg-deb", "-x", _deb(paths.debs, package), str(tmp)], f"unpacking {package}", quiet)
    shutil.rmtree(paths.sysroot, ignore_errors=True)
    tmp.rename(paths.sysroot)


def _install_wheels(paths: Paths, quiet: bool) -> None:
    _log(f"installing the aarch64 wheels {' '.join(TVM_WHEELS)} (pip --platform manylinux_2_28_aarch64)", quiet)
    tmp = paths.base / "site.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
          "--target", str(tmp), "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
          "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          *DEVICE_WHEELS], "pip install (aarch64 wheels)", quiet)
    # The device only loads and runs libraries: the compiler (250 MB) and CUDA stay on the host.
    for name in ("libtvm_compiler.so", "libtvm_runtime_cuda.so"):
        (tmp / "tvm" / "lib" / name).unlink(missing_ok=True)
    shutil.rmtree(tmp / "tvm" / "3rdparty", ignore_errors=True)
    shutil.rmtree(paths.site, ignore_errors=True)
    tmp.rename(paths.site)


def _precompile(paths: Paths, quiet: bool) -> None:
    """Bytecode for the emulated interpreter, compiled here: same CPython minor version, same .pyc."""
    if sys.version_info[:2] != (3, 11):
        _log("host Python is not 3.11: the device compiles its own bytecode (slower first start)", quiet)
        return
    _log("precompiling bytecode", quiet)
    for tree in (paths.sysroot / "usr" / "lib" / "python3.11", paths.site):
        # quiet=2: a few test files in the stdlib do not compile on purpose
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-q", "-j", "1", str(tree)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _smoke_test(paths: Paths, quiet: bool) -> None:
    out = _run([_qemu(), "-L", str(paths.sysroot), str(paths.python), "-c",
                "import platform, sys; print(platform.machine(), sys.version_info[0], sys.version_info[1])"],
               "starting the emulated python", quiet).split()
    if out[:3] != ["aarch64", "3", "11"]:
        raise EmulatorError(f"the emulated python reports {' '.join(out)!r}, expected aarch64 3.11")


def _qemu() -> str:
    path = shutil.which("qemu-aarch64-static")
    if path is None:
        raise EmulatorError("qemu-aarch64-static is missing: run `convtune device setup` "
                            "(or `apt-get install -y qemu-user-static`)")
    return path


def setup(install: bool = True, quiet: bool = False, force: bool = False) -> Paths:
    """Make the emulator ready (idempotent; about a minute and 250 MB the first time)."""
    if platform.machine() != "x86_64":
        raise EmulatorUnavailable(f"the emulator runs on x86_64 hosts; this one is {platform.machine()}"
                                  " (on an ARM host run TVM's rpc_server directly)")
    paths = Paths(cache_root())
    paths.base.mkdir(parents=True, exist_ok=True)
    with open(paths.base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one setup at a time (a CLI and a test session, say)
        started = time.time()
        _install_host_tools(install, quiet)
        if paths.ready() and not force:
            return paths
        (paths.base / READY).unlink(missing_ok=True)
        _build_sysroot(paths, quiet)
        _install_wheels(paths, quiet)
        _precompile(paths, quiet)
        _smoke_test(paths, quiet)
        shutil.rmtree(paths.debs, ignore_errors=True)  # 85 MB, only needed to unpack the sysroot again
        (paths.base / READY).write_text(json.dumps({"layout": LAYOUT_VERSION, "wheels": list(DEVICE_WHEELS),
                                                    "suite": DEBIAN_SUITE, "created": time.time()}))
        _log(f"ready in {time.time() - started:.0f} s: {paths.base}", quiet)
    return paths


def require_ready() -> Paths:
    paths = Paths(cache_root())
    if not paths.ready():
        raise EmulatorError(f"the ARM emulator is not set up in {paths.base}: run `convtune device setup`")
    _qemu()
    return paths


# --------------------------------------------------------------------------------------------
# The device


@dataclass
class Device:
    """An emulated aarch64 RPC server we started; `stop()` ends it and its sessions."""

    pid: int
    host: str
    port: int
    key: str
    cpu: str
    tracker: str | None
    log_path: str
    proc: subprocess.Popen | None = None  # None when found from a state file (`convtune device stop`)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid) and _is_launcher(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc)
        elif self.alive():  # a detached device from another process: check it is ours first
            stop_child(self.pid)
        _state_file(self).unlink(missing_ok=True)

    def to_dict(self) -> dict:
        return {"pid": self.pid, "host": self.host, "port": self.port, "key": self.key, "cpu": self.cpu,
                "tracker": self.tracker, "log": self.log_path}

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _state_file(device: Device) -> Path:
    return Paths(cache_root()).run / f"device-{device.port}.json"


def _is_launcher(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        return b"qemu-aarch64" in cmdline and b"launcher.py" in cmdline
    except OSError:
        return False


def start(tracker: str | None = None, key: str = DEFAULT_KEY, *, host: str = "127.0.0.1",
          port: int | None = None, cpu: str = DEFAULT_CPU, threads: int = 1, timeout: float = 180.0,
          detach: bool = False, paths: Paths | None = None) -> Device:
    """Start an emulated aarch64 device; returns once it serves (and has registered with `tracker`).

    `tracker` "HOST:PORT" or None (then clients connect to `device.address` with `key`).
    `cpu` is qemu's CPU model (`QEMU_CPU`): cortex-a72 faults on instructions an A72 lacks;
    `max` has every extension qemu knows. `threads`: the device's TVM thread pool (qemu runs
    them on host cores; 1 keeps the shared machine usable, and the times mean nothing anyway).
    """
    paths = paths or require_ready()
    if cpu not in QEMU_CPUS:
        raise EmulatorError(f"qemu cpu {cpu!r} is not one of {', '.join(QEMU_CPUS)}")
    tracker_addr = parse_hostport(tracker, "--rpc-tracker") if tracker else None
    if tracker_addr:
        tracker_summary(*tracker_addr, timeout=5.0)  # a clear error now, not a device retrying forever
    paths.run.mkdir(parents=True, exist_ok=True)
    _prune_logs(paths)
    _write_launcher(paths)
    return on_free_port(host, port, lambda chosen: _start(paths, tracker, tracker_addr, key, host, chosen, cpu,
                                                              threads, timeout, detach), EmulatorError)


def _prune_logs(paths: Paths, days: float = 7.0) -> None:
    """Device logs stay for diagnosis after a device stops; a week is enough."""
    cutoff = time.time() - days * 86400
    for log in paths.run.glob("device-*.log"):
        try:
            if log.stat().st_mtime < cutoff:
                log.unlink()
        except FileNotFoundError:
            pass


def _write_launcher(paths: Paths) -> None:
    tmp = paths.launcher.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(LAUNCHER)
    os.replace(tmp, paths.launcher)  # a device starting meanwhile never reads half a file


def _start(paths: Paths, tracker, tracker_addr, key, host, port, cpu, threads, timeout, detach) -> Device:
    log_path = str(paths.run / f"device-{port}.log")
    open(log_path, "w").close()
    args = {"host": host, "port": port, "port_end": port + 1, "tracker": tracker_addr, "key": key,
            "cpu": cpu, "extra": str(paths.extra_library)}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(paths.site),
        "PYTHONNOUSERSITE": "1",
        "TVM_USE_RUNTIME_LIB": "1",  # libtvm_runtime.so: the compiler library is not there
        "TVM_NUM_THREADS": str(threads),
        "QEMU_CPU": cpu,
        "QEMU_LD_PREFIX": str(paths.sysroot),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    argv = [_qemu(), "-L", str(paths.sysroot), "-cpu", cpu, str(paths.python), str(paths.launcher), json.dumps(args)]
    proc = start_child(argv, log_path, env=env, detach=detach)
    device = Device(proc.pid, host, port, key, cpu, tracker, log_path, proc)
    try:
        _wait_listening(device, timeout)
        if tracker_addr:
            _wait_registered(device, tracker_addr, timeout)
    except BaseException:
        device.stop()
        raise
    if detach:
        _state_file(device).write_text(json.dumps(device.to_dict()))
    return device


def _wait_listening(device: Device, timeout: float) -> None:
    deadline = time.time() + timeout
    marker = f"convtune-device listening {device.address}"
    while True:
        with open(device.log_path, errors="replace") as f:
            if marker in f.read():
                return
        if not device.alive():
            raise EmulatorError(f"the emulated device exited while starting:\n{tail(device.log_path)}")
        if time.time() > deadline:
            raise EmulatorError(f"the emulated device did not start within {timeout:.0f} s:\n"
                                f"{tail(device.log_path)}")
        time.sleep(0.25)


def _wait_registered(device: Device, tracker_addr: tuple[str, int], timeout: float) -> None:
    """Until the tracker lists a server of our key at our port."""
    deadline = time.time() + timeout
    while True:
        info = tracker_summary(*tracker_addr, timeout=5.0)
        for server in info.get("server_info", []):
            if server.get("key") == f"server:{device.key}" and int(server.get("addr", [None, -1])[1]) == device.port:
                return
        if not device.alive():
            raise EmulatorError(f"the emulated device exited before registering:\n{tail(device.log_path)}")
        if time.time() > deadline:
            raise EmulatorError(f"the emulated device did not register with {tracker_addr[0]}:{tracker_addr[1]} "
                                f"within {timeout:.0f} s:\n{tail(device.log_path)}")
        time.sleep(0.25)


def detached_devices() -> list[Device]:
    """Devices started with `detach=True` that are still running (stale state files are removed)."""
    run = Paths(cache_root()).run
    found = []
    for path in sorted(run.glob("device-*.json")):
        try:
            d = json.loads(path.read_text())
            device = Device(d["pid"], d["host"], d["port"], d["key"], d["cpu"], d["tracker"], d["log"])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if device.alive():
            found.append(device)
        else:
            path.unlink(missing_ok=True)
    return found


def stop_detached(port: int | None = None, key: str | None = None) -> list[Device]:
    """Stop detached devices (all, or those on `port` / of `key`); returns the ones stopped."""
    stopped = []
    for device in detached_devices():
        if (port is None or device.port == port) and (key is None or device.key == key):
            device.stop()
            stopped.append(device)
    return stopped
