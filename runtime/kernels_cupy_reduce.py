"""CuPy kernel for sums over a run of consecutive axes that keeps the last axis: bias gradients (every axis
but the channels) and global pooling (the spatial axes).

CuPy's reduction gives each output element to one thread block, so a bias gradient of a [512, 26, 26, 32]
activation is 32 blocks each adding 346,112 numbers: 8.7 ms on an H200, more than half of the seed CNN's
training step. Here the sum takes two launches of one kernel. The first splits the reduced run into
about sqrt(run) chunks and gives each (chunk, kept element) pair a thread, so neighbouring threads read
neighbouring channels; the second adds the chunks' partial sums the same way, one chunk. No atomics,
so the result does not depend on scheduling.
"""
from __future__ import annotations

import math

from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_basic import _axes, is_run_before_last, run_sizes, run_sum_shape
from nnd.runtime.kernels_cupy import fixed_kernel, launch_over
from nnd.runtime.precision import wide_sum

REDUCE_SOURCE = r"""
typedef unsigned long long nnd_size;

// out[o, g, i] = sum of x[o, r, i] over the rows r of chunk g (rows g * chunk up to the run's end)
template <typename T>
__device__ void chunk_sums(const T* x, T* out, nnd_size outer, nnd_size run, nnd_size inner, nnd_size chunk,
                           nnd_size chunks) {
    nnd_size total = outer * chunks * inner;
    for (nnd_size t = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; t < total;
         t += (nnd_size)blockDim.x * gridDim.x) {
        nnd_size i = t % inner, rest = t / inner, g = rest % chunks, o = rest / chunks;
        nnd_size end = (g + 1) * chunk < run ? (g + 1) * chunk : run;
        const T* column = x + o * run * inner + i;
        T sum = (T)0;
        for (nnd_size r = g * chunk; r < end; r++) sum += column[r * inner];
        out[t] = sum;
    }
}

#define NND_REDUCE_KERNELS(T)                                                                               \
extern "C" __global__ void nnd_chunk_sums_##T(const T* x, T* out, nnd_size outer, nnd_size run,             \
        nnd_size inner, nnd_size chunk, nnd_size chunks) {                                                  \
    chunk_sums<T>(x, out, outer, run, inner, chunk, chunks);                                                \
}

NND_REDUCE_KERNELS(float)
NND_REDUCE_KERNELS(double)
"""


def run_sum(xp, x, axes: tuple[int, ...]):
    """x summed over its consecutive `axes` (the last axis kept) as [outer, inner], or None when x's dtype
    has no kernel."""
    fn = fixed_kernel(REDUCE_SOURCE, "chunk_sums", x.dtype)
    if fn is None:
        return None
    x = xp.ascontiguousarray(x)
    outer, run, inner = run_sizes(x.shape, axes)
    chunk = max(1, math.isqrt(run))
    chunks = -(-run // chunk)
    partial = xp.empty((outer, chunks, inner), dtype=x.dtype)
    launch_over(fn, partial.size, [x, partial, outer, run, inner, chunk, chunks])
    total = xp.empty((outer, inner), dtype=x.dtype)
    launch_over(fn, total.size, [partial, total, outer, chunks, inner, chunks, 1])
    return total


@kernel("reduce_sum", backend="cupy")
def reduce_sum_cuda(ctx, attrs, x):
    axes = _axes(attrs, x.ndim)
    keepdims = bool(attrs.get("keepdims", False))
    total = run_sum(ctx.xp, x, axes) if is_run_before_last(axes, x.ndim) and x.size else None
    if total is None:
        return wide_sum(ctx.xp, x, axes, keepdims)
    return total.reshape(run_sum_shape(x.shape, axes, keepdims))
