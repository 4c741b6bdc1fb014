"""Convolution, pooling and batch normalization: kernels against loop references, PyTorch and finite
differences; shape rules, gradient rules and their error messages."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnd.compiler.builder import GraphBuilder
from nnd.compiler.ir import Graph
from nnd.compiler.ops import NOT_DIFFERENTIABLE, Fusion, get_op
from nnd.compiler.tensor_type import ShapeError, TensorType
from nnd.runtime import kernels_conv  # noqa: F401  (registers the kernels)
from nnd.runtime.kernel_table import KernelContext, kernels_for

KERNELS = kernels_for("numpy")
CTX = KernelContext(np, np.random.default_rng(0), np.float64)

MY_OPS = ["conv2d", "conv2d_grad_input", "conv2d_grad_filter", "maxpool2d", "maxpool2d_grad", "avgpool2d",
          "avgpool2d_grad", "batchnorm_train", "batchnorm_train_grad", "batchnorm_infer", "batchnorm_infer_grad"]


def run(op, attrs, *inputs):
    return KERNELS[op](CTX, attrs, *inputs)


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------
# Plain loop references, written without padding arrays or window views


def ref_conv2d(x, w, strides, padding, dilation):
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    (sh, sw), ((top, bottom), (left, right)), (dh, dw) = strides, padding, dilation
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, ho, wo, f), dtype=np.float64)
    for b, oy, ox, i, j in itertools.product(range(n), range(ho), range(wo), range(kh), range(kw)):
        r, col = oy * sh + i * dh - top, ox * sw + j * dw - left
        if 0 <= r < h and 0 <= col < wd:
            for ci in range(c):
                out[b, oy, ox, :] += x[b, r, col, ci] * w[i, j, ci, :]
    return out


def _pool_cells(h, wd, oy, ox, pool, strides, padding):
    """The in-range input cells of one window, row-major."""
    for i in range(pool[0]):
        for j in range(pool[1]):
            r, col = oy * strides[0] + i - padding[0][0], ox * strides[1] + j - padding[1][0]
            yield i, j, r, col, (0 <= r < h and 0 <= col < wd)


def _pool_out_size(h, wd, pool, strides, padding):
    ho = (h + sum(padding[0]) - pool[0]) // strides[0] + 1
    wo = (wd + sum(padding[1]) - pool[1]) // strides[1] + 1
    return ho, wo


def ref_maxpool2d(x, dy, pool, strides, padding):
    """Forward, and the gradient given dy (first maximum of each window in row-major order)."""
    n, h, wd, c = x.shape
    ho, wo = _pool_out_size(h, wd, pool, strides, padding)
    out = np.zeros((n, ho, wo, c))
    dx = np.zeros_like(x, dtype=np.float64)
    for b, oy, ox, ch in itertools.product(range(n), range(ho), range(wo), range(c)):
        best, where = -np.inf, None
        for _, _, r, col, inside in _pool_cells(h, wd, oy, ox, pool, strides, padding):
            if inside and x[b, r, col, ch] > best:
                best, where = x[b, r, col, ch], (r, col)
        out[b, oy, ox, ch] = best
        if dy is not None and where is not None:
            dx[b, where[0], where[1], ch] += dy[b, oy, ox, ch]
    return out, dx


def ref_avgpool2d(x, dy, pool, strides, padding, count_pad):
    n, h, wd, c = x.shape
    ho, wo = _pool_out_size(h, wd, pool, strides, padding)
    out = np.zeros((n, ho, wo, c))
    dx = np.zeros_like(x, dtype=np.float64)
    for b, oy, ox, ch in itertools.product(range(n), range(ho), range(wo), range(c)):
        cells = [(r, col) for _, _, r, col, inside in _pool_cells(h, wd, oy, ox, pool, strides, padding) if inside]
        count = pool[0] * pool[1] if count_pad else len(cells)
        out[b, oy, ox, ch] = sum(x[b, r, col, ch] for r, col in cells) / count
        if dy is not None:
            for r, col in cells:
                dx[b, r, col, ch] += dy[b, oy, ox, ch] / count
    return out, dx


def ref_batchnorm_train(x, gamma, beta, eps):
    flat = x.reshape(-1, x.shape[-1])
    m, c = flat.shape
    y = np.zeros_like(flat, dtype=np.float64)
    mean, var = np.zeros(c), np.zeros(c)
    for ch in range(c):
        total = 0.0
        for k in range(m):
            total += flat[k, ch]
        mean[ch] = total / m
        sq = 0.0
        for k in range(m):
            sq += (flat[k, ch] - mean[ch]) ** 2
        var[ch] = sq / m
        for k in range(m):
            y[k, ch] = gamma[ch] * (flat[k, ch] - mean[ch]) / np.sqrt(var[ch] + eps) + beta[ch]
    return y.reshape(x.shape), mean, var


# ---------------------------------------------------------------------------------------------------
# Finite differences


def numeric_grad(f, args, which, weights, eps=1e-6):
    """d/d args[which] of sum(f(*args) * weights), by central differences (float64)."""
    args = [a.copy() for a in args]
    target = args[which]
    grad = np.zeros_like(target)
    for index in np.ndindex(target.shape):
        saved = target[index]
        target[index] = saved + eps
        plus = np.sum(f(*args) * weights)
        target[index] = saved - eps
        minus = np.sum(f(*args) * weights)
        target[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def assert_rel_close(actual, expected, tol=1e-6):
    scale = max(np.max(np.abs(expected)), 1e-12)
    error = np.max(np.abs(actual - expected)) / scale
    assert error < tol, f"relative error {error:.3g}"


# ---------------------------------------------------------------------------------------------------
# conv2d

CONV_CASES = [
    # (N, H, W, C, kh, kw, F, strides, padding, dilation)
    (2, 6, 7, 3, 3, 3, 4, (1, 1), ((0, 0), (0, 0)), (1, 1)),   # valid
    (2, 6, 7, 3, 3, 3, 4, (1, 1), ((1, 1), (1, 1)), (1, 1)),   # same
    (2, 7, 6, 1, 3, 2, 5, (2, 2), ((0, 1), (0, 0)), (1, 1)),   # asymmetric 'same', stride 2, one channel
    (2, 6, 6, 2, 4, 4, 3, (2, 2), ((1, 2), (2, 1)), (1, 1)),   # even kernel, asymmetric both ways
    (1, 8, 8, 2, 3, 3, 3, (1, 1), ((2, 2), (2, 2)), (2, 2)),   # dilation 2, same
    (2, 9, 7, 4, 2, 3, 2, (2, 1), ((1, 0), (0, 2)), (2, 1)),   # mixed strides/dilation, unused rows
    (3, 5, 5, 6, 1, 1, 6, (1, 1), ((0, 0), (0, 0)), (1, 1)),   # 1x1
    (1, 5, 6, 2, 5, 6, 3, (1, 1), ((0, 0), (0, 0)), (1, 1)),   # kernel as large as the input
    (2, 7, 7, 5, 3, 3, 8, (2, 2), ((1, 1), (1, 1)), (2, 2)),   # stride 2 with dilation 2
]


def conv_case(case, seed=0, dtype=np.float64):
    n, h, wd, c, kh, kw, f, strides, padding, dilation = case
    r = rng(seed)
    x = r.standard_normal((n, h, wd, c)).astype(dtype)
    w = r.standard_normal((kh, kw, c, f)).astype(dtype)
    attrs = {"strides": strides, "padding": padding, "dilation": dilation}
    return x, w, attrs


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_loop_reference(case):
    x, w, attrs = conv_case(case)
    y = run("conv2d", attrs, x, w)
    expected = ref_conv2d(x, w, attrs["strides"], attrs["padding"], attrs["dilation"])
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients_match_finite_differences(case):
    x, w, attrs = conv_case(case, seed=1)
    y = run("conv2d", attrs, x, w)
    dy = rng(2).standard_normal(y.shape)
    dx = run("conv2d_grad_input", {**attrs, "input_hw": x.shape[1:3]}, dy, w)
    dw = run("conv2d_grad_filter", {**attrs, "kernel_hw": w.shape[:2]}, x, dy)
    forward = lambda a, b: run("conv2d", attrs, a, b)  # noqa: E731
    assert dx.shape == x.shape and dw.shape == w.shape
    assert_rel_close(dx, numeric_grad(forward, [x, w], 0, dy))
    assert_rel_close(dw, numeric_grad(forward, [x, w], 1, dy))


@pytest.mark.parametrize("channels", [1, 6])  # im2col built transposed (few channels) or as a window view
def test_the_gpu_filter_gradient_split_over_image_groups_matches_one_product(channels):
    from nnd.runtime import kernels_cupy_conv

    case = (32, 13, 13, channels, 3, 3, 4, (1, 1), ((1, 1), (1, 1)), (1, 1))
    x, w, attrs = conv_case(case, seed=4)
    dy = rng(5).standard_normal(run("conv2d", attrs, x, w).shape)
    attrs = {**attrs, "kernel_hw": w.shape[:2]}
    assert kernels_cupy_conv.split_groups(32, 13 * 13) == 2
    split = kernels_cupy_conv.conv2d_grad_filter_cuda(CTX, attrs, x, dy)
    np.testing.assert_allclose(split, run("conv2d_grad_filter", attrs, x, dy), rtol=1e-12, atol=1e-12)


def test_the_filter_gradient_split_keeps_groups_of_whole_images():
    from nnd.runtime.kernels_cupy_conv import SPLIT_ROWS, split_groups

    assert split_groups(128, 26 * 26) == 32  # 4 images of 676 positions: 2,704 >= SPLIT_ROWS
    assert split_groups(512, 11 * 11) == 16  # 32 images (17 do not divide 512)
    assert split_groups(32, 11 * 11) == 1  # the whole batch is the first group large enough
    assert split_groups(7, SPLIT_ROWS) == 7 and split_groups(3, 1) == 1


def test_conv2d_unused_input_rows_get_zero_gradient():
    # H=6, kernel 3, stride 2, no padding: rows 0..4 are read, row 5 never is.
    x, w, attrs = conv_case((1, 6, 6, 2, 3, 3, 2, (2, 2), ((0, 0), (0, 0)), (1, 1)))
    dy = np.ones((1, 2, 2, 2))
    dx = run("conv2d_grad_input", {**attrs, "input_hw": (6, 6)}, dy, w)
    assert np.all(dx[:, 5, :, :] == 0) and np.all(dx[:, :, 5, :] == 0)
    assert np.any(dx[:, 4, :, :] != 0)


def test_conv2d_defaults_and_float32():
    x, w, _ = conv_case(CONV_CASES[0], dtype=np.float32)
    y = run("conv2d", {}, x, w)
    assert y.dtype == np.float32
    expected = ref_conv2d(x.astype(np.float64), w.astype(np.float64), (1, 1), ((0, 0), (0, 0)), (1, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    dy = np.ones(y.shape, np.float32)
    assert run("conv2d_grad_input", {"input_hw": (6, 7)}, dy, w).dtype == np.float32
    assert run("conv2d_grad_filter", {"kernel_hw": (3, 3)}, x, dy).dtype == np.float32


def test_conv2d_non_contiguous_input():
    x, w, attrs = conv_case(CONV_CASES[3])
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # same values, other strides
    assert not xt.flags.c_contiguous
    np.testing.assert_allclose(run("conv2d", attrs, xt, w), run("conv2d", attrs, x, w), rtol=1e-13)


# ---------------------------------------------------------------------------------------------------
# Pooling

POOL_CASES = [
    # (pool, strides, padding)
    ((3, 3), (2, 2), ((0, 0), (0, 0))),   # overlapping windows
    ((3, 3), (2, 2), ((1, 1), (1, 1))),   # overlapping, padded
    ((2, 2), (2, 2), ((0, 1), (0, 1))),   # Keras 'same' on an odd size
    ((2, 3), (1, 2), ((1, 0), (0, 1))),   # rectangular, asymmetric
    ((3, 3), (1, 1), ((1, 1), (1, 1))),   # stride 1 'same'
]


def distinct_input(shape, seed):
    """Values at least 0.01 apart, so finite differences never cross a change of maximum."""
    values = rng(seed).permutation(int(np.prod(shape))).astype(np.float64) * 0.01
    return values.reshape(shape)


def pool_attrs(case, **extra):
    pool, strides, padding = case
    return {"pool": pool, "strides": strides, "padding": padding, **extra}


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool2d_forward_and_grad_match_loop_reference(case):
    x = rng(3).standard_normal((2, 7, 6, 3))
    attrs = pool_attrs(case)
    y = run("maxpool2d", attrs, x)
    dy = rng(4).standard_normal(y.shape)
    ref_y, ref_dx = ref_maxpool2d(x, dy, *case)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_allclose(run("maxpool2d_grad", attrs, dy, x), ref_dx, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool2d_grad_matches_finite_differences(case):
    x = distinct_input((2, 7, 6, 2), seed=5)
    attrs = pool_attrs(case)
    y = run("maxpool2d", attrs, x)
    dy = rng(6).standard_normal(y.shape)
    dx = run("maxpool2d_grad", attrs, dy, x)
    assert_rel_close(dx, numeric_grad(lambda a: run("maxpool2d", attrs, a), [x], 0, dy))


def test_maxpool2d_ties_go_to_first_maximum():
    # Flat background with one bright patch: most windows are all-equal.
    x = np.zeros((1, 7, 7, 2))
    x[0, 3:5, 2:4, 0] = 1.0
    x[0, :, :, 1] = 0.5
    for case in [((3, 3), (2, 2), ((0, 0), (0, 0))), ((2, 2), (2, 2), ((0, 1), (0, 1))),
                 ((3, 3), (1, 1), ((1, 1), (1, 1)))]:
        attrs = pool_attrs(case)
        y = run("maxpool2d", attrs, x)
        dy = rng(7).standard_normal(y.shape)
        _, ref_dx = ref_maxpool2d(x, dy, *case)
        np.testing.assert_allclose(run("maxpool2d_grad", attrs, dy, x), ref_dx, rtol=1e-13, atol=1e-13)
    # stride 2, window 2, no padding: each window's top-left cell takes the whole gradient
    attrs = pool_attrs(((2, 2), (2, 2), ((0, 0), (0, 0))))
    ones = np.ones((1, 4, 4, 1))
    dx = run("maxpool2d_grad", attrs, np.ones((1, 2, 2, 1)), ones)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_maxpool2d_padding_never_wins():
    x = -np.ones((1, 3, 3, 1)) * np.arange(1, 10).reshape(1, 3, 3, 1)  # all negative
    attrs = pool_attrs(((2, 2), (2, 2), ((1, 0), (1, 0))))
    y = run("maxpool2d", attrs, x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -2], [-4, -5]])
    dx = run("maxpool2d_grad", attrs, np.ones_like(y), x)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("count_pad", [True, False])
@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool2d_matches_loop_reference_and_finite_differences(case, count_pad):
    x = rng(8).standard_normal((2, 7, 6, 3))
    attrs = pool_attrs(case, count_pad=count_pad)
    y = run("avgpool2d", attrs, x)
    dy = rng(9).standard_normal(y.shape)
    ref_y, ref_dx = ref_avgpool2d(x, dy, *case, count_pad)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    dx = run("avgpool2d_grad", {**attrs, "input_hw": (7, 6)}, dy)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    assert_rel_close(dx, numeric_grad(lambda a: run("avgpool2d", attrs, a), [x], 0, dy))


def test_pooling_float32_keeps_dtype():
    x = rng(10).standard_normal((2, 5, 5, 2)).astype(np.float32)
    attrs = pool_attrs(((2, 2), (2, 2), ((0, 1), (0, 1))), count_pad=False)
    for op in ("maxpool2d", "avgpool2d"):
        y = run(op, attrs, x)
        assert y.dtype == np.float32
    assert run("maxpool2d_grad", attrs, y, x).dtype == np.float32
    assert run("avgpool2d_grad", {**attrs, "input_hw": (5, 5)}, y).dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# Batch normalization

BN_SHAPES = [(6, 4), (3, 4, 5, 2)]


def bn_inputs(shape, seed):
    r = rng(seed)
    x = r.standard_normal(shape) * 2.0 + 0.5
    c = shape[-1]
    return x, r.standard_normal(c) + 1.0, r.standard_normal(c), r.standard_normal(c), r.random(c) + 0.5


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_train_matches_loop_reference(shape):
    x, gamma, beta, _, _ = bn_inputs(shape, 11)
    y, mean, var = run("batchnorm_train", {"epsilon": 1e-3}, x, gamma, beta)
    ry, rmean, rvar = ref_batchnorm_train(x, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, rmean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, rvar, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_train_grad_matches_finite_differences(shape):
    x, gamma, beta, _, _ = bn_inputs(shape, 12)
    attrs = {"epsilon": 1e-3}
    y, mean, var = run("batchnorm_train", attrs, x, gamma, beta)
    dy = rng(13).standard_normal(y.shape)
    grads = run("batchnorm_train_grad", attrs, dy, x, gamma, mean, var)
    forward = lambda *a: run("batchnorm_train", attrs, *a)[0]  # noqa: E731
    for which, grad in enumerate(grads):
        assert_rel_close(grad, numeric_grad(forward, [x, gamma, beta], which, dy, eps=1e-5))


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_infer_and_grad(shape):
    x, gamma, beta, mm, mv = bn_inputs(shape, 14)
    attrs = {"epsilon": 1e-3}
    y = run("batchnorm_infer", attrs, x, gamma, beta, mm, mv)
    flat = x.reshape(-1, shape[-1])
    expected = np.array([[gamma[c] * (flat[k, c] - mm[c]) / np.sqrt(mv[c] + 1e-3) + beta[c]
                          for c in range(shape[-1])] for k in range(flat.shape[0])]).reshape(shape)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    dy = rng(15).standard_normal(shape)
    grads = run("batchnorm_infer_grad", attrs, dy, x, gamma, mm, mv)
    forward = lambda a, b, c: run("batchnorm_infer", attrs, a, b, c, mm, mv)  # noqa: E731
    for which, grad in enumerate(grads):
        assert_rel_close(grad, numeric_grad(forward, [x, gamma, beta], which, dy, eps=1e-5))


def test_batchnorm_float32_keeps_dtype():
    x, gamma, beta, mm, mv = (a.astype(np.float32) for a in bn_inputs((3, 4, 4, 2), 16))
    y, mean, var = run("batchnorm_train", {"epsilon": 1e-3}, x, gamma, beta)
    assert y.dtype == mean.dtype == var.dtype == np.float32
    assert all(g.dtype == np.float32 for g in run("batchnorm_train_grad", {"epsilon": 1e-3}, y, x, gamma, mean, var))
    assert run("batchnorm_infer", {"epsilon": 1e-3}, x, gamma, beta, mm, mv).dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# PyTorch cross-checks (forward and autograd), float64 to 1e-5 and float32 to 1e-4


def to_nchw(torch, a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), requires_grad=True)


def from_nchw(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-5), (np.float32, 1e-4)])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case, dtype, tol):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, attrs = conv_case(case, seed=17, dtype=dtype)
    (top, bottom), (left, right) = attrs["padding"]
    tx = to_nchw(torch, x)
    tw = torch.tensor(np.ascontiguousarray(w.transpose(3, 2, 0, 1)), requires_grad=True)  # HWIO -> OIHW
    ty = F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, stride=attrs["strides"], dilation=attrs["dilation"])
    y = run("conv2d", attrs, x, w)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, from_nchw(ty), rtol=tol, atol=tol)
    dy = rng(18).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    dx = run("conv2d_grad_input", {**attrs, "input_hw": x.shape[1:3]}, dy, w)
    dw = run("conv2d_grad_filter", {**attrs, "kernel_hw": w.shape[:2]}, x, dy)
    np.testing.assert_allclose(dx, from_nchw(tx.grad), rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, tw.grad.numpy().transpose(2, 3, 1, 0), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-5), (np.float32, 1e-4)])
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool2d_matches_torch(case, dtype, tol):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    pool, strides, ((top, bottom), (left, right)) = case
    x = rng(19).standard_normal((2, 7, 6, 3)).astype(dtype)
    x[0, :4, :4, 0] = 0.25  # a constant region: ties
    attrs = pool_attrs(case)
    tx = to_nchw(torch, x)
    ty = F.max_pool2d(F.pad(tx, (left, right, top, bottom), value=-np.inf), pool, strides)
    y = run("maxpool2d", attrs, x)
    np.testing.assert_allclose(y, from_nchw(ty), rtol=tol, atol=tol)
    dy = rng(20).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    np.testing.assert_allclose(run("maxpool2d_grad", attrs, dy, x), from_nchw(tx.grad), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-5), (np.float32, 1e-4)])
@pytest.mark.parametrize("count_pad", [True, False])
@pytest.mark.parametrize("pool,strides,pad", [((3, 3), (2, 2), 1), ((2, 2), (1, 1), 1), ((3, 2), (1, 2), 0)])
def test_avgpool2d_matches_torch(pool, strides, pad, count_pad, dtype, tol):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng(21).standard_normal((2, 7, 6, 3)).astype(dtype)
    attrs = {"pool": pool, "strides": strides, "padding": ((pad, pad), (pad, pad)), "count_pad": count_pad}
    tx = to_nchw(torch, x)
    ty = F.avg_pool2d(tx, pool, strides, padding=pad, count_include_pad=count_pad)
    y = run("avgpool2d", attrs, x)
    np.testing.assert_allclose(y, from_nchw(ty), rtol=tol, atol=tol)
    dy = rng(22).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))
    dx = run("avgpool2d_grad", {**attrs, "input_hw": (7, 6)}, dy)
    np.testing.assert_allclose(dx, from_nchw(tx.grad), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-5), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_matches_torch(shape, training, dtype, tol):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, gamma, beta, mm, mv = (a.astype(dtype) for a in bn_inputs(shape, 23))
    eps = 1e-3
    tx = to_nchw(torch, x) if x.ndim == 4 else torch.tensor(x, requires_grad=True)
    tg, tb = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    if training:
        ty = F.batch_norm(tx, None, None, tg, tb, training=True, eps=eps)
        y, mean, var = run("batchnorm_train", {"epsilon": eps}, x, gamma, beta)
        axes = tuple(range(x.ndim - 1))
        np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=axes), rtol=tol, atol=tol)
        np.testing.assert_allclose(var, x.astype(np.float64).var(axis=axes), rtol=tol, atol=tol)
    else:
        ty = F.batch_norm(tx, torch.tensor(mm), torch.tensor(mv), tg, tb, training=False, eps=eps)
        y = run("batchnorm_infer", {"epsilon": eps}, x, gamma, beta, mm, mv)
    expected = from_nchw(ty) if x.ndim == 4 else ty.detach().numpy()
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    dy = rng(24).standard_normal(shape).astype(dtype)
    ty.backward(torch.tensor(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)) if x.ndim == 4 else dy))
    if training:
        dx, dgamma, dbeta = run("batchnorm_train_grad", {"epsilon": eps}, dy, x, gamma, mean, var)
    else:
        dx, dgamma, dbeta = run("batchnorm_infer_grad", {"epsilon": eps}, dy, x, gamma, mm, mv)
    tdx = from_nchw(tx.grad) if x.ndim == 4 else tx.grad.numpy()
    np.testing.assert_allclose(dx, tdx, rtol=tol, atol=tol)
    np.testing.assert_allclose(dgamma, tg.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dbeta, tb.grad.numpy(), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------
# Registry: shape rules, error messages, gradient rules


def f32(*shape):
    return TensorType(tuple(shape), "f32")


def new_builder():
    return GraphBuilder(Graph("test"))


CONV_ATTRS = {"strides": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1)}


# conv2d_grad_input is also the transposed convolutions' forward op, so it has a gradient rule of its own
FORWARD_TOO = ("conv2d_grad_input",)


def test_every_op_has_a_kernel_and_a_grad_decision():
    for op in MY_OPS:
        assert op in KERNELS
        definition = get_op(op)
        if (op.endswith("_grad") or "_grad_" in op) and op not in FORWARD_TOO:
            assert definition.grad is NOT_DIFFERENTIABLE
        else:
            assert definition.differentiable
    assert get_op("conv2d").fusion is Fusion.OUTPUT_FUSABLE


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_shape_rule_agrees_with_kernel(case):
    x, w, attrs = conv_case(case)
    (out,) = get_op("conv2d").infer(attrs, [f32("N", *x.shape[1:]), f32(*w.shape)])
    assert out.shape == ("N",) + run("conv2d", attrs, x, w).shape[1:]
    assert out.dtype == "f32"


def test_conv2d_shape_examples():
    g = new_builder()
    x = g.add_input("x", f32("N", 28, 28, 1))
    w = g.add_input("w", f32(3, 3, 1, 32))
    same = {"strides": (2, 2), "padding": ((0, 1), (0, 1)), "dilation": (1, 1)}
    assert g.emit1("conv2d", [x, w], same).type == f32("N", 14, 14, 32)
    dilated = {"strides": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (2, 2)}
    assert g.emit1("conv2d", [x, w], dilated).type == f32("N", 24, 24, 32)


def test_conv2d_shape_errors():
    rule = get_op("conv2d").infer
    with pytest.raises(ShapeError, match=r"kernel height 5 is larger than the padded input height 4 "
                                         r"\(input \(N, 4, 9, 3\), kernel \(5, 3, 3, 8\)"):
        rule(CONV_ATTRS, [f32("N", 4, 9, 3), f32(5, 3, 3, 8)])
    with pytest.raises(ShapeError, match=r"kernel width 3 \(dilated to 5\) is larger than the padded input width 4"):
        rule({**CONV_ATTRS, "dilation": (1, 2)}, [f32("N", 9, 4, 3), f32(3, 3, 3, 8)])
    # padding makes it fit
    (out,) = rule({**CONV_ATTRS, "padding": ((1, 0), (0, 0))}, [f32("N", 4, 9, 3), f32(5, 3, 3, 8)])
    assert out.shape == ("N", 1, 7, 8)
    with pytest.raises(ShapeError, match=r"input has 3 channels but the kernel expects 4 "
                                         r"\(input \(N, 8, 8, 3\), kernel \(3, 3, 4, 8\)\)"):
        rule(CONV_ATTRS, [f32("N", 8, 8, 3), f32(3, 3, 4, 8)])
    with pytest.raises(ShapeError, match=r"input must have rank 4 \(N, H, W, C\), got shape \(N, 8, 3\)"):
        rule(CONV_ATTRS, [f32("N", 8, 3), f32(3, 3, 3, 8)])
    with pytest.raises(ShapeError, match=r"strides must be integers >= 1"):
        rule({**CONV_ATTRS, "strides": (0, 1)}, [f32("N", 8, 8, 3), f32(3, 3, 3, 8)])
    with pytest.raises(ShapeError, match=r"different dtypes"):
        rule(CONV_ATTRS, [f32("N", 8, 8, 3), TensorType((3, 3, 3, 8), "f64")])


def test_pool_shapes_and_errors():
    g = new_builder()
    x = g.add_input("x", f32("N", 7, 7, 16))
    attrs = {"pool": (2, 2), "strides": (2, 2), "padding": ((0, 1), (0, 1))}
    assert g.emit1("maxpool2d", [x], attrs).type == f32("N", 4, 4, 16)
    assert g.emit1("avgpool2d", [x], {**attrs, "count_pad": False}).type == f32("N", 4, 4, 16)
    assert g.emit1("maxpool2d", [x], {"pool": (3, 3), "strides": (2, 2)}).type == f32("N", 3, 3, 16)
    assert g.emit1("maxpool2d", [x], {"pool": (2, 2)}).type == f32("N", 3, 3, 16)  # strides default to pool
    with pytest.raises(ShapeError, match=r"maxpool2d: pool height 9 is larger than the padded input height 7 "
                                         r"\(input \(N, 7, 7, 16\)"):
        g.emit1("maxpool2d", [x], {"pool": (9, 2)})
    with pytest.raises(ShapeError, match=r"avgpool2d: missing attribute 'pool'"):
        g.emit1("avgpool2d", [x], {})


def test_batchnorm_shapes_and_errors():
    g = new_builder()
    x = g.add_input("x", f32("N", 5, 5, 8))
    gamma, beta = g.add_input("g", f32(8)), g.add_input("b", f32(8))
    y, mean, var = g.emit("batchnorm_train", [x, gamma, beta], {"epsilon": 1e-3})
    assert (y.type, mean.type, var.type) == (x.type, f32(8), f32(8))
    assert g.emit1("batchnorm_infer", [x, gamma, beta, mean, var], {"epsilon": 1e-3}).type == x.type
    bad = g.add_input("bad", f32(7))
    with pytest.raises(ShapeError, match=r"beta must have shape \(8,\) to match input \(N, 5, 5, 8\), got \(7,\)"):
        g.emit("batchnorm_train", [x, gamma, bad], {"epsilon": 1e-3})
    with pytest.raises(ShapeError, match=r"epsilon"):
        g.emit("batchnorm_train", [x, gamma, beta], {})


def evaluate(graph, feeds):
    """Run a graph's nodes with the kernels (only ops of this module appear)."""
    env = dict(feeds)
    for node in graph.nodes:
        result = KERNELS[node.op](CTX, node.attr_dict, *(env[v] for v in node.inputs))
        results = result if isinstance(result, tuple) else (result,)
        env.update(zip(node.outputs, results))
    return env


def test_conv2d_grad_rule_emits_grad_ops_that_match_finite_differences():
    case = CONV_CASES[5]
    x, w, attrs = conv_case(case, seed=25)
    g = new_builder()
    vx = g.add_input("x", TensorType(x.shape, "f64"))
    vw = g.add_input("w", TensorType(w.shape, "f64"))
    vy = g.emit1("conv2d", [vx, vw], attrs)
    vdy = g.add_input("dy", vy.type)
    assert get_op("conv2d").grad(g, vy.producer, [None]) == [None, None]
    gx, gw = get_op("conv2d").grad(g, vy.producer, [vdy])
    assert gx.producer.op == "conv2d_grad_input" and gx.producer.attr("input_hw") == x.shape[1:3]
    assert gw.producer.op == "conv2d_grad_filter" and gw.producer.attr("kernel_hw") == w.shape[:2]
    assert gx.type == vx.type and gw.type == vw.type
    dy = rng(26).standard_normal(vy.type.shape)
    env = evaluate(g.graph, {vx: x, vw: w, vdy: dy})
    forward = lambda a, b: run("conv2d", attrs, a, b)  # noqa: E731
    assert_rel_close(env[gx], numeric_grad(forward, [x, w], 0, dy))
    assert_rel_close(env[gw], numeric_grad(forward, [x, w], 1, dy))


@pytest.mark.parametrize("op,extra", [("maxpool2d", {}), ("avgpool2d", {"count_pad": False})])
def test_pool_grad_rules(op, extra):
    attrs = {"pool": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1)), **extra}
    x = distinct_input((2, 7, 6, 2), seed=27)
    g = new_builder()
    vx = g.add_input("x", TensorType(x.shape, "f64"))
    vy = g.emit1(op, [vx], attrs)
    vdy = g.add_input("dy", vy.type)
    (gx,) = get_op(op).grad(g, vy.producer, [vdy])
    assert gx.producer.op == op + "_grad" and gx.type == vx.type
    dy = rng(28).standard_normal(vy.type.shape)
    env = evaluate(g.graph, {vx: x, vdy: dy})
    assert_rel_close(env[gx], numeric_grad(lambda a: run(op, attrs, a), [x], 0, dy))


def test_batchnorm_grad_rules_use_only_dy_of_y():
    x, gamma, beta, mm, mv = bn_inputs((4, 3, 3, 2), 29)
    attrs = {"epsilon": 1e-3}
    g = new_builder()
    vx, vg, vb = (g.add_input(n, TensorType(a.shape, "f64")) for n, a in (("x", x), ("g", gamma), ("b", beta)))
    vm, vv = (g.add_input(n, TensorType(a.shape, "f64")) for n, a in (("m", mm), ("v", mv)))
    vy, vmean, vvar = g.emit("batchnorm_train", [vx, vg, vb], attrs)
    vdy = g.add_input("dy", vy.type)
    assert get_op("batchnorm_train").grad(g, vy.producer, [None, vmean, vvar]) == [None, None, None]
    train_grads = get_op("batchnorm_train").grad(g, vy.producer, [vdy, None, None])
    assert train_grads[0].producer.op == "batchnorm_train_grad"
    vz = g.emit1("batchnorm_infer", [vx, vg, vb, vm, vv], attrs)
    infer_grads = get_op("batchnorm_infer").grad(g, vz.producer, [vdy])
    assert infer_grads[3:] == [None, None] and infer_grads[0].producer.op == "batchnorm_infer_grad"
    dy = rng(30).standard_normal(x.shape)
    env = evaluate(g.graph, {vx: x, vg: gamma, vb: beta, vm: mm, vv: mv, vdy: dy})
    train_fwd = lambda *a: run("batchnorm_train", attrs, *a)[0]  # noqa: E731
    infer_fwd = lambda a, b, c: run("batchnorm_infer", attrs, a, b, c, mm, mv)  # noqa: E731
    for which in range(3):
        assert_rel_close(env[train_grads[which]], numeric_grad(train_fwd, [x, gamma, beta], which, dy, eps=1e-5))
        assert_rel_close(env[infer_grads[which]], numeric_grad(infer_fwd, [x, gamma, beta], which, dy, eps=1e-5))


@pytest.mark.parametrize("case", POOL_CASES[:2] + POOL_CASES[3:4])
@pytest.mark.parametrize("native", [False, True])
def test_maxpool2d_propagates_nan_and_routes_its_gradient_to_it_as_torch_does(case, native):
    """A NaN anywhere in a window is that window's maximum, on the NumPy and the native paths alike,
    and the gradient goes to the first NaN; PyTorch is the reference."""
    from nnd.runtime import native as native_library

    torch = pytest.importorskip("torch")
    x = distinct_input((1, 7, 6, 2), seed=7)
    x[0, 1, 2, 0] = x[0, 4, 4, 1] = np.nan  # not first in their windows
    attrs = pool_attrs(case)
    native_library.set_enabled(native)
    try:
        if native and native_library.library() is None:
            pytest.skip("no native library")
        y = run("maxpool2d", attrs, x)
        dy = rng(8).standard_normal(y.shape)
        dx = run("maxpool2d_grad", attrs, dy, x)
    finally:
        native_library.set_enabled(None)
    (top, bottom), (left, right) = case[2]
    xt = to_nchw(torch, np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-np.inf))
    yt = torch.nn.functional.max_pool2d(xt, case[0], case[1])
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    assert np.isnan(y).any()
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    expected = xt.grad.numpy().transpose(0, 2, 3, 1)[:, top:top + 7, left:left + 6]
    np.testing.assert_allclose(dx, expected, rtol=1e-13, atol=1e-13)
