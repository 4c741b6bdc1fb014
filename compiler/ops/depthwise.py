"""The depthwise convolution: each input channel convolved with its own `depth_multiplier` filters.

x (N, H, W, C) and kernel (kh, kw, C, dm) give (N, Ho, Wo, C*dm), output channel c*dm + m being input
channel c's m-th filter, as TensorFlow orders them. Strides, explicit pads and dilation as conv2d's. One
op (with its two gradients) rather than conv2d's kernels: the work per output is kh*kw multiply-adds
with no sum over channels, which a GEMM cannot use.
"""
from __future__ import annotations

from typing import Any, Sequence

from nnd.compiler.ops.conv import (_check_float, _check_rank, _conv_out_hw, _known, _pair, _same_dim, conv_params,
                                   input_and_filter_gradients)
from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, register
from nnd.compiler.tensor_type import ShapeError, TensorType, format_shape


def _multiplier(op: str, channels: Any, kernel: TensorType) -> int:
    _same_dim(op, channels, kernel.shape[2], f"input has {channels} channels but the kernel expects "
              f"{kernel.shape[2]} (kernel {format_shape(kernel.shape)})")
    return kernel.shape[3]  # type: ignore[return-value]


def _infer_forward(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    op = "depthwise_conv2d"
    x, w = types
    dtype = _check_float(op, x, w)
    _check_rank(op, "input", x, 4, "(N, H, W, C)")
    _check_rank(op, "kernel", w, 4, "(kh, kw, C, depth_multiplier)")
    _known(op, "input", x, (1, 2, 3))
    _known(op, "kernel", w, (0, 1, 2, 3))
    dm = _multiplier(op, x.shape[3], w)
    ho, wo = _conv_out_hw(op, (x.shape[1], x.shape[2]), (w.shape[0], w.shape[1]), conv_params(attrs, op),
                          x.shape, w.shape)
    return [TensorType((x.shape[0], ho, wo, x.shape[3] * dm), dtype)]


def _infer_grad_input(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    op = "depthwise_conv2d_grad_input"
    dy, w = types
    dtype = _check_float(op, dy, w)
    _check_rank(op, "output gradient", dy, 4, "(N, Ho, Wo, C*depth_multiplier)")
    _check_rank(op, "kernel", w, 4, "(kh, kw, C, depth_multiplier)")
    _known(op, "kernel", w, (0, 1, 2, 3))
    if "input_hw" not in attrs:
        raise ShapeError(f"{op}: missing attribute 'input_hw'")
    hw = _pair(op, "input_hw", attrs["input_hw"], 1)
    channels = w.shape[2] * w.shape[3]
    _same_dim(op, dy.shape[3], channels, f"output gradient has {dy.shape[3]} channels, the kernel makes {channels} "
              f"(gradient {format_shape(dy.shape)}, kernel {format_shape(w.shape)})")
    expected = _conv_out_hw(op, hw, (w.shape[0], w.shape[1]), conv_params(attrs, op), ("N",) + hw + (w.shape[2],),
                            w.shape)
    _same_dim(op, tuple(dy.shape[1:3]), expected, f"output gradient {format_shape(dy.shape)} does not match "
              f"the output size {expected} of input size {hw}")
    return [TensorType((dy.shape[0], hw[0], hw[1], w.shape[2]), dtype)]


def _infer_grad_filter(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    op = "depthwise_conv2d_grad_filter"
    x, dy = types
    dtype = _check_float(op, x, dy)
    _check_rank(op, "input", x, 4, "(N, H, W, C)")
    _check_rank(op, "output gradient", dy, 4, "(N, Ho, Wo, C*depth_multiplier)")
    _known(op, "input", x, (1, 2, 3))
    _known(op, "output gradient", dy, (3,))
    if "kernel_hw" not in attrs:
        raise ShapeError(f"{op}: missing attribute 'kernel_hw'")
    k = _pair(op, "kernel_hw", attrs["kernel_hw"], 1)
    channels = x.shape[3]
    if dy.shape[3] % channels:  # type: ignore[operator]
        raise ShapeError(f"{op}: output gradient has {dy.shape[3]} channels, not a multiple of the input's "
                         f"{channels} (input {format_shape(x.shape)}, gradient {format_shape(dy.shape)})")
    w_shape = k + (channels, dy.shape[3] // channels)  # type: ignore[operator]
    expected = _conv_out_hw(op, (x.shape[1], x.shape[2]), k, conv_params(attrs, op), x.shape, w_shape)
    _same_dim(op, tuple(dy.shape[1:3]), expected, f"output gradient {format_shape(dy.shape)} does not match "
              f"the output size {expected} of input {format_shape(x.shape)}")
    return [TensorType(w_shape, dtype)]


def _grad(g, node, dys):
    (dy,) = dys
    if dy is None:
        return [None, None]
    return input_and_filter_gradients(g, node, dy, "depthwise_conv2d_grad_input", "depthwise_conv2d_grad_filter")


register("depthwise_conv2d", infer=_infer_forward, fusion=Fusion.OPAQUE, grad=_grad, arity=2,
         doc="depthwise 2-D convolution, NHWC input and (kh, kw, C, depth_multiplier) kernel")
register("depthwise_conv2d_grad_input", infer=_infer_grad_input, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=2, doc="gradient of depthwise_conv2d with respect to its input")
register("depthwise_conv2d_grad_filter", infer=_infer_grad_filter, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=2, doc="gradient of depthwise_conv2d with respect to its kernel")
