"""The depthwise convolution's kernels: the native loops and the array-module ones against PyTorch's
grouped convolution (groups = channels) in float64, forward and both gradients, over strides, pads,
dilations and depth multipliers, and float32 against float64."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from nnd.runtime import kernels_depthwise, kernels_native_depthwise
from nnd.runtime.kernel_table import KernelContext

torch = pytest.importorskip("torch")  # the independent reference

HAS_COMPILER = shutil.which(os.environ.get("CC") or "cc") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")

CASES = [  # x shape, (kh, kw, dm), strides, pads ((top, bottom), (left, right)), dilation
    ((2, 7, 6, 3), (3, 3, 1), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((3, 8, 9, 4), (3, 2, 2), (2, 2), ((0, 1), (1, 0)), (1, 1)),
    ((1, 9, 7, 2), (2, 3, 3), (1, 1), ((2, 0), (0, 3)), (2, 3)),
    ((2, 5, 5, 5), (5, 5, 1), (3, 1), ((2, 2), (2, 2)), (1, 1)),
    ((4, 6, 4, 1), (1, 1, 4), (1, 2), ((0, 0), (0, 0)), (1, 1)),
]


def _attrs(strides, pads, dilation):
    return {"strides": strides, "padding": pads, "dilation": dilation}


def _reference(x, w, strides, pads, dilation):
    """PyTorch's output, and its gradients for the output gradient g, all NHWC."""
    (top, bottom), (left, right) = pads
    c, dm = w.shape[2], w.shape[3]
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w.transpose(2, 3, 0, 1).reshape(c * dm, 1, *w.shape[:2]), requires_grad=True)
    padded = torch.nn.functional.pad(xt, (left, right, top, bottom))
    out = torch.nn.functional.conv2d(padded, wt, stride=strides, dilation=dilation, groups=c)
    g = np.random.default_rng(9).normal(size=out.shape)
    out.backward(torch.tensor(g))
    dw = wt.grad.numpy().reshape(c, dm, *w.shape[:2]).transpose(2, 3, 0, 1)
    return (out.detach().numpy().transpose(0, 2, 3, 1), g.transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1),
            dw)


def _kernels(native_path: bool):
    if native_path:
        return (kernels_native_depthwise.depthwise_conv2d_native,
                kernels_native_depthwise.depthwise_conv2d_grad_input_native,
                kernels_native_depthwise.depthwise_conv2d_grad_filter_native)
    return (kernels_depthwise.depthwise_conv2d, kernels_depthwise.depthwise_conv2d_grad_input,
            kernels_depthwise.depthwise_conv2d_grad_filter)


@pytest.mark.parametrize("native_path", [pytest.param(True, marks=needs_compiler), False], ids=["native", "array"])
@pytest.mark.parametrize("shape, kernel, strides, pads, dilation", CASES)
def test_kernels_match_torch_grouped_convolution(native_path, shape, kernel, strides, pads, dilation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    w = rng.normal(size=(kernel[0], kernel[1], shape[3], kernel[2]))
    want, g, want_dx, want_dw = _reference(x, w, strides, pads, dilation)
    forward, grad_input, grad_filter = _kernels(native_path)
    ctx = KernelContext(np, np.random.default_rng(0), np.float64)
    attrs = _attrs(strides, pads, dilation)
    got = forward(ctx, attrs, x, w)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dx = grad_input(ctx, {**attrs, "input_hw": shape[1:3]}, np.ascontiguousarray(g), w)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    dw = grad_filter(ctx, {**attrs, "kernel_hw": kernel[:2]}, x, np.ascontiguousarray(g))
    np.testing.assert_allclose(dw, want_dw, rtol=1e-11, atol=1e-11)


@needs_compiler
def test_float32_native_kernels_agree_with_float64():
    shape, kernel, strides, pads, dilation = CASES[1]
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=shape), rng.normal(size=(kernel[0], kernel[1], shape[3], kernel[2]))
    ctx = KernelContext(np, np.random.default_rng(0), np.float32)
    forward = kernels_native_depthwise.depthwise_conv2d_native
    attrs = _attrs(strides, pads, dilation)
    single = forward(ctx, attrs, x.astype(np.float32), w.astype(np.float32))
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, forward(ctx, attrs, x, w), rtol=1e-5, atol=1e-5)
