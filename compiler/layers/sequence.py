"""Sequence layers, batch-major (N, steps, features) like Keras: embedding, masking, conv1d,
conv1d_transpose and 1-D pooling, time_distributed and repeat_vector.

The 1-D convolutions and pooling run as their 2-D counterparts over a (N, 1, steps, features) view, so
they share the 2-D kernels; conv1d's kernel keeps Keras' layout (kernel_size, in, out), and
conv1d_transpose's (kernel_size, out, in).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from nnd.compiler.args import (ACTIVATION, BOOL, CROPPING1D, FLOAT, INITIALIZER, LAYER, NAME, NON_NEGATIVE_INT,
                               POSITIVE_INT, REGULARIZER, ArgKind, ArgSpec, choice, optional)
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.activations import apply_activation
from nnd.compiler.layers.base import LAYERS, LayerContext, LayerError, layer, require_float
from nnd.compiler.layers.channel_groups import Pads, check_groups, grouped_conv2d
from nnd.compiler.layers.conv import _window_plan, transposed_conv
from nnd.compiler.layers.core import _with_fans, repeat_elements
from nnd.compiler.layers.recurrent import RECURRENT, sequence_notes


def _steps(ctx: LayerContext, x: Value) -> tuple[int, int]:
    require_float(x, ctx.kind)
    if x.type.rank != 3:
        notes = sequence_notes(x)[:1] if x.type.rank == 2 else []
        image_kind = ctx.kind.replace("1d", "2d")
        if x.type.rank == 4 and image_kind != ctx.kind and image_kind in LAYERS:
            notes.append(f"for images (batch, height, width, channels) use {image_kind}")
        raise LayerError(f"{ctx.kind} expects a sequence (batch, steps, features), got {x.type}", notes)
    return x.type.shape[1], x.type.shape[2]  # type: ignore[return-value]


def _window_fits(ctx: LayerContext, steps: int, size: int, dilation: int, padding: str) -> None:
    """A valid window must fit in the steps (said in steps, not as the 2-D window it lowers to)."""
    span = (size - 1) * dilation + 1
    if padding == "valid" and span > steps:
        how = f" (size {size}, dilation {dilation})" if dilation != 1 else ""
        raise LayerError(f"{ctx.kind} window of {span} steps{how} is longer than its input of {steps} steps",
                         ["use padding=same, a smaller window or a longer input"])


def window_plan_1d(ctx: LayerContext, steps: int, size: int, stride: int, dilation: int,
                   padding: str) -> tuple[Pads, int]:
    """The pads of a 1-D window over the (N, 1, steps, C) image view, and the output steps."""
    if padding == "causal":  # pad the past only, so step t never sees steps after t
        return ((0, 0), ((size - 1) * dilation, 0)), (steps - 1) // stride + 1
    _window_fits(ctx, steps, size, dilation, padding)
    pads, (_, out_steps) = _window_plan(ctx.kind, (1, steps), (1, size), (1, stride), (1, dilation), padding)
    return pads, out_steps


def as_image(ctx: LayerContext, x: Value) -> Value:
    steps, features = _steps(ctx, x)
    return ctx.emit("reshape", [x], shape=(x.type.shape[0], 1, steps, features))


def as_sequence(ctx: LayerContext, y: Value) -> Value:
    _, _, steps, features = y.type.shape
    return ctx.emit("reshape", [y], shape=(y.type.shape[0], steps, features))


@layer("embedding", ArgSpec("input_dim", POSITIVE_INT), ArgSpec("output_dim", POSITIVE_INT),
       ArgSpec("mask_zero", BOOL, False),
       ArgSpec("embeddings_initializer", INITIALIZER,
               Initializer("random_uniform", (("maxval", 0.05), ("minval", -0.05)))),
       ArgSpec("embeddings_regularizer", REGULARIZER, None), ArgSpec("name", NAME, None),
       doc="Map integer ids (0 to input_dim-1) to learned vectors; mask_zero treats id 0 as padding")
def _embedding(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    ids = inputs[0]
    if ids.type.dtype not in ("i32", "i64"):
        raise LayerError(f"embedding expects integer ids, got {ids.type}",
                         ["declare the input with an integer type, e.g. input tokens: int32[100]"])
    table = ctx.param("embeddings", (args["input_dim"], args["output_dim"]), args["embeddings_initializer"],
                      regularizer=args["embeddings_regularizer"])
    if args["mask_zero"]:
        if ids.type.rank != 2:
            raise LayerError(f"embedding(mask_zero=true) expects id sequences (batch, steps), got {ids.type}")
        ctx.output_mask = ctx.emit("nonzero_mask", [ids])
    return ctx.emit("gather_rows", [ids, table])


@layer("masking", ArgSpec("mask_value", FLOAT, 0.0), ArgSpec("name", NAME, None),
       doc="Mark the steps whose features all equal mask_value as padding for the recurrent layers after it, "
           "and zero them (as Keras does) for the layers that ignore the mask")
def _masking(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    x = inputs[0]
    steps, _ = _steps(ctx, x)
    distance = ctx.emit("abs", [ctx.emit("sub", [x, ctx.constant(args["mask_value"])])])
    largest = ctx.emit("reduce_max", [distance], axes=(2,), keepdims=True)
    real = ctx.emit("nonzero_mask", [largest])  # [N, T, 1]: 1 at real steps
    ctx.output_mask = ctx.emit("reshape", [real], shape=(x.type.shape[0], steps))
    return ctx.emit("mul", [x, real])


_PADDING_1D = choice(("valid", "same", "causal"), "padding")
_SIZE = ArgKind("a positive int", POSITIVE_INT.convert)


_OPTIONAL_SIZE = ArgKind("a positive int or none", optional(POSITIVE_INT.convert), symbolic=True)
_OPTIONAL_COUNT = ArgKind("a non-negative int or none", optional(NON_NEGATIVE_INT.convert), symbolic=True)


@layer("conv1d",
       ArgSpec("filters", POSITIVE_INT), ArgSpec("kernel_size", _SIZE, aliases=("kernel",)),
       ArgSpec("strides", _SIZE, 1), ArgSpec("padding", _PADDING_1D, "valid"),
       ArgSpec("dilation_rate", _SIZE, 1, aliases=("dilation",)),
       ArgSpec("activation", ACTIVATION, "linear"), ArgSpec("use_bias", BOOL, True),
       ArgSpec("kernel_initializer", INITIALIZER, Initializer("glorot_uniform")),
       ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
       ArgSpec("kernel_regularizer", REGULARIZER, None), ArgSpec("bias_regularizer", REGULARIZER, None),
       ArgSpec("groups", POSITIVE_INT, 1), ArgSpec("name", NAME, None))
def _conv1d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """1-D convolution over steps, kernel (kernel_size, in/groups, out); padding valid, same or causal."""
    x = inputs[0]
    steps, channels = _steps(ctx, x)
    k, stride, dilation, filters = args["kernel_size"], args["strides"], args["dilation_rate"], args["filters"]
    groups = args["groups"]
    check_groups("conv1d", channels, filters, groups)
    if stride != 1 and dilation != 1:
        raise LayerError("conv1d cannot combine strides and dilation_rate other than 1")
    pads, out_steps = window_plan_1d(ctx, steps, k, stride, dilation, args["padding"])
    width = channels // groups  # the input channels each filter reads
    init = _with_fans(args["kernel_initializer"], k * width, k * filters)
    kernel = ctx.param("kernel", (k, width, filters), init, regularizer=args["kernel_regularizer"])
    kernel2d = ctx.emit("reshape", [kernel], shape=(1, k, width, filters))
    if groups == 1:
        y = ctx.emit("conv2d", [as_image(ctx, x), kernel2d], strides=(1, stride), padding=pads,
                     dilation=(1, dilation))
    else:
        y = grouped_conv2d(ctx, as_image(ctx, x), kernel2d, groups, (1, stride), (1, dilation), pads)
    ctx.count(2 * out_steps * filters * k * width)
    # the bias and activation before the reshape back to steps: fuse-epilogues joins them to the conv2d
    if args["use_bias"]:
        bias = ctx.param("bias", (filters,), args["bias_initializer"], regularizer=args["bias_regularizer"])
        y = ctx.emit("add", [y, bias])
    return as_sequence(ctx, apply_activation(ctx, y, args["activation"]))


@layer("conv1d_transpose",
       ArgSpec("filters", POSITIVE_INT), ArgSpec("kernel_size", _SIZE, aliases=("kernel",)),
       ArgSpec("strides", _SIZE, 1), ArgSpec("padding", choice(("valid", "same"), "padding"), "valid"),
       ArgSpec("output_padding", _OPTIONAL_COUNT, None),
       ArgSpec("dilation_rate", _SIZE, 1, aliases=("dilation",)),
       ArgSpec("activation", ACTIVATION, "linear"), ArgSpec("use_bias", BOOL, True),
       ArgSpec("kernel_initializer", INITIALIZER, Initializer("glorot_uniform")),
       ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
       ArgSpec("kernel_regularizer", REGULARIZER, None), ArgSpec("bias_regularizer", REGULARIZER, None),
       ArgSpec("name", NAME, None))
def _conv1d_transpose(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Transposed 1-D convolution (Keras' Conv1DTranspose), kernel (kernel_size, out, in): each step
    spreads a kernel-sized patch over an output `strides` times longer."""
    x = inputs[0]
    steps, channels = _steps(ctx, x)
    k, extra = args["kernel_size"], args["output_padding"]
    y = transposed_conv(ctx, as_image(ctx, x), (1, steps), channels, args, (1, k), (1, args["strides"]),
                        (1, args["dilation_rate"]), None if extra is None else (0, extra),
                        kernel_shape=(k, args["filters"], channels))
    return as_sequence(ctx, apply_activation(ctx, y, args["activation"]))


def _pool1d(kind: str, op: str) -> None:
    @layer(kind, ArgSpec("pool_size", _SIZE, 2, aliases=("pool",)), ArgSpec("strides", _OPTIONAL_SIZE, None),
           ArgSpec("padding", choice(("valid", "same"), "padding"), "valid"), ArgSpec("name", NAME, None),
           doc=f"{'Max' if op == 'maxpool2d' else 'Average'} pooling over steps (strides default to the window)")
    def lower(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
        x = inputs[0]
        steps, features = _steps(ctx, x)
        size = args["pool_size"]
        stride = args["strides"] if args["strides"] is not None else size
        _window_fits(ctx, steps, size, 1, args["padding"])
        pads, (_, out_steps) = _window_plan(kind, (1, steps), (1, size), (1, stride), (1, 1), args["padding"])
        attrs: dict[str, Any] = {"pool": (1, size), "strides": (1, stride), "padding": pads}
        if op == "avgpool2d":
            attrs["count_pad"] = False
        ctx.count(out_steps * features * size)
        return as_sequence(ctx, ctx.emit(op, [as_image(ctx, x)], **attrs))


_pool1d("maxpool1d", "maxpool2d")
_pool1d("avgpool1d", "avgpool2d")


def _global_pool1d(kind: str, op: str) -> None:
    @layer(kind, ArgSpec("name", NAME, None),
           doc=f"{'Maximum' if op == 'reduce_max' else 'Mean'} over steps: (N, T, C) -> (N, C)"
               + ("; a padding mask leaves out the padded steps" if op == "reduce_mean" else ""))
    def lower(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
        x = inputs[0]
        _steps(ctx, x)
        ctx.count(x.type.concrete_size())
        mask = ctx.input_masks[0] if ctx.input_masks else None
        if op == "reduce_mean" and mask is not None:  # Keras averages the real steps only
            n, steps, _ = x.type.shape
            keep = ctx.emit("reshape", [mask], shape=(n, steps, 1))
            total = ctx.emit("reduce_sum", [ctx.emit("mul", [x, keep])], axes=(1,), keepdims=False)
            count = ctx.emit("reduce_sum", [keep], axes=(1,), keepdims=False)
            # a row of padding alone averages to 0, not to 0/0, which would poison a whole training step
            return ctx.emit("div", [total, ctx.emit("maximum", [count, ctx.constant(1.0)])])
        return ctx.emit(op, [x], axes=(1,), keepdims=False)


_global_pool1d("global_avgpool1d", "reduce_mean")
_global_pool1d("global_maxpool1d", "reduce_max")


@layer("time_distributed", ArgSpec("layer", LAYER), ArgSpec("name", NAME, None), wrapper=True, keeps_mask=True,
       doc="Apply a layer or a block to every step of a sequence, with the same weights")
def _time_distributed(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    x = inputs[0]
    inner = args["layer"]
    kind = inner.call.callee
    if x.type.rank < 3:
        raise LayerError(f"time_distributed expects a sequence of steps (batch, steps, ...), got {x.type}",
                         [f"apply {kind} to the value itself: x -> {kind}(...)"])
    assert ctx.apply_layer is not None
    if x.type.rank == 3 and kind in (*RECURRENT, "bidirectional"):
        raise LayerError(f"time_distributed gives {kind} one step at a time, a vector of {x.type.shape[2]} "
                         f"features, not a sequence", [f"apply {kind} to the sequence itself: x -> {kind}(...)"])
    steps = ctx.emit("merge_batch", [x])
    records = ctx.builder.graph.layers
    first = len(records)
    per_step = ctx.apply_layer(inner, steps, f"{ctx.name}.{inner.call.callee}")
    # The layers inside run once per step of every sample: a sample costs steps times one step's FLOPs. The
    # summary shows them in the wrapper's row, as Keras does, since their own shapes are those of one step.
    prefix = f"{ctx.name}."
    records[first:] = [replace(r, name=r.name if r.name.startswith(prefix) else prefix + r.name,
                               flops=r.flops * x.type.shape[1]) for r in records[first:]]
    if isinstance(per_step, tuple):
        raise LayerError("time_distributed needs a layer with one result (no return_state)")
    return ctx.emit("split_batch", [per_step], batch=x.type.shape[0], steps=x.type.shape[1])


@layer("up_sampling1d", ArgSpec("size", POSITIVE_INT, 2), ArgSpec("name", NAME, None), aliases=("upsampling1d",))
def _up_sampling1d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' UpSampling1D: each step of a sequence (N, steps, features) repeated `size` times."""
    x = inputs[0]
    if x.type.rank != 3:
        raise LayerError(f"up_sampling1d expects a batch of sequences (N, steps, features), got {x.type}")
    return repeat_elements(ctx, x, 1, args["size"])


@layer("cropping1d", ArgSpec("cropping", CROPPING1D, (1, 1)), ArgSpec("name", NAME, None))
def _cropping1d(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' Cropping1D: steps cut from each sequence's start and end: an int (both ends) or [start, end]."""
    x = inputs[0]
    if x.type.rank != 3:
        raise LayerError(f"cropping1d expects a batch of sequences (N, steps, features), got {x.type}")
    start, end = args["cropping"]
    steps = x.type.shape[1]
    if start + end >= steps:
        raise LayerError(f"cropping1d cuts {start + end} steps from sequences of {steps} steps in {x.type}, leaving "
                         "none", [f"crop fewer than {steps} steps in all"])
    return ctx.emit("crop", [x], pads=((0, 0), (start, end), (0, 0)))


@layer("repeat_vector", ArgSpec("n", POSITIVE_INT), ArgSpec("name", NAME, None),
       doc="Repeat a vector n times: (N, F) -> (N, n, F), e.g. to feed a decoder")
def _repeat_vector(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    x = inputs[0]
    if x.type.rank != 2:
        raise LayerError(f"repeat_vector expects a batch of vectors (batch, features), got {x.type}",
                         ["flatten() or a global pooling layer gives one"])
    return ctx.emit("tile_steps", [x], steps=args["n"])
