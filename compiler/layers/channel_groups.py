"""Grouped and depthwise convolutions.

A group that reads one input channel (depthwise_conv2d, the first step of separable_conv2d, conv2d with
groups equal to its channels) is the `depthwise_conv2d` op, whose kernels make kh*kw multiply-adds per
output with no sum over channels. Wider groups, which are few and several channels wide, run as one
conv2d per group on a slice of the channels, joined by concat: exact FLOPs on the fast convolution
kernels, where a block-diagonal kernel would multiply them by the group count.
"""
from __future__ import annotations

from nnd.compiler.ir import Value
from nnd.compiler.layers.base import LayerContext, LayerError

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]


def depthwise(ctx: LayerContext, x: Value, kernel: Value, strides: Pair, dilation: Pair, pads: Pads) -> Value:
    """x (N, H, W, C) and kernel (kh, kw, C, dm) -> (N, Ho, Wo, C*dm), channel c*dm + m as in Keras:
    each input channel convolved with its own dm filters."""
    return ctx.emit("depthwise_conv2d", [x, kernel], strides=strides, padding=pads, dilation=dilation)


def grouped_conv2d(ctx: LayerContext, x: Value, kernel: Value, groups: int, strides: Pair, dilation: Pair,
                   pads: Pads) -> Value:
    """Keras' Conv2D with groups: x (N, H, W, C), kernel (kh, kw, C/G, F); group g maps its C/G input
    channels to output channels g*F/G .. (g+1)*F/G - 1. The caller checks that G divides C and F."""
    c = x.type.shape[3]
    kh, kw, width, filters = kernel.type.shape
    per_group = filters // groups
    if width == 1:  # one channel per group: the kernel's filters of channel c are c*dm + m, as depthwise's
        kernel_per_channel = ctx.emit("reshape", [kernel], shape=(kh, kw, c, per_group))
        return depthwise(ctx, x, kernel_per_channel, strides, dilation, pads)
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
