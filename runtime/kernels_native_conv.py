"""The NumPy backend's NHWC convolutions in native code (`csrc/direct_conv_impl.h`, `csrc/conv_impl.h`).

* Forward (`conv2d`, `conv2d_epilogue`): direct convolution, the GEMM's tiles reading the input in
  place instead of an im2col copy of it (cells in the padding read zeros, so no padded copy either),
  with the bias and activation applied to each block of output pixels while it is in cache.
* Input gradient (`conv2d_grad_input`): for stride 1, the same direct convolution of the output
  gradient with the flipped, transposed kernel; otherwise one GEMM into columns that col2im folds back
  in one pass.
* Filter gradient (`conv2d_grad_filter`): direct, each thread summing its images into a buffer of its
  own, the buffers added at the end.

Small convolutions stay with im2col and BLAS, which win there (the MIN_* constants). The batch is split
between threads. NCHW convolutions (the select-layout pass's choice where it measures them faster),
dtypes other than float32 and float64, and machines without the native library run the array-module
kernels of `kernels_conv`.
"""
from __future__ import annotations

import ctypes

import numpy as np

from nnd.compiler.ops.conv import conv_layout, conv_params
from nnd.runtime import kernels_conv, native
from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_fused import channel_bias
from nnd.runtime.kernels_native import ACTIVATIONS, address, apply_epilogue, native_function, packed_panels

_LONG = ctypes.c_long


class _ConvShape(ctypes.Structure):
    """The C struct conv_shape of `direct_conv_impl.h`."""
    _fields_ = [(name, _LONG) for name in ("h", "w", "c", "out_h", "out_w", "kernel_h", "kernel_w", "stride_h",
                                           "stride_w", "dilation_h", "dilation_w", "filters", "pad_top",
                                           "pad_left")]


class _Col2imShape(ctypes.Structure):
    """The C struct col2im_shape of `conv_impl.h`."""
    _fields_ = [(name, _LONG) for name in ("h", "w", "c", "out_h", "out_w", "kernel_h", "kernel_w", "stride_h",
                                           "stride_w", "dilation_h", "dilation_w")]


# Below these sizes the direct kernels lose to im2col and BLAS (measured on 2 cores, AVX2): with few
# output pixels the per-call work (packing, threads) dominates; with one input channel BLAS's product
# of the 9-column im2col matrix is as fast at batch 128 and faster below (two channels: direct 1.2x).
MIN_DIRECT_PIXELS = 1024
MIN_DIRECT_CHANNELS = 2
# col2im's column matrix: from about this size on, writing and reading it costs more than the direct
# input gradient's extra work on the padding (which it only does for windows reaching at most a quarter
# more cells than the output has).
MIN_COLUMN_BYTES = 4 << 20
MAX_PADDING_WASTE = 1.25
# Beyond this many filters each cell of the input gradient sums kh * kw * filters products, and BLAS's
# cache blocking of such long products beats the direct kernel's (1.1x faster at 256, 0.6x at 512).
MAX_GRADIENT_FILTERS = 256


def selection_rule() -> str:
    """The thresholds above, for caches of timings that depend on which kernels run."""
    return f"{MIN_DIRECT_PIXELS}/{MIN_DIRECT_CHANNELS}/{MIN_COLUMN_BYTES}/{MAX_PADDING_WASTE}/{MAX_GRADIENT_FILTERS}"


def uses_direct_kernels(attrs, *arrays) -> bool:
    """Whether the direct kernels can run this NHWC convolution: one float dtype they have, the library."""
    dtype = arrays[0].dtype
    return (conv_layout(attrs) == "NHWC" and all(a.dtype == dtype for a in arrays)
            and native_function("conv_forward", dtype) is not None)


def direct_pays(attrs, x, out_hw, *others) -> bool:
    """The forward pass and the filter gradient: direct when it can run and the convolution is large."""
    pixels = x.shape[0] * out_hw[0] * out_hw[1]
    return (pixels >= MIN_DIRECT_PIXELS and x.shape[-1] >= MIN_DIRECT_CHANNELS
            and uses_direct_kernels(attrs, x, *others))


def direct_input_gradient_pays(attrs, dy, w) -> bool:
    """Stride 1 (the input gradient is then a convolution), a column matrix that would not fit in cache,
    windows reaching little beyond the output's cells, and not too many filters."""
    kh, kw, c, f = w.shape
    h, wd = attrs["input_hw"]
    _, ho, wo, _ = dy.shape
    column_bytes = dy.shape[0] * ho * wo * kh * kw * c * dy.itemsize
    return (conv_params(attrs, "conv2d_grad_input").strides == (1, 1) and column_bytes >= MIN_COLUMN_BYTES
            and h * wd <= MAX_PADDING_WASTE * ho * wo and f <= MAX_GRADIENT_FILTERS
            and uses_direct_kernels(attrs, dy, w))


def _shape(x: np.ndarray, kernel_hw, out_hw, strides, dilation, pads, filters: int) -> _ConvShape:
    _, h, w, c = x.shape
    return _ConvShape(h, w, c, *out_hw, *kernel_hw, *strides, *dilation, filters, *pads)


def _convolve(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, activation: str, strides, dilation, pads,
              out_hw) -> np.ndarray:
    """activation(conv(x, w) + bias) for an NHWC input padded by pads = (top, left) zeros (and as many
    after as the output's size needs) and an HWIO kernel."""
    dtype = x.dtype
    kh, kw, c, f = w.shape
    fn = native_function("conv_forward", dtype)
    x = np.ascontiguousarray(x)
    packed = packed_panels(w.reshape(kh * kw * c, f), dtype)
    bias = np.zeros(f, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    zeros = np.zeros(c, dtype)  # what a window cell in the padding reads
    out = np.empty((x.shape[0], *out_hw, f), dtype=dtype)
    shape = ctypes.byref(_shape(x, (kh, kw), out_hw, strides, dilation, pads, f))
    pointers, code = [address(a) for a in (x, packed, bias)], ACTIVATIONS[activation]
    pixels = out.shape[0] * out_hw[0] * out_hw[1]
    native.run_rows(pixels, lambda begin, end: fn(shape, begin, end, *pointers, code, address(zeros), address(out)),
                    align=6)
    return out


def _output_hw(attrs, x, w) -> tuple[int, int]:
    p = conv_params(attrs)
    return kernels_conv._out_hw(x.shape[1:3], w.shape[:2], p.padding, p.strides, p.dilation)


def _leading_pads(p) -> tuple[int, int]:
    return p.padding[0][0], p.padding[1][0]


def direct_forward(attrs, x, w, bias, activation: str) -> np.ndarray:
    """activation(conv2d(x, w) + bias) by the direct kernel (bias None: none)."""
    p = conv_params(attrs)
    return _convolve(x, w, bias, activation, p.strides, p.dilation, _leading_pads(p), _output_hw(attrs, x, w))


def direct_input_gradient(attrs, dy, w) -> np.ndarray:
    """The input gradient of a stride-1 convolution by the direct kernel: dx[y] = sum_i dy[y + top - i d]
    w[i] is the correlation of dy, padded by reach - top in front (reach: the window's extent less one),
    with the kernel flipped in space and its channel axes swapped."""
    p = conv_params(attrs, "conv2d_grad_input")
    kh, kw = w.shape[:2]
    pads = (p.dilation[0] * (kh - 1) - p.padding[0][0], p.dilation[1] * (kw - 1) - p.padding[1][0])
    flipped = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
    return _convolve(dy, flipped, None, "linear", (1, 1), p.dilation, pads, tuple(attrs["input_hw"]))


@kernel("conv2d", backend="numpy")
def conv2d_native(ctx, attrs, x, w):
    if direct_pays(attrs, x, _output_hw(attrs, x, w), w):
        return direct_forward(attrs, x, w, None, "linear")
    return kernels_conv.conv2d(ctx, attrs, x, w)


@kernel("conv2d_epilogue", backend="numpy")
def conv2d_epilogue_native(ctx, attrs, x, w, bias):
    activation = attrs.get("activation", "linear")
    if direct_pays(attrs, x, _output_hw(attrs, x, w), w, bias):
        return direct_forward(attrs, x, w, bias, activation)
    return apply_epilogue(kernels_conv.conv2d(ctx, attrs, x, w), channel_bias(attrs, bias), activation)


@kernel("conv2d_grad_input", backend="numpy")
def conv2d_grad_input_native(ctx, attrs, dy, w):
    if direct_input_gradient_pays(attrs, dy, w):
        return direct_input_gradient(attrs, dy, w)
    return _grad_input_col2im(ctx, attrs, dy, w)


def _grad_input_col2im(ctx, attrs, dy, w):
    """One GEMM dy @ w^T into [N*Ho*Wo, kh*kw*C] columns, folded back into the padded input by col2im."""
    fn = native_function("col2im", dy.dtype)
    if fn is None:
        return kernels_conv.conv2d_grad_input(ctx, attrs, dy, w)
    columns, padded, geometry = kernels_conv.grad_input_columns(np, attrs, dy, w)
    shape, source, target = ctypes.byref(_Col2imShape(*geometry)), address(columns), address(padded)
    native.run_rows(padded.shape[0], lambda begin, end: fn(shape, begin, end, source, target), align=1)
    return kernels_conv.crop_input_gradient(np, attrs, padded)


@kernel("conv2d_grad_filter", backend="numpy")
def conv2d_grad_filter_native(ctx, attrs, x, dy):
    if direct_pays(attrs, x, dy.shape[1:3], dy):
        return direct_filter_gradient(attrs, x, dy)
    return kernels_conv.conv2d_grad_filter(ctx, attrs, x, dy)


def direct_filter_gradient(attrs, x, dy) -> np.ndarray:
    """The kernel's gradient by the direct kernel, each thread summing its images into a buffer of its
    own."""
    p = conv_params(attrs, "conv2d_grad_filter")
    kh, kw = attrs["kernel_hw"]
    dtype = x.dtype
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    n, _, _, c = x.shape
    _, ho, wo, f = dy.shape
    width = native_function("panel_width", dtype)()
    columns = -(-f // width) * width
    shape = ctypes.byref(_shape(x, (kh, kw), (ho, wo), p.strides, p.dilation, _leading_pads(p), f))
    chunks = native.row_chunks(n, native.thread_count(), align=1)
    # a buffer per thread: no two threads add into the same memory
    partial = np.zeros((len(chunks), kh * kw * c, columns), dtype=dtype)
    scratch = np.empty((len(chunks), native_function("conv_grad_filter_scratch", dtype)(shape)), dtype=dtype)
    fn = native_function("conv_grad_filter", dtype)
    source, gradient = address(x), address(dy)
    native.run_chunks(chunks, lambda k, begin, end: fn(shape, begin, end, source, gradient, address(partial[k]),
                                                       columns, address(scratch[k])))
    total = partial.sum(axis=0) if len(chunks) > 1 else partial[0]
    return np.ascontiguousarray(total[:, :f]).reshape(kh, kw, c, f)
