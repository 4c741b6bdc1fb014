"""Keras' noise layers, active while training and the identity in inference: gaussian_noise (additive),
gaussian_dropout (multiplicative, centred on 1) and alpha_dropout (dropout that keeps a selu network's
mean and variance). Each draws from its own stream, as dropout does (`LayerContext.random_stream`)."""
from __future__ import annotations

import math
from typing import Any

from nnd.compiler.args import INT, NAME, NON_NEGATIVE_FLOAT, RATE, ArgSpec
from nnd.compiler.ir import Value
from nnd.compiler.layers.activations import SELU_ALPHA, SELU_SCALE
from nnd.compiler.layers.base import LayerContext, layer, require_float


def _noise(ctx: LayerContext, x: Value, stddev: float) -> Value:
    return ctx.emit("normal_noise", [x], stddev=stddev, stream=ctx.random_stream())


@layer("gaussian_noise", ArgSpec("stddev", NON_NEGATIVE_FLOAT), ArgSpec("seed", INT, None), ArgSpec("name", NAME, None),
       keeps_mask=True)
def _gaussian_noise(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """While training, add normal noise of mean 0 and standard deviation `stddev` to every element."""
    x = inputs[0]
    require_float(x, "gaussian_noise")
    if not ctx.training or args["stddev"] == 0.0:
        return x
    ctx.count(x.type.concrete_size())
    return ctx.emit("add", [x, _noise(ctx, x, args["stddev"])])


@layer("gaussian_dropout", ArgSpec("rate", RATE), ArgSpec("seed", INT, None), ArgSpec("name", NAME, None),
       keeps_mask=True)
def _gaussian_dropout(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """While training, multiply every element by normal noise of mean 1 and standard deviation
    sqrt(rate / (1 - rate)), the variance of dropout's own 0-or-1/(1-rate) factor."""
    x = inputs[0]
    require_float(x, "gaussian_dropout")
    rate = args["rate"]
    if not ctx.training or rate == 0.0:
        return x
    factor = ctx.emit("add", [_noise(ctx, x, math.sqrt(rate / (1.0 - rate))), ctx.constant(1.0)])
    ctx.count(2 * x.type.concrete_size())
    return ctx.emit("mul", [x, factor])


@layer("alpha_dropout", ArgSpec("rate", RATE), ArgSpec("seed", INT, None), ArgSpec("name", NAME, None),
       keeps_mask=True)
def _alpha_dropout(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """While training, set each element with probability `rate` to selu's saturation value -alpha*scale,
    then apply the affine map a*x + b that brings back the mean and variance of a standard normal
    input, with Keras' a and b."""
    x = inputs[0]
    require_float(x, "alpha_dropout")
    rate = args["rate"]
    if not ctx.training or rate == 0.0:
        return x
    saturated = -SELU_ALPHA * SELU_SCALE  # selu's negative saturation value
    a = ((1.0 - rate) * (1.0 + rate * saturated ** 2)) ** -0.5
    b = -a * saturated * rate
    # dropout's mask is 0 or 1/(1-rate); (1-rate) times it is the 0-or-1 choice of the kept elements
    kept = ctx.emit("mul", [ctx.emit("dropout_mask", [x], rate=rate, stream=ctx.random_stream()),
                            ctx.constant(1.0 - rate)])
    # a*(x*kept + saturated*(1 - kept)) + b = kept*(a*x - a*saturated) + (a*saturated + b)
    shifted = ctx.emit("sub", [ctx.emit("mul", [x, ctx.constant(a)]), ctx.constant(a * saturated)])
    ctx.count(4 * x.type.concrete_size())
    return ctx.emit("add", [ctx.emit("mul", [kept, shifted]), ctx.constant(a * saturated + b)])
