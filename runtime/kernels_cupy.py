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

from nnd.runtime import kernels_cupy_scan
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


# ------------------------------------------------------------------------------------------ LSTM steps
# The default LSTM path (tanh, sigmoid, no padding mask) in two kernels a step: cuBLAS for h @ U, then one
# generated kernel for all the gate math of the step, where the generic path launches about a dozen
# elementwise kernels. One thread per (sample, unit); the gates of a unit sit u apart in a row of 4u.

LSTM_STEP_SOURCE = r"""
template <typename T> __device__ T nnd_sigmoid(T v) {
    T e = exp(-fabs(v));
    return v >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
}

template <typename T>
__device__ void lstm_forward_step(const T* z, const T* x, const T* c_prev, T* gates, T* c_new, T* h_new,
                                  unsigned long long n, unsigned long long u) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long b = i / u, j = i % u, row = b * 4 * u + j;
        T gi = nnd_sigmoid(z[row] + x[row]);
        T gf = nnd_sigmoid(z[row + u] + x[row + u]);
        T gc = tanh(z[row + 2 * u] + x[row + 2 * u]);
        T go = nnd_sigmoid(z[row + 3 * u] + x[row + 3 * u]);
        T c = gf * c_prev[i] + gi * gc;
        gates[row] = gi; gates[row + u] = gf; gates[row + 2 * u] = gc; gates[row + 3 * u] = go;
        c_new[i] = c;
        h_new[i] = go * tanh(c);
    }
}

template <typename T>
__device__ void lstm_backward_step(const T* dout, int has_dout, T* dh, T* dc, const T* gates, const T* c,
                                   const T* c_prev, T* dgates, unsigned long long n, unsigned long long u) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long b = i / u, j = i % u, row = b * 4 * u + j;
        T gi = gates[row], gf = gates[row + u], gc = gates[row + 2 * u], go = gates[row + 3 * u];
        T h_grad = dh[i] + (has_dout ? dout[i] : (T)0);
        T cell = tanh(c[i]);
        T c_grad = dc[i] + h_grad * go * ((T)1 - cell * cell);
        dgates[row + 3 * u] = h_grad * cell * go * ((T)1 - go);
        dgates[row] = c_grad * gc * gi * ((T)1 - gi);
        dgates[row + u] = c_grad * c_prev[i] * gf * ((T)1 - gf);
        dgates[row + 2 * u] = c_grad * gi * ((T)1 - gc * gc);
        dc[i] = c_grad * gf;
    }
}

extern "C" __global__ void nnd_lstm_forward_step_float(const float* z, const float* x, const float* c_prev,
        float* gates, float* c_new, float* h_new, unsigned long long n, unsigned long long u) {
    lstm_forward_step<float>(z, x, c_prev, gates, c_new, h_new, n, u);
}
extern "C" __global__ void nnd_lstm_forward_step_double(const double* z, const double* x, const double* c_prev,
        double* gates, double* c_new, double* h_new, unsigned long long n, unsigned long long u) {
    lstm_forward_step<double>(z, x, c_prev, gates, c_new, h_new, n, u);
}
extern "C" __global__ void nnd_lstm_backward_step_float(const float* dout, int has_dout, float* dh, float* dc,
        const float* gates, const float* c, const float* c_prev, float* dgates, unsigned long long n,
        unsigned long long u) {
    lstm_backward_step<float>(dout, has_dout, dh, dc, gates, c, c_prev, dgates, n, u);
}
extern "C" __global__ void nnd_lstm_backward_step_double(const double* dout, int has_dout, double* dh,
        double* dc, const double* gates, const double* c, const double* c_prev, double* dgates,
        unsigned long long n, unsigned long long u) {
    lstm_backward_step<double>(dout, has_dout, dh, dc, gates, c, c_prev, dgates, n, u);
}
"""


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


def _step_kernel(kind: str, dtype) -> Any:
    return fixed_kernel(LSTM_STEP_SOURCE, f"lstm_{kind}_step", dtype)


def _grid(n: int) -> tuple[tuple[int], tuple[int]]:
    return (max(1, min((n + BLOCK - 1) // BLOCK, MAX_BLOCKS)),), (BLOCK,)


def lstm_forward_cuda(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates) -> None:
    from nnd.runtime.kernels_recurrent import _lstm_forward_default, _projection

    if not has_cuda_kernels(hs.dtype):  # the step kernels are float and double: CuPy's own ops otherwise
        _lstm_forward_default(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates)
        return
    if kernels_cupy_scan.usable(hs.dtype):
        kernels_cupy_scan.lstm_scan_forward(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates)
        return

    steps, n, u = hs.shape
    xt = xp.ascontiguousarray(xt)  # time-major once, so each step reads one contiguous block
    c_prev = xp.ascontiguousarray(c0, dtype=hs.dtype)
    h = xp.ascontiguousarray(h0, dtype=hs.dtype)
    z = xp.empty((n, 4 * u), dtype=hs.dtype)
    project = _projection(xp, recurrent_kernel, rmask, (n, u), hs.dtype)
    step = _step_kernel("forward", hs.dtype)
    grid, block = _grid(n * u)
    for s in range(steps):
        project(h, z)
        step(grid, block, (z, xt[s], c_prev, gates[s], cs[s], hs[s], np.uint64(n * u), np.uint64(u)))
        h, c_prev = hs[s], cs[s]


def lstm_backward_cuda(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc, dgates, d_xproj_tm):
    from nnd.runtime.kernels_recurrent import _backprojection, _lstm_backward_default

    if not has_cuda_kernels(cs.dtype):
        return _lstm_backward_default(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc, dgates,
                                      d_xproj_tm)
    if kernels_cupy_scan.usable(cs.dtype):
        return kernels_cupy_scan.lstm_scan_backward(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc,
                                                    dgates, d_xproj_tm)

    steps, n, u = cs.shape
    kernel_t = xp.ascontiguousarray(recurrent_kernel.T)
    back = _backprojection(xp, kernel_t, rmask)
    dout = xp.ascontiguousarray(dout_tm) if dout_tm is not None else xp.zeros((1,), dtype=cs.dtype)
    c0 = xp.ascontiguousarray(c0, dtype=cs.dtype)
    step = _step_kernel("backward", cs.dtype)
    grid, block = _grid(n * u)
    has_dout = np.int32(dout_tm is not None)
    for s in range(steps - 1, -1, -1):
        row = dout[s] if dout_tm is not None else dout
        step(grid, block, (row, has_dout, dh, dc, gates[s], cs[s], cs[s - 1] if s else c0, dgates[s],
                           np.uint64(n * u), np.uint64(u)))
        back(dgates[s], dh)
    d_xproj_tm[...] = dgates
    return dh, dc


def _register_lstm_paths() -> None:
    from nnd.runtime.kernels_recurrent import LSTM_DEFAULT_PATHS

    LSTM_DEFAULT_PATHS["cupy"] = (lstm_forward_cuda, lstm_backward_cuda)


_register_lstm_paths()
