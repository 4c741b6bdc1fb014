"""Matrix products on the GPU through a cuBLAS handle of nnd's own, so that CUDA graphs can capture them.

CuPy refuses any cuBLAS call while a stream is being captured (its `setStream` raises), which would keep
every GEMM of a training step, and with it the step, out of a CUDA graph. cuBLAS itself supports capture
when its workspace is memory the caller owns. So on the cupy backend `xp.matmul` is this module's
`Gemm`: it calls `cublasGemmEx` / `cublasGemmStridedBatchedEx` through ctypes on a handle created once,
with a 32 MiB workspace, bound before each call to CuPy's current stream (binding resets the workspace,
so it is set again right after). Eager and captured runs go through the same calls and so compute the
same numbers. float32 products use TF32 Tensor Cores when CUPY_TF32=1 at the first product (`--tf32`
sets it), as CuPy's own GEMMs do.

Row-major C = A @ B is column-major C^T = B^T A^T, so cuBLAS gets B first. An operand needs no copy when
one of its two matrix axes has unit stride (a transposed view is read with the transpose flag) and its
batch axes, if any, collapse to one stride; others are made contiguous first. What this path does not
cover (vectors, mixed or integer dtypes, empty or oversized products, a machine where libcublas cannot be
found) goes to `cupy.matmul`, which runs eagerly but cannot be captured.
"""
from __future__ import annotations

import ctypes
import math
import os
import re
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

OP_N, OP_T = 0, 1
CUDA_DATA_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2}
BFLOAT16_DATA_TYPE = 14
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT_ALGORITHM = -1
CUBLAS_STATUS_ALLOC_FAILED = 3
WORKSPACE_BYTES = 32 << 20  # what cuBLAS asks for on Hopper
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Operand:
    """How cuBLAS reads one matrix operand: transpose flag, leading dimension, batch stride (elements)."""

    op: int
    ld: int
    batch_stride: int


@dataclass(frozen=True)
class GemmPlan:
    """One cuBLAS call computing row-major C[b] = A[b] @ B[b] for b < batch, sizes in cuBLAS' order."""

    m: int  # columns of C
    n: int  # rows of C
    k: int
    first: Operand  # B, read as B^T
    second: Operand  # A, read as A^T
    ldc: int
    batch: int
    batch_stride_c: int


def matrix_operand(shape: tuple[int, ...], strides: tuple[int, ...], batch: tuple[int, ...]) -> Operand | None:
    """How cuBLAS reads row-major matrices X[..., R, S] (strides in elements) as the column-major X^T, for
    a product over the batch shape `batch`; None when the operand must be copied first."""
    rows, cols = shape[-2:]
    row_stride, col_stride = strides[-2:]
    batch_stride = _batch_stride(shape[:-2], strides[:-2], batch)
    if batch_stride is None:
        return None
    if cols == 1 or col_stride == 1:  # rows are contiguous: column-major X^T with ld = the row stride
        ld = row_stride if rows > 1 else max(cols, 1)
        if ld >= max(cols, 1):
            return Operand(OP_N, ld, batch_stride)
    if rows == 1 or row_stride == 1:  # columns are contiguous: X itself column-major, read transposed
        ld = col_stride if cols > 1 else max(rows, 1)
        if ld >= max(rows, 1):
            return Operand(OP_T, ld, batch_stride)
    return None


def _batch_stride(shape: tuple[int, ...], strides: tuple[int, ...], batch: tuple[int, ...]) -> int | None:
    """The one stride stepping through this operand's matrices in the batch's row-major order: 0 for an
    operand broadcast over the whole batch, None for anything in between or batch axes that do not
    collapse."""
    if all(d == 1 for d in shape):
        return 0
    if tuple(shape) != tuple(batch):
        return None
    axes = [(d, s) for d, s in zip(shape, strides) if d != 1]
    for (_, outer), (inner_size, inner) in zip(axes, axes[1:]):
        if outer != inner * inner_size:
            return None
    return axes[-1][1] if axes else 0


def output_operand(shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int] | None:
    """(ldc, batch stride) for writing row-major C[..., M, N] in place, or None when C's rows are not
    contiguous or its batch axes do not collapse."""
    rows, cols = shape[-2:]
    row_stride, col_stride = strides[-2:]
    if cols > 1 and col_stride != 1:
        return None
    ldc = row_stride if rows > 1 else max(cols, 1)
    if ldc < max(cols, 1):
        return None
    batch_stride = _batch_stride(shape[:-2], strides[:-2], tuple(shape[:-2]))
    if batch_stride is None or (math.prod(shape[:-2]) > 1 and batch_stride < rows * ldc):
        return None
    return ldc, batch_stride


def plan_gemm(a: Operand, b: Operand, m: int, k: int, n: int, c: tuple[int, int], batch: int) -> GemmPlan:
    """The cuBLAS call for row-major [m, k] @ [k, n] into C with (ldc, batch stride) `c`."""
    return GemmPlan(m=n, n=m, k=k, first=b, second=a, ldc=c[0], batch=batch, batch_stride_c=c[1])


def _strides(array: Any) -> tuple[int, ...] | None:
    itemsize = array.dtype.itemsize
    if any(s % itemsize or s < 0 for s in array.strides):
        return None
    return tuple(s // itemsize for s in array.strides)


class CublasLibrary:
    """libcublas through ctypes: one handle, its workspace, the stream it is bound to."""

    def __init__(self, cupy: Any, path: str):
        self.cupy = cupy
        self.lib = ctypes.CDLL(path)
        self.handle = ctypes.c_void_p()
        self._check("cublasCreate_v2", self.lib.cublasCreate_v2(ctypes.byref(self.handle)))
        # allocated from CuPy's default pool, outside any capture, and kept for the process
        self.workspace = cupy.empty(WORKSPACE_BYTES, dtype=np.uint8)
        self.stream: int | None = None
        self.tf32 = False

    def bind(self, stream: int) -> None:
        if stream == self.stream:
            return
        self._check("cublasSetStream_v2", self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream)))
        self._check("cublasSetWorkspace_v2", self.lib.cublasSetWorkspace_v2(
            self.handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(WORKSPACE_BYTES)))
        self.stream = stream

    def gemm(self, plan: GemmPlan, first: Any, second: Any, out: Any) -> None:
        """out <- the product `plan` describes, reading `first` (B) and `second` (A), all of one dtype."""
        dtype = out.dtype
        first, second, out = first.data.ptr, second.data.ptr, out.data.ptr
        data_type = BFLOAT16_DATA_TYPE if dtype.name == "bfloat16" else CUDA_DATA_TYPES[dtype]
        if dtype == np.float64:
            compute, alpha, beta = COMPUTE_64F, ctypes.c_double(1.0), ctypes.c_double(0.0)
        else:
            compute = COMPUTE_32F_FAST_TF32 if self.tf32 and dtype == np.float32 else COMPUTE_32F
            alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
        self.bind(self.cupy.cuda.get_current_stream().ptr)
        a, b = plan.first, plan.second
        common = (self.handle, a.op, b.op, plan.m, plan.n, plan.k, ctypes.byref(alpha))
        if plan.batch == 1:
            status = self.lib.cublasGemmEx(
                *common, ctypes.c_void_p(first), data_type, a.ld, ctypes.c_void_p(second), data_type, b.ld,
                ctypes.byref(beta), ctypes.c_void_p(out), data_type, plan.ldc, compute, GEMM_DEFAULT_ALGORITHM)
            self._check("cublasGemmEx", status)
            return
        status = self.lib.cublasGemmStridedBatchedEx(
            *common, ctypes.c_void_p(first), data_type, a.ld, ctypes.c_longlong(a.batch_stride),
            ctypes.c_void_p(second), data_type, b.ld, ctypes.c_longlong(b.batch_stride), ctypes.byref(beta),
            ctypes.c_void_p(out), data_type, plan.ldc, ctypes.c_longlong(plan.batch_stride_c), plan.batch, compute,
            GEMM_DEFAULT_ALGORITHM)
        self._check("cublasGemmStridedBatchedEx", status)

    @staticmethod
    def _check(name: str, status: int) -> None:
        if status == CUBLAS_STATUS_ALLOC_FAILED:  # its workspace: reported as the out-of-memory it is
            raise MemoryError(f"{name} could not allocate its workspace (cuBLAS status {status})")
        if status:
            raise RuntimeError(f"{name} failed with cuBLAS status {status}")


def find_cublas(cupy: Any) -> str | None:
    """The path of the libcublas CuPy loaded, so that both use one library (None without one)."""
    try:
        cupy.cuda.device.get_cublas_handle()  # makes CuPy load its libcublas
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                found = re.search(r"(/\S*/libcublas\.so[.\d]*)$", line.strip())
                if found:
                    return found.group(1)
    except (AttributeError, OSError, RuntimeError):  # no CuPy device module (a stand-in), or no /proc
        return None
    return None


class Gemm:
    """`matmul(a, b, out=None)` for the cupy backend: nnd's cuBLAS handle where it applies (see the
    module's text), `cupy.matmul` elsewhere."""

    def __init__(self, cupy: Any):
        self.cupy = cupy
        self.library: CublasLibrary | None = None
        self.loaded = False

    def __call__(self, a: Any, b: Any, out: Any = None) -> Any:
        library = self._library()
        if library is None or not self._handles(a, b):
            return self.cupy.matmul(a, b, out=out)
        batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        if not 0 < max(m, n, k) <= INT_MAX or min(m, n, k) == 0:
            return self.cupy.matmul(a, b, out=out)
        a, first = self._operand(a, batch)
        b, second = self._operand(b, batch)
        result = out
        # cuBLAS must not write C over A or B: an out overlapping an operand gets the product through a copy
        aliased = out is not None and any(self.cupy.may_share_memory(out, x) for x in (a, b))
        target = None if aliased else self._output(out, batch + (m, n), a.dtype)
        if target is None:
            result = self.cupy.empty(batch + (m, n), dtype=a.dtype)
            target = output_operand(result.shape, _strides(result))
        plan = plan_gemm(first, second, m, k, n, target, math.prod(batch))
        library.gemm(plan, b, a, result)
        if out is not None and result is not out:
            out[...] = result
            return out
        return result

    def _library(self) -> CublasLibrary | None:
        if not self.loaded:
            self.loaded = True
            path = find_cublas(self.cupy)
            try:
                self.library = CublasLibrary(self.cupy, path) if path else None
            except (OSError, RuntimeError):  # an unusable library: CuPy's own products still work
                self.library = None
            if self.library is not None:  # decided once, at the first product, as CuPy decides it
                self.library.tf32 = os.environ.get("CUPY_TF32") == "1"
        return self.library

    def _handles(self, a: Any, b: Any) -> bool:
        ndarray = self.cupy.ndarray
        return (isinstance(a, ndarray) and isinstance(b, ndarray) and a.ndim >= 2 and b.ndim >= 2
                and a.dtype == b.dtype and (a.dtype in CUDA_DATA_TYPES or a.dtype.name == "bfloat16")
                and a.shape[-1] == b.shape[-2])

    def _operand(self, array: Any, batch: tuple[int, ...]) -> tuple[Any, Operand]:
        strides = _strides(array)
        operand = None if strides is None else matrix_operand(array.shape, strides, batch)
        if operand is None:
            if array.ndim > 2 and tuple(array.shape[:-2]) != batch:
                array = self.cupy.broadcast_to(array, batch + array.shape[-2:])
            array = self.cupy.ascontiguousarray(array)
            operand = matrix_operand(array.shape, _strides(array), batch)
        return array, operand

    def _output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> tuple[int, int] | None:
        if out is None or tuple(out.shape) != shape or out.dtype != dtype:
            return None
        strides = _strides(out)
        return None if strides is None else output_operand(out.shape, strides)


class DeviceArrayModule(types.ModuleType):
    """`cupy` as the kernels see it (`ctx.xp`): every name of CuPy, with `matmul` going through `Gemm`."""

    def __init__(self, cupy: Any):
        super().__init__("cupy")  # the kernels pick their fast paths by xp.__name__
        self.__dict__.update({k: v for k, v in vars(cupy).items() if not k.startswith("__")})
        self.wrapped = cupy
        self.matmul = Gemm(cupy)

    def __getattr__(self, name: str) -> Any:  # submodules CuPy imports lazily
        return getattr(self.wrapped, name)
