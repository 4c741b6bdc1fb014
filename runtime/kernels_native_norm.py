"""The NumPy backend's training batch normalization in native code (`csrc/norm_impl.h`).

The statistics are sums per channel over every row of the [rows, channels] view of the input, in
double and in one pass: the moments of x - shift, the shift being the first row (near the data, so the
variance, the second moment corrected by the square of the first, loses nothing to cancellation), each
thread summing its rows into buffers of its own. Normalizing is one per-channel
affine pass, and so is the input gradient: with xhat = (x - mean) inv,

    dx = gamma inv / count (count dy - dbeta - xhat dgamma) = dy A + x B + K

with A = gamma inv, B = -A inv dgamma / count and K = A (mean inv dgamma - dbeta) / count per channel.
A fused relu (batchnorm_train[activation=relu]) is applied in the normalizing pass. Results have the
dtypes and meaning of the array-module kernels (`kernels_conv`), which run instead for other dtypes or
without the native library.
"""
from __future__ import annotations

import numpy as np

from nnd.runtime import kernels_conv, native
from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_native import address, native_function


def _usable(*arrays: np.ndarray) -> bool:
    dtype = arrays[0].dtype
    return all(a.dtype == dtype for a in arrays) and native_function("channel_affine", dtype) is not None


def _rows(array: np.ndarray) -> np.ndarray:
    """The [rows, channels] view of a C-contiguous copy of `array` (channels last)."""
    return np.ascontiguousarray(array).reshape(-1, array.shape[-1])


def _channel_sums(name: str, arrays: list[np.ndarray], shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two per-channel float64 sums of the native reduction `name` over every row of `arrays`, each
    thread summing into buffers of its own."""
    rows, channels = arrays[0].shape
    fn = native_function(name, arrays[0].dtype)
    chunks = native.row_chunks(rows, native.thread_count(), align=64)
    partial = np.zeros((2, len(chunks), channels))
    pointers = [address(a) for a in (*arrays, shift)]
    native.run_chunks(chunks, lambda k, begin, end: fn(channels, begin, end, *pointers, address(partial[0, k]),
                                                       address(partial[1, k])))
    first, second = partial.sum(axis=1)
    return first, second


def _affine(u: np.ndarray, a: np.ndarray, mean: np.ndarray, k: np.ndarray, v: np.ndarray | None = None,
            b: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
    """u a + (v - mean) b + k per channel (without v: (u - mean) a + k; with relu, its max with 0), the
    per-channel values rounded to u's dtype."""
    rows, channels = u.shape
    dtype = u.dtype
    fn = native_function("channel_affine", dtype)
    out = np.empty_like(u)
    a, b, mean, k = (None if p is None else np.ascontiguousarray(p, dtype=dtype) for p in (a, b, mean, k))
    inputs, target = [address(p) for p in (u, a, v, b, mean, k)], address(out)
    native.run_rows(rows, lambda begin, end: fn(channels, begin, end, *inputs, int(relu), target), align=64)
    return out


@kernel("batchnorm_train", backend="numpy")
def batchnorm_train_native(ctx, attrs, x, gamma, beta):
    if not _usable(x, gamma, beta):
        return kernels_conv.batchnorm_train(ctx, attrs, x, gamma, beta)
    rows = _rows(x)
    count = rows.shape[0]
    # One pass: sums of x - shift for a shift near the data (the first row), in double, lose nothing
    # to cancellation however far the mean lies from zero.
    shift = rows[0].copy()
    centered, square = _channel_sums("channel_moments", [rows], shift)
    mean = (shift + centered / count).astype(x.dtype)
    var = (square - centered * centered / count) / count
    inv = 1 / np.sqrt(var + attrs["epsilon"])
    scale = gamma * inv
    y = _affine(rows, scale, mean, beta, relu=attrs.get("activation", "linear") == "relu")
    return y.reshape(x.shape), mean, var.astype(x.dtype)


@kernel("batchnorm_train_grad", backend="numpy")
def batchnorm_train_grad_native(ctx, attrs, dy, x, gamma, mean, var):
    if not _usable(dy, x, gamma, mean, var):
        return kernels_conv.batchnorm_train_grad(ctx, attrs, dy, x, gamma, mean, var)
    gradient, rows = _rows(dy), _rows(x)
    count = rows.shape[0]
    inv = 1 / np.sqrt(var.astype(np.float64) + attrs["epsilon"])
    dbeta, centered_dot = _channel_sums("channel_dot", [gradient, rows], mean)
    dgamma = centered_dot * inv
    a = gamma * inv
    dx = _affine(gradient, a, mean, -a * dbeta / count, rows, -a * inv * dgamma / count)
    return dx.reshape(x.shape), dgamma.astype(x.dtype), dbeta.astype(x.dtype)
