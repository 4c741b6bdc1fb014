"""The NumPy backend's kernels in native code (`csrc/`, loaded by `nnd.runtime.native`).

* LSTM and GRU scans (`scan_impl.h`) replace the NumPy loops of `kernels_recurrent` for Keras' default
  activations (the `LSTM_DEFAULT_PATHS` and `GRU_DEFAULT_PATHS` entries for numpy; for the GRU,
  reset_after): one C call per scan instead of a dozen NumPy calls per step.
* Max pooling and its gradient (`pool_impl.h`, numpy overrides of `maxpool2d` / `maxpool2d_grad`) read
  each window once, where NumPy passes over the input once per window offset.
* Adam's, momentum SGD's and RMSprop's updates over the optimizer's flat buffers in one pass
  (`optim_impl.h`), where NumPy makes six to a dozen.
* The matmul epilogue adds the bias and applies the activation in one pass (`conv_impl.h`).

This module also binds the library's functions for the other native kernel modules: the convolutions
(`kernels_native_conv`) and training batchnorm (`kernels_native_norm`). The batch is split between
threads. Results, saved tensors and gradients have the same layouts and meaning as the NumPy versions',
which run instead when the library is unavailable or the dtype is not float32/float64.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from nnd.runtime import kernels_conv, native
from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_basic import _matmul
from nnd.runtime.kernels_fused import _epilogue
from nnd.runtime.kernels_recurrent import (GRU_DEFAULT_PATHS, LSTM_DEFAULT_PATHS, _lstm_backward_default,
                                            _lstm_forward_default)
from nnd.runtime.optimizers import ADAM_UPDATES, RMSPROP_UPDATES, SGD_MOMENTUM_UPDATES

_SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_LONG, _POINTER = ctypes.c_long, ctypes.c_void_p
_SIGNATURES = {
    # steps, n, units, row_begin, row_end, x, x_step, x_row, h0, c0, kernel, rmask, hs, cs, gates, work
    "lstm_forward": [_LONG] * 5 + [_POINTER, _LONG, _LONG] + [_POINTER] * 8,
    # steps, n, units, row_begin, row_end, c0, kernel_t, rmask, cs, gates, dout, d_step, d_row, dh, dc, dgates,
    # dx, dx_step, dx_row
    "lstm_backward": [_LONG] * 5 + [_POINTER] * 5 + [_POINTER, _LONG, _LONG] + [_POINTER] * 4 + [_LONG, _LONG],
    # steps, n, units, row_begin, row_end, x, x_step, x_row, h0, kernel, bias, rmask, hs, gates, aux, rec, work
    "gru_forward": [_LONG] * 5 + [_POINTER, _LONG, _LONG] + [_POINTER] * 9,
    # steps, n, units, row_begin, row_end, h0, kernel_t, rmask, hs, gates, aux, dout, d_step, d_row, dh, drec,
    # dx, dx_step, dx_row, work
    "gru_backward": [_LONG] * 5 + [_POINTER] * 7 + [_LONG, _LONG] + [_POINTER] * 3 + [_LONG, _LONG, _POINTER],
    # depth, cols, b, ldb, out
    "pack_panels": [_LONG, _LONG, _POINTER, _LONG, _POINTER],
    "panel_width": [],
    # channels, begin, end, out, bias, activation
    "bias_activation": [_LONG, _LONG, _LONG, _POINTER, _POINTER, ctypes.c_int],
    # shape, begin, end, cols, dx
    "col2im": [_POINTER, _LONG, _LONG, _POINTER, _POINTER],
    # shape, begin, end, x, packed kernel, bias, activation, zeros, out
    "conv_forward": [_POINTER, _LONG, _LONG, _POINTER, _POINTER, _POINTER, ctypes.c_int, _POINTER, _POINTER],
    # shape, begin, end, x (dy), kernel, out (dx); and shape, begin, end, x, dy, dw
    "depthwise_forward": [_POINTER, _LONG, _LONG, _POINTER, _POINTER, _POINTER],
    "depthwise_grad_input": [_POINTER, _LONG, _LONG, _POINTER, _POINTER, _POINTER],
    "depthwise_grad_filter": [_POINTER, _LONG, _LONG, _POINTER, _POINTER, _POINTER],
    # shape, begin, end, x, dy, dw, ldw, scratch
    "conv_grad_filter": [_POINTER, _LONG, _LONG, _POINTER, _POINTER, _POINTER, _LONG, _POINTER],
    "conv_grad_filter_scratch": [_POINTER],
    # channels, begin, end, x, shift, sum, square_sum
    "channel_moments": [_LONG, _LONG, _LONG] + [_POINTER] * 4,
    # channels, begin, end, dy, x, shift, sum_dy, sum_dy_x
    "channel_dot": [_LONG, _LONG, _LONG] + [_POINTER] * 5,
    # channels, begin, end, u, a, v, b, k, relu, out
    "channel_affine": [_LONG, _LONG, _LONG] + [_POINTER] * 6 + [ctypes.c_int, _POINTER],
    # begin, end, p, g, m, v, alpha, beta_1, beta_2, epsilon
    "adam_update": [_LONG, _LONG] + [_POINTER] * 4 + [ctypes.c_double] * 4,
    # begin, end, p, g, m, lr, momentum, nesterov
    "sgd_momentum_update": [_LONG, _LONG] + [_POINTER] * 3 + [ctypes.c_double] * 2 + [ctypes.c_int],
    # begin, end, p, g, v, m, lr, rho, epsilon, momentum
    "rmsprop_update": [_LONG, _LONG] + [_POINTER] * 4 + [ctypes.c_double] * 4,
    # shape, begin, end, x, out
    "maxpool2d": [_POINTER, _LONG, _LONG, _POINTER, _POINTER],
    # shape, begin, end, x, dy, dx, relu, tiled
    "maxpool2d_grad": [_POINTER, _LONG, _LONG, _POINTER, _POINTER, _POINTER, ctypes.c_int, ctypes.c_int],
}
_bound: dict[tuple[int, str], Any] = {}


def native_function(base: str, dtype: Any):
    """The native `base` kernel for `dtype`, or None when the NumPy version must run."""
    suffix = _SUFFIXES.get(np.dtype(dtype))
    lib = native.library() if suffix else None
    if lib is None:
        return None
    key = (id(lib), f"{base}_{suffix}")
    fn = _bound.get(key)
    if fn is None:
        fn = getattr(lib, key[1])
        fn.argtypes = _SIGNATURES[base]
        fn.restype = _LONG if base in ("panel_width", "conv_grad_filter_scratch") else None
        _bound[key] = fn
    return fn


def packed_panels(matrix: np.ndarray, dtype: Any) -> np.ndarray:
    """`matrix` [depth, cols] in the column panels the native GEMM reads (`pack_panels`)."""
    matrix = np.ascontiguousarray(matrix, dtype=dtype)
    depth, cols = matrix.shape
    width = native_function("panel_width", dtype)()
    out = np.empty(-(-cols // width) * width * depth, dtype=dtype)
    native_function("pack_panels", dtype)(depth, cols, address(matrix), cols, address(out))
    return out


def address(array: np.ndarray | None) -> int | None:
    return None if array is None else array.__array_interface__["data"][0]


def _row_strided(array: np.ndarray, dtype: Any) -> np.ndarray:
    """`array` ([T, N, w]) as `dtype` with unit stride along its last axis, copied only when needed;
    the other two strides may be anything (negative for a reversed time axis, 0 for a broadcast)."""
    array = np.asarray(array, dtype=dtype)
    if array.strides[2] != array.itemsize or any(s % array.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    return array


def _element_strides(array: np.ndarray) -> tuple[int, int]:
    return array.strides[0] // array.itemsize, array.strides[1] // array.itemsize


def lstm_forward_native(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates) -> None:
    """`kernels_recurrent._lstm_forward_default` in one native call per thread."""
    fn = native_function("lstm_forward", hs.dtype)
    if fn is None:
        _lstm_forward_default(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates)
        return
    steps, n, units = hs.shape
    dt = hs.dtype
    xt = _row_strided(xt, dt)
    x_step, x_row = _element_strides(xt)
    h0, c0 = np.ascontiguousarray(h0, dtype=dt), np.ascontiguousarray(c0, dtype=dt)
    kernel = packed_panels(recurrent_kernel, dt)
    mask = None if rmask is None else np.ascontiguousarray(np.broadcast_to(rmask, (n, units)), dtype=dt)
    work = None if rmask is None else np.empty((n, units), dtype=dt)
    addresses = [address(a) for a in (h0, c0, kernel, mask, hs, cs, gates, work)]
    x = address(xt)
    native.run_rows(n, lambda begin, end: fn(steps, n, units, begin, end, x, x_step, x_row, *addresses))


def lstm_backward_native(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc, dgates, d_xproj_tm):
    """`kernels_recurrent._lstm_backward_default` in one native call per thread, writing `dgates` and
    the view `d_xproj_tm` of the projected inputs' gradient; returns (dh, dc), the gradients of the
    initial states."""
    fn = native_function("lstm_backward", cs.dtype)
    if fn is None or d_xproj_tm.strides[2] != d_xproj_tm.itemsize:
        return _lstm_backward_default(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc, dgates,
                                      d_xproj_tm)
    steps, n, units = cs.shape
    dt = cs.dtype
    c0 = np.ascontiguousarray(c0, dtype=dt)
    cs, gates = np.ascontiguousarray(cs), np.ascontiguousarray(gates)  # saved by the forward scan: no copy
    kernel_t = packed_panels(np.asarray(recurrent_kernel).T, dt)
    mask = None if rmask is None else np.ascontiguousarray(np.broadcast_to(rmask, (n, units)), dtype=dt)
    dh, dc = np.ascontiguousarray(dh, dtype=dt), np.ascontiguousarray(dc, dtype=dt)
    if dout_tm is not None:
        dout_tm = _row_strided(dout_tm, dt)
    d_step, d_row = _element_strides(dout_tm) if dout_tm is not None else (0, 0)
    before = [address(a) for a in (c0, kernel_t, mask, cs, gates, dout_tm)]
    after = [address(a) for a in (dh, dc, dgates, d_xproj_tm)]
    dx_strides = _element_strides(d_xproj_tm)
    native.run_rows(n, lambda begin, end: fn(steps, n, units, begin, end, *before, d_step, d_row, *after,
                                             *dx_strides))
    return dh, dc


LSTM_DEFAULT_PATHS["numpy"] = (lstm_forward_native, lstm_backward_native)


def gru_forward_native(xt, h0, recurrent_kernel, recurrent_bias, rmask, hs, gates, aux) -> bool:
    """The GRU scan (reset_after, default activations) in one native call per thread; False when the
    NumPy loop must run instead."""
    fn = native_function("gru_forward", hs.dtype)
    if fn is None:
        return False
    steps, n, units = hs.shape
    dt = hs.dtype
    xt = _row_strided(xt, dt)
    x_step, x_row = _element_strides(xt)
    h0 = np.ascontiguousarray(h0, dtype=dt)
    bias = np.ascontiguousarray(recurrent_bias, dtype=dt)
    mask = None if rmask is None else np.ascontiguousarray(np.broadcast_to(rmask, (n, units)), dtype=dt)
    kernel = packed_panels(recurrent_kernel, dt)
    scratch = np.empty((n, 3 * units), dtype=dt), np.empty((n, units), dtype=dt)
    # every array whose address goes to C stays referenced here until the call returns
    addresses = [address(a) for a in (h0, kernel, bias, mask, hs, gates, aux, *scratch)]
    x = address(xt)
    native.run_rows(n, lambda begin, end: fn(steps, n, units, begin, end, x, x_step, x_row, *addresses))
    return True


def gru_backward_native(h0, recurrent_kernel, rmask, hs, gates, aux, dout_tm, dh, drec, d_xproj_tm):
    """Backprop through `gru_forward_native`'s scan; the initial state's gradient, or None when the
    NumPy loop must run instead."""
    fn = native_function("gru_backward", hs.dtype)
    if fn is None or d_xproj_tm.strides[2] != d_xproj_tm.itemsize:
        return None
    steps, n, units = hs.shape
    dt = hs.dtype
    h0 = np.ascontiguousarray(h0, dtype=dt)
    mask = None if rmask is None else np.ascontiguousarray(np.broadcast_to(rmask, (n, units)), dtype=dt)
    dh = np.ascontiguousarray(dh, dtype=dt)
    if dout_tm is not None:
        dout_tm = _row_strided(dout_tm, dt)
    d_step, d_row = _element_strides(dout_tm) if dout_tm is not None else (0, 0)
    kernel_t = packed_panels(np.asarray(recurrent_kernel).T, dt)
    hs, gates, aux = (np.ascontiguousarray(a) for a in (hs, gates, aux))  # saved by the forward scan: no copy
    work = np.empty((n, units), dtype=dt)
    before = [address(a) for a in (h0, kernel_t, mask, hs, gates, aux, dout_tm)]
    outputs = [address(a) for a in (dh, drec, d_xproj_tm)]
    dx_strides, scratch = _element_strides(d_xproj_tm), address(work)
    native.run_rows(n, lambda begin, end: fn(steps, n, units, begin, end, *before, d_step, d_row, *outputs,
                                             *dx_strides, scratch))
    return dh


GRU_DEFAULT_PATHS["numpy"] = (gru_forward_native, gru_backward_native)


# ---------------------------------------------------------------------------------------------------
# Max pooling


class _PoolShape(ctypes.Structure):
    """The C struct pool_shape of `pool_impl.h`."""
    _fields_ = [(name, _LONG) for name in ("h", "w", "c", "out_h", "out_w", "pool_h", "pool_w", "stride_h",
                                           "stride_w", "top", "left")]


def _pool_shape(attrs, shape, op) -> tuple[_PoolShape, bool]:
    """The geometry for C, and whether the windows tile the input (strides equal to the window, no
    padding)."""
    p, (out_h, out_w) = kernels_conv._pool_geometry(attrs, shape, op)
    (top, bottom), (left, right) = p.padding
    geometry = _PoolShape(shape[1], shape[2], shape[3], out_h, out_w, *p.pool, *p.strides, top, left)
    return geometry, p.strides == p.pool and (top, bottom, left, right) == (0, 0, 0, 0)


@kernel("maxpool2d", backend="numpy")
def maxpool2d_native(ctx, attrs, x):
    fn = native_function("maxpool2d", x.dtype)
    if fn is None:
        return kernels_conv.maxpool2d(ctx, attrs, x)
    x = np.ascontiguousarray(x)
    geometry, _ = _pool_shape(attrs, x.shape, "maxpool2d")
    out = np.empty((x.shape[0], geometry.out_h, geometry.out_w, x.shape[3]), dtype=x.dtype)
    shape, source, target = ctypes.byref(geometry), address(x), address(out)
    native.run_rows(x.shape[0], lambda begin, end: fn(shape, begin, end, source, target), align=1)
    return out


@kernel("maxpool2d_grad", backend="numpy")
def maxpool2d_grad_native(ctx, attrs, dy, x):
    fn = native_function("maxpool2d_grad", x.dtype)
    if fn is None:
        return kernels_conv.maxpool2d_grad(ctx, attrs, dy, x)
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    geometry, tiled = _pool_shape(attrs, x.shape, "maxpool2d_grad")
    dx = np.empty_like(x) if tiled else np.zeros_like(x)
    shape, pointers, relu = ctypes.byref(geometry), [address(a) for a in (x, dy, dx)], int(bool(attrs.get("relu")))
    native.run_rows(x.shape[0], lambda begin, end: fn(shape, begin, end, *pointers, relu, int(tiled)), align=1)
    return dx


# ---------------------------------------------------------------------------------------------------
# The bias and activation epilogue (the convolutions' are in kernels_native_conv)

ACTIVATIONS = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3}  # the enum of nnd_native.c


def apply_epilogue(out, bias, activation: str):
    """activation(out + bias) in place: one native pass over a C-contiguous product whose last axis the
    bias runs along, NumPy's two passes otherwise (an NCHW bias, float16)."""
    fn = native_function("bias_activation", out.dtype)
    if fn is None or not out.flags.c_contiguous or out.ndim == 0 or bias.shape != (out.shape[-1],):
        return _epilogue(np, out, bias, activation)
    bias = np.ascontiguousarray(bias, dtype=out.dtype)
    channels = out.shape[-1]
    rows = out.size // channels if channels else 0
    target, source, code = address(out), address(bias), ACTIVATIONS[activation]
    native.run_rows(rows, lambda begin, end: fn(channels, begin, end, target, source, code), align=64)
    return out


@kernel("matmul_epilogue", backend="numpy")
def matmul_epilogue_native(ctx, attrs, a, b, bias):
    return apply_epilogue(_matmul(ctx, attrs, a, b), bias, attrs.get("activation", "linear"))


# ---------------------------------------------------------------------------------------------------
# Optimizer updates


def _flat_update(name: str, buffers: list, *scalars) -> bool:
    """Run the native update `name` over the optimizer's flat buffers (None: an absent one, passed as
    NULL) with `scalars` after them; False, leaving the update to the array ops, when it cannot."""
    p = buffers[0]
    fn = native_function(name, p.dtype)
    present = [a for a in buffers if a is not None]
    if fn is None or not all(a.flags.c_contiguous and a.dtype == p.dtype for a in present):
        return False
    pointers = [address(a) for a in buffers]
    native.run_rows(p.size, lambda begin, end: fn(begin, end, *pointers, *scalars), align=1024)
    return True


def adam_update_native(p, g, m, v, alpha: float, beta_1: float, beta_2: float, epsilon: float) -> bool:
    return _flat_update("adam_update", [p, g, m, v], alpha, beta_1, beta_2, epsilon)


def sgd_momentum_update_native(p, g, m, lr: float, momentum: float, nesterov: bool) -> bool:
    return _flat_update("sgd_momentum_update", [p, g, m], lr, momentum, int(nesterov))


def rmsprop_update_native(p, g, v, m, lr: float, rho: float, epsilon: float, momentum: float) -> bool:
    return _flat_update("rmsprop_update", [p, g, v, m], lr, rho, epsilon, momentum)


ADAM_UPDATES["numpy"] = adam_update_native
SGD_MOMENTUM_UPDATES["numpy"] = sgd_momentum_update_native
RMSPROP_UPDATES["numpy"] = rmsprop_update_native
