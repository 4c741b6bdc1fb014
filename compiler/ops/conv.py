"""Convolution, pooling and batch normalization: shape rules and gradient rules.

Layout is channels-last: activations are NHWC, convolution kernels HWIO `(kh, kw, in, out)`. Padding
is resolved by the compiler before these ops are emitted, so attributes always hold explicit pads
`((top, bottom), (left, right))`.

Ops and attributes:

* `conv2d[strides, padding, dilation](x[N,H,W,C], w[kh,kw,C,F]) -> [N,Ho,Wo,F]`
* `conv2d_grad_input[strides, padding, dilation, input_hw](dy, w) -> dx`
* `conv2d_grad_filter[strides, padding, dilation, kernel_hw](x, dy) -> dw`
* `maxpool2d[pool, strides, padding](x)`, `maxpool2d_grad[pool, strides, padding](dy, x)`
* `avgpool2d[pool, strides, padding, count_pad](x)`, `avgpool2d_grad[..., input_hw](dy)`
* `batchnorm_train[epsilon, activation](x, gamma, beta) -> (y, batch_mean, batch_var)` (activation: linear,
  or relu where fuse-batchnorm-relu absorbed the relu after it),
  `batchnorm_train_grad[epsilon](dy, x, gamma, mean, var) -> (dx, dgamma, dbeta)`
* `batchnorm_infer[epsilon](x, gamma, beta, moving_mean, moving_var) -> y`,
  `batchnorm_infer_grad[epsilon](dy, x, gamma, moving_mean, moving_var) -> (dx, dgamma, dbeta)`

The helpers `conv_params` and `pool_params` normalize attributes (filling defaults) and are shared with
the runtime kernels, so the compiler and the kernels can never disagree about a default.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, register
from nnd.compiler.tensor_type import FLOAT_DTYPES, Dim, ShapeError, TensorType, format_shape


# ---------------------------------------------------------------------------------------------------
# Attribute normalization


class ConvParams(NamedTuple):
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]


class PoolParams(NamedTuple):
    pool: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    count_pad: bool


def _pair(op: str, name: str, value: Any, minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ShapeError(f"{op}: {name} must be a pair of integers, got {value!r}") from None
    for v in (a, b):
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ShapeError(f"{op}: {name} must be integers >= {minimum}, got {value!r}")
    return (a, b)


def _padding(op: str, value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        top_bottom, left_right = value
    except (TypeError, ValueError):
        raise ShapeError(f"{op}: padding must be ((top, bottom), (left, right)), got {value!r}") from None
    return (_pair(op, "padding", top_bottom, 0), _pair(op, "padding", left_right, 0))


LAYOUTS = ("NHWC", "NCHW")


def conv_layout(attrs: dict[str, Any], op: str = "conv2d") -> str:
    """Where a convolution's input and output keep their channels: NHWC (the default, the language's
    layout) or NCHW (chosen by the select-layout pass, which puts transposes around the node)."""
    layout = attrs.get("layout", "NHWC")
    if layout not in LAYOUTS:
        raise ShapeError(f"{op}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def conv_params(attrs: dict[str, Any], op: str = "conv2d") -> ConvParams:
    """Strides, pads and dilation of a convolution; missing ones default to 1, 0 and 1."""
    return ConvParams(
        _pair(op, "strides", attrs.get("strides", (1, 1)), 1),
        _padding(op, attrs.get("padding", ((0, 0), (0, 0)))),
        _pair(op, "dilation", attrs.get("dilation", (1, 1)), 1),
    )


def pool_params(attrs: dict[str, Any], op: str = "pool") -> PoolParams:
    """Window, strides (default: the window, as Keras), pads (default none) and count_pad (default True)."""
    if "pool" not in attrs:
        raise ShapeError(f"{op}: missing attribute 'pool'")
    pool = _pair(op, "pool", attrs["pool"], 1)
    return PoolParams(
        pool,
        _pair(op, "strides", attrs.get("strides", pool), 1),
        _padding(op, attrs.get("padding", ((0, 0), (0, 0)))),
        bool(attrs.get("count_pad", True)),
    )


def window_output_size(size: int, pad: tuple[int, int], window: int, stride: int, dilation: int = 1) -> int:
    """How many windows fit along one axis; <= 0 when even one does not."""
    effective = dilation * (window - 1) + 1
    padded = size + pad[0] + pad[1]
    if padded < effective:
        return 0
    return (padded - effective) // stride + 1


# ---------------------------------------------------------------------------------------------------
# Shape checks


def _check_rank(op: str, what: str, t: TensorType, rank: int, layout: str) -> None:
    if t.rank != rank:
        raise ShapeError(f"{op}: {what} must have rank {rank} {layout}, got shape {format_shape(t.shape)}")


def _check_float(op: str, *types: TensorType) -> str:
    dtype = types[0].dtype
    for t in types:
        if t.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{op}: expects floating-point inputs, got {t}")
        if t.dtype != dtype:
            raise ShapeError(f"{op}: inputs have different dtypes {types[0]} and {t}")
    return dtype


def _known(op: str, what: str, t: TensorType, axes: Sequence[int]) -> None:
    for axis in axes:
        if not isinstance(t.shape[axis], int):
            raise ShapeError(f"{op}: {what} dimension {axis} must be a known size, "
                             f"got shape {format_shape(t.shape)}")


def _same_dim(op: str, a: Dim, b: Dim, message: str) -> None:
    if a != b:
        raise ShapeError(f"{op}: {message}")


def _conv_out_hw(op: str, hw: tuple[int, int], k: tuple[int, int], p: ConvParams,
                 x_shape: tuple[Dim, ...], w_shape: tuple[Dim, ...]) -> tuple[int, int]:
    out = []
    for axis, name in ((0, "height"), (1, "width")):
        padded = hw[axis] + sum(p.padding[axis])
        effective = p.dilation[axis] * (k[axis] - 1) + 1
        size = window_output_size(hw[axis], p.padding[axis], k[axis], p.strides[axis], p.dilation[axis])
        if size <= 0:
            dil = f" (dilated to {effective})" if p.dilation[axis] > 1 else ""
            raise ShapeError(f"{op}: kernel {name} {k[axis]}{dil} is larger than the padded input {name} "
                             f"{padded} (input {format_shape(x_shape)}, kernel {format_shape(w_shape)}, "
                             f"padding {p.padding})")
        out.append(size)
    return (out[0], out[1])


def _infer_conv2d(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    x, w = types
    if conv_layout(attrs) == "NCHW":  # the same rule on the NHWC view of the shapes
        if x.rank == 4:
            x = x.with_shape((x.shape[0], x.shape[2], x.shape[3], x.shape[1]))
        (out,) = _infer_conv2d_nhwc(attrs, [x, w])
        n, ho, wo, f = out.shape
        return [out.with_shape((n, f, ho, wo))]
    return _infer_conv2d_nhwc(attrs, types)


def _infer_conv2d_nhwc(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    op = "conv2d"
    x, w = types
    dtype = _check_float(op, x, w)
    _check_rank(op, "input", x, 4, "(N, H, W, C)")
    _check_rank(op, "kernel", w, 4, "(kh, kw, in, out)")
    _known(op, "input", x, (1, 2))
    _known(op, "kernel", w, (0, 1, 2, 3))
    p = conv_params(attrs, op)
    if x.shape[3] != w.shape[2]:
        raise ShapeError(f"{op}: input has {x.shape[3]} channels but the kernel expects {w.shape[2]} "
                         f"(input {format_shape(x.shape)}, kernel {format_shape(w.shape)})")
    ho, wo = _conv_out_hw(op, (x.shape[1], x.shape[2]), (w.shape[0], w.shape[1]), p, x.shape, w.shape)
    return [TensorType((x.shape[0], ho, wo, w.shape[3]), dtype)]


def _infer_conv2d_grad_input(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    op = "conv2d_grad_input"
    dy, w = types
    dtype = _check_float(op, dy, w)
    _check_rank(op, "output gradient", dy, 4, "(N, Ho, Wo, F)")
    _check_rank(op, "kernel", w, 4, "(kh, kw, in, out)")
    _known(op, "kernel", w, (0, 1, 2, 3))
    p = conv_params(attrs, op)
    if "input_hw" not in attrs:
        raise ShapeError(f"{op}: missing attribute 'input_hw'")
    hw = _pair(op, "input_hw", attrs["input_hw"], 1)
    _same_dim(op, dy.shape[3], w.shape[3], f"output gradient has {dy.shape[3]} channels but the kernel "
              f"has {w.shape[3]} filters (gradient {format_shape(dy.shape)}, kernel {format_shape(w.shape)})")
    expected = _conv_out_hw(op, hw, (w.shape[0], w.shape[1]), p, ("N",) + hw + (w.shape[2],), w.shape)
    _same_dim(op, tuple(dy.shape[1:3]), expected, f"output gradient {format_shape(dy.shape)} does not match "
              f"the convolution output size {expected} of input size {hw}")
    return [TensorType((dy.shape[0], hw[0], hw[1], w.shape[2]), dtype)]


def _infer_conv2d_grad_filter(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    op = "conv2d_grad_filter"
    x, dy = types
    dtype = _check_float(op, x, dy)
    _check_rank(op, "input", x, 4, "(N, H, W, C)")
    _check_rank(op, "output gradient", dy, 4, "(N, Ho, Wo, F)")
    _known(op, "input", x, (1, 2, 3))
    _known(op, "output gradient", dy, (3,))
    p = conv_params(attrs, op)
    if "kernel_hw" not in attrs:
        raise ShapeError(f"{op}: missing attribute 'kernel_hw'")
    k = _pair(op, "kernel_hw", attrs["kernel_hw"], 1)
    _same_dim(op, x.shape[0], dy.shape[0], f"batch sizes differ: input {format_shape(x.shape)}, "
              f"output gradient {format_shape(dy.shape)}")
    w_shape = k + (x.shape[3], dy.shape[3])
    expected = _conv_out_hw(op, (x.shape[1], x.shape[2]), k, p, x.shape, w_shape)
    _same_dim(op, tuple(dy.shape[1:3]), expected, f"output gradient {format_shape(dy.shape)} does not match "
              f"the convolution output size {expected} of input {format_shape(x.shape)}")
    return [TensorType(w_shape, dtype)]


def window_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The strides, pads and dilation of a convolution node, which its gradient ops take as they are."""
    return {k: attrs[k] for k in ("strides", "padding", "dilation") if k in attrs}


def input_and_filter_gradients(g, node, dy, input_op: str, filter_op: str) -> list:
    """The gradients of a convolution node (x, w) for its output gradient dy: `input_op`(dy, w) at x's size
    and `filter_op`(x, dy) at w's window."""
    x, w = node.inputs
    window = window_attrs(node.attr_dict)
    dx = g.emit1(input_op, [dy, w], {**window, "input_hw": (x.type.shape[1], x.type.shape[2])})
    dw = g.emit1(filter_op, [x, dy], {**window, "kernel_hw": (w.type.shape[0], w.type.shape[1])})
    return [dx, dw]


def _grad_conv2d(g, node, dys):
    (dy,) = dys
    if dy is None:
        return [None, None]
    if conv_layout(node.attr_dict) != "NHWC":
        raise ShapeError("conv2d: gradients are taken before layout selection; an NCHW convolution has none")
    return input_and_filter_gradients(g, node, dy, "conv2d_grad_input", "conv2d_grad_filter")


def _grad_conv2d_grad_input(g, node, dys):
    """conv2d_grad_input is linear in each input and is conv2d's adjoint: it differentiates back into
    conv2d (for its output-gradient input) and conv2d_grad_filter (for its kernel). This is what makes
    conv2d_transpose, which lowers to it, trainable."""
    (dout,) = dys
    if dout is None:
        return [None, None]
    dy, w = node.inputs
    window = window_attrs(node.attr_dict)
    ddy = g.emit1("conv2d", [dout, w], window)
    dw = g.emit1("conv2d_grad_filter", [dout, dy], {**window, "kernel_hw": (w.type.shape[0], w.type.shape[1])})
    return [ddy, dw]


register("conv2d", infer=_infer_conv2d, fusion=Fusion.OUTPUT_FUSABLE, grad=_grad_conv2d, arity=2,
         doc="2-D convolution, NHWC input and HWIO kernel, explicit pads, strides and dilation")
register("conv2d_grad_input", infer=_infer_conv2d_grad_input, fusion=Fusion.OPAQUE, grad=_grad_conv2d_grad_input,
         arity=2, doc="gradient of conv2d with respect to its input; also the transposed convolution")
register("conv2d_grad_filter", infer=_infer_conv2d_grad_filter, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=2, doc="gradient of conv2d with respect to its kernel")


# ---------------------------------------------------------------------------------------------------
# Pooling


def _pool_out(op: str, x: TensorType, p: PoolParams) -> tuple[Dim, ...]:
    _check_rank(op, "input", x, 4, "(N, H, W, C)")
    _known(op, "input", x, (1, 2))
    out = []
    for axis, name in ((0, "height"), (1, "width")):
        size = window_output_size(x.shape[1 + axis], p.padding[axis], p.pool[axis], p.strides[axis])
        if size <= 0:
            padded = x.shape[1 + axis] + sum(p.padding[axis])
            raise ShapeError(f"{op}: pool {name} {p.pool[axis]} is larger than the padded input {name} "
                             f"{padded} (input {format_shape(x.shape)}, pool {p.pool}, padding {p.padding})")
        out.append(size)
    return (x.shape[0], out[0], out[1], x.shape[3])


def _infer_maxpool2d(attrs, types):
    (x,) = types
    dtype = _check_float("maxpool2d", x)
    return [TensorType(_pool_out("maxpool2d", x, pool_params(attrs, "maxpool2d")), dtype)]


def _infer_maxpool2d_grad(attrs, types):
    op = "maxpool2d_grad"
    dy, x = types
    _check_float(op, dy, x)
    expected = _pool_out(op, x, pool_params(attrs, op))
    _same_dim(op, tuple(dy.shape), expected, f"output gradient {format_shape(dy.shape)} does not match the "
              f"pooled shape {format_shape(expected)} of input {format_shape(x.shape)}")
    return [x]


def _grad_maxpool2d(g, node, dys):
    (dy,) = dys
    if dy is None:
        return [None]
    return [g.emit1("maxpool2d_grad", [dy, node.inputs[0]], node.attr_dict)]


def _infer_avgpool2d(attrs, types):
    (x,) = types
    dtype = _check_float("avgpool2d", x)
    return [TensorType(_pool_out("avgpool2d", x, pool_params(attrs, "avgpool2d")), dtype)]


def _infer_avgpool2d_grad(attrs, types):
    op = "avgpool2d_grad"
    (dy,) = types
    dtype = _check_float(op, dy)
    _check_rank(op, "output gradient", dy, 4, "(N, Ho, Wo, C)")
    if "input_hw" not in attrs:
        raise ShapeError(f"{op}: missing attribute 'input_hw'")
    hw = _pair(op, "input_hw", attrs["input_hw"], 1)
    x = TensorType((dy.shape[0], hw[0], hw[1], dy.shape[3]), dtype)
    expected = _pool_out(op, x, pool_params(attrs, op))
    _same_dim(op, tuple(dy.shape), expected, f"output gradient {format_shape(dy.shape)} does not match the "
              f"pooled shape {format_shape(expected)} of input size {hw}")
    return [x]


def _grad_avgpool2d(g, node, dys):
    (dy,) = dys
    if dy is None:
        return [None]
    x = node.inputs[0]
    attrs = {**node.attr_dict, "input_hw": (x.type.shape[1], x.type.shape[2])}
    return [g.emit1("avgpool2d_grad", [dy], attrs)]


register("maxpool2d", infer=_infer_maxpool2d, fusion=Fusion.OPAQUE, grad=_grad_maxpool2d, arity=1,
         doc="2-D max pooling, NHWC; padding cells never win")
register("maxpool2d_grad", infer=_infer_maxpool2d_grad, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=2, doc="gradient of maxpool2d: each window's gradient goes to its first maximum (row-major)")
register("avgpool2d", infer=_infer_avgpool2d, fusion=Fusion.OPAQUE, grad=_grad_avgpool2d, arity=1,
         doc="2-D average pooling, NHWC; count_pad=False leaves padding cells out of the divisor")
register("avgpool2d_grad", infer=_infer_avgpool2d_grad, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=1, doc="gradient of avgpool2d")


# ---------------------------------------------------------------------------------------------------
# Batch normalization (statistics over every axis but the last, biased variance as in Keras)


def _epsilon(op: str, attrs: dict[str, Any]) -> float:
    eps = attrs.get("epsilon")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ShapeError(f"{op}: attribute 'epsilon' must be a non-negative number, got {eps!r}")
    return float(eps)


def _check_channel_vectors(op: str, x: TensorType, named: Sequence[tuple[str, TensorType]]) -> None:
    if x.rank < 2:
        raise ShapeError(f"{op}: input must have rank >= 2 (features last), got shape {format_shape(x.shape)}")
    channels = x.shape[-1]
    for name, t in named:
        if t.shape != (channels,):
            raise ShapeError(f"{op}: {name} must have shape {format_shape((channels,))} to match input "
                             f"{format_shape(x.shape)}, got {format_shape(t.shape)}")


BATCHNORM_ACTIVATIONS = ("linear", "relu")  # fuse-batchnorm-relu's


def _infer_batchnorm_train(attrs, types):
    op = "batchnorm_train"
    _epsilon(op, attrs)
    if attrs.get("activation", "linear") not in BATCHNORM_ACTIVATIONS:
        raise ShapeError(f"{op}: attribute 'activation' must be one of {', '.join(BATCHNORM_ACTIVATIONS)}, "
                         f"got {attrs.get('activation')!r}")
    x, gamma, beta = types
    dtype = _check_float(op, x, gamma, beta)
    _check_channel_vectors(op, x, (("gamma", gamma), ("beta", beta)))
    stat = TensorType((x.shape[-1],), dtype)
    return [x, stat, stat]


def _infer_batchnorm_grad(op: str, attrs, types):
    _epsilon(op, attrs)
    dy, x, gamma, mean, var = types
    dtype = _check_float(op, dy, x, gamma, mean, var)
    _same_dim(op, dy.shape, x.shape, f"output gradient {format_shape(dy.shape)} and input "
              f"{format_shape(x.shape)} differ in shape")
    _check_channel_vectors(op, x, (("gamma", gamma), ("mean", mean), ("variance", var)))
    stat = TensorType((x.shape[-1],), dtype)
    return [x, stat, stat]


def _grad_batchnorm_train(g, node, dys):
    # Only the gradient of y flows back: the batch mean and variance outputs feed the moving-average
    # state updates alone, which are not differentiated through.
    dy = dys[0]
    if dy is None:
        return [None, None, None]
    if node.attr("activation", "linear") != "linear":
        raise ValueError("batchnorm_train with an activation is made by fusion, after differentiation")
    x, gamma, _ = node.inputs
    _, mean, var = node.outputs
    dx, dgamma, dbeta = g.emit("batchnorm_train_grad", [dy, x, gamma, mean, var],
                               {"epsilon": node.attr("epsilon")})
    return [dx, dgamma, dbeta]


def _infer_batchnorm_infer(attrs, types):
    op = "batchnorm_infer"
    _epsilon(op, attrs)
    x, gamma, beta, mean, var = types
    dtype = _check_float(op, x, gamma, beta, mean, var)
    _check_channel_vectors(op, x, (("gamma", gamma), ("beta", beta), ("moving_mean", mean),
                                   ("moving_var", var)))
    return [TensorType(x.shape, dtype)]


def _grad_batchnorm_infer(g, node, dys):
    # Differentiable with respect to x, gamma and beta; the moving statistics are frozen state.
    (dy,) = dys
    if dy is None:
        return [None] * 5
    x, gamma, _, mean, var = node.inputs
    dx, dgamma, dbeta = g.emit("batchnorm_infer_grad", [dy, x, gamma, mean, var],
                               {"epsilon": node.attr("epsilon")})
    return [dx, dgamma, dbeta, None, None]


register("batchnorm_train", infer=_infer_batchnorm_train, fusion=Fusion.OPAQUE, grad=_grad_batchnorm_train,
         arity=3, doc="batch normalization with batch statistics; returns (y, batch_mean, batch_var); "
                      "activation=relu (from fusion) returns relu(y) in place of y")
register("batchnorm_train_grad", infer=lambda a, t: _infer_batchnorm_grad("batchnorm_train_grad", a, t),
         fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=5,
         doc="gradient of batchnorm_train's y: (dx, dgamma, dbeta)")
register("batchnorm_infer", infer=_infer_batchnorm_infer, fusion=Fusion.OPAQUE, grad=_grad_batchnorm_infer,
         arity=5, doc="batch normalization with moving statistics")
register("batchnorm_infer_grad", infer=lambda a, t: _infer_batchnorm_grad("batchnorm_infer_grad", a, t),
         fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=5,
         doc="gradient of batchnorm_infer with respect to x, gamma and beta")
