"""Kernels for convolution, pooling and batch normalization (NHWC activations, HWIO kernels).

Everything is written against `ctx.xp` (numpy or cupy):

* convolution is im2col over a strided window view of the padded input followed by one GEMM;
* its input gradient is one GEMM followed by col2im, which adds one strided slice per kernel offset
  (kh * kw vectorized adds);
* its filter gradient is one GEMM against the same window view;
* pooling reduces over the per-offset strided slices of the padded input, and its gradients scatter
  back with the same per-offset strided adds. Max pooling sends each window's gradient to the first
  maximum in row-major order (argmax over the flattened window), as PyTorch and XLA do.
"""
from __future__ import annotations

from nnd.compiler.ops.conv import conv_layout, conv_params, pool_params, window_output_size
from nnd.runtime.kernel_table import kernel
from nnd.runtime.precision import wide_mean, wide_sum


# ---------------------------------------------------------------------------------------------------
# Helpers


def _pad(xp, x, padding, value):
    (top, bottom), (left, right) = padding
    if top == bottom == left == right == 0:
        return x
    return xp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), mode="constant", constant_values=value)


def _out_hw(hw, k, padding, strides, dilation=(1, 1)):
    return tuple(window_output_size(hw[a], padding[a], k[a], strides[a], dilation[a]) for a in (0, 1))


def _windows(xp, xpad, out_hw, k, strides, dilation, channels_last=True):
    """A read-only strided view of every window of `xpad` [N, Hp, Wp, C].

    channels_last: shape [N, Ho, Wo, kh, kw, C] (im2col rows in HWIO order); otherwise
    [N, Ho, Wo, C, kh, kw] (each window contiguous in row-major order once copied).
    """
    n, _, _, c = xpad.shape
    sn, sh, sw, sc = xpad.strides
    (ho, wo), (kh, kw) = out_hw, k
    (st_h, st_w), (dh, dw) = strides, dilation
    if channels_last:
        shape = (n, ho, wo, kh, kw, c)
        steps = (sn, sh * st_h, sw * st_w, sh * dh, sw * dw, sc)
    else:
        shape = (n, ho, wo, c, kh, kw)
        steps = (sn, sh * st_h, sw * st_w, sc, sh * dh, sw * dw)
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=steps)


# Below this many channels an im2col row is too short for the strided window copy: NumPy's per-row
# overhead dominates (for one channel, copying by kernel offset is eight times faster).
_FEW_CHANNELS = 4


def _columns(xp, xpad, out_hw, k, strides, dilation):
    """The im2col matrix [N*Ho*Wo, kh*kw*C] of `xpad` (rows in HWIO order), for one GEMM.

    With many channels, a reshape of the strided window view; with few, built offset by offset and
    channel by channel as its transpose, where every copy moves whole image rows.
    """
    n, _, _, c = xpad.shape
    (ho, wo), (kh, kw) = out_hw, k
    if c >= _FEW_CHANNELS:
        return _windows(xp, xpad, out_hw, k, strides, dilation).reshape(n * ho * wo, kh * kw * c)
    columns = xp.empty((kh, kw, c, n, ho, wo), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            cells = xpad[_offset_slice(i, j, out_hw, strides, dilation)]
            for channel in range(c):
                columns[i, j, channel] = cells[..., channel]
    return columns.reshape(kh * kw * c, n * ho * wo).T


def _offset_slice(i, j, out_hw, strides, dilation=(1, 1)):
    """The cells of the padded input that kernel offset (i, j) touches, one per output position."""
    (ho, wo), (st_h, st_w), (dh, dw) = out_hw, strides, dilation
    r0, c0 = i * dh, j * dw
    return (slice(None), slice(r0, r0 + st_h * (ho - 1) + 1, st_h), slice(c0, c0 + st_w * (wo - 1) + 1, st_w),
            slice(None))


def _crop(xp, xpad, padding, hw):
    (top, _), (left, _) = padding
    return xp.ascontiguousarray(xpad[:, top:top + hw[0], left:left + hw[1], :])


# ---------------------------------------------------------------------------------------------------
# Convolution


@kernel("conv2d")
def conv2d(ctx, attrs, x, w):
    xp = ctx.xp
    if conv_layout(attrs) == "NCHW":
        return _conv2d_nchw(xp, attrs, x, w)
    p = conv_params(attrs)
    kh, kw, c, f = w.shape
    n, h, wd, _ = x.shape
    out_hw = _out_hw((h, wd), (kh, kw), p.padding, p.strides, p.dilation)
    cols = _columns(xp, _pad(xp, x, p.padding, 0), out_hw, (kh, kw), p.strides, p.dilation)
    out = xp.matmul(cols, w.reshape(kh * kw * c, f))
    return out.reshape(n, out_hw[0], out_hw[1], f)


def _conv2d_nchw(xp, attrs, x, w):
    """The convolution of an NCHW input into an NCHW output: im2col as [N, C*kh*kw, Ho*Wo] columns (one
    strided view of the padded input, copied once) and a batched GEMM with the kernel as [F, C*kh*kw]."""
    p = conv_params(attrs)
    kh, kw, c, f = w.shape
    n, _, h, wd = x.shape
    (ho, wo) = _out_hw((h, wd), (kh, kw), p.padding, p.strides, p.dilation)
    (top, bottom), (left, right) = p.padding
    if top or bottom or left or right:
        x = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    sn, sc, sh, sw = x.strides
    (st_h, st_w), (dh, dw) = p.strides, p.dilation
    windows = xp.lib.stride_tricks.as_strided(x, (n, c, kh, kw, ho, wo),
                                              (sn, sc, sh * dh, sw * dw, sh * st_h, sw * st_w))
    columns = xp.ascontiguousarray(windows).reshape(n, c * kh * kw, ho * wo)
    kernel = w.transpose(3, 2, 0, 1).reshape(f, c * kh * kw)
    return xp.matmul(kernel, columns).reshape(n, f, ho, wo)


@kernel("conv2d_grad_input")
def conv2d_grad_input(ctx, attrs, dy, w):
    """col2im by kernel offset: for each (i, j), one GEMM dy @ w[i, j]^T gives that offset's contribution
    as a contiguous [N, Ho, Wo, C] block, added into the strided cells it came from. Against one big GEMM
    followed by a scatter of its [N, Ho, Wo, kh, kw, C] result, every add reads contiguous memory."""
    xp = ctx.xp
    p = conv_params(attrs, "conv2d_grad_input")
    h, wd = attrs["input_hw"]
    kh, kw, c, f = w.shape
    n, ho, wo, _ = dy.shape
    (top, bottom), (left, right) = p.padding
    rows = dy.reshape(n * ho * wo, f)
    dxpad = xp.zeros((n, h + top + bottom, wd + left + right, c), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            contribution = xp.matmul(rows, w[i, j].T).reshape(n, ho, wo, c)
            dxpad[_offset_slice(i, j, (ho, wo), p.strides, p.dilation)] += contribution
    return _crop(xp, dxpad, p.padding, (h, wd))


def grad_input_columns(xp, attrs, dy, w):
    """The pieces of the input gradient as col2im computes it: the columns dy @ w^T ([N*Ho*Wo, kh*kw*C],
    one GEMM), an uninitialized padded input for col2im to fill, and the geometry col2im needs (padded
    height and width, channels, output height and width, kernel size, strides, dilation)."""
    p = conv_params(attrs, "conv2d_grad_input")
    h, wd = attrs["input_hw"]
    kh, kw, c, f = w.shape
    n, ho, wo, _ = dy.shape
    (top, bottom), (left, right) = p.padding
    columns = xp.ascontiguousarray(xp.matmul(xp.ascontiguousarray(dy).reshape(n * ho * wo, f),
                                             xp.asarray(w, dtype=dy.dtype).reshape(kh * kw * c, f).T))
    padded = xp.empty((n, h + top + bottom, wd + left + right, c), dtype=dy.dtype)
    geometry = [padded.shape[1], padded.shape[2], c, ho, wo, kh, kw, *p.strides, *p.dilation]
    return columns, padded, geometry


def crop_input_gradient(xp, attrs, padded):
    """The padded input gradient cut back to the input's size."""
    return _crop(xp, padded, conv_params(attrs, "conv2d_grad_input").padding, tuple(attrs["input_hw"]))


@kernel("conv2d_grad_filter")
def conv2d_grad_filter(ctx, attrs, x, dy):
    xp = ctx.xp
    kh, kw = attrs["kernel_hw"]
    n, _, _, c = x.shape
    _, ho, wo, f = dy.shape
    cols = filter_gradient_columns(xp, attrs, x, (ho, wo))
    dw = xp.matmul(cols.T, dy.reshape(n * ho * wo, f))
    return dw.reshape(kh, kw, c, f)


def filter_gradient_columns(xp, attrs, x, out_hw):
    """The im2col matrix [N*Ho*Wo, kh*kw*C] of the input, for the filter gradient's product with dy."""
    p = conv_params(attrs, "conv2d_grad_filter")
    return _columns(xp, _pad(xp, x, p.padding, 0), out_hw, tuple(attrs["kernel_hw"]), p.strides, p.dilation)


# ---------------------------------------------------------------------------------------------------
# Pooling


def _pool_geometry(attrs, shape, op):
    p = pool_params(attrs, op)
    return p, _out_hw((shape[1], shape[2]), p.pool, p.padding, p.strides)


@kernel("maxpool2d")
def maxpool2d(ctx, attrs, x):
    xp = ctx.xp
    p, out_hw = _pool_geometry(attrs, x.shape, "maxpool2d")
    xpad = _pad(xp, x, p.padding, -xp.inf)
    out = None
    for i in range(p.pool[0]):
        for j in range(p.pool[1]):
            cells = xpad[_offset_slice(i, j, out_hw, p.strides)]
            if out is None:
                out = cells.copy()
            else:
                xp.maximum(out, cells, out=out)
    return out


@kernel("maxpool2d_grad")
def maxpool2d_grad(ctx, attrs, dy, x):
    """relu=True (the fuse-pool-grad pass) multiplies in relu_grad(., x): no gradient where x <= 0."""
    dx = _maxpool2d_grad(ctx.xp, attrs, dy, x)
    if attrs.get("relu"):
        dx *= x > 0
    return dx


def _maxpool2d_grad(xp, attrs, dy, x):
    p, out_hw = _pool_geometry(attrs, x.shape, "maxpool2d_grad")
    (ph, pw), (top, bottom), (left, right) = p.pool, *p.padding
    n, h, wd, c = x.shape
    xpad = _pad(xp, x, p.padding, -xp.inf)
    winner = _first_max_offsets(xp, xpad, out_hw, p)
    if p.strides == p.pool and (top, bottom, left, right) == (0, 0, 0, 0):
        return _tiled_maxpool_grad(xp, dy, winner, x.shape, p.pool)
    dxpad = xp.zeros((n, h + top + bottom, wd + left + right, c), dtype=dy.dtype)
    zero = xp.zeros((), dtype=dy.dtype)
    disjoint = p.strides[0] >= ph and p.strides[1] >= pw
    for i in range(ph):
        for j in range(pw):
            share = xp.where(winner == i * pw + j, dy, zero)
            cells = _offset_slice(i, j, out_hw, p.strides)
            if disjoint:
                dxpad[cells] = share  # no other window writes here: skip the read of an add
            else:
                dxpad[cells] += share
    return _crop(xp, dxpad, p.padding, (h, wd))


def _tiled_maxpool_grad(xp, dy, winner, shape, pool):
    """The gradient when windows tile the input (strides equal to the window, no padding): one
    broadcast multiply of the one-hot winner by dy writes every window of dx at once, through a 6-D view
    [N, Ho, ph, Wo, pw, C] of dx. Rows and columns past the last window keep their zero gradient."""
    n, h, wd, c = shape
    (ph, pw), (ho, wo) = pool, dy.shape[1:3]
    dx = xp.zeros(shape, dtype=dy.dtype) if (h, wd) != (ho * ph, wo * pw) else xp.empty(shape, dtype=dy.dtype)
    sn, sh, sw, sc = dx.strides
    tiles = xp.lib.stride_tricks.as_strided(dx, (n, ho, ph, wo, pw, c), (sn, sh * ph, sh, sw * pw, sw, sc))
    offsets = (xp.arange(ph)[:, None] * pw + xp.arange(pw)).astype(winner.dtype).reshape(1, 1, ph, 1, pw, 1)
    xp.multiply(winner[:, :, None, :, None, :] == offsets, dy[:, :, None, :, None, :], out=tiles)
    return dx


def _first_max_offsets(xp, xpad, out_hw, p):
    """Per output cell, the row-major index of the first maximum of its window.

    A running maximum over the window offsets, replacing the winner only on a strictly greater value,
    keeps the first of tied maxima; it works on output-sized arrays, where an argmax over a copied
    window view would pay for the copy and for NumPy's per-row overhead on a tiny last axis. The first
    NaN of a window wins it, as the forward pass's maximum propagates it (and as in PyTorch); windows
    are searched for NaNs only when some window's maximum is one.
    """
    ph, pw = p.pool
    index_type = xp.int8 if ph * pw < 128 else xp.int32
    best = xpad[_offset_slice(0, 0, out_hw, p.strides)].copy()
    winner = xp.zeros(best.shape, dtype=index_type)
    for offset in range(1, ph * pw):
        cells = xpad[_offset_slice(offset // pw, offset % pw, out_hw, p.strides)]
        better = (cells > best).astype(index_type)
        # Branch-free select: a masked copy mispredicts on every random tie pattern.
        winner += better * (index_type(offset) - winner)
        xp.maximum(best, cells, out=best)
    if xp.isnan(best).any():
        _first_nan_offsets(xp, xpad, out_hw, p, winner)
    return winner


def _first_nan_offsets(xp, xpad, out_hw, p, winner) -> None:
    """Point `winner` at the first NaN of each window that has one."""
    ph, pw = p.pool
    found = xp.zeros(winner.shape, dtype=bool)
    for offset in range(ph * pw):
        nan = xp.isnan(xpad[_offset_slice(offset // pw, offset % pw, out_hw, p.strides)]) & ~found
        winner[nan] = offset
        found |= nan


def _avg_divisor(xp, p, hw, out_hw, dtype):
    """What each window's sum is divided by: the window size, or (count_pad=False) its unpadded cells."""
    if p.count_pad:
        return dtype.type(p.pool[0] * p.pool[1])
    counts = []
    for axis in (0, 1):
        start = xp.arange(out_hw[axis]) * p.strides[axis] - p.padding[axis][0]
        end = xp.minimum(start + p.pool[axis], hw[axis])
        counts.append(end - xp.maximum(start, 0))
    return (counts[0][:, None] * counts[1][None, :]).astype(dtype)[:, :, None]


@kernel("avgpool2d")
def avgpool2d(ctx, attrs, x):
    xp = ctx.xp
    p, out_hw = _pool_geometry(attrs, x.shape, "avgpool2d")
    xpad = _pad(xp, x, p.padding, 0)
    total = None
    for i in range(p.pool[0]):
        for j in range(p.pool[1]):
            cells = xpad[_offset_slice(i, j, out_hw, p.strides)]
            if total is None:
                total = cells.copy()
            else:
                total += cells
    return total / _avg_divisor(xp, p, x.shape[1:3], out_hw, x.dtype)


@kernel("avgpool2d_grad")
def avgpool2d_grad(ctx, attrs, dy):
    xp = ctx.xp
    h, wd = attrs["input_hw"]
    n, ho, wo, c = dy.shape
    p = pool_params(attrs, "avgpool2d_grad")
    (top, bottom), (left, right) = p.padding
    share = dy / _avg_divisor(xp, p, (h, wd), (ho, wo), dy.dtype)
    dxpad = xp.zeros((n, h + top + bottom, wd + left + right, c), dtype=dy.dtype)
    for i in range(p.pool[0]):
        for j in range(p.pool[1]):
            dxpad[_offset_slice(i, j, (ho, wo), p.strides)] += share
    return _crop(xp, dxpad, p.padding, (h, wd))


# ---------------------------------------------------------------------------------------------------
# Batch normalization: statistics over every axis but the last, biased variance


def _reduce_axes(x):
    return tuple(range(x.ndim - 1))


@kernel("batchnorm_train")
def batchnorm_train(ctx, attrs, x, gamma, beta):
    xp = ctx.xp
    axes = _reduce_axes(x)
    mean = wide_mean(xp, x, axes)
    centered = x - mean
    var = wide_mean(xp, centered * centered, axes)
    inv = 1 / xp.sqrt(var + x.dtype.type(attrs["epsilon"]))
    y = centered * (gamma * inv) + beta
    if attrs.get("activation", "linear") == "relu":
        xp.maximum(y, 0, out=y)
    return y, mean, var


@kernel("batchnorm_train_grad")
def batchnorm_train_grad(ctx, attrs, dy, x, gamma, mean, var):
    xp = ctx.xp
    axes = _reduce_axes(x)
    count = x.size // x.shape[-1]
    inv = 1 / xp.sqrt(var + x.dtype.type(attrs["epsilon"]))
    xhat = (x - mean) * inv
    dbeta = wide_sum(xp, dy, axes)
    dgamma = wide_sum(xp, dy * xhat, axes)
    dx = (gamma * inv / count) * (count * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


@kernel("batchnorm_infer")
def batchnorm_infer(ctx, attrs, x, gamma, beta, moving_mean, moving_var):
    xp = ctx.xp
    scale = gamma / xp.sqrt(moving_var + x.dtype.type(attrs["epsilon"]))
    return (x - moving_mean) * scale + beta


@kernel("batchnorm_infer_grad")
def batchnorm_infer_grad(ctx, attrs, dy, x, gamma, moving_mean, moving_var):
    xp = ctx.xp
    axes = _reduce_axes(x)
    inv = 1 / xp.sqrt(moving_var + x.dtype.type(attrs["epsilon"]))
    dgamma = wide_sum(xp, dy * ((x - moving_mean) * inv), axes)
    return dy * (gamma * inv), dgamma, wide_sum(xp, dy, axes)
