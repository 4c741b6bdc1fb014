"""Per-sample normalizations, Keras' LayerNormalization, GroupNormalization and UnitNormalization.

Each is composed of elementwise ops and reductions, so autodiff and the elementwise fusion serve them as
they are. (Batch normalization, whose statistics span the batch, is an op of its own: see conv.py.)
"""
from __future__ import annotations

from typing import Any

from nnd.compiler.args import BOOL, INITIALIZER, INT, NAME, NON_NEGATIVE_FLOAT, POSITIVE_INT, ArgSpec
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.base import LayerContext, LayerError, layer, require_float

HALF_TINY = 2.0 ** -24  # float16's smallest positive (subnormal) number


def _standardized(ctx: LayerContext, x: Value, axes: tuple[int, ...], epsilon: float) -> Value:
    """(x - mean) / sqrt(variance + epsilon), the moments taken over `axes` of each sample."""
    mean = ctx.emit("reduce_mean", [x], axes=axes, keepdims=True)
    centred = ctx.emit("sub", [x, mean])
    variance = ctx.emit("reduce_mean", [ctx.emit("square", [centred])], axes=axes, keepdims=True)
    spread = ctx.emit("sqrt", [ctx.emit("add", [variance, ctx.constant(epsilon)])])
    return ctx.emit("div", [centred, spread])


def _scale_and_shift(ctx: LayerContext, y: Value, args: dict[str, Any]) -> Value:
    """y * gamma + beta over the last axis, each when its Keras switch (scale, center) is on."""
    features = y.type.shape[-1]
    if args["scale"]:
        y = ctx.emit("mul", [y, ctx.param("gamma", (features,), args["gamma_initializer"])])
    if args["center"]:
        y = ctx.emit("add", [y, ctx.param("beta", (features,), args["beta_initializer"])])
    return y


def _last_axis_only(kind: str, x: Value, axis: int) -> None:
    if axis not in (-1, x.type.rank - 1):
        raise LayerError(f"{kind} normalizes over the last axis (axis=-1), got axis={axis} for {x.type}")


_AFFINE = (ArgSpec("center", BOOL, True), ArgSpec("scale", BOOL, True),
           ArgSpec("gamma_initializer", INITIALIZER, Initializer("ones")),
           ArgSpec("beta_initializer", INITIALIZER, Initializer("zeros")))


@layer("layer_normalization", ArgSpec("axis", INT, -1), ArgSpec("epsilon", NON_NEGATIVE_FLOAT, 1e-3), *_AFFINE,
       ArgSpec("name", NAME, None), aliases=("layer_norm",), keeps_mask=True)
def _layer_normalization(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' LayerNormalization over the last axis: each sample's (each step's) features centred on their
    mean and divided by sqrt(variance + epsilon), then scaled by gamma and shifted by beta."""
    x = inputs[0]
    require_float(x, "layer_normalization")
    if x.type.rank < 2:
        raise LayerError(f"layer_normalization expects a batch of vectors, got {x.type}")
    _last_axis_only("layer_normalization", x, args["axis"])
    y = _standardized(ctx, x, (x.type.rank - 1,), args["epsilon"])
    ctx.count(8 * x.type.concrete_size())
    return _scale_and_shift(ctx, y, args)


@layer("group_normalization", ArgSpec("groups", POSITIVE_INT, 32), ArgSpec("axis", INT, -1),
       ArgSpec("epsilon", NON_NEGATIVE_FLOAT, 1e-3), *_AFFINE, ArgSpec("name", NAME, None), keeps_mask=True)
def _group_normalization(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' GroupNormalization: the channels (the last axis) split into `groups` consecutive groups,
    each sample's group standardized over its channels and every position, then gamma and beta per
    channel. One group is layer normalization over all of a sample; as many groups as channels is
    instance normalization."""
    x = inputs[0]
    kind = "group_normalization"
    require_float(x, kind)
    if x.type.rank < 2:
        raise LayerError(f"{kind} expects a batch with a channel axis, got {x.type}")
    _last_axis_only(kind, x, args["axis"])
    channels, groups = x.type.shape[-1], args["groups"]
    if channels % groups:
        raise LayerError(f"{kind} groups={groups} does not divide the {channels} channels of {x.type}",
                         [f"use a number of groups that divides {channels}"])
    positions = x.type.concrete_size() // channels
    grouped = ctx.emit("reshape", [x], shape=(x.type.shape[0], positions, groups, channels // groups))
    y = _standardized(ctx, grouped, (1, 3), args["epsilon"])
    y = ctx.emit("reshape", [y], shape=x.type.shape)
    ctx.count(8 * x.type.concrete_size())
    return _scale_and_shift(ctx, y, args)


@layer("unit_normalization", ArgSpec("axis", INT, -1), ArgSpec("name", NAME, None), keeps_mask=True)
def _unit_normalization(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' UnitNormalization: each vector along the last axis divided by its Euclidean length (at
    least 1e-12 squared, Keras' floor, so that a zero vector stays zero, in float16 too)."""
    x = inputs[0]
    require_float(x, "unit_normalization")
    if x.type.rank < 2:
        raise LayerError(f"unit_normalization expects a batch of vectors, got {x.type}")
    _last_axis_only("unit_normalization", x, args["axis"])
    squares = ctx.emit("reduce_sum", [ctx.emit("square", [x])], axes=(x.type.rank - 1,), keepdims=True)
    length = ctx.emit("sqrt", [ctx.emit("maximum", [squares, ctx.constant(1e-12)])])
    # float16 (mixed precision) rounds 1e-12 to 0, so a zero vector would divide 0 by 0; its smallest
    # number keeps the length positive, and is below 1e-6, the length's floor in float32 and float64.
    length = ctx.emit("maximum", [length, ctx.constant(HALF_TINY)])
    ctx.count(3 * x.type.concrete_size())
    return ctx.emit("div", [x, length])
