"""Generated CUDA kernels built as host C++ (g++): one block of one thread, so the grid-stride loop visits
every element in order. Lets CPU-only machines run the generated code."""
from __future__ import annotations

import ctypes
import subprocess
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


def host_library(tmp_path: Path, sources: list[tuple[str, str]]):
    """The kernels built as a host shared library: one thread, one block, the grid-stride loop visits
    every element."""
    unit = tmp_path / "kernels.cpp"
    unit.write_text(HOST_PRELUDE + batched_source(sources))
    library = tmp_path / "kernels.so"
    result = subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-o", str(library), str(unit)],
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


class HostRawKernel:
    """Stands in for `cupy.RawKernel` on the host: builds the source with g++ and calls it with NumPy
    arrays; the launch geometry is ignored (the host prelude runs the grid-stride loop on one thread)."""

    def __init__(self, source: str, name: str, directory: Path):
        directory = Path(directory) / f"{name}_{abs(hash(source)):x}"
        directory.mkdir(parents=True, exist_ok=True)
        self.library = host_library(directory, [(name, source)])
        self.fn = getattr(self.library, name)
        self.fn.restype = None
        self.launches = 0

    def __call__(self, grid, block, args):
        converted = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous
                converted.append(arg.ctypes.data_as(ctypes.c_void_p))
            else:
                converted.append(ctypes.c_ulonglong(int(arg)))
        self.launches += 1
        self.fn(*converted)


class FakeCupy(types.ModuleType):
    """A `cupy` module made of NumPy plus `HostRawKernel`: enough for the fused elementwise kernel."""

    def __init__(self, directory: Path):
        super().__init__("cupy")
        self.kernels: list[HostRawKernel] = []
        self.ndarray = np.ndarray
        self.is_available = lambda: True

        def raw_kernel(source, name, **options):
            kernel = HostRawKernel(source, name, directory)
            self.kernels.append(kernel)
            return kernel

        self.RawKernel = raw_kernel

    def __getattr__(self, name):
        return getattr(np, name)
