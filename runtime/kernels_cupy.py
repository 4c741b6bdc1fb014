"""CuPy overrides: generated kernels for fused elementwise groups, one-pass bias + activation epilogues,
and the helpers every hand-written CUDA source uses (`fixed_kernel`, `launch_over`).

CuPy is imported inside the functions that run on the device, so this module imports (and registers its
kernels) on machines without it; selecting the cupy backend there fails in `get_backend` with a clear
message before any of these run.

* `fused_elementwise`: the body becomes CUDA C++ (`nnd.runtime.cuda_codegen`) in the executor's dtype,
  compiled once by NVRTC through `cupy.RawKernel` and cached by its source text (equal groups share
  one kernel), then launched over the group's iteration size with a grid-stride loop.
* `conv2d_epilogue` / `matmul_epilogue`: the product (the generic kernels, cuBLAS underneath), then the
  bias and the activation in one elementwise kernel writing into the product's buffer.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nnd.runtime.kernel_table import kernel, node_kernel

BLOCK = 256
MAX_BLOCKS = 65535 * 32  # a grid-stride loop covers the rest

_COMPILED: dict[tuple[str, str], Any] = {}


def compiled_kernel(source: str, name: str):
    """The `cupy.RawKernel` `name` of `source`, compiled on first use; one per distinct (source, name):
    a source may define several kernels. (A string caches its hash, so the lookup costs no rehashing of
    the source at every launch.)"""
    key = (source, name)
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

# activation(out + bias) in place, one thread per element; the bias runs along the channel axis, `inner`
# elements apart (1 for channels-last and dense layers, H*W for NCHW convolutions).
EPILOGUE_SOURCE = r"""
template <typename T> __device__ T nnd_epilogue_activation(T v, unsigned long long code) {
    if (code == 1) return v < (T)0 ? (T)0 : v;
    if (code == 2) return tanh(v);
    if (code == 3) {
        T e = exp(-fabs(v));
        return v >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
    }
    return v;
}

template <typename T>
__device__ void bias_activation(T* out, const T* bias, unsigned long long n, unsigned long long channels,
                                unsigned long long inner, unsigned long long code) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x)
        out[i] = nnd_epilogue_activation(out[i] + bias[(i / inner) % channels], code);
}

#define NND_BIAS_ACTIVATION(T)                                                                              \
extern "C" __global__ void nnd_bias_activation_##T(T* out, const T* bias, unsigned long long n,             \
        unsigned long long channels, unsigned long long inner, unsigned long long code) {                   \
    bias_activation<T>(out, bias, n, channels, inner, code);                                                \
}

NND_BIAS_ACTIVATION(float)
NND_BIAS_ACTIVATION(double)
"""
ACTIVATION_CODES = {"linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


def _epilogue(out, bias, activation: str):
    import cupy

    from nnd.runtime.kernels_fused import _epilogue as generic

    fn = fixed_kernel(EPILOGUE_SOURCE, "bias_activation", out.dtype)
    code = ACTIVATION_CODES.get(activation)
    if fn is None or code is None or out.ndim == 0:
        return generic(cupy, out, bias, activation)
    out = cupy.ascontiguousarray(out)
    axis = out.ndim - bias.ndim + next((k for k, size in enumerate(bias.shape) if size != 1), bias.ndim - 1)
    inner = math.prod(out.shape[axis + 1:])
    bias = cupy.ascontiguousarray(bias.reshape(-1), dtype=out.dtype)
    launch_over(fn, out.size, [out, bias, out.size, bias.size, inner, code])
    return out


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
        grid, block = launch_shape(count)
        kernel_fn(grid, block, tuple(np.uint64(a) if isinstance(a, (int, np.integer)) else a for a in args))


def launch_shape(n: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a grid-stride loop over `n` elements: a thread each, up to the grid limit."""
    return (max(1, min((n + BLOCK - 1) // BLOCK, MAX_BLOCKS)),), (BLOCK,)
