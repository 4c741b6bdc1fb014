"""Core layers: dense, layer normalization, flatten, reshape, permute, rescaling, dropout, and merges of
several values."""
from __future__ import annotations

import math
from typing import Any

from nnd.compiler.args import (ACTIVATION, BOOL, FLOAT, INITIALIZER, INT, NAME, PERMUTATION,
                               POSITIVE_INT, RATE, REGULARIZER, SHAPE, ArgSpec)
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.activations import apply_activation
from nnd.compiler.layers.base import LayerContext, LayerError, check_axis, layer, require_float
from nnd.compiler.tensor_type import FLOAT_DTYPES, ShapeError, broadcast_shapes, format_shape

# ---------------------------------------------------------------- dense and reshaping

@layer("dense",
       ArgSpec("units", POSITIVE_INT), ArgSpec("activation", ACTIVATION, "linear"),
       ArgSpec("use_bias", BOOL, True),
       ArgSpec("kernel_initializer", INITIALIZER, Initializer("glorot_uniform")),
       ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
       ArgSpec("kernel_regularizer", REGULARIZER, None), ArgSpec("bias_regularizer", REGULARIZER, None),
       ArgSpec("name", NAME, None),
       keeps_mask=True)
def _dense(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Fully connected: activation(x @ kernel + bias), over the last axis."""
    x = inputs[0]
    if x.type.rank > 3:
        raise LayerError(f"dense expects a flat input, got {x.type}",
                         ["insert flatten() before this layer"])
    if x.type.rank < 2:
        raise LayerError(f"dense expects a batch of vectors, got {x.type}")
    fan_in = x.type.shape[-1]
    units = args["units"]
    kernel = ctx.param("kernel", (fan_in, units), _with_fans(args["kernel_initializer"], fan_in, units),
                       regularizer=args["kernel_regularizer"])
    y = ctx.emit("matmul", [x, kernel])
    steps = x.type.concrete_size() // fan_in
    ctx.count(2 * fan_in * units * steps)
    if args["use_bias"]:
        bias = ctx.param("bias", (units,), args["bias_initializer"], regularizer=args["bias_regularizer"])
        y = ctx.emit("add", [y, bias])
        ctx.count(units * steps)
    return apply_activation(ctx, y, args["activation"])


def _with_fans(init: Initializer, fan_in: int, fan_out: int) -> Initializer:
    """Variance-scaling initializers need the fans, which only the layer knows."""
    if init.name.split("_")[0] in ("glorot", "he", "lecun"):
        return Initializer(init.name, tuple(sorted(dict(init.args, fan_in=fan_in, fan_out=fan_out).items())))
    return init


@layer("flatten", ArgSpec("name", NAME, None))
def _flatten(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Collapse every axis but the batch into one."""
    x = inputs[0]
    size = math.prod(x.type.shape[1:])
    return ctx.emit("reshape", [x], shape=(x.type.shape[0], size))


@layer("reshape", ArgSpec("target_shape", SHAPE, aliases=("shape",)), ArgSpec("name", NAME, None))
def _reshape(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Reshape every sample to target_shape (the batch axis is kept; one -1 is inferred)."""
    x = inputs[0]
    size = math.prod(x.type.shape[1:])
    target = list(args["target_shape"])
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if size % known:
            raise LayerError(f"cannot reshape {x.type} to {format_shape(tuple(target))}: "
                             f"{size} elements per sample are not divisible by {known}")
        target[target.index(-1)] = size // known
    elif known != size:
        raise LayerError(f"cannot reshape {x.type} to {format_shape(tuple(target))}: "
                         f"{size} elements per sample, the target holds {known}")
    return ctx.emit("reshape", [x], shape=(x.type.shape[0], *target))


@layer("permute", ArgSpec("dims", PERMUTATION), ArgSpec("name", NAME, None))
def _permute(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' Permute: reorder the axes after the batch, counted from 1 (permute([2, 1]) swaps steps and
    features)."""
    x = inputs[0]
    dims = args["dims"]
    if len(dims) != x.type.rank - 1:
        raise LayerError(f"permute dims [{', '.join(map(str, dims))}] order {len(dims)} axes, but {x.type} has "
                         f"{x.type.rank - 1} after the batch axis")
    return ctx.emit("transpose", [x], perm=(0, *dims))


@layer("rescaling", ArgSpec("scale", FLOAT), ArgSpec("offset", FLOAT, 0.0), ArgSpec("name", NAME, None),
       keeps_mask=True)
def _rescaling(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' Rescaling: x * scale + offset, e.g. rescaling(1.0 / 255) for pixels in [0, 1]; integer
    inputs become floats first."""
    x = inputs[0]
    if x.type.dtype not in FLOAT_DTYPES:
        x = ctx.emit("cast", [x], dtype="f32")  # the executor's float dtype, as Keras casts to its own
    y = ctx.emit("mul", [x, ctx.constant(args["scale"])])
    ctx.count(x.type.concrete_size())
    if args["offset"] != 0.0:
        y = ctx.emit("add", [y, ctx.constant(args["offset"])])
        ctx.count(x.type.concrete_size())
    return y


@layer("dropout", ArgSpec("rate", RATE), ArgSpec("seed", INT, None), ArgSpec("name", NAME, None),
       keeps_mask=True)
def _dropout(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """While training, zero each element with probability `rate` and scale the rest by 1/(1-rate)."""
    x = inputs[0]
    require_float(x, "dropout")  # in inference too, where dropout passes x through
    if not ctx.training or args["rate"] == 0.0:
        return x
    mask = ctx.emit("dropout_mask", [x], rate=args["rate"], stream=ctx.random_stream())
    return ctx.emit("mul", [x, mask])


_SPATIAL_BATCHES = {3: "a batch of sequences (N, steps, channels)", 4: "an image batch (N, height, width, channels)"}


def _spatial_dropout(rank: int, kind: str):
    def lower(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
        """While training, zero whole channels (feature maps) of each sample with probability `rate`, and
        scale the rest by 1/(1-rate): one mask entry per sample and channel, drawn in the shape of a
        one-pixel slice of x, broadcast over the spatial axes."""
        x = inputs[0]
        require_float(x, kind)
        if x.type.rank != rank:
            raise LayerError(f"{kind} expects {_SPATIAL_BATCHES[rank]}, got {x.type}")
        if not ctx.training or args["rate"] == 0.0:
            return x
        corner = x
        for axis in range(1, rank - 1):  # a view of one position per sample: the mask's shape
            corner = ctx.emit("slice", [corner], axis=axis, start=0, stop=1)
        mask = ctx.emit("dropout_mask", [corner], rate=args["rate"], stream=ctx.random_stream())
        return ctx.emit("mul", [x, mask])
    return lower


for _rank, _kind in ((3, "spatial_dropout1d"), (4, "spatial_dropout2d")):
    layer(_kind, ArgSpec("rate", RATE), ArgSpec("seed", INT, None), ArgSpec("name", NAME, None),
          keeps_mask=True)(_spatial_dropout(_rank, _kind))


# ---------------------------------------------------------------- merges and arithmetic

def _merge(ctx: LayerContext, op: str, word: str, inputs: list[Value]) -> Value:
    result = inputs[0]
    for other in inputs[1:]:
        try:
            broadcast_shapes(result.type.shape, other.type.shape)
        except ShapeError:
            raise LayerError(f"cannot {word} {result.type} and {other.type}: the shapes differ") from None
        result = ctx.emit(op, [result, other])
        ctx.count(result.type.concrete_size())
    ctx.output_mask = merged_mask(ctx, result)
    return result


def merged_mask(ctx: LayerContext, output: Value) -> Value | None:
    """A merge's padding mask, as Keras' merge layers give it: a step is real where every input that
    carries a mask has it real. None when no input carries one, or the merge changes the steps (a concat
    along the time axis)."""
    masks = [m for m in ctx.input_masks if m is not None]
    if not masks or output.type.rank != 3 or any(m.type.shape[1] != output.type.shape[1] for m in masks):
        return None
    merged = masks[0]
    for mask in masks[1:]:
        merged = ctx.emit("mul", [merged, mask])
    return merged


@layer("add", ArgSpec("name", NAME, None), inputs=(2, None))
def _add(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Elementwise sum of two or more values."""
    return _merge(ctx, "add", "add", inputs)


@layer("subtract", ArgSpec("name", NAME, None), inputs=2)
def _subtract(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Elementwise difference of two values."""
    return _merge(ctx, "sub", "subtract", inputs)


@layer("multiply", ArgSpec("name", NAME, None), inputs=(2, None))
def _multiply(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Elementwise product of two or more values."""
    return _merge(ctx, "mul", "multiply", inputs)


@layer("average", ArgSpec("name", NAME, None), inputs=(2, None))
def _average(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Elementwise mean of two or more values."""
    total = _merge(ctx, "add", "average", inputs)
    return ctx.emit("mul", [total, ctx.constant(1.0 / len(inputs))])


@layer("concat", ArgSpec("axis", INT, -1), ArgSpec("name", NAME, None), inputs=(2, None),
       aliases=("concatenate",))
def _concat(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Join values along an axis (the last, channels, by default)."""
    first = inputs[0]
    axis = check_axis(first, args["axis"])
    for other in inputs[1:]:
        same_rank = other.type.rank == first.type.rank
        if not same_rank or any(a != b for i, (a, b) in enumerate(zip(first.type.shape, other.type.shape))
                                if i != axis):
            raise LayerError(f"concat along axis {args['axis']} needs equal sizes on the other axes, "
                             f"got {first.type} and {other.type}")
    result = ctx.emit("concat", inputs, axis=axis)
    ctx.output_mask = merged_mask(ctx, result)
    return result


def repeat_elements(ctx: LayerContext, x: Value, axis: int, times: int) -> Value:
    """Each entry along `axis` repeated `times` times in place (nearest-neighbour upsampling): a unit axis
    inserted after `axis`, broadcast to `times` copies by a product with ones (exact, and one node however
    large `times` is, where joining `times` copies took as many graph inputs), then merged into `axis`.
    Reshape and the broadcasting product carry their own gradients (the sum over the copies), so the
    upsampling layers need no kernels of their own."""
    if times == 1:
        return x
    shape = x.type.shape
    split = ctx.emit("reshape", [x], shape=(*shape[:axis + 1], 1, *shape[axis + 1:]))
    ones = ctx.emit("constant", [], value=1.0, dtype=x.type.dtype,
                    shape=(times, *[1] * (len(shape) - axis - 1)))
    copies = ctx.emit("mul", [split, ones])
    return ctx.emit("reshape", [copies], shape=(*shape[:axis], shape[axis] * times, *shape[axis + 1:]))


ARITHMETIC = {"+": ("add", "add"), "-": ("sub", "subtract"), "*": ("mul", "multiply"), "/": ("div", "divide")}


def lower_arithmetic(ctx: LayerContext, symbol: str, left: Value | float, right: Value | float) -> Value:
    """`a + b`, `x * 0.5`, ...: tensors broadcast like NumPy; a number becomes a scalar constant."""
    op, word = ARITHMETIC[symbol]
    operands = [v if isinstance(v, Value) else ctx.constant(v) for v in (left, right)]
    return _merge(ctx, op, word, operands)
