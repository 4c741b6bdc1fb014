"""CuPy kernels for max pooling and the convolution's input gradient, one CUDA kernel each.

The generic kernels run on CuPy as a chain of array operations: max pooling makes a pass over the input
per window offset, its gradient builds a one-hot winner mask, and the input gradient adds one strided
block per kernel offset. Here each is one launch with one thread per output element:

* `maxpool2d`: the maximum of the window's cells inside the input (padding never wins); a window of
  padding only gives -inf, as the generic kernel does;
* `maxpool2d_grad` (windows that do not overlap): each input cell finds its window, the window's first
  maximum in row-major order, and takes the window's gradient if it is that maximum (and positive, for
  relu=true); overlapping windows keep the generic kernel, which adds the shares;
* `conv2d_grad_input`: one cuBLAS GEMM dy @ w^T into [N*Ho*Wo, kh*kw*C] columns, then col2im by
  gathering: each padded input cell sums the column entries of the windows that read it, so no two
  threads write the same cell and no atomics are needed.

The filter gradient is a product with a small output (kh*kw*C by F) and a long inner axis (every output
position of the batch). cuBLAS parallelizes over tiles of the output, so as one GEMM it keeps a few of
the GPU's multiprocessors busy for the whole sum; `conv2d_grad_filter` splits the batch into groups of
about SPLIT_ROWS positions, one batched GEMM gives each group's product, and a sum adds them.

Sizes go as unsigned 64-bit integers and signed positions are computed in long long. The same source
builds as host C++ for the tests (tests/host_cuda.py), and CI compiles it with nvcc.
"""
from __future__ import annotations


from nnd.runtime import kernels_conv
from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_cupy import fixed_kernel, launch_over

CONV_KERNELS_SOURCE = r"""
typedef unsigned long long nnd_size;

template <typename T> __device__ T nnd_negative_infinity();
template <> __device__ float nnd_negative_infinity<float>() { return __int_as_float((int)0xff800000); }
template <> __device__ double nnd_negative_infinity<double>() {
    return __longlong_as_double(0xfff0000000000000LL);
}

template <typename T>
__device__ void maxpool_forward(const T* x, T* y, nnd_size total, nnd_size h, nnd_size w, nnd_size c,
                                nnd_size out_h, nnd_size out_w, nnd_size pool_h, nnd_size pool_w,
                                nnd_size stride_h, nnd_size stride_w, nnd_size top, nnd_size left) {
    for (nnd_size i = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; i < total;
         i += (nnd_size)blockDim.x * gridDim.x) {
        nnd_size k = i % c, rest = i / c, ox = rest % out_w;
        rest /= out_w;
        nnd_size oy = rest % out_h, b = rest / out_h;
        long long y0 = (long long)(oy * stride_h) - (long long)top;
        long long x0 = (long long)(ox * stride_w) - (long long)left;
        T best = nnd_negative_infinity<T>();
        int found = 0;
        for (long long yy = y0; yy < y0 + (long long)pool_h; yy++) {
            if (yy < 0 || yy >= (long long)h) continue;
            for (long long xx = x0; xx < x0 + (long long)pool_w; xx++) {
                if (xx < 0 || xx >= (long long)w) continue;
                T v = x[((b * h + (nnd_size)yy) * w + (nnd_size)xx) * c + k];
                if (!found || v > best || (v != v && best == best)) { best = v; found = 1; }  // NaN wins
            }
        }
        y[i] = best;
    }
}

template <typename T>
__device__ void maxpool_backward(const T* x, const T* dy, T* dx, nnd_size total, nnd_size h, nnd_size w,
                                 nnd_size c, nnd_size out_h, nnd_size out_w, nnd_size pool_h, nnd_size pool_w,
                                 nnd_size stride_h, nnd_size stride_w, nnd_size top, nnd_size left,
                                 nnd_size relu) {
    for (nnd_size i = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; i < total;
         i += (nnd_size)blockDim.x * gridDim.x) {
        nnd_size k = i % c, rest = i / c, x_cell = rest % w;
        rest /= w;
        nnd_size y_cell = rest % h, b = rest / h;
        long long py = (long long)(y_cell + top), px = (long long)(x_cell + left);
        long long oy = py / (long long)stride_h, ox = px / (long long)stride_w;
        T grad = (T)0;
        if (oy < (long long)out_h && ox < (long long)out_w && py - oy * (long long)stride_h < (long long)pool_h
                && px - ox * (long long)stride_w < (long long)pool_w) {
            long long y0 = oy * (long long)stride_h - (long long)top, x0 = ox * (long long)stride_w - (long long)left;
            T best = (T)0;
            long long win_y = -1, win_x = -1;
            for (long long yy = y0; yy < y0 + (long long)pool_h; yy++) {
                if (yy < 0 || yy >= (long long)h) continue;
                for (long long xx = x0; xx < x0 + (long long)pool_w; xx++) {
                    if (xx < 0 || xx >= (long long)w) continue;
                    T v = x[((b * h + (nnd_size)yy) * w + (nnd_size)xx) * c + k];
                    if (win_y < 0 || v > best || (v != v && best == best)) { best = v; win_y = yy; win_x = xx; }
                }
            }
            if (win_y == (long long)y_cell && win_x == (long long)x_cell && (!relu || best > (T)0))
                grad = dy[((b * out_h + (nnd_size)oy) * out_w + (nnd_size)ox) * c + k];
        }
        dx[i] = grad;
    }
}

template <typename T>
__device__ void col2im(const T* cols, T* dx, nnd_size total, nnd_size h, nnd_size w, nnd_size c,
                       nnd_size out_h, nnd_size out_w, nnd_size kernel_h, nnd_size kernel_w, nnd_size stride_h,
                       nnd_size stride_w, nnd_size dilation_h, nnd_size dilation_w) {
    for (nnd_size i = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; i < total;
         i += (nnd_size)blockDim.x * gridDim.x) {
        nnd_size k = i % c, rest = i / c, x_cell = rest % w;
        rest /= w;
        nnd_size y_cell = rest % h, b = rest / h;
        T sum = (T)0;
        for (nnd_size ki = 0; ki < kernel_h; ki++) {
            long long row = (long long)y_cell - (long long)(ki * dilation_h);
            if (row < 0 || row % (long long)stride_h != 0 || row / (long long)stride_h >= (long long)out_h) continue;
            nnd_size oy = (nnd_size)(row / (long long)stride_h);
            for (nnd_size kj = 0; kj < kernel_w; kj++) {
                long long col = (long long)x_cell - (long long)(kj * dilation_w);
                if (col < 0 || col % (long long)stride_w != 0 || col / (long long)stride_w >= (long long)out_w)
                    continue;
                nnd_size ox = (nnd_size)(col / (long long)stride_w);
                sum += cols[((b * out_h + oy) * out_w + ox) * (kernel_h * kernel_w * c) + (ki * kernel_w + kj) * c + k];
            }
        }
        dx[i] = sum;
    }
}

#define NND_CONV_KERNELS(T)                                                                                 \
extern "C" __global__ void nnd_maxpool2d_##T(const T* x, T* y, nnd_size total, nnd_size h, nnd_size w,      \
        nnd_size c, nnd_size out_h, nnd_size out_w, nnd_size pool_h, nnd_size pool_w, nnd_size stride_h,    \
        nnd_size stride_w, nnd_size top, nnd_size left) {                                                   \
    maxpool_forward<T>(x, y, total, h, w, c, out_h, out_w, pool_h, pool_w, stride_h, stride_w, top, left);   \
}                                                                                                           \
extern "C" __global__ void nnd_maxpool2d_grad_##T(const T* x, const T* dy, T* dx, nnd_size total,           \
        nnd_size h, nnd_size w, nnd_size c, nnd_size out_h, nnd_size out_w, nnd_size pool_h,                \
        nnd_size pool_w, nnd_size stride_h, nnd_size stride_w, nnd_size top, nnd_size left, nnd_size relu) {\
    maxpool_backward<T>(x, dy, dx, total, h, w, c, out_h, out_w, pool_h, pool_w, stride_h, stride_w, top,  \
                        left, relu);                                                                        \
}                                                                                                           \
extern "C" __global__ void nnd_col2im_##T(const T* cols, T* dx, nnd_size total, nnd_size h, nnd_size w,     \
        nnd_size c, nnd_size out_h, nnd_size out_w, nnd_size kernel_h, nnd_size kernel_w,                   \
        nnd_size stride_h, nnd_size stride_w, nnd_size dilation_h, nnd_size dilation_w) {                   \
    col2im<T>(cols, dx, total, h, w, c, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h,  \
              dilation_w);                                                                                  \
}

NND_CONV_KERNELS(float)
NND_CONV_KERNELS(double)
"""

SPLIT_ROWS = 2048  # positions per group of the filter gradient's split product


def _conv_kernel(name: str, dtype):
    return fixed_kernel(CONV_KERNELS_SOURCE, name, dtype)


def _pool_sizes(attrs, shape, op) -> tuple[list[int], bool]:
    """h, w, c, out_h, out_w, pool, strides, top, left; and whether windows overlap."""
    p, (out_h, out_w) = kernels_conv._pool_geometry(attrs, shape, op)
    (top, _), (left, _) = p.padding
    overlap = p.strides[0] < p.pool[0] or p.strides[1] < p.pool[1]
    return [shape[1], shape[2], shape[3], out_h, out_w, *p.pool, *p.strides, top, left], overlap


@kernel("maxpool2d", backend="cupy")
def maxpool2d_cuda(ctx, attrs, x):
    fn = _conv_kernel("maxpool2d", x.dtype)
    if fn is None:
        return kernels_conv.maxpool2d(ctx, attrs, x)
    xp = ctx.xp
    x = xp.ascontiguousarray(x)
    sizes, _ = _pool_sizes(attrs, x.shape, "maxpool2d")
    out = xp.empty((x.shape[0], sizes[3], sizes[4], x.shape[3]), dtype=x.dtype)
    launch_over(fn, out.size, [x, out, out.size, *sizes])
    return out


@kernel("maxpool2d_grad", backend="cupy")
def maxpool2d_grad_cuda(ctx, attrs, dy, x):
    sizes, overlap = _pool_sizes(attrs, x.shape, "maxpool2d_grad")
    fn = None if overlap else _conv_kernel("maxpool2d_grad", x.dtype)
    if fn is None:
        return kernels_conv.maxpool2d_grad(ctx, attrs, dy, x)
    xp = ctx.xp
    x = xp.ascontiguousarray(x)
    dx = xp.empty_like(x)
    dy = xp.ascontiguousarray(dy, dtype=x.dtype)
    launch_over(fn, dx.size, [x, dy, dx, dx.size, *sizes, int(bool(attrs.get("relu")))])
    return dx


@kernel("conv2d_grad_input", backend="cupy")
def conv2d_grad_input_cuda(ctx, attrs, dy, w):
    fn = _conv_kernel("col2im", dy.dtype)
    if fn is None:
        return kernels_conv.conv2d_grad_input(ctx, attrs, dy, w)
    xp = ctx.xp
    columns, padded, geometry = kernels_conv.grad_input_columns(xp, attrs, dy, w)
    launch_over(fn, padded.size, [columns, padded, padded.size, *geometry])
    return kernels_conv.crop_input_gradient(xp, attrs, padded)


@kernel("conv2d_grad_filter", backend="cupy")
def conv2d_grad_filter_cuda(ctx, attrs, x, dy):
    n, ho, wo, f = dy.shape
    groups = split_groups(n, ho * wo)
    # float16 and bfloat16 partial products would round before the sum: one GEMM keeps float32 sums
    if groups == 1 or dy.dtype.itemsize < 4:
        return kernels_conv.conv2d_grad_filter(ctx, attrs, x, dy)
    xp = ctx.xp
    kh, kw = attrs["kernel_hw"]
    columns = kernels_conv.filter_gradient_columns(xp, attrs, x, (ho, wo))  # [N*Ho*Wo, kh*kw*C]
    depth = columns.shape[1]
    rows = columns.shape[0] // groups
    # [groups, kh*kw*C, rows] as a view of the columns, whichever of their axes is contiguous
    lhs = columns.T.reshape(depth, groups, rows).transpose(1, 0, 2)
    partial = xp.matmul(lhs, xp.ascontiguousarray(dy).reshape(groups, rows, f))
    return partial.sum(axis=0).reshape(kh, kw, x.shape[3], f)


def split_groups(images: int, positions: int) -> int:
    """Into how many equal groups of images the filter gradient splits a batch: the most groups that each
    still hold SPLIT_ROWS output positions (1: no split)."""
    for per_group in range(1, images + 1):
        if images % per_group == 0 and per_group * positions >= SPLIT_ROWS:
            return images // per_group
    return 1
