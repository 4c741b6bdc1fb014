"""Grouped and depthwise convolutions, lowered onto ops the IR already has (pad, reshape, crop, slice,
concat, mul, add, conv2d), so that autodiff, every backend (NumPy, native C, CuPy) and the optimizer passes
take them with no kernels of their own.

Three lowerings were weighed:

(a) one conv2d per group on a slice of the channels, joined by concat: exact FLOPs on the fast convolution
    kernels, but one convolution (and two gradient convolutions) per group, so a depthwise layer over 512
    channels would become some 1,500 tiny convolutions;
(b) a sum over the kh*kw taps of the window of (the input shifted to that tap) * (that tap's weights): exact
    FLOPs as crops of the padded input and multiply-adds, which fuse-elementwise joins into one pass;
    strides read each tap from a phase view (N, H/s, s, W/s, s, C) of the input, so nothing is computed at
    the positions a stride skips;
(c) one conv2d with a block-diagonal kernel: simple, but channels times the FLOPs of a depthwise layer.

Chosen: (b) when each group reads one input channel (depthwise_conv2d, the first step of separable_conv2d,
conv2d with groups equal to its channels), where (a) would multiply the nodes by the channel count; (a)
for the other groups, which are few and several channels wide, where (b) would also need a sum over the
channels of each group. Both cost memory passes that a fused kernel would not (a tap's crop, a group's
slice, and their gradients' pads); their FLOP counts are the convolution's own.
"""
from __future__ import annotations

from nnd.compiler.ir import Value
from nnd.compiler.layers.base import LayerContext, LayerError

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]


def depthwise_taps(ctx: LayerContext, x: Value, kernel: Value, strides: Pair, dilation: Pair,
                   pads: Pads) -> Value:
    """x (N, H, W, C) and kernel (kh, kw, C, dm) -> (N, Ho, Wo, C*dm), channel c*dm + m as in Keras:
    each input channel convolved with its own dm filters."""
    n, _, _, c = x.type.shape
    kh, kw, _, dm = kernel.type.shape
    view, blocks, (ho, wo) = _phase_view(ctx, x, (kh, kw), strides, dilation, pads)
    total: Value | None = None
    for i in range(kh):
        for j in range(kw):
            tap = _input_tap(ctx, view, blocks, (i * dilation[0], j * dilation[1]), strides, (ho, wo), dm)
            term = ctx.emit("mul", [tap, _kernel_tap(ctx, kernel, i, j)])
            total = term if total is None else ctx.emit("add", [total, term])
    assert total is not None
    if dm == 1:
        return total
    return ctx.emit("reshape", [total], shape=(n, ho, wo, c * dm))


def _phase_view(ctx: LayerContext, x: Value, kernel: Pair, strides: Pair, dilation: Pair,
                pads: Pads) -> tuple[Value, Pair, Pair]:
    """The padded input as (N, H'/sh, sh, W'/sw, sw, C): row r*sh + p of the padded input is block r,
    phase p. The bottom and right get zeros up to a multiple of the stride, which no tap reads.
    Returns the view, its block counts and the output size."""
    n, h, w, c = x.type.shape
    padded, blocks, out = [], [], []
    for extent, (before, after), k, s, d in zip((h, w), pads, kernel, strides, dilation):
        size = extent + before + after
        extra = -size % s
        padded.append((before, after + extra))
        blocks.append((size + extra) // s)
        out.append((size - (k - 1) * d - 1) // s + 1)
    if any(pair != (0, 0) for pair in padded):
        x = ctx.emit("pad", [x], pads=((0, 0), padded[0], padded[1], (0, 0)), value=0.0)
    view = ctx.emit("reshape", [x], shape=(n, blocks[0], strides[0], blocks[1], strides[1], c))
    return view, (blocks[0], blocks[1]), (out[0], out[1])


def _input_tap(ctx: LayerContext, view: Value, blocks: Pair, offset: Pair, strides: Pair, out: Pair,
               dm: int) -> Value:
    """The inputs that the window tap at `offset` (rows, columns into the padded input) meets at every output
    position: padded row o*s + offset is block o + offset // s, phase offset % s. (N, Ho, Wo, C), or
    (N, Ho, Wo, C, 1) to broadcast against the tap's (C, dm) weights."""
    n, _, _, _, _, c = view.type.shape
    crops = [(0, 0)]
    for count, off, s, o in zip(blocks, offset, strides, out):
        first, phase = divmod(off, s)
        crops += [(first, count - first - o), (phase, s - phase - 1)]
    crops.append((0, 0))
    tap = ctx.emit("crop", [view], pads=tuple(crops)) if any(p != (0, 0) for p in crops) else view
    shape = (n, out[0], out[1], c) if dm == 1 else (n, out[0], out[1], c, 1)
    return ctx.emit("reshape", [tap], shape=shape)


def _kernel_tap(ctx: LayerContext, kernel: Value, i: int, j: int) -> Value:
    """The weights of tap (i, j): (C,) when dm is 1, else (C, dm)."""
    kh, kw, c, dm = kernel.type.shape
    crops = ((i, kh - 1 - i), (j, kw - 1 - j), (0, 0), (0, 0))
    tap = ctx.emit("crop", [kernel], pads=crops) if (kh, kw) != (1, 1) else kernel
    return ctx.emit("reshape", [tap], shape=(c,) if dm == 1 else (c, dm))


def grouped_conv2d(ctx: LayerContext, x: Value, kernel: Value, groups: int, strides: Pair, dilation: Pair,
                   pads: Pads) -> Value:
    """Keras' Conv2D with groups: x (N, H, W, C), kernel (kh, kw, C/G, F); group g maps its C/G input
    channels to output channels g*F/G .. (g+1)*F/G - 1. The caller checks that G divides C and F."""
    c = x.type.shape[3]
    kh, kw, width, filters = kernel.type.shape
    per_group = filters // groups
    if width == 1:  # one channel per group: the kernel's filters of channel c are c*dm + m, as depthwise's
        depthwise = ctx.emit("reshape", [kernel], shape=(kh, kw, c, per_group))
        return depthwise_taps(ctx, x, depthwise, strides, dilation, pads)
    parts = []
    for g in range(groups):
        xg = ctx.emit("slice", [x], axis=3, start=g * width, stop=(g + 1) * width)
        kg = ctx.emit("slice", [kernel], axis=3, start=g * per_group, stop=(g + 1) * per_group)
        parts.append(ctx.emit("conv2d", [xg, kg], strides=strides, padding=pads, dilation=dilation))
    return ctx.emit("concat", parts, axis=3)


def check_groups(kind: str, channels: int, filters: int, groups: int) -> None:
    """Keras' rule: every group takes as many input channels as the others and makes as many filters."""
    for count, what in ((channels, "input channels"), (filters, "filters")):
        if count % groups:
            raise LayerError(f"{kind} groups={groups} does not divide its {count} {what}",
                             [f"groups must divide both the input channels ({channels}) and filters ({filters})"])
