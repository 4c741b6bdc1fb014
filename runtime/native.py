"""Native CPU kernels: C sources in `csrc/`, compiled on first use with the machine's C compiler, cached,
loaded with ctypes.

Some NumPy kernels are bound by per-call overhead rather than arithmetic: a recurrent scan makes a dozen
array calls per time step on a few thousand elements each. Those kernels have a C version that runs a
whole scan in one call. The library is built for the machine it runs on (`-march=native`) the first
time a process needs it and kept in a cache directory, keyed by a hash of the sources, the compiler and
the CPU, so later processes only load it. Writes are atomic (a temporary file renamed into place), so
processes starting together at worst compile twice.

Everything degrades to NumPy: with no C compiler, a failed build or NND_NATIVE=0 the kernels that would
use the library run their NumPy versions, with the same results to rounding. `status()` says which
happened (`nnd bench` prints it); NND_NATIVE=1 makes a missing library an error instead.

Environment: NND_NATIVE (auto when unset, 0 off, 1 required), CC (the compiler's command line, default cc;
wrappers such as `ccache gcc` work),
NND_CACHE_DIR (default $XDG_CACHE_HOME/nnd or ~/.cache/nnd), NND_NUM_THREADS (threads for kernels that
split the batch; default: the CPUs this process may run on).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from nnd.compiler.diagnostics import NndError

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
MAIN_SOURCE = "nnd_native.c"
ABI_VERSION = 13
# -fno-trapping-math lets the compiler turn the clamps of the exp into vector min/max; no -ffast-math:
# the rounding trick of the exp and the NaN behaviour of the kernels depend on IEEE arithmetic.
BASE_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
COMPILE_TIMEOUT_S = 300

_library: ctypes.CDLL | None = None
_status: str | None = None
_loading = threading.Lock()  # models used from several threads build the library once
_enabled_override: bool | None = None
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0  # the process that made the pool: a forked child starts its own (threads do not survive fork)


# ------------------------------------------------------------------------------------------------ loading

def library() -> ctypes.CDLL | None:
    """The loaded native library, building it on first use; None when it is off or cannot be built."""
    global _library, _status
    if not _enabled():
        return None
    with _loading:
        if _status is None:
            try:
                _library = _load_or_build()
                _status = f"on ({_compiler_name()})"
            except _Unavailable as why:
                _library, _status = None, f"off: {why}"
    if _library is None and _mode() == "1":
        raise NndError(f"native kernels required by NND_NATIVE=1 are unavailable: {_status[len('off: '):]}")
    return _library


def status() -> str:
    """One line: whether the native kernels run, and why not when they do not."""
    if not _enabled():
        return "off: disabled" + (" (NND_NATIVE=0)" if _enabled_override is None else "")
    library()
    return _status or "off"


def set_enabled(enabled: bool | None) -> None:
    """Force the native kernels on or off for this process (None: back to NND_NATIVE); for tests and
    for comparing the two paths."""
    global _enabled_override
    _enabled_override = enabled


def _mode() -> str:
    """NND_NATIVE: "" (use the native kernels when they build), "0" (never) or "1" (always, or fail)."""
    mode = os.environ.get("NND_NATIVE", "").strip()
    if mode not in ("", "0", "1"):
        raise NndError(f"NND_NATIVE must be 0 (off), 1 (required) or unset (when available), not {mode!r}")
    return mode


def _enabled() -> bool:
    if _enabled_override is not None:
        return _enabled_override
    return _mode() != "0"


class _Unavailable(Exception):
    """Why the library cannot be used; becomes the `status()` line."""


def _compiler() -> tuple[str, ...]:
    """CC as a command line, as make reads it: a program with its own words (`ccache gcc`, `gcc -m64`)."""
    setting = os.environ.get("CC") or "cc"
    try:
        words = shlex.split(setting)
    except ValueError as error:
        raise _Unavailable(f"CC={setting!r} is not a command line: {error}") from None
    if not words:
        words = ["cc"]
    path = shutil.which(words[0])
    if path is None:
        raise _Unavailable(f"no C compiler ({words[0]!r} not found; set CC)")
    return (path, *words[1:])


def _compiler_name() -> str:
    program, *rest = _compiler()
    return " ".join((Path(program).name, *rest))


def _load_or_build() -> ctypes.CDLL:
    compiler = _compiler()
    flags = _flags(compiler)
    target = cache_dir() / f"nnd_native_{_build_key(compiler, flags)}.so"
    if not _intact(target):
        _build(compiler, flags, target, SOURCE_DIR / MAIN_SOURCE)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as error:
        raise _Unavailable(f"cannot load {target}: {error}") from None
    if lib.nnd_native_abi_version() != ABI_VERSION:
        raise _Unavailable(f"{target} is from another version of nnd")
    return lib


@functools.cache
def _flags(compiler: tuple[str, ...]) -> tuple[str, ...]:
    """The base flags plus -march=native where the compiler accepts it (GCC and Clang on x86 and Arm
    Linux; Apple's Clang on Arm does not)."""
    probe = subprocess.run([*compiler, "-march=native", "-x", "c", "-E", "-o", os.devnull, os.devnull],
                           capture_output=True, timeout=COMPILE_TIMEOUT_S)
    return BASE_FLAGS + (("-march=native",) if probe.returncode == 0 else ())


def _build_key(compiler: tuple[str, ...], flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for source in sorted(SOURCE_DIR.glob("*.[ch]")):
        digest.update(source.name.encode() + source.read_bytes())
    for part in _toolchain_identity(compiler, flags):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:20]


@functools.cache
def _toolchain_identity(compiler: tuple[str, ...], flags: tuple[str, ...]) -> tuple[str, ...]:
    """What besides the sources decides the binary: the compiler and its version, the flags, the CPU."""
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True,
                             timeout=COMPILE_TIMEOUT_S).stdout.splitlines()[:1]
    return (*compiler, *version, *flags, platform.machine(), _cpu_signature())


def _cpu_signature() -> str:
    """The CPU's model and feature flags, so that a cache shared between machines never hands a binary
    built with -march=native to a CPU without those instructions."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "|".join(sorted({line for line in text.splitlines() if line.split(":")[0].strip() in wanted}))


def cache_dir() -> Path:
    """nnd's cache directory (NND_CACHE_DIR, else $XDG_CACHE_HOME/nnd or ~/.cache/nnd), made if needed."""
    base = os.environ.get("NND_CACHE_DIR")
    if base:
        path = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "nnd"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"nnd-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _build(compiler: tuple[str, ...], flags: tuple[str, ...], target: Path, source: Path) -> None:
    handle, partial = tempfile.mkstemp(suffix=".so", prefix=".build-", dir=target.parent)
    os.close(handle)
    command = [*compiler, *flags, "-o", partial, str(source), "-lm"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}, no message"])[0]
            raise _Unavailable(f"the C compiler failed: {first}")
        _seal(Path(partial), target)
        os.replace(partial, target)
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"the C compiler took over {COMPILE_TIMEOUT_S} s") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _seal(built: Path, target: Path) -> None:
    """Record the digest of a freshly built library beside where it goes: a cached file cut short (a full
    disk, a killed build) would crash the process that maps it, so a library is loaded only when it
    matches its seal."""
    seal = target.with_suffix(".sha256")
    partial = seal.with_name(f".{seal.name}.{os.getpid()}")
    partial.write_text(_digest(built))
    os.replace(partial, seal)


def _intact(target: Path) -> bool:
    try:
        return target.with_suffix(".sha256").read_text() == _digest(target)
    except OSError:  # no library or no seal (a cache from before seals): build it
        return False


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ generated sources

# Generated elementwise code must round as NumPy's one-op-at-a-time kernels do: no a * b + c contracted
# into one fused multiply-add.
GENERATED_FLAGS = ("-ffp-contract=off",)
_generated: dict[str, ctypes.CDLL] = {}


def generated_library(source: str) -> ctypes.CDLL | None:
    """`source`, C text written by a code generator, built into a shared library that is cached like the
    main one (keyed by the text, the compiler, its flags and the CPU); None when the native kernels are
    off or the build fails, and the callers run their NumPy versions."""
    if library() is None:  # off, or no working compiler: the reason is in status()
        return None
    found = _generated.get(source)
    if found is not None:
        return found
    with _loading:
        try:
            compiler = _compiler()
            flags = _flags(compiler) + GENERATED_FLAGS
            digest = hashlib.sha256(source.encode())
            for part in _toolchain_identity(compiler, flags):
                digest.update(part.encode() + b"\0")
            target = cache_dir() / f"nnd_generated_{digest.hexdigest()[:20]}.so"
            if not _intact(target):
                with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                    path = Path(scratch) / "generated.c"
                    path.write_text(source)
                    _build(compiler, flags, target, path)
            found = _generated[source] = ctypes.CDLL(str(target))
        except (_Unavailable, OSError) as why:
            if _mode() == "1":
                raise NndError(f"generated native code required by NND_NATIVE=1 cannot be built: {why}") from None
            return None
    return found


# ------------------------------------------------------------------------------------------------ threads

def thread_count() -> int:
    """How many threads kernels that split the batch may use."""
    configured = os.environ.get("NND_NUM_THREADS", "").strip()
    if configured:
        try:
            count = int(configured)
        except ValueError:
            count = 0
        if count < 1:
            raise NndError(f"NND_NUM_THREADS must be a whole number of at least 1, not {configured!r}")
        return count
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def row_chunks(rows: int, threads: int, align: int = 4) -> list[tuple[int, int]]:
    """Split [0, rows) into at most `threads` contiguous ranges whose starts are multiples of `align` (so
    each thread's GEMM tiles stay whole), dropping empty ones."""
    blocks = -(-rows // align)
    count = max(1, min(threads, blocks))
    bounds = [min(rows, (blocks * k // count) * align) for k in range(count + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(count) if bounds[k] < bounds[k + 1]]


def run_rows(rows: int, work: Callable[[int, int], None], align: int = 4) -> None:
    """Run `work(begin, end)` over row ranges covering [0, rows), in parallel when there are several
    (starts on multiples of `align`)."""
    if rows > 0:
        run_chunks(row_chunks(rows, thread_count(), align), lambda index, begin, end: work(begin, end))


def run_chunks(chunks: list[tuple[int, int]], work: Callable[[int, int, int], None]) -> None:
    """Run `work(index, begin, end)` for every (begin, end) range of `chunks`, in parallel when there are
    several; the index lets each range use buffers of its own.

    The native functions release the GIL (ctypes.CDLL does), so Python threads run them side by side."""
    global _pool, _pool_pid
    if len(chunks) == 1:
        work(0, *chunks[0])
        return
    if _pool is None or _pool._max_workers < len(chunks) - 1 or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(max_workers=len(chunks) - 1, thread_name_prefix="nnd-native")
        _pool_pid = os.getpid()
    pending = [_pool.submit(work, index, begin, end) for index, (begin, end) in enumerate(chunks) if index]
    try:
        work(0, *chunks[0])
    finally:
        # Even when this thread's part raised (Ctrl-C lands here), no worker may still be writing into the
        # buffers once the caller moves on.
        for future in pending:
            future.result()
