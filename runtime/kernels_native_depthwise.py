"""The NumPy backend's depthwise convolution in native code (`csrc/depthwise_impl.h`): the batch split
between threads, each image's windows read once. Dtypes other than float32 and float64, and machines
without the native library, run the array-module kernels of `kernels_depthwise`."""
from __future__ import annotations

import ctypes

import numpy as np

from nnd.compiler.ops.conv import conv_params
from nnd.runtime import kernels_depthwise, native
from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_conv import _out_hw
from nnd.runtime.kernels_native import address, native_function

_LONG = ctypes.c_long


class _DepthwiseShape(ctypes.Structure):
    """The C struct depthwise_shape of `depthwise_impl.h`."""
    _fields_ = [(name, _LONG) for name in ("h", "w", "c", "dm", "out_h", "out_w", "kernel_h", "kernel_w",
                                           "stride_h", "stride_w", "dilation_h", "dilation_w", "pad_top",
                                           "pad_left")]


def _shape(attrs, op: str, image_hw, channels: int, dm: int, kernel_hw, out_hw) -> _DepthwiseShape:
    p = conv_params(attrs, op)
    return _DepthwiseShape(*image_hw, channels, dm, *out_hw, *kernel_hw, *p.strides, *p.dilation,
                           p.padding[0][0], p.padding[1][0])


def _over_images(fn, shape: _DepthwiseShape, images: int, *arrays: np.ndarray) -> None:
    pointers, by_ref = [address(a) for a in arrays], ctypes.byref(shape)
    native.run_rows(images, lambda begin, end: fn(by_ref, begin, end, *pointers), align=1)


@kernel("depthwise_conv2d", backend="numpy")
def depthwise_conv2d_native(ctx, attrs, x, w):
    fn = native_function("depthwise_forward", x.dtype)
    if fn is None or w.dtype != x.dtype:
        return kernels_depthwise.depthwise_conv2d(ctx, attrs, x, w)
    n, h, wd, c = x.shape
    kh, kw, _, dm = w.shape
    p = conv_params(attrs, "depthwise_conv2d")
    out_hw = _out_hw((h, wd), (kh, kw), p.padding, p.strides, p.dilation)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    out = np.empty((n, *out_hw, c * dm), dtype=x.dtype)
    _over_images(fn, _shape(attrs, "depthwise_conv2d", (h, wd), c, dm, (kh, kw), out_hw), n, x, w, out)
    return out


@kernel("depthwise_conv2d_grad_input", backend="numpy")
def depthwise_conv2d_grad_input_native(ctx, attrs, dy, w):
    fn = native_function("depthwise_grad_input", dy.dtype)
    if fn is None or w.dtype != dy.dtype:
        return kernels_depthwise.depthwise_conv2d_grad_input(ctx, attrs, dy, w)
    n, ho, wo, _ = dy.shape
    kh, kw, c, dm = w.shape
    h, wd = attrs["input_hw"]
    dy, w = np.ascontiguousarray(dy), np.ascontiguousarray(w)
    dx = np.empty((n, h, wd, c), dtype=dy.dtype)
    shape = _shape(attrs, "depthwise_conv2d_grad_input", (h, wd), c, dm, (kh, kw), (ho, wo))
    _over_images(fn, shape, n, dy, w, dx)
    return dx


@kernel("depthwise_conv2d_grad_filter", backend="numpy")
def depthwise_conv2d_grad_filter_native(ctx, attrs, x, dy):
    fn = native_function("depthwise_grad_filter", x.dtype)
    if fn is None or dy.dtype != x.dtype:
        return kernels_depthwise.depthwise_conv2d_grad_filter(ctx, attrs, x, dy)
    n, h, wd, c = x.shape
    _, ho, wo, channels = dy.shape
    kh, kw = attrs["kernel_hw"]
    dm = channels // c
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    by_ref = ctypes.byref(_shape(attrs, "depthwise_conv2d_grad_filter", (h, wd), c, dm, (kh, kw), (ho, wo)))
    chunks = native.row_chunks(n, native.thread_count(), align=1)
    partial = np.zeros((len(chunks), kh, kw, c, dm), dtype=x.dtype)  # a buffer per thread
    source, gradient = address(x), address(dy)
    native.run_chunks(chunks, lambda k, begin, end: fn(by_ref, begin, end, source, gradient, address(partial[k])))
    return partial.sum(axis=0) if len(chunks) > 1 else partial[0]
