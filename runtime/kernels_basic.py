"""Kernels of the basic ops (`nnd.compiler.ops.basic`), written against `ctx.xp` (numpy or cupy).

Results keep the float dtype of their inputs; kernels without float inputs (constant, cast to a float)
produce `ctx.dtype`, the executor's float dtype. Every transcendental is in a stable form: sigmoid and
softplus go through exp(-|x|), softmax subtracts the maximum, cross entropies use logsumexp.
"""
from __future__ import annotations

import math

import numpy as np

from nnd.compiler.ops.basic import DEFAULTS, normalize_axes, reduced_shape, slice_bounds
from nnd.compiler.tensor_type import NUMPY_DTYPES, TensorType
from nnd.runtime.kernel_table import kernel
from nnd.runtime.precision import wide_mean, wide_sum

EPSILON = 1e-7  # the probability clip of the Keras-style crossentropies

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_C = math.sqrt(2.0 / math.pi)
_TANH_K = 0.044715


def _get(attrs, op: str, key: str):
    value = attrs.get(key)
    if value is None:
        value = DEFAULTS[op][key]
    return value


def _float_dtype(ctx, dtype: str):
    """The array dtype of an IR dtype: float dtypes follow the executor's float dtype."""
    if dtype in ("f32", "f64"):
        return ctx.dtype
    return np.dtype(NUMPY_DTYPES[dtype])


def _align(xp, a, b):
    """Bring mixed int/float operands to the float operand's dtype (NumPy would widen to float64)."""
    da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if da is None or db is None or da == db:
        return a, b
    fa, fb = np.issubdtype(da, np.floating), np.issubdtype(db, np.floating)
    if fa and not fb:
        return a, b.astype(da)
    if fb and not fa:
        return a.astype(db), b
    return a, b


def _sigmoid(xp, x):
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# Chebyshev fit of erfc(z) for z >= 0 (Numerical Recipes, 3rd ed., section 6.2.2): absolute error below
# 1e-15 on the real line, using only elementwise operations so that it runs on any array module.
_ERFC_COF = (
    -1.3026537197817094, 6.4196979235649026e-1, 1.9476473204185836e-2, -9.561514786808631e-3,
    -9.46595344482036e-4, 3.66839497852761e-4, 4.2523324806907e-5, -2.0278578112534e-5,
    -1.624290004647e-6, 1.303655835580e-6, 1.5626441722e-8, -8.5238095915e-8, 6.529054439e-9,
    5.059343495e-9, -9.91364156e-10, -2.27365122e-10, 9.6467911e-11, 2.394038e-12, -6.886027e-12,
    8.94487e-13, 3.13092e-13, -1.12708e-13, 3.81e-16, 7.106e-15, -1.523e-15, -9.4e-17, 1.21e-16,
    -2.8e-17,
)


def erf(xp, x):
    z = xp.abs(x)
    t = 2.0 / (2.0 + z)
    ty = 4.0 * t - 2.0
    d = xp.zeros_like(z)
    dd = xp.zeros_like(z)
    for c in _ERFC_COF[:0:-1]:
        d, dd = ty * d - dd + c, d
    erfc = t * xp.exp(-z * z + 0.5 * (_ERFC_COF[0] + ty * d) - dd)
    return xp.sign(x) * (1.0 - erfc)


def _log_softmax(xp, x, axis):
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def _softmax(xp, x, axis):
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def _one_hot(xp, labels, classes, dtype):
    labels = labels.astype(xp.int64)
    return (labels[..., None] == xp.arange(classes)).astype(dtype)


def _axes(attrs, rank):
    return normalize_axes(attrs.get("axes"), rank)


# --------------------------------------------------------------------------------------------- unary

@kernel("neg")
def _neg(ctx, attrs, x):
    return -x


@kernel("relu")
def _relu(ctx, attrs, x):
    return ctx.xp.maximum(x, 0)


@kernel("leaky_relu")
def _leaky_relu(ctx, attrs, x):
    return ctx.xp.where(x > 0, x, x * _get(attrs, "leaky_relu", "alpha"))


@kernel("elu")
def _elu(ctx, attrs, x):
    xp = ctx.xp
    return xp.where(x > 0, x, _get(attrs, "elu", "alpha") * xp.expm1(xp.minimum(x, 0)))


@kernel("gelu")
def _gelu(ctx, attrs, x):
    xp = ctx.xp
    if _get(attrs, "gelu", "approximate"):
        return 0.5 * x * (1.0 + xp.tanh(_TANH_C * (x + _TANH_K * x * x * x)))
    return 0.5 * x * (1.0 + erf(xp, x * _SQRT_HALF))


@kernel("sigmoid")
def _sigmoid_kernel(ctx, attrs, x):
    return _sigmoid(ctx.xp, x)


@kernel("tanh")
def _tanh(ctx, attrs, x):
    return ctx.xp.tanh(x)


@kernel("swish")
def _swish(ctx, attrs, x):
    return x * _sigmoid(ctx.xp, x)


@kernel("softplus")
def _softplus(ctx, attrs, x):
    xp = ctx.xp
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


@kernel("exp")
def _exp(ctx, attrs, x):
    return ctx.xp.exp(x)


@kernel("log")
def _log(ctx, attrs, x):
    return ctx.xp.log(x)


@kernel("sqrt")
def _sqrt(ctx, attrs, x):
    return ctx.xp.sqrt(x)


@kernel("square")
def _square(ctx, attrs, x):
    return x * x


@kernel("abs")
def _abs(ctx, attrs, x):
    return ctx.xp.abs(x)


@kernel("sign")
def _sign(ctx, attrs, x):
    return ctx.xp.sign(x)


@kernel("relu_grad")
def _relu_grad(ctx, attrs, dy, y):
    return dy * (y > 0)


@kernel("leaky_relu_grad")
def _leaky_relu_grad(ctx, attrs, dy, x):
    return ctx.xp.where(x > 0, dy, dy * _get(attrs, "leaky_relu", "alpha"))


@kernel("elu_grad")
def _elu_grad(ctx, attrs, dy, x):
    xp = ctx.xp
    return xp.where(x > 0, dy, dy * (_get(attrs, "elu", "alpha") * xp.exp(xp.minimum(x, 0))))


@kernel("gelu_grad")
def _gelu_grad(ctx, attrs, dy, x):
    xp = ctx.xp
    if _get(attrs, "gelu", "approximate"):
        x2 = x * x
        t = xp.tanh(_TANH_C * (x + _TANH_K * x2 * x))
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _TANH_C * (1.0 + 3.0 * _TANH_K * x2))
    cdf = 0.5 * (1.0 + erf(xp, x * _SQRT_HALF))
    pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return dy * (cdf + x * pdf)


@kernel("sigmoid_grad")
def _sigmoid_grad(ctx, attrs, dy, y):
    return dy * y * (1.0 - y)


@kernel("tanh_grad")
def _tanh_grad(ctx, attrs, dy, y):
    return dy * (1.0 - y * y)


@kernel("swish_grad")
def _swish_grad(ctx, attrs, dy, x):
    s = _sigmoid(ctx.xp, x)
    return dy * (s + x * s * (1.0 - s))


# -------------------------------------------------------------------------------------------- binary

@kernel("add")
def _add(ctx, attrs, a, b):
    a, b = _align(ctx.xp, a, b)
    return a + b


@kernel("sub")
def _sub(ctx, attrs, a, b):
    a, b = _align(ctx.xp, a, b)
    return a - b


@kernel("mul")
def _mul(ctx, attrs, a, b):
    a, b = _align(ctx.xp, a, b)
    return a * b


@kernel("div")
def _div(ctx, attrs, a, b):
    a, b = _align(ctx.xp, a, b)
    return a / b


@kernel("maximum")
def _maximum(ctx, attrs, a, b):
    a, b = _align(ctx.xp, a, b)
    return ctx.xp.maximum(a, b)


# ---------------------------------------------------------------------------------- constants, casts

@kernel("constant")
def _constant(ctx, attrs):
    dtype = _float_dtype(ctx, attrs.get("dtype", "f32"))
    # a fill, even for a scalar: a copy from host memory could not be replayed from a CUDA graph
    return ctx.xp.full(tuple(attrs.get("shape", ())), attrs["value"], dtype=dtype)


@kernel("constant_values")
def _constant_values(ctx, attrs):
    # made once when the executor is built (see Executor._compile), never inside a captured run
    return ctx.xp.asarray(np.asarray(attrs["values"], dtype=_float_dtype(ctx, attrs.get("dtype", "f32"))))


@kernel("cast")
def _cast(ctx, attrs, x):
    return x.astype(_float_dtype(ctx, attrs["dtype"]))


@kernel("zeros_like")
def _zeros_like(ctx, attrs, x):
    return ctx.xp.zeros_like(x)


# ------------------------------------------------------------------------------------------ softmax

@kernel("softmax")
def _softmax_kernel(ctx, attrs, x):
    return _softmax(ctx.xp, x, attrs.get("axis", -1))


@kernel("log_softmax")
def _log_softmax_kernel(ctx, attrs, x):
    return _log_softmax(ctx.xp, x, attrs.get("axis", -1))


@kernel("softmax_grad")
def _softmax_grad(ctx, attrs, dy, y):
    axis = attrs.get("axis", -1)
    return y * (dy - ctx.xp.sum(dy * y, axis=axis, keepdims=True))


@kernel("log_softmax_grad")
def _log_softmax_grad(ctx, attrs, dy, y):
    xp = ctx.xp
    axis = attrs.get("axis", -1)
    return dy - xp.exp(y) * xp.sum(dy, axis=axis, keepdims=True)


# ------------------------------------------------------------------------------------------- matmul

@kernel("matmul")
def _matmul(ctx, attrs, a, b):
    xp = ctx.xp
    a, b = _align(xp, a, b)
    if a.ndim == 2:
        return xp.matmul(a, b)
    k = a.shape[-1]
    return xp.matmul(a.reshape(-1, k), b).reshape(a.shape[:-1] + (b.shape[1],))


@kernel("matmul_tn")
def _matmul_tn(ctx, attrs, a, dy):
    a, dy = _align(ctx.xp, a, dy)
    return ctx.xp.matmul(a.reshape(-1, a.shape[-1]).T, dy.reshape(-1, dy.shape[-1]))


@kernel("batch_matmul")
def _batch_matmul(ctx, attrs, a, b):
    """One product per batch index. A transposed operand is passed as a view with its last two axes
    swapped: NumPy's matmul and the cupy backend's cuBLAS path both read such a view without a copy."""
    xp = ctx.xp
    a, b = _align(xp, a, b)
    if attrs.get("transpose_a", False):
        a = xp.swapaxes(a, -1, -2)
    if attrs.get("transpose_b", False):
        b = xp.swapaxes(b, -1, -2)
    return xp.matmul(a, b)


# --------------------------------------------------------------------------------------- reductions

@kernel("reduce_sum")
def _reduce_sum(ctx, attrs, x):
    axes = _axes(attrs, x.ndim)
    keepdims = bool(attrs.get("keepdims", False))
    if ctx.xp is np and _inner_run(axes, x):
        return _sum_run(x, axes, keepdims)
    return wide_sum(ctx.xp, x, axes, keepdims)


@kernel("reduce_mean")
def _reduce_mean(ctx, attrs, x):
    axes = _axes(attrs, x.ndim)
    keepdims = bool(attrs.get("keepdims", False))
    if ctx.xp is np and _inner_run(axes, x):
        total = _sum_run(x, axes, keepdims)
        return total / x.dtype.type(math.prod(x.shape[a] for a in axes))
    return wide_mean(ctx.xp, x, axes, keepdims)


def is_run_before_last(axes: tuple[int, ...], ndim: int) -> bool:
    """Whether `axes` are consecutive and keep the last axis: a bias gradient's, a global pooling's."""
    return 0 < len(axes) and axes[-1] < ndim - 1 and axes == tuple(range(axes[0], axes[-1] + 1))


def run_sizes(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, int, int]:
    """(outer, run, inner): the sizes before, over and after the consecutive `axes`."""
    first, last = axes[0], axes[-1] + 1
    return math.prod(shape[:first]), math.prod(shape[first:last]), math.prod(shape[last:])


def run_sum_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    """The shape of a sum over the consecutive `axes`."""
    return shape[:axes[0]] + ((1,) * len(axes) if keepdims else ()) + shape[axes[-1] + 1:]


def _inner_run(axes, x) -> bool:
    """Whether `axes` are consecutive axes of a C-contiguous float32 or float64 array, the last axis kept:
    the reductions NumPy runs slowly, one short row at a time. Two-byte floats take `wide_sum` instead."""
    return (is_run_before_last(axes, x.ndim) and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous)


def _sum_run(x, axes, keepdims: bool):
    """The sum over the consecutive `axes` of a C-contiguous array as products with a vector of ones:
    BLAS streams the rows once with vector adds, where NumPy's sum over a non-contiguous axis is several
    times slower (a bias gradient over a [128, 26, 26, 32] activation: 2.0 -> 0.4 ms; a global average
    pooling of [64, 32, 32, 16]: 1.9 -> 0.14 ms)."""
    outer, run, inner = run_sizes(x.shape, axes)
    total = np.ones(run, dtype=x.dtype) @ x.reshape(outer, run, inner)  # [outer, inner]
    return total.reshape(run_sum_shape(x.shape, axes, keepdims))


@kernel("reduce_max")
def _reduce_max(ctx, attrs, x):
    return ctx.xp.max(x, axis=_axes(attrs, x.ndim), keepdims=bool(attrs.get("keepdims", False)))


def _expand_reduced(dy, x_shape, axes):
    """dy with its reduced axes restored as size 1, ready to broadcast against x."""
    return dy.reshape(reduced_shape(tuple(x_shape), axes, True))


@kernel("broadcast_like")
def _broadcast_like(ctx, attrs, dy, x):
    xp = ctx.xp
    axes = _axes(attrs, x.ndim)
    d = _expand_reduced(dy, x.shape, axes)
    if attrs.get("mean", False):
        count = 1
        for a in axes:
            count *= x.shape[a]
        d = d / max(count, 1)
    return xp.ascontiguousarray(xp.broadcast_to(d, x.shape))


@kernel("reduce_max_grad")
def _reduce_max_grad(ctx, attrs, dy, x):
    """dy sent to the first maximum (row-major over the reduced axes) of each reduced group."""
    xp = ctx.xp
    axes = _axes(attrs, x.ndim)
    kept = tuple(i for i in range(x.ndim) if i not in axes)
    perm = kept + axes
    moved = xp.transpose(x, perm)
    kept_shape = moved.shape[:len(kept)]
    group = 1
    for a in axes:
        group *= x.shape[a]
    flat = moved.reshape(kept_shape + (group,))
    first = xp.argmax(flat, axis=-1)
    hot = xp.arange(group) == first[..., None]
    g = hot * dy.reshape(kept_shape)[..., None]
    g = g.astype(dy.dtype).reshape(moved.shape)
    inverse = [0] * x.ndim
    for i, p in enumerate(perm):
        inverse[p] = i
    return xp.ascontiguousarray(xp.transpose(g, inverse))


# ------------------------------------------------------------------------------------ data movement

@kernel("reshape")
def _reshape(ctx, attrs, x):
    shape = tuple(-1 if isinstance(d, str) else d for d in attrs["shape"])
    return x.reshape(shape)


@kernel("transpose")
def _transpose(ctx, attrs, x):
    perm = attrs.get("perm")
    return ctx.xp.transpose(x, None if perm is None else tuple(perm))


@kernel("pad")
def _pad(ctx, attrs, x):
    pads = tuple(tuple(p) for p in attrs["pads"])
    if not any(b or a for b, a in pads):
        return x
    return ctx.xp.pad(x, pads, mode="constant", constant_values=attrs.get("value", 0.0))


@kernel("crop")
def _crop(ctx, attrs, x):
    index = tuple(slice(b, d - a) for d, (b, a) in zip(x.shape, attrs["pads"]))
    return x[index]


@kernel("concat")
def _concat(ctx, attrs, *xs):
    return ctx.xp.concatenate(xs, axis=attrs.get("axis", -1))


@kernel("slice")
def _slice(ctx, attrs, x):
    axis, start, stop = slice_bounds(attrs, TensorType(tuple(x.shape)))
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


# ------------------------------------------------------------------------------------------ dropout

@kernel("dropout_mask")
def _dropout_mask(ctx, attrs, x):
    rate = float(attrs["rate"])
    shape, dtype = tuple(x.shape), x.dtype

    def draw(rng: np.random.Generator) -> np.ndarray:
        keep = rng.random(shape) >= rate
        return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))

    return ctx.host_random(draw, shape, dtype, attrs.get("stream"))


@kernel("normal_noise")
def _normal_noise(ctx, attrs, x):
    stddev = float(attrs["stddev"])
    shape, dtype = tuple(x.shape), x.dtype

    def draw(rng: np.random.Generator) -> np.ndarray:
        return (rng.standard_normal(shape) * stddev).astype(dtype)

    return ctx.host_random(draw, shape, dtype, attrs.get("stream"))


# ------------------------------------------------------------------------------------------- losses

def _lse(xp, x, axis):
    m = xp.max(x, axis=axis, keepdims=True)
    return xp.squeeze(m, axis=axis) + xp.log(xp.sum(xp.exp(x - m), axis=axis))


@kernel("sparse_softmax_cross_entropy")
def _sparse_softmax_ce(ctx, attrs, logits, labels):
    xp = ctx.xp
    picked = xp.take_along_axis(logits, labels.astype(xp.int64)[..., None], axis=-1)[..., 0]
    return _lse(xp, logits, -1) - picked


@kernel("sparse_softmax_cross_entropy_grad")
def _sparse_softmax_ce_grad(ctx, attrs, dloss, logits, labels):
    xp = ctx.xp
    p = _softmax(xp, logits, -1)
    return (p - _one_hot(xp, labels, logits.shape[-1], p.dtype)) * dloss[..., None]


@kernel("softmax_cross_entropy")
def _softmax_ce(ctx, attrs, logits, targets):
    xp = ctx.xp
    axis = attrs.get("axis", -1)
    logits, targets = _align(xp, logits, targets)
    return -xp.sum(targets * _log_softmax(xp, logits, axis), axis=axis)


@kernel("softmax_cross_entropy_grad")
def _softmax_ce_grad(ctx, attrs, dloss, logits, targets):
    xp = ctx.xp
    axis = attrs.get("axis", -1)
    logits, targets = _align(xp, logits, targets)
    shape = np.broadcast_shapes(logits.shape, targets.shape)
    p = _softmax(xp, xp.broadcast_to(logits, shape), axis)
    t = xp.broadcast_to(targets, shape)
    return (p * xp.sum(t, axis=axis, keepdims=True) - t) * xp.expand_dims(dloss, axis % len(shape))


@kernel("sigmoid_cross_entropy")
def _sigmoid_ce(ctx, attrs, logits, targets):
    xp = ctx.xp
    logits, targets = _align(xp, logits, targets)
    return xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))


@kernel("binary_crossentropy")
def _binary_ce(ctx, attrs, p, t):
    xp = ctx.xp
    p, t = _align(xp, p, t)
    p = xp.clip(p, EPSILON, 1.0 - EPSILON)
    return -(t * xp.log(p) + (1.0 - t) * xp.log(1.0 - p))


@kernel("binary_crossentropy_grad")
def _binary_ce_grad(ctx, attrs, dloss, p, t):
    xp = ctx.xp
    p, t = _align(xp, p, t)
    inside = (p >= EPSILON) & (p <= 1.0 - EPSILON)
    pc = xp.clip(p, EPSILON, 1.0 - EPSILON)
    return dloss * inside * ((1.0 - t) / (1.0 - pc) - t / pc)


@kernel("categorical_crossentropy")
def _categorical_ce(ctx, attrs, p, t):
    xp = ctx.xp
    axis = attrs.get("axis", -1)
    p, t = _align(xp, p, t)
    q = xp.clip(p / xp.sum(p, axis=axis, keepdims=True), EPSILON, 1.0 - EPSILON)
    return -xp.sum(t * xp.log(q), axis=axis)


@kernel("categorical_crossentropy_grad")
def _categorical_ce_grad(ctx, attrs, dloss, p, t):
    xp = ctx.xp
    axis = attrs.get("axis", -1)
    p, t = _align(xp, p, t)
    shape = np.broadcast_shapes(p.shape, t.shape)
    p = xp.broadcast_to(p, shape)
    s = xp.sum(p, axis=axis, keepdims=True)
    q = p / s
    inside = (q >= EPSILON) & (q <= 1.0 - EPSILON)
    g = -(inside * (t / xp.clip(q, EPSILON, 1.0 - EPSILON)))
    dp = (g - xp.sum(g * q, axis=axis, keepdims=True)) / s
    return dp * xp.expand_dims(dloss, axis % len(shape))


@kernel("sparse_categorical_crossentropy")
def _sparse_categorical_ce(ctx, attrs, p, labels):
    """categorical_crossentropy with class ids: the probabilities are normalized first, as Keras does, so
    that ids and their one-hot rows give the same loss on any output."""
    xp = ctx.xp
    q = p / xp.sum(p, axis=-1, keepdims=True)
    picked = xp.take_along_axis(q, labels.astype(xp.int64)[..., None], axis=-1)[..., 0]
    return -xp.log(xp.clip(picked, EPSILON, 1.0 - EPSILON))


@kernel("sparse_categorical_crossentropy_grad")
def _sparse_categorical_ce_grad(ctx, attrs, dloss, p, labels):
    xp = ctx.xp
    s = xp.sum(p, axis=-1, keepdims=True)
    q = p / s
    hot = _one_hot(xp, labels, p.shape[-1], p.dtype)
    inside = (q >= EPSILON) & (q <= 1.0 - EPSILON)
    g = -(hot * inside) / xp.clip(q, EPSILON, 1.0 - EPSILON)
    return (g - xp.sum(g * q, axis=-1, keepdims=True)) / s * dloss[..., None]


@kernel("huber")
def _huber(ctx, attrs, pred, target):
    xp = ctx.xp
    pred, target = _align(xp, pred, target)
    delta = float(_get(attrs, "huber", "delta"))
    err = xp.abs(pred - target)
    quadratic = xp.minimum(err, delta)
    return 0.5 * quadratic * quadratic + delta * (err - quadratic)


@kernel("huber_grad")
def _huber_grad(ctx, attrs, dloss, pred, target):
    xp = ctx.xp
    pred, target = _align(xp, pred, target)
    delta = float(_get(attrs, "huber", "delta"))
    return dloss * xp.clip(pred - target, -delta, delta)
