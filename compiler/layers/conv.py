"""Image layers, channels-last (N, H, W, C) like Keras: convolution, pooling, padding, batchnorm."""
from __future__ import annotations

from typing import Any

from nnd.compiler.args import (ACTIVATION, CROPPING2D, INITIALIZER, NAME, NON_NEGATIVE_FLOAT,
                               OPTIONAL_NON_NEGATIVE_PAIR, OPTIONAL_PAIR, PADDING2D, PADDING_MODE, PAIR, POSITIVE_INT,
                               REGULARIZER, UNIT_FLOAT, ArgSpec, BOOL, choice)
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.activations import apply_activation
from nnd.compiler.layers.base import LayerContext, LayerError, layer, require_float
from nnd.compiler.layers.channel_groups import Pads, check_groups, grouped_conv2d
from nnd.compiler.layers.core import _with_fans, repeat_elements


def _image(x: Value, kind: str) -> tuple[int, int, int]:
    require_float(x, kind)
    if x.type.rank != 4:
        notes = ["reshape the input to (height, width, channels)"] if x.type.rank < 4 else []
        raise LayerError(f"{kind} expects an image batch (N, height, width, channels), got {x.type}", notes)
    _, h, w, c = x.type.shape
    return h, w, c  # type: ignore[return-value]


def _window_plan(kind: str, size: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
                 dilation: tuple[int, int], padding: str) -> tuple[Pads, tuple[int, int]]:
    """Explicit pads and output size for a sliding window, with TensorFlow's 'same' split."""
    pads, out = [], []
    for extent, k, s, d in zip(size, kernel, strides, dilation):
        span = (k - 1) * d + 1
        if padding == "same":
            o = -(-extent // s)
            total = max((o - 1) * s + span - extent, 0)
            pads.append((total // 2, total - total // 2))
        else:
            if span > extent:
                raise _window_too_large(kind, size, kernel, dilation)
            o = (extent - span) // s + 1
            pads.append((0, 0))
        out.append(o)
    return (pads[0], pads[1]), (out[0], out[1])


def _window_too_large(kind: str, size: tuple[int, int], kernel: tuple[int, int],
                      dilation: tuple[int, int]) -> LayerError:
    window = "x".join(str(k) for k in kernel)
    if dilation == (1, 1):
        return LayerError(f"{kind} window {window} is larger than its {size[0]}x{size[1]} input",
                          ["use padding=same or a smaller window"])
    spanned = "x".join(str((k - 1) * d + 1) for k, d in zip(kernel, dilation))
    return LayerError(f"{kind} window {window} at dilation_rate {dilation[0]}x{dilation[1]} spans {spanned}, more "
                      f"than its {size[0]}x{size[1]} input", ["use padding=same, a smaller window or less dilation"])


@layer("conv2d",
       ArgSpec("filters", POSITIVE_INT), ArgSpec("kernel_size", PAIR, aliases=("kernel",)),
       ArgSpec("strides", PAIR, (1, 1)), ArgSpec("padding", PADDING_MODE, "valid"),
       ArgSpec("dilation_rate", PAIR, (1, 1), aliases=("dilation",)),
       ArgSpec("activation", ACTIVATION, "linear"), ArgSpec("use_bias", BOOL, True),
       ArgSpec("kernel_initializer", INITIALIZER, Initializer("glorot_uniform")),
       ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
       ArgSpec("kernel_regularizer", REGULARIZER, None), ArgSpec("bias_regularizer", REGULARIZER, None),
       ArgSpec("groups", POSITIVE_INT, 1), ArgSpec("name", NAME, None))
def _conv2d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """2-D convolution, kernel (kh, kw, in/groups, out), then bias and activation."""
    x = inputs[0]
    h, w, c = _image(x, "conv2d")
    kh, kw = args["kernel_size"]
    filters, groups = args["filters"], args["groups"]
    check_groups("conv2d", c, filters, groups)
    if args["strides"] != (1, 1) and args["dilation_rate"] != (1, 1):
        raise LayerError("conv2d cannot combine strides and dilation_rate other than 1")
    pads, (ho, wo) = _window_plan("conv2d", (h, w), (kh, kw), args["strides"], args["dilation_rate"],
                                  args["padding"])
    width = c // groups  # the input channels each filter reads
    init = _with_fans(args["kernel_initializer"], kh * kw * width, kh * kw * filters)
    kernel = ctx.param("kernel", (kh, kw, width, filters), init, regularizer=args["kernel_regularizer"])
    if groups == 1:
        y = ctx.emit("conv2d", [x, kernel], strides=args["strides"], padding=pads, dilation=args["dilation_rate"])
    else:
        y = grouped_conv2d(ctx, x, kernel, groups, args["strides"], args["dilation_rate"], pads)
    ctx.count(2 * ho * wo * filters * kh * kw * width)
    if args["use_bias"]:
        bias = ctx.param("bias", (filters,), args["bias_initializer"], regularizer=args["bias_regularizer"])
        y = ctx.emit("add", [y, bias])
        ctx.count(ho * wo * filters)
    return apply_activation(ctx, y, args["activation"])


def transposed_plan(kind: str, size: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
                    dilation: tuple[int, int], padding: str,
                    output_padding: tuple[int, int] | None) -> tuple[Pads, tuple[int, int]]:
    """Output size and pads of a transposed convolution, as Keras computes them.

    The transposed convolution is the input gradient of the convolution that would map its output back
    to its input, so its pads are that convolution's, with TensorFlow's 'same' split; Keras' output
    size: `in * stride` for same, `in * stride + max(span - stride, 0)` for valid, and with
    `output_padding`, `(in - 1) * stride + span - 2 * (span // 2 if same else 0) + output_padding`.
    """
    out = []
    for axis, (extent, k, s, d) in enumerate(zip(size, kernel, strides, dilation)):
        span = (k - 1) * d + 1
        if output_padding is None:
            out.append(extent * s if padding == "same" else extent * s + max(span - s, 0))
            continue
        extra = output_padding[axis]
        if extra >= s:
            raise LayerError(f"{kind} output_padding {extra} must be less than the stride {s}",
                             ["output_padding picks one of the stride's output sizes: 0 up to stride - 1"])
        out.append((extent - 1) * s + span - 2 * (span // 2 if padding == "same" else 0) + extra)
    sized = (out[0], out[1])
    pads, back = _window_plan(kind, sized, kernel, strides, dilation, padding)
    if back != size:
        spans = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
        raise _unreachable_size(kind, size, sized, back, (spans[0], spans[1]), strides)
    return pads, sized


def _unreachable_size(kind: str, size: tuple[int, int], sized: tuple[int, int], back: tuple[int, int],
                      span: tuple[int, int], strides: tuple[int, int]) -> LayerError:
    """Keras' output_padding formula with padding=same and a window of even span gives, at output_padding 0,
    an output whose convolution has one position fewer than the input: TensorFlow refuses it when run."""
    axis = 0 if back[0] != size[0] else 1
    what = "steps" if kind == "conv1d_transpose" else ("rows", "columns")[axis]
    fixes = "an odd kernel_size or padding=valid"
    if strides[axis] > 1:
        choices = "1" if strides[axis] == 2 else f"1 to {strides[axis] - 1}"
        fixes = f"output_padding {choices}, " + fixes
    return LayerError(f"{kind} output_padding 0 with padding=same and a window spanning {span[axis]} makes "
                      f"{sized[axis]} {what}, which its convolution maps back to {back[axis]}, not the "
                      f"input's {size[axis]}", [f"use {fixes}"])


@layer("conv2d_transpose",
       ArgSpec("filters", POSITIVE_INT), ArgSpec("kernel_size", PAIR, aliases=("kernel",)),
       ArgSpec("strides", PAIR, (1, 1)), ArgSpec("padding", PADDING_MODE, "valid"),
       ArgSpec("output_padding", OPTIONAL_NON_NEGATIVE_PAIR, None),
       ArgSpec("dilation_rate", PAIR, (1, 1), aliases=("dilation",)),
       ArgSpec("activation", ACTIVATION, "linear"), ArgSpec("use_bias", BOOL, True),
       ArgSpec("kernel_initializer", INITIALIZER, Initializer("glorot_uniform")),
       ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
       ArgSpec("kernel_regularizer", REGULARIZER, None), ArgSpec("bias_regularizer", REGULARIZER, None),
       ArgSpec("name", NAME, None))
def _conv2d_transpose(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Transposed 2-D convolution (Keras' Conv2DTranspose), kernel (kh, kw, out, in): each input pixel
    spreads a kernel-sized patch over an output `strides` times larger."""
    x = inputs[0]
    h, w, c = _image(x, "conv2d_transpose")
    y = transposed_conv(ctx, x, (h, w), c, args, args["kernel_size"], args["strides"], args["dilation_rate"],
                        args["output_padding"])
    return apply_activation(ctx, y, args["activation"])


def transposed_conv(ctx: LayerContext, image: Value, size: tuple[int, int], channels: int, args: dict[str, Any],
                    kernel_hw: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int],
                    output_padding: tuple[int, int] | None, kernel_shape: tuple[int, ...] | None = None) -> Value:
    """The parameters, the transposed convolution of an NHWC image and its bias; conv1d_transpose
    passes its own kernel shape, (k, out, in), which it reshapes to (1, k, out, in)."""
    kind = ctx.kind
    if strides != (1, 1) and dilation != (1, 1):
        raise LayerError(f"{kind} cannot combine strides and dilation_rate other than 1")
    filters = args["filters"]
    pads, (ho, wo) = transposed_plan(kind, size, kernel_hw, strides, dilation, args["padding"], output_padding)
    taps = kernel_hw[0] * kernel_hw[1]
    init = _with_fans(args["kernel_initializer"], taps * filters, taps * channels)  # Keras' fans of (kh, kw, out, in)
    kernel = ctx.param("kernel", kernel_shape or (*kernel_hw, filters, channels), init,
                       regularizer=args["kernel_regularizer"])
    if kernel_shape is not None:
        kernel = ctx.emit("reshape", [kernel], shape=(*kernel_hw, filters, channels))
    y = ctx.emit("conv2d_grad_input", [image, kernel], strides=strides, padding=pads, dilation=dilation,
                 input_hw=(ho, wo))
    ctx.count(2 * size[0] * size[1] * channels * taps * filters)
    if args["use_bias"]:
        bias = ctx.param("bias", (filters,), args["bias_initializer"], regularizer=args["bias_regularizer"])
        y = ctx.emit("add", [y, bias])
        ctx.count(ho * wo * filters)
    return y


def _pool(kind: str, op: str) -> None:
    @layer(kind, ArgSpec("pool_size", PAIR, (2, 2), aliases=("pool",)), ArgSpec("strides", OPTIONAL_PAIR, None),
           ArgSpec("padding", PADDING_MODE, "valid"), ArgSpec("name", NAME, None),
           doc=f"{'Max' if op == 'maxpool2d' else 'Average'} pooling over windows (strides default to the window)")
    def lower(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
        x = inputs[0]
        h, w, c = _image(x, kind)
        pool = args["pool_size"]
        strides = args["strides"] or pool
        pads, (ho, wo) = _window_plan(kind, (h, w), pool, strides, (1, 1), args["padding"])
        ctx.count(ho * wo * c * pool[0] * pool[1])
        attrs: dict[str, Any] = {"pool": pool, "strides": strides, "padding": pads}
        if op == "avgpool2d":
            attrs["count_pad"] = False  # Keras averages over the cells inside the image only
        return ctx.emit(op, [x], **attrs)


_pool("maxpool2d", "maxpool2d")
_pool("avgpool2d", "avgpool2d")


def _global_pool(kind: str, op: str) -> None:
    @layer(kind, ArgSpec("name", NAME, None),
           doc=f"{'Maximum' if op == 'reduce_max' else 'Mean'} over height and width: (N, H, W, C) -> (N, C)")
    def lower(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
        x = inputs[0]
        _image(x, kind)
        ctx.count(x.type.concrete_size())
        return ctx.emit(op, [x], axes=(1, 2), keepdims=False)


_global_pool("global_avgpool2d", "reduce_mean")
_global_pool("global_maxpool2d", "reduce_max")


@layer("zero_padding2d", ArgSpec("padding", PADDING2D, ((1, 1), (1, 1))), ArgSpec("name", NAME, None))
def _zero_padding2d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Zeros around each image: an int, [rows, columns] or [[top, bottom], [left, right]]."""
    x = inputs[0]
    _image(x, "zero_padding2d")
    (top, bottom), (left, right) = args["padding"]
    return ctx.emit("pad", [x], pads=((0, 0), (top, bottom), (left, right), (0, 0)), value=0.0)


@layer("cropping2d", ArgSpec("cropping", CROPPING2D, ((0, 0), (0, 0))), ArgSpec("name", NAME, None))
def _cropping2d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' Cropping2D: rows and columns cut from each image's edges: an int, [rows, columns] or
    [[top, bottom], [left, right]]."""
    x = inputs[0]
    h, w, _ = _image(x, "cropping2d")
    (top, bottom), (left, right) = args["cropping"]
    for removed, extent, what in ((top + bottom, h, "rows"), (left + right, w, "columns")):
        if removed >= extent:
            raise LayerError(f"cropping2d cuts {removed} {what} from images of {extent} {what} in {x.type}, leaving "
                             "none", [f"crop fewer than {extent} {what} in all"])
    return ctx.emit("crop", [x], pads=((0, 0), (top, bottom), (left, right), (0, 0)))


@layer("up_sampling2d", ArgSpec("size", PAIR, (2, 2)), ArgSpec("interpolation", choice(("nearest",),
       "interpolation"), "nearest"), ArgSpec("name", NAME, None), aliases=("upsampling2d",))
def _up_sampling2d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' UpSampling2D: each pixel repeated size[0] times down and size[1] times across."""
    x = inputs[0]
    _image(x, "up_sampling2d")
    rows, columns = args["size"]
    return repeat_elements(ctx, repeat_elements(ctx, x, 1, rows), 2, columns)


@layer("batchnorm", ArgSpec("momentum", UNIT_FLOAT, 0.99), ArgSpec("epsilon", NON_NEGATIVE_FLOAT, 1e-3),
       ArgSpec("gamma_initializer", INITIALIZER, Initializer("ones")),
       ArgSpec("beta_initializer", INITIALIZER, Initializer("zeros")), ArgSpec("name", NAME, None),
       aliases=("batch_normalization",), keeps_mask=True)
def _batchnorm(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Normalize over the batch (and space) per channel; moving statistics serve inference."""
    x = inputs[0]
    require_float(x, "batchnorm")
    if x.type.rank < 2:
        raise LayerError(f"batchnorm expects a batch with a channel axis, got {x.type}")
    channels = x.type.shape[-1]
    gamma = ctx.param("gamma", (channels,), args["gamma_initializer"])
    beta = ctx.param("beta", (channels,), args["beta_initializer"])
    moving_mean = ctx.param("moving_mean", (channels,), Initializer("zeros"), trainable=False)
    moving_var = ctx.param("moving_variance", (channels,), Initializer("ones"), trainable=False)
    ctx.count(4 * x.type.concrete_size())
    if not ctx.training:
        return ctx.emit("batchnorm_infer", [x, gamma, beta, moving_mean, moving_var], epsilon=args["epsilon"])
    y, mean, var = ctx.emit_many("batchnorm_train", [x, gamma, beta], epsilon=args["epsilon"])
    momentum = args["momentum"]
    for param, batch_stat in ((moving_mean, mean), (moving_var, var)):
        kept = ctx.emit("mul", [param, ctx.constant(momentum)])
        fresh = ctx.emit("mul", [batch_stat, ctx.constant(1.0 - momentum)])
        ctx.update_state(param.name, ctx.emit("add", [kept, fresh]))
    return y
