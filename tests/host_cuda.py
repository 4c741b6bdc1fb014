"""Generated CUDA kernels built as host C++ (g++): one block of one thread, so the grid-stride loop visits
every element in order. Lets CPU-only machines run the generated code."""
from __future__ import annotations

import ctypes
import re
import subprocess
import threading
import types
from pathlib import Path

import numpy as np

from nnd.runtime.cuda_codegen import batched_source

HOST_PRELUDE = """
#include <math.h>
#include <string.h>
struct nnd_dim3 { unsigned int x; };
static const nnd_dim3 blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
#define __global__
#define __device__
static inline void __syncthreads() {}  // one thread: nothing to wait for
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, sizeof d); return d; }
"""

# Many threads per block, as a device runs them: every thread of a block is an OS thread with its own
# threadIdx, __syncthreads is a barrier of the block's threads, and blocks run one after another. Where the
# one-thread prelude cannot tell, this shows a missing or misplaced barrier (a thread reading what another
# has not written yet, or a barrier some threads never reach: a deadlock), and loops that assume one row
# per block or one element per thread.
THREADED_PRELUDE = """
#include <math.h>
#include <string.h>
#include <barrier>
struct nnd_dim3 { unsigned int x; };
static thread_local nnd_dim3 blockIdx = {0}, threadIdx = {0};
static nnd_dim3 blockDim = {1}, gridDim = {1};
static std::barrier<>* nnd_block_barrier = nullptr;
#define __global__
#define __device__
static inline void __syncthreads() { nnd_block_barrier->arrive_and_wait(); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, sizeof d); return d; }
extern "C" void nnd_host_grid(unsigned int grid, unsigned int block) {
    gridDim.x = grid;
    blockDim.x = block;
    delete nnd_block_barrier;
    nnd_block_barrier = new std::barrier<>(block);
}
extern "C" void nnd_host_thread(unsigned int block, unsigned int thread) {
    blockIdx.x = block;
    threadIdx.x = thread;
}
"""


def host_library(tmp_path: Path, sources: list[tuple[str, str]], threaded: bool = False):
    """The kernels built as a host shared library: one thread, one block, the grid-stride loop visits
    every element; or (threaded) with THREADED_PRELUDE, for `ThreadedRawKernel`."""
    unit = tmp_path / "kernels.cpp"
    unit.write_text((THREADED_PRELUDE if threaded else HOST_PRELUDE) + batched_source(sources))
    library = tmp_path / "kernels.so"
    flags = ["-std=c++20", "-pthread"] if threaded else []
    result = subprocess.run(["g++", "-O1", "-shared", "-fPIC", *flags, "-o", str(library), str(unit)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    return ctypes.CDLL(str(library))


def call_host(library, name: str, inputs: list[np.ndarray], shape: tuple, outputs: int, dtype) -> list[np.ndarray]:
    args = [np.ascontiguousarray(a, dtype=dtype) for a in inputs]
    results = [np.empty(shape, dtype=dtype) for _ in range(outputs)]
    fn = getattr(library, name)
    fn.restype = None
    fn(*[a.ctypes.data_as(ctypes.c_void_p) for a in args + results], ctypes.c_ulonglong(int(np.prod(shape))))
    return results


# The C types of kernel parameters, as the NumPy dtypes CuPy must be handed for them. A device launch
# copies each scalar argument with its own dtype's size: an np.int32 or a Python float (a double) where
# the kernel declares an 8-byte integer or a float reads garbage there, while on the host (arguments in
# 64-bit registers) the same call happens to work. So the stand-in insists on exact types.
C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
           "long long": np.int64, "unsigned long long": np.uint64}


def kernel_parameters(source: str, name: str) -> list[tuple[np.dtype, bool]]:
    """(dtype, is a pointer) for each parameter of the `extern "C"` kernel `name` in `source`, read from
    the preprocessed source, so that kernels made by macros and typedef'd sizes resolve."""
    result = subprocess.run(["g++", "-E", "-P", "-x", "c++", "-"], input=source, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    typedefs = {alias: target for target, alias in re.findall(r"typedef ([\w ]+?) (\w+) ?;", text)}
    match = re.search(rf'extern "C" (?:__global__ )?void {name} ?\(([^)]*)\)', text)
    assert match, f"no kernel {name} in the source"
    parameters = []
    for declaration in match.group(1).split(","):
        words = [w for w in declaration.replace("*", " * ").split() if w not in ("const", "__restrict__")]
        pointer = "*" in words
        base = " ".join(w for w in words[:-1] if w != "*")  # the last word is the parameter's name
        base = typedefs.get(base, base)
        assert base in C_TYPES, f"kernel {name}: parameter type {base!r} has no NumPy dtype here"
        parameters.append((np.dtype(C_TYPES[base]), pointer))
    return parameters


def check_arguments(name: str, parameters: list[tuple[np.dtype, bool]], args) -> None:
    """The launch arguments match the kernel's parameters exactly: arrays of the pointed-to dtype, NumPy
    scalars of the declared type."""
    assert len(args) == len(parameters), f"{name}: {len(args)} arguments for {len(parameters)} parameters"
    for index, (arg, (dtype, pointer)) in enumerate(zip(args, parameters)):
        if pointer:
            assert isinstance(arg, np.ndarray) and arg.dtype == dtype, \
                f"{name} argument {index}: wants a {dtype} array, got {type(arg).__name__} {getattr(arg, 'dtype', '')}"
        else:
            assert isinstance(arg, np.generic) and not isinstance(arg, np.ndarray) and arg.dtype == dtype, \
                f"{name} argument {index}: wants a NumPy {dtype} scalar, got {type(arg).__name__} {arg!r}"


class HostRawKernel:
    """Stands in for `cupy.RawKernel` on the host: builds the source with g++ and calls it with NumPy
    arrays, after checking that they match the kernel's parameters as a device launch needs; the launch
    geometry is ignored (the host prelude runs the grid-stride loop on one thread)."""

    threaded = False
    max_threads_per_block = 1024  # as a device reports it for a kernel of few registers

    def __init__(self, source: str, name: str, directory: Path):
        kind = "threaded" if self.threaded else "serial"
        directory = Path(directory) / f"{name}_{kind}_{abs(hash(source)):x}"
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.parameters = kernel_parameters(source, name)
        self.library = host_library(directory, [(name, source)], self.threaded)
        self.fn = getattr(self.library, name)
        self.fn.restype = None
        self.launches = 0

    def __call__(self, grid, block, args):
        check_arguments(self.name, self.parameters, args)
        converted = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous
                converted.append(arg.ctypes.data_as(ctypes.c_void_p))
            else:
                converted.append(ctypes.c_ulonglong(int(arg)))
        self.launches += 1
        self.run(grid, block, converted)

    def run(self, grid, block, converted: list) -> None:
        self.fn(*converted)


class ThreadedRawKernel(HostRawKernel):
    """`HostRawKernel` with the launch's block size honoured: each block's threads run at once as OS
    threads (a ctypes call releases the GIL) around a barrier, the blocks one after another. The grid is
    cut to `max_blocks`, fewer than the tests' batch rows, so that kernels which give a block several rows
    (or a thread several elements) are tried on that too; a correct kernel gives the same results on any
    grid."""

    threaded = True
    max_blocks = 2
    deadline_s = 60.0

    def run(self, grid, block, converted: list) -> None:
        blocks, threads = min(int(grid[0]), self.max_blocks), int(block[0])
        assert 1 <= threads <= self.max_threads_per_block and blocks >= 1, (grid, block, self.max_threads_per_block)
        self.library.nnd_host_grid(ctypes.c_uint(blocks), ctypes.c_uint(threads))
        failures: list[BaseException] = []

        def thread_body(b: int, t: int) -> None:
            try:
                self.library.nnd_host_thread(ctypes.c_uint(b), ctypes.c_uint(t))
                self.fn(*converted)
            except BaseException as exc:  # noqa: BLE001  (reported by the launching thread)
                failures.append(exc)

        for b in range(blocks):
            workers = [threading.Thread(target=thread_body, args=(b, t), daemon=True) for t in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(self.deadline_s)
            stuck = sum(worker.is_alive() for worker in workers)
            assert not stuck, (f"{self.name}: {stuck} of {threads} threads of block {b} still wait after "
                               f"{self.deadline_s:.0f} s: a __syncthreads() that not every thread reaches?")
        assert not failures, failures[0]


class FakeCupy(types.ModuleType):
    """A `cupy` module made of NumPy plus `HostRawKernel`: enough for the fused elementwise kernel."""

    def __init__(self, directory: Path):
        super().__init__("cupy")
        self.kernels: list[HostRawKernel] = []
        self.ndarray = np.ndarray
        self.is_available = lambda: True
        self.kernel_class: type[HostRawKernel] = HostRawKernel  # ThreadedRawKernel: many threads a block

        def raw_kernel(source, name, **options):
            kernel = self.kernel_class(source, name, directory)
            self.kernels.append(kernel)
            return kernel

        self.RawKernel = raw_kernel

    def __getattr__(self, name):
        return getattr(np, name)
