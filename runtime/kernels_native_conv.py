"""The NumPy backend's NHWC convolutions in native code (`csrc/direct_conv_impl.h`, `csrc/conv_impl.h`).

* Forward (`conv2d`, `conv2d_epilogue`): direct convolution, the GEMM's tiles reading the padded input
  in place instead of an im2col copy of it, with the bias and activation applied to each output row while
  it is in cache.
* Input gradient (`conv2d_grad_input`): for stride 1, the same direct convolution of the padded output
  gradient with the flipped, transposed kernel; for larger strides, one GEMM into columns that col2im
  folds back in one pass.
* Filter gradient (`conv2d_grad_filter`): direct, each thread summing its images into a buffer of its
  own, the buffers added at the end.

The batch is split between threads. NCHW convolutions (the select-layout pass's choice where it measures
them faster), dtypes other than float32 and float64, and machines without the native library run the
array-module kernels of `kernels_conv`.
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
                                           "stride_w", "dilation_h", "dilation_w", "filters")]


class _Col2imShape(ctypes.Structure):
    """The C struct col2im_shape of `conv_impl.h`."""
    _fields_ = [(name, _LONG) for name in ("h", "w", "c", "out_h", "out_w", "kernel_h", "kernel_w", "stride_h",
                                           "stride_w", "dilation_h", "dilation_w")]


def uses_direct_kernels(attrs, *arrays) -> bool:
    """Whether the direct kernels run this NHWC convolution: one float dtype they have, and the library."""
    dtype = arrays[0].dtype
    return (conv_layout(attrs) == "NHWC" and all(a.dtype == dtype for a in arrays)
            and native_function("conv_forward", dtype) is not None)


def _shape(padded: np.ndarray, kernel_hw, out_hw, strides, dilation, filters: int) -> _ConvShape:
    _, h, w, c = padded.shape
    return _ConvShape(h, w, c, *out_hw, *kernel_hw, *strides, *dilation, filters)


def _convolve(padded: np.ndarray, w: np.ndarray, bias: np.ndarray | None, activation: str, strides, dilation,
              out_hw) -> np.ndarray:
    """activation(conv(padded, w) + bias) for an already padded NHWC input and an HWIO kernel."""
    dtype = padded.dtype
    kh, kw, c, f = w.shape
    fn = native_function("conv_forward", dtype)
    padded = np.ascontiguousarray(padded)
    packed = packed_panels(w.reshape(kh * kw * c, f), dtype)
    bias = np.zeros(f, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    out = np.empty((padded.shape[0], *out_hw, f), dtype=dtype)
    shape = ctypes.byref(_shape(padded, (kh, kw), out_hw, strides, dilation, f))
    pointers, code = [address(a) for a in (padded, packed, bias)], ACTIVATIONS[activation]
    native.run_rows(out.shape[0] * out_hw[0], lambda begin, end: fn(shape, begin, end, *pointers, code, address(out)),
                    align=1)
    return out


def _forward(attrs, x, w, bias, activation: str) -> np.ndarray:
    p = conv_params(attrs)
    kh, kw = w.shape[:2]
    out_hw = kernels_conv._out_hw(x.shape[1:3], (kh, kw), p.padding, p.strides, p.dilation)
    return _convolve(kernels_conv._pad(np, x, p.padding, 0), w, bias, activation, p.strides, p.dilation, out_hw)


@kernel("conv2d", backend="numpy")
def conv2d_native(ctx, attrs, x, w):
    if not uses_direct_kernels(attrs, x, w):
        return kernels_conv.conv2d(ctx, attrs, x, w)
    return _forward(attrs, x, w, None, "linear")


@kernel("conv2d_epilogue", backend="numpy")
def conv2d_epilogue_native(ctx, attrs, x, w, bias):
    activation = attrs.get("activation", "linear")
    if not uses_direct_kernels(attrs, x, w, bias):
        return apply_epilogue(kernels_conv.conv2d(ctx, attrs, x, w), channel_bias(attrs, bias), activation)
    return _forward(attrs, x, w, bias, activation)


@kernel("conv2d_grad_input", backend="numpy")
def conv2d_grad_input_native(ctx, attrs, dy, w):
    p = conv_params(attrs, "conv2d_grad_input")
    kh, kw = w.shape[:2]
    reach_h, reach_w = p.dilation[0] * (kh - 1), p.dilation[1] * (kw - 1)  # a window's extent, less one
    (top, bottom), (left, right) = p.padding
    pads = ((reach_h - top, reach_h - bottom), (reach_w - left, reach_w - right))
    if p.strides != (1, 1) or min(min(pads)) < 0 or not uses_direct_kernels(attrs, dy, w):
        return _grad_input_col2im(ctx, attrs, dy, w)
    # dx[y] = sum_i dy[y + top - i d] w[i] is the correlation of dy, padded by (reach - top, reach -
    # bottom), with the kernel flipped in space and its channel axes swapped.
    flipped = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
    padded = np.pad(dy, ((0, 0), pads[0], pads[1], (0, 0)))
    return _convolve(padded, flipped, None, "linear", (1, 1), p.dilation, tuple(attrs["input_hw"]))


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
    if not uses_direct_kernels(attrs, x, dy):
        return kernels_conv.conv2d_grad_filter(ctx, attrs, x, dy)
    p = conv_params(attrs, "conv2d_grad_filter")
    kh, kw = attrs["kernel_hw"]
    dtype = x.dtype
    padded = np.ascontiguousarray(kernels_conv._pad(np, x, p.padding, 0))
    dy = np.ascontiguousarray(dy)
    n, _, _, c = padded.shape
    _, ho, wo, f = dy.shape
    width = native_function("panel_width", dtype)()
    columns = -(-f // width) * width
    chunks = native.row_chunks(n, native.thread_count(), align=1)
    # a buffer per thread: no two threads add into the same memory
    partial = np.zeros((len(chunks), kh * kw * c, columns), dtype=dtype)
    scratch = np.empty((len(chunks), ho * wo * width), dtype=dtype)
    fn = native_function("conv_grad_filter", dtype)
    shape = ctypes.byref(_shape(padded, (kh, kw), (ho, wo), p.strides, p.dilation, f))
    source, gradient = address(padded), address(dy)
    native.run_chunks(chunks, lambda k, begin, end: fn(shape, begin, end, source, gradient, address(partial[k]),
                                                       columns, address(scratch[k])))
    total = partial.sum(axis=0) if len(chunks) > 1 else partial[0]
    return np.ascontiguousarray(total[:, :f]).reshape(kh, kw, c, f)
