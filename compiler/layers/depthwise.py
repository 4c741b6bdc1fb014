"""Keras' depthwise and separable convolutions: depthwise_conv2d, separable_conv2d and their 1-D forms.

Parameters keep Keras' names and layouts: `depthwise_kernel` (kh, kw, in, depth_multiplier), or
(kernel_size, in, depth_multiplier) in 1-D; `pointwise_kernel` (1, 1, in*depth_multiplier, filters), or
(1, in*depth_multiplier, filters); `bias`. Output channel c*depth_multiplier + m is input channel c's m-th
filter, as in TensorFlow. The depthwise step is the `depthwise_conv2d` op (`channel_groups.depthwise`), the
pointwise step a 1x1 conv2d; the 1-D layers run over the (N, 1, steps, C) view of their sequence, as conv1d
does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnd.compiler.args import (ACTIVATION, BOOL, INITIALIZER, NAME, PADDING_MODE, PAIR, POSITIVE_INT, REGULARIZER,
                               ArgSpec, choice)
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.activations import apply_activation
from nnd.compiler.layers.base import LayerContext, LayerError, layer
from nnd.compiler.layers.channel_groups import Pads, depthwise
from nnd.compiler.layers.conv import _image, _window_plan
from nnd.compiler.layers.core import _with_fans
from nnd.compiler.layers.sequence import _steps, as_image, as_sequence, window_plan_1d

_GLOROT = Initializer("glorot_uniform")
_PADDING_1D = choice(("valid", "same", "causal"), "padding")


def _arguments(separable: bool, one_d: bool) -> tuple[ArgSpec, ...]:
    """Keras' arguments in Keras' order (less data_format, constraints and activity_regularizer): a 1-D
    window, stride or dilation is one int, a 2-D one an int or a pair."""
    window, one = (POSITIVE_INT, 1) if one_d else (PAIR, (1, 1))
    multiplier = ArgSpec("depth_multiplier", POSITIVE_INT, 1)
    dilation = ArgSpec("dilation_rate", window, one, aliases=("dilation",))
    specs = [ArgSpec("filters", POSITIVE_INT)] if separable else []
    specs += [ArgSpec("kernel_size", window, aliases=("kernel",)), ArgSpec("strides", window, one),
              ArgSpec("padding", _PADDING_1D if one_d else PADDING_MODE, "valid")]
    specs += [dilation, multiplier] if separable else [multiplier, dilation]
    specs += [ArgSpec("activation", ACTIVATION, "linear"), ArgSpec("use_bias", BOOL, True),
              ArgSpec("depthwise_initializer", INITIALIZER, _GLOROT)]
    if separable:
        specs.append(ArgSpec("pointwise_initializer", INITIALIZER, _GLOROT))
    specs += [ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
              ArgSpec("depthwise_regularizer", REGULARIZER, None)]
    if separable:
        specs.append(ArgSpec("pointwise_regularizer", REGULARIZER, None))
    specs += [ArgSpec("bias_regularizer", REGULARIZER, None), ArgSpec("name", NAME, None)]
    return tuple(specs)


@dataclass(frozen=True)
class _Plan:
    """Where the window goes over the (N, H, W, C) image: pads, strides, dilation and output size."""

    window: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    pads: Pads
    out: tuple[int, int]

    @property
    def positions(self) -> int:
        return self.out[0] * self.out[1]

    @property
    def taps(self) -> int:
        return self.window[0] * self.window[1]


def _plan_2d(ctx: LayerContext, x: Value, args: dict[str, Any]) -> _Plan:
    h, w, _ = _image(x, ctx.kind)
    _strides_or_dilation(ctx, args["strides"], args["dilation_rate"], (1, 1))
    pads, out = _window_plan(ctx.kind, (h, w), args["kernel_size"], args["strides"], args["dilation_rate"],
                             args["padding"])
    return _Plan(args["kernel_size"], args["strides"], args["dilation_rate"], pads, out)


def _plan_1d(ctx: LayerContext, x: Value, args: dict[str, Any]) -> _Plan:
    steps, _ = _steps(ctx, x)
    size, stride, dilation = args["kernel_size"], args["strides"], args["dilation_rate"]
    _strides_or_dilation(ctx, stride, dilation, 1)
    pads, out_steps = window_plan_1d(ctx, steps, size, stride, dilation, args["padding"])
    return _Plan((1, size), (1, stride), (1, dilation), pads, (1, out_steps))


def _strides_or_dilation(ctx: LayerContext, strides: Any, dilation: Any, one: Any) -> None:
    """TensorFlow's depthwise convolution refuses both at once; conv2d here does the same."""
    if strides != one and dilation != one:
        raise LayerError(f"{ctx.kind} cannot combine strides and dilation_rate other than 1")


def _depthwise(ctx: LayerContext, image: Value, plan: _Plan, args: dict[str, Any], one_d: bool) -> Value:
    """The depthwise step on the image view: its kernel in Keras' layout (1-D: no height axis), no bias."""
    channels, dm = image.type.shape[3], args["depth_multiplier"]
    kh, kw = plan.window
    # Keras takes the fans of any 4-D kernel from its last two axes: (kh*kw*in, kh*kw*depth_multiplier)
    init = _with_fans(args["depthwise_initializer"], plan.taps * channels, plan.taps * dm)
    shape = (kw, channels, dm) if one_d else (kh, kw, channels, dm)
    kernel = ctx.param("depthwise_kernel", shape, init, regularizer=args["depthwise_regularizer"])
    if one_d:
        kernel = ctx.emit("reshape", [kernel], shape=(1, kw, channels, dm))
    ctx.count(2 * plan.positions * channels * dm * plan.taps)
    return depthwise(ctx, image, kernel, plan.strides, plan.dilation, plan.pads)


def _pointwise(ctx: LayerContext, y: Value, plan: _Plan, args: dict[str, Any], one_d: bool) -> Value:
    """The 1x1 convolution that mixes the depthwise channels into `filters`."""
    depth, filters = y.type.shape[3], args["filters"]
    init = _with_fans(args["pointwise_initializer"], depth, filters)
    shape = (1, depth, filters) if one_d else (1, 1, depth, filters)
    kernel = ctx.param("pointwise_kernel", shape, init, regularizer=args["pointwise_regularizer"])
    if one_d:
        kernel = ctx.emit("reshape", [kernel], shape=(1, 1, depth, filters))
    ctx.count(2 * plan.positions * depth * filters)
    return ctx.emit("conv2d", [y, kernel], strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1))


def _bias_and_activation(ctx: LayerContext, y: Value, plan: _Plan, args: dict[str, Any]) -> Value:
    if args["use_bias"]:
        units = y.type.shape[3]
        bias = ctx.param("bias", (units,), args["bias_initializer"], regularizer=args["bias_regularizer"])
        y = ctx.emit("add", [y, bias])
        ctx.count(plan.positions * units)
    return apply_activation(ctx, y, args["activation"])


@layer("depthwise_conv2d", *_arguments(separable=False, one_d=False))
def _depthwise_conv2d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Each input channel convolved with its own depth_multiplier filters, kernel (kh, kw, in, multiplier)."""
    x = inputs[0]
    plan = _plan_2d(ctx, x, args)
    return _bias_and_activation(ctx, _depthwise(ctx, x, plan, args, one_d=False), plan, args)


@layer("separable_conv2d", *_arguments(separable=True, one_d=False))
def _separable_conv2d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """A depthwise convolution (no bias), then a 1x1 convolution to filters, then bias and activation."""
    x = inputs[0]
    plan = _plan_2d(ctx, x, args)
    y = _pointwise(ctx, _depthwise(ctx, x, plan, args, one_d=False), plan, args, one_d=False)
    return _bias_and_activation(ctx, y, plan, args)


@layer("depthwise_conv1d", *_arguments(separable=False, one_d=True))
def _depthwise_conv1d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Each feature convolved over steps with its own depth_multiplier filters, kernel (size, in, multiplier)."""
    x = inputs[0]
    plan = _plan_1d(ctx, x, args)
    y = _depthwise(ctx, as_image(ctx, x), plan, args, one_d=True)
    return as_sequence(ctx, _bias_and_activation(ctx, y, plan, args))


@layer("separable_conv1d", *_arguments(separable=True, one_d=True))
def _separable_conv1d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """A depthwise convolution over steps (no bias), then a pointwise one to filters, bias and activation."""
    x = inputs[0]
    plan = _plan_1d(ctx, x, args)
    y = _pointwise(ctx, _depthwise(ctx, as_image(ctx, x), plan, args, one_d=True), plan, args, one_d=True)
    return as_sequence(ctx, _bias_and_activation(ctx, y, plan, args))
