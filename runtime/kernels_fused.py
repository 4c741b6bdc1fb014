"""Kernels of the fused ops (nnd.compiler.ops.fused): the product's kernel, then the epilogue in place."""
from __future__ import annotations

from nnd.compiler.ops.conv import conv_layout
from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_basic import _matmul
from nnd.runtime.kernels_conv import conv2d


def _epilogue(xp, out, bias, activation: str):
    out += bias
    if activation == "relu":
        xp.maximum(out, 0, out=out)
    elif activation == "tanh":
        xp.tanh(out, out=out)
    elif activation == "sigmoid":  # 0.5 * tanh(x / 2) + 0.5: stable, and in place
        out *= 0.5
        xp.tanh(out, out=out)
        out *= 0.5
        out += 0.5
    return out


def channel_bias(attrs, bias):
    """The bias shaped to broadcast along the channels of the convolution's layout."""
    return bias.reshape(1, -1, 1, 1) if conv_layout(attrs) == "NCHW" else bias


@kernel("conv2d_epilogue")
def conv2d_epilogue(ctx, attrs, x, w, bias):
    return _epilogue(ctx.xp, conv2d(ctx, attrs, x, w), channel_bias(attrs, bias), attrs.get("activation", "linear"))


@kernel("matmul_epilogue")
def matmul_epilogue(ctx, attrs, a, b, bias):
    return _epilogue(ctx.xp, _matmul(ctx, attrs, a, b), bias, attrs.get("activation", "linear"))
