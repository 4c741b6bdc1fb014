"""Array-module kernels of the depthwise convolution (NumPy and CuPy alike): one strided view of the
padded input per kernel offset, multiplied by that offset's weights and summed in place. The NumPy
backend runs native loops instead where it has them (`kernels_native_depthwise`)."""
from __future__ import annotations

from nnd.compiler.ops.conv import conv_params
from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_conv import _crop, _offset_slice, _out_hw, _pad


def _geometry(attrs, x_hw, w, op):
    p = conv_params(attrs, op)
    return p, _out_hw(x_hw, w.shape[:2], p.padding, p.strides, p.dilation)


@kernel("depthwise_conv2d")
def depthwise_conv2d(ctx, attrs, x, w):
    xp = ctx.xp
    n, h, wd, c = x.shape
    kh, kw, _, dm = w.shape
    p, (ho, wo) = _geometry(attrs, (h, wd), w, "depthwise_conv2d")
    padded = _pad(xp, x, p.padding, 0)[..., None]          # [N, Hp, Wp, C, 1] against the offset's [C, dm]
    out = xp.zeros((n, ho, wo, c, dm), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out += padded[_offset_slice(i, j, (ho, wo), p.strides, p.dilation)] * w[i, j]
    return out.reshape(n, ho, wo, c * dm)


@kernel("depthwise_conv2d_grad_input")
def depthwise_conv2d_grad_input(ctx, attrs, dy, w):
    xp = ctx.xp
    n, ho, wo, _ = dy.shape
    kh, kw, c, dm = w.shape
    h, wd = attrs["input_hw"]
    p = conv_params(attrs, "depthwise_conv2d_grad_input")
    (top, bottom), (left, right) = p.padding
    grad = dy.reshape(n, ho, wo, c, dm)
    dxpad = xp.zeros((n, h + top + bottom, wd + left + right, c), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            cells = _offset_slice(i, j, (ho, wo), p.strides, p.dilation)
            dxpad[cells] += grad[..., 0] * w[i, j, :, 0] if dm == 1 else (grad * w[i, j]).sum(axis=-1)
    return _crop(xp, dxpad, p.padding, (h, wd))


@kernel("depthwise_conv2d_grad_filter")
def depthwise_conv2d_grad_filter(ctx, attrs, x, dy):
    xp = ctx.xp
    n, h, wd, c = x.shape
    _, ho, wo, channels = dy.shape
    kh, kw = attrs["kernel_hw"]
    dm = channels // c
    p = conv_params(attrs, "depthwise_conv2d_grad_filter")
    padded = _pad(xp, x, p.padding, 0)
    grad = dy.reshape(n * ho * wo, c, dm)
    dw = xp.empty((kh, kw, c, dm), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            taps = padded[_offset_slice(i, j, (ho, wo), p.strides, p.dilation)].reshape(n * ho * wo, c, 1)
            dw[i, j] = (taps * grad).sum(axis=0)
    return dw
