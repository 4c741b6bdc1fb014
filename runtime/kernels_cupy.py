"""CuPy overrides: generated kernels for fused elementwise groups, one-pass bias + activation epilogues.

CuPy is imported inside the functions that run on the device, so this module imports (and registers its
kernels) on machines without it; selecting the cupy backend there fails in `get_backend` with a clear
message before any of these run.

* `fused_elementwise`: the body becomes CUDA C++ (`nnd.runtime.cuda_codegen`) in the executor's dtype,
  compiled once by NVRTC through `cupy.RawKernel` and cached by a hash of the source (equal groups share
  one kernel), then launched over the group's iteration size with a grid-stride loop.
* `conv2d_epilogue` / `matmul_epilogue`: the product (the generic kernels, cuBLAS underneath), then the
  bias and the activation in one elementwise kernel writing into the product's buffer.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from nnd.runtime.kernel_table import kernel, node_kernel

BLOCK = 256
MAX_BLOCKS = 65535 * 32  # a grid-stride loop covers the rest

_COMPILED: dict[str, Any] = {}


def compiled_kernel(source: str, name: str):
    """The `cupy.RawKernel` `name` of `source`, compiled on first use; one per distinct (source, name):
    a source may define several kernels."""
    key = hashlib.sha1(source.encode()).hexdigest() + ":" + name
    found = _COMPILED.get(key)
    if found is None:
        import cupy

        found = cupy.RawKernel(source, name)
        _COMPILED[key] = found
    return found


def launch_elementwise(raw_kernel, inputs: list[Any], shape: tuple[int, ...], dtype: Any, outputs: int):
    """Run a generated elementwise kernel: contiguous inputs of `dtype`, fresh outputs of `shape`."""
    import cupy

    n = math.prod(shape)
    results = [cupy.empty(shape, dtype=dtype) for _ in range(outputs)]
    if n:
        args = [cupy.ascontiguousarray(cupy.asarray(a, dtype=dtype)) for a in inputs]
        blocks = min((n + BLOCK - 1) // BLOCK, MAX_BLOCKS)
        raw_kernel((blocks,), (BLOCK,), (*args, *results, np.uint64(n)))
    return results


@node_kernel("fused_elementwise", backend="cupy")
def fused_elementwise_cuda(node, executor):
    from nnd.runtime.cuda_codegen import node_kernel_source

    dtype = executor.dtype
    if not has_cuda_kernels(dtype):  # generated kernels compute in float or double: CuPy's own ops here
        from nnd.runtime.kernels_elementwise import fused_elementwise

        return fused_elementwise(node, executor)
    name, source = node_kernel_source(node, dtype)
    outputs = len(node.outputs)

    def run(ctx, attrs, *args):
        shape = np.broadcast_shapes(*(tuple(getattr(a, "shape", ())) for a in args))
        results = launch_elementwise(compiled_kernel(source, name), list(args), shape, dtype, outputs)
        return results[0] if outputs == 1 else tuple(results)

    return run


# ------------------------------------------------------------------------------------------ epilogues

_ACTIVATIONS = {
    "linear": "y = v;",
    "relu": "y = v < (T)0 ? (T)0 : v;",
    "tanh": "y = tanh(v);",
    "sigmoid": "T e = exp(-fabs(v)); y = v >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);",
}
_EPILOGUES: dict[str, Any] = {}


def _bias_activation(activation: str):
    found = _EPILOGUES.get(activation)
    if found is None:
        import cupy

        found = cupy.ElementwiseKernel("T b", "T y", f"T v = y + b; {_ACTIVATIONS[activation]}",
                                       f"nnd_bias_{activation}")
        _EPILOGUES[activation] = found
    return found


_FALLBACK: list[str] = []  # why the one-pass kernel was given up, once


def _epilogue(out, bias, activation: str):
    import cupy

    if not _FALLBACK and has_cuda_kernels(out.dtype):
        try:
            out = cupy.ascontiguousarray(out)
            _bias_activation(activation)(bias.astype(out.dtype, copy=False), out)
            return out
        except Exception as exc:  # a CUDA compile or launch failure: keep running, unfused, and say so
            import warnings

            _FALLBACK.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(f"the one-pass bias + activation kernel failed ({_FALLBACK[0][:200]}); "
                          "epilogues run as separate CuPy operations", RuntimeWarning, stacklevel=2)
    from nnd.runtime.kernels_fused import _epilogue as generic

    return generic(cupy, out, bias, activation)


@kernel("conv2d_epilogue", backend="cupy")
def conv2d_epilogue_cuda(ctx, attrs, x, w, bias):
    from nnd.runtime.kernels_conv import conv2d
    from nnd.runtime.kernels_fused import channel_bias

    return _epilogue(conv2d(ctx, attrs, x, w), channel_bias(attrs, bias), attrs.get("activation", "linear"))


@kernel("matmul_epilogue", backend="cupy")
def matmul_epilogue_cuda(ctx, attrs, a, b, bias):
    from nnd.runtime.kernels_basic import _matmul

    return _epilogue(_matmul(ctx, attrs, a, b), bias, attrs.get("activation", "linear"))


# The C types of the hand-written sources, each of which defines its kernels as nnd_<name>_<C type>.
FIXED_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def has_cuda_kernels(dtype) -> bool:
    """Whether the generated and hand-written kernels have a version for `dtype` (not for float16 or
    bfloat16: those run CuPy's own operations)."""
    return np.dtype(dtype) in FIXED_C_TYPES


def fixed_kernel(source: str, name: str, dtype) -> Any:
    """Kernel `nnd_<name>_<float|double>` of a hand-written source for `dtype`, or None for a dtype it
    has no version of (float16, bfloat16)."""
    c_type = FIXED_C_TYPES.get(np.dtype(dtype))
    return None if c_type is None else compiled_kernel(source, f"nnd_{name}_{c_type}")


def launch_over(kernel_fn, count: int, args: list) -> None:
    """Launch a grid-stride kernel over `count` elements: arrays pass as they are, integers as uint64."""
    if count:
        grid, block = _grid(count)
        kernel_fn(grid, block, tuple(np.uint64(a) if isinstance(a, (int, np.integer)) else a for a in args))


def _grid(n: int) -> tuple[tuple[int], tuple[int]]:
    return (max(1, min((n + BLOCK - 1) // BLOCK, MAX_BLOCKS)),), (BLOCK,)
