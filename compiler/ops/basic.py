"""Elementwise, broadcasting, matmul, reduction, data-movement, dropout and loss ops.

Attribute conventions (every attribute is a hashable Python value):

* activations: `alpha` (leaky_relu, default 0.2; elu, default 1.0), `approximate` (gelu, default False:
  the exact erf form; True: the tanh form);
* `axis`: one int, negative counted from the end (softmax and friends default to -1);
* `axes`: a tuple of ints, or None for every axis; `keepdims`: bool (default False);
* `shape` (reshape): ints and the batch symbol 'N' (a single -1 is allowed when no symbol appears);
* `pads` (pad, crop): one `(before, after)` pair per axis; `value` (pad): the fill, default 0.0;
* `dtype` (constant, cast): an IR dtype name ("f32", "f64", "i32", "i64", "bool");
* `rate` (dropout_mask), `delta` (huber, default 1.0);
* `transpose_a`, `transpose_b` (batch_matmul): bool, default False.

Gradient rules return one gradient per input in the shape of the node's output where the op broadcasts;
autodiff reduces broadcast gradients back to each input's shape. Gradients with respect to loss targets
and labels are None: those inputs are treated as constants.
"""
from __future__ import annotations

from typing import Any, Sequence

from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, register
from nnd.compiler.tensor_type import (FLOAT_DTYPES, ShapeError, TensorType, broadcast_shapes,
                                      format_shape)

_DTYPE_ORDER = ("bool", "i32", "i64", "f32", "f64")

DEFAULTS: dict[str, dict[str, Any]] = {
    "leaky_relu": {"alpha": 0.2},
    "elu": {"alpha": 1.0},
    "gelu": {"approximate": False},
    "huber": {"delta": 1.0},
}


# ----------------------------------------------------------------------------------------------- helpers

def _attr(node, key: str, default: Any = None) -> Any:
    value = node.attr(key, None)
    if value is None:
        value = DEFAULTS.get(node.op, {}).get(key, default)
    return value


def _promote(a: str, b: str) -> str:
    return a if _DTYPE_ORDER.index(a) >= _DTYPE_ORDER.index(b) else b


def _require_float(op: str, t: TensorType, what: str = "input") -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{op} needs a float {what}, got {t.dtype}")


def _norm_axis(axis: int, rank: int, op: str) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise ShapeError(f"{op}: axis must be an int, got {axis!r}")
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % rank


def normalize_axes(axes: Any, rank: int, op: str = "reduce") -> tuple[int, ...]:
    """Sorted non-negative axes; None means every axis."""
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    result = sorted(_norm_axis(a, rank, op) for a in axes)
    if len(set(result)) != len(result):
        raise ShapeError(f"{op}: repeated axis in {tuple(axes)}")
    return tuple(result)


def reduced_shape(shape: tuple, axes: tuple[int, ...], keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _same(op: str):
    def infer(attrs, types):
        return [types[0]]
    return infer


def _same_float(op: str):
    def infer(attrs, types):
        _require_float(op, types[0])
        return [types[0]]
    return infer


def _grad_pair(op: str):
    """Shape rule of a helper `op(dy, x)` whose output has x's shape."""
    def infer(attrs, types):
        dy, x = types
        if dy.shape != x.shape:
            raise ShapeError(f"{op}: gradient shape {format_shape(dy.shape)} differs from "
                             f"{format_shape(x.shape)}")
        return [dy]
    return infer


def _broadcast(op: str):
    def infer(attrs, types):
        shape = types[0].shape
        dtype = types[0].dtype
        for t in types[1:]:
            shape = broadcast_shapes(shape, t.shape)
            dtype = _promote(dtype, t.dtype)
        return [TensorType(shape, dtype)]
    return infer


# ------------------------------------------------------------------------------------- unary elementwise

def _g_neg(g, node, dys):
    return [g.emit1("neg", [dys[0]])]


def _g_relu(g, node, dys):
    return [g.emit1("relu_grad", [dys[0], node.outputs[0]])]


def _g_relu_grad(g, node, dys):
    # dy * (y > 0) is linear in dy and flat in y wherever it is differentiable: the step has no gradient.
    # (Keras' thresholded relu computes x * (x > threshold) as relu_grad(x, x - threshold).)
    return [g.emit1("relu_grad", [dys[0], node.inputs[1]]), None]


def _g_leaky_relu(g, node, dys):
    return [g.emit1("leaky_relu_grad", [dys[0], node.inputs[0]], {"alpha": _attr(node, "alpha")})]


def _g_elu(g, node, dys):
    return [g.emit1("elu_grad", [dys[0], node.inputs[0]], {"alpha": _attr(node, "alpha")})]


def _g_gelu(g, node, dys):
    return [g.emit1("gelu_grad", [dys[0], node.inputs[0]],
                    {"approximate": bool(_attr(node, "approximate"))})]


def _g_sigmoid(g, node, dys):
    return [g.emit1("sigmoid_grad", [dys[0], node.outputs[0]])]


def _g_tanh(g, node, dys):
    return [g.emit1("tanh_grad", [dys[0], node.outputs[0]])]


def _g_swish(g, node, dys):
    return [g.emit1("swish_grad", [dys[0], node.inputs[0]])]


def _const(g, value: float, dtype: str):
    return g.emit1("constant", [], {"value": float(value), "dtype": dtype})


def _g_softplus(g, node, dys):
    return [g.emit1("mul", [dys[0], g.emit1("sigmoid", [node.inputs[0]])])]


def _g_exp(g, node, dys):
    return [g.emit1("mul", [dys[0], node.outputs[0]])]


def _g_log(g, node, dys):
    return [g.emit1("div", [dys[0], node.inputs[0]])]


def _g_sqrt(g, node, dys):
    half = _const(g, 0.5, node.outputs[0].type.dtype)
    return [g.emit1("div", [g.emit1("mul", [dys[0], half]), node.outputs[0]])]


def _g_square(g, node, dys):
    two = _const(g, 2.0, node.inputs[0].type.dtype)
    return [g.emit1("mul", [dys[0], g.emit1("mul", [node.inputs[0], two])])]


def _g_abs(g, node, dys):
    return [g.emit1("mul", [dys[0], g.emit1("sign", [node.inputs[0]])])]


register("neg", infer=_same("neg"), fusion=Fusion.ELEMENTWISE, grad=_g_neg, arity=1, doc="-x")
register("relu", infer=_same("relu"), fusion=Fusion.ELEMENTWISE, grad=_g_relu, arity=1,
         doc="max(x, 0)")
register("leaky_relu", infer=_same_float("leaky_relu"), fusion=Fusion.ELEMENTWISE, grad=_g_leaky_relu,
         arity=1, doc="x if x > 0 else alpha * x")
register("elu", infer=_same_float("elu"), fusion=Fusion.ELEMENTWISE, grad=_g_elu, arity=1,
         doc="x if x > 0 else alpha * (exp(x) - 1)")
register("gelu", infer=_same_float("gelu"), fusion=Fusion.ELEMENTWISE, grad=_g_gelu, arity=1,
         doc="x * Phi(x); approximate=True uses the tanh form")
register("sigmoid", infer=_same_float("sigmoid"), fusion=Fusion.ELEMENTWISE, grad=_g_sigmoid, arity=1)
register("tanh", infer=_same_float("tanh"), fusion=Fusion.ELEMENTWISE, grad=_g_tanh, arity=1)
register("swish", infer=_same_float("swish"), fusion=Fusion.ELEMENTWISE, grad=_g_swish, arity=1,
         doc="x * sigmoid(x)")
register("softplus", infer=_same_float("softplus"), fusion=Fusion.ELEMENTWISE, grad=_g_softplus,
         arity=1, doc="log(1 + exp(x))")
register("exp", infer=_same_float("exp"), fusion=Fusion.ELEMENTWISE, grad=_g_exp, arity=1)
register("log", infer=_same_float("log"), fusion=Fusion.ELEMENTWISE, grad=_g_log, arity=1)
register("sqrt", infer=_same_float("sqrt"), fusion=Fusion.ELEMENTWISE, grad=_g_sqrt, arity=1)
register("square", infer=_same("square"), fusion=Fusion.ELEMENTWISE, grad=_g_square, arity=1)
register("abs", infer=_same("abs"), fusion=Fusion.ELEMENTWISE, grad=_g_abs, arity=1)
register("sign", infer=_same("sign"), fusion=Fusion.ELEMENTWISE, grad=NOT_DIFFERENTIABLE, arity=1)

# Gradient helpers: op(dy, y) uses the forward output, op(dy, x) the forward input.
register("relu_grad", infer=_grad_pair("relu_grad"), fusion=Fusion.ELEMENTWISE,
         grad=_g_relu_grad, arity=2, doc="dy * (y > 0)")
register("leaky_relu_grad", infer=_grad_pair("leaky_relu_grad"), fusion=Fusion.ELEMENTWISE,
         grad=NOT_DIFFERENTIABLE, arity=2, doc="dy * (1 if x > 0 else alpha)")
register("elu_grad", infer=_grad_pair("elu_grad"), fusion=Fusion.ELEMENTWISE,
         grad=NOT_DIFFERENTIABLE, arity=2, doc="dy * (1 if x > 0 else alpha * exp(x))")
register("gelu_grad", infer=_grad_pair("gelu_grad"), fusion=Fusion.ELEMENTWISE,
         grad=NOT_DIFFERENTIABLE, arity=2)
register("sigmoid_grad", infer=_grad_pair("sigmoid_grad"), fusion=Fusion.ELEMENTWISE,
         grad=NOT_DIFFERENTIABLE, arity=2, doc="dy * y * (1 - y)")
register("tanh_grad", infer=_grad_pair("tanh_grad"), fusion=Fusion.ELEMENTWISE,
         grad=NOT_DIFFERENTIABLE, arity=2, doc="dy * (1 - y^2)")
register("swish_grad", infer=_grad_pair("swish_grad"), fusion=Fusion.ELEMENTWISE,
         grad=NOT_DIFFERENTIABLE, arity=2, doc="dy * (s + x * s * (1 - s)), s = sigmoid(x)")


# ------------------------------------------------------------------------------------ binary broadcasting

def _g_add(g, node, dys):
    return [dys[0], dys[0]]


def _g_sub(g, node, dys):
    return [dys[0], g.emit1("neg", [dys[0]])]


def _g_mul(g, node, dys):
    a, b = node.inputs
    return [g.emit1("mul", [dys[0], b]), g.emit1("mul", [dys[0], a])]


def _g_div(g, node, dys):
    a, b = node.inputs
    da = g.emit1("div", [dys[0], b])
    db = g.emit1("neg", [g.emit1("div", [g.emit1("mul", [dys[0], node.outputs[0]]), b])])
    return [da, db]


def _g_maximum(g, node, dys):
    # d max(a, b) / da = (sign(a - b) + 1) / 2: 1 where a wins, 0 where b wins, a half each at ties.
    a, b = node.inputs
    dtype = node.outputs[0].type.dtype
    diff_sign = g.emit1("sign", [g.emit1("sub", [a, b])])
    share = g.emit1("mul", [g.emit1("add", [diff_sign, _const(g, 1.0, dtype)]), _const(g, 0.5, dtype)])
    da = g.emit1("mul", [dys[0], share])
    db = g.emit1("sub", [dys[0], da])
    return [da, db]


register("add", infer=_broadcast("add"), fusion=Fusion.BROADCAST, grad=_g_add, arity=2)
register("sub", infer=_broadcast("sub"), fusion=Fusion.BROADCAST, grad=_g_sub, arity=2)
register("mul", infer=_broadcast("mul"), fusion=Fusion.BROADCAST, grad=_g_mul, arity=2)
register("div", infer=_broadcast("div"), fusion=Fusion.BROADCAST, grad=_g_div, arity=2)
register("maximum", infer=_broadcast("maximum"), fusion=Fusion.BROADCAST, grad=_g_maximum, arity=2)


# ------------------------------------------------------------------------------------ constants and casts

def _infer_constant(attrs, types):
    dtype = attrs.get("dtype", "f32")
    if dtype not in _DTYPE_ORDER:
        raise ShapeError(f"constant: unknown dtype {dtype!r}")
    if "value" not in attrs:
        raise ShapeError("constant needs a value")
    shape = tuple(attrs.get("shape", ()))
    if any(not isinstance(d, int) or d < 1 for d in shape):
        raise ShapeError(f"constant: bad shape {shape!r}")
    return [TensorType(shape, dtype)]


def _infer_constant_values(attrs, types):
    dtype = attrs.get("dtype", "f32")
    if dtype not in _DTYPE_ORDER:
        raise ShapeError(f"constant_values: unknown dtype {dtype!r}")
    values = attrs.get("values")
    if not isinstance(values, tuple) or not values or not all(isinstance(v, float) for v in values):
        raise ShapeError("constant_values needs a non-empty tuple of floats")
    return [TensorType((len(values),), dtype)]


def _infer_cast(attrs, types):
    dtype = attrs.get("dtype")
    if dtype not in _DTYPE_ORDER:
        raise ShapeError(f"cast: unknown dtype {dtype!r}")
    return [types[0].with_dtype(dtype)]


def _infer_zeros_like(attrs, types):
    return [types[0]]


register("constant", infer=_infer_constant, fusion=Fusion.ELEMENTWISE, grad=NOT_DIFFERENTIABLE,
         arity=0, doc="a scalar, or an array of one value with `shape`; float dtypes run in the executor's "
                      "float dtype")
register("constant_values", infer=_infer_constant_values, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=0, doc="a vector of the given `values` (per-feature statistics written in the source); made once "
                      "per executor, as constants are")
register("cast", infer=_infer_cast, fusion=Fusion.ELEMENTWISE, grad=NOT_DIFFERENTIABLE, arity=1)
register("zeros_like", infer=_infer_zeros_like, fusion=Fusion.ELEMENTWISE, grad=NOT_DIFFERENTIABLE,
         arity=1, doc="zeros of x's shape and dtype: the gradient of an input that does not reach the loss")


# -------------------------------------------------------------------------------------------- softmax

def _infer_softmax(op: str):
    def infer(attrs, types):
        _require_float(op, types[0])
        _norm_axis(attrs.get("axis", -1), types[0].rank, op)
        return [types[0]]
    return infer


def _infer_softmax_grad(op: str):
    pair = _grad_pair(op)

    def infer(attrs, types):
        _norm_axis(attrs.get("axis", -1), types[1].rank, op)
        return pair(attrs, types)
    return infer


def _g_softmax(g, node, dys):
    return [g.emit1("softmax_grad", [dys[0], node.outputs[0]], {"axis": node.attr("axis", -1)})]


def _g_log_softmax(g, node, dys):
    return [g.emit1("log_softmax_grad", [dys[0], node.outputs[0]], {"axis": node.attr("axis", -1)})]


register("softmax", infer=_infer_softmax("softmax"), fusion=Fusion.OPAQUE, grad=_g_softmax, arity=1)
register("log_softmax", infer=_infer_softmax("log_softmax"), fusion=Fusion.OPAQUE,
         grad=_g_log_softmax, arity=1)
register("softmax_grad", infer=_infer_softmax_grad("softmax_grad"), fusion=Fusion.OPAQUE,
         grad=NOT_DIFFERENTIABLE, arity=2, doc="y * (dy - sum(dy * y, axis))")
register("log_softmax_grad", infer=_infer_softmax_grad("log_softmax_grad"), fusion=Fusion.OPAQUE,
         grad=NOT_DIFFERENTIABLE, arity=2, doc="dy - exp(y) * sum(dy, axis)")


# --------------------------------------------------------------------------------------------- matmul

def _infer_matmul(attrs, types):
    a, b = types
    if a.rank < 1 or b.rank != 2:
        raise ShapeError(f"matmul needs a[..., k] and b[k, m], got {format_shape(a.shape)} and "
                         f"{format_shape(b.shape)}")
    if a.shape[-1] != b.shape[0]:
        raise ShapeError(f"matmul: inner dimensions differ: {format_shape(a.shape)} @ {format_shape(b.shape)}")
    return [TensorType(a.shape[:-1] + (b.shape[1],), _promote(a.dtype, b.dtype))]


def _infer_matmul_tn(attrs, types):
    a, d = types
    if a.rank < 1 or d.rank != a.rank or a.shape[:-1] != d.shape[:-1]:
        raise ShapeError(f"matmul_tn needs a[..., k] and dy[..., m] with equal leading dimensions, got "
                         f"{format_shape(a.shape)} and {format_shape(d.shape)}")
    return [TensorType((a.shape[-1], d.shape[-1]), _promote(a.dtype, d.dtype))]


def _g_matmul(g, node, dys):
    a, b = node.inputs
    dy = dys[0]
    da = g.emit1("matmul", [dy, g.emit1("transpose", [b], {"perm": (1, 0)})])
    db = g.emit1("matmul_tn", [a, dy])
    return [da, db]


def _g_matmul_tn(g, node, dys):
    a, d = node.inputs
    dw = dys[0]                                   # [k, m]
    da = g.emit1("matmul", [d, g.emit1("transpose", [dw], {"perm": (1, 0)})])
    dd = g.emit1("matmul", [a, dw])
    return [da, dd]


def _batch_matrices(t: TensorType, transposed: bool) -> tuple[Any, Any]:
    """(rows, columns) of the matrices an operand of batch_matmul stands for, after its transpose flag."""
    rows, cols = t.shape[-2:]
    return (cols, rows) if transposed else (rows, cols)


def _infer_batch_matmul(attrs, types):
    a, b = types
    ta, tb = bool(attrs.get("transpose_a", False)), bool(attrs.get("transpose_b", False))
    words = f"{format_shape(a.shape)}{'^T' if ta else ''} @ {format_shape(b.shape)}{'^T' if tb else ''}"
    if a.rank < 2 or b.rank != a.rank:
        raise ShapeError(f"batch_matmul needs a[..., m, k] and b[..., k, n] of one rank (at least 2), got {words}")
    if a.shape[:-2] != b.shape[:-2]:
        raise ShapeError(f"batch_matmul needs equal leading (batch) dimensions, got {words}")
    (m, k), (k2, n) = _batch_matrices(a, ta), _batch_matrices(b, tb)
    if k != k2:
        raise ShapeError(f"batch_matmul: inner dimensions differ ({k} and {k2}): {words}")
    _require_float("batch_matmul", a, "a")
    _require_float("batch_matmul", b, "b")
    return [TensorType(a.shape[:-2] + (m, n), _promote(a.dtype, b.dtype))]


def _g_batch_matmul(g, node, dys):
    """C = A' @ B' (A' = A or A^T, B' likewise): dA' = dC @ B'^T and dB' = A'^T @ dC, each written as one
    batch_matmul of the stored operands, so no transpose is ever materialized."""
    a, b = node.inputs
    dc = dys[0]
    ta, tb = bool(node.attr("transpose_a", False)), bool(node.attr("transpose_b", False))

    def product(x, y, tx: bool, ty: bool):
        return g.emit1("batch_matmul", [x, y], {"transpose_a": tx, "transpose_b": ty})

    if not ta and not tb:
        return [product(dc, b, False, True), product(a, dc, True, False)]
    if not ta and tb:
        return [product(dc, b, False, False), product(dc, a, True, False)]
    if ta and not tb:
        return [product(b, dc, False, True), product(a, dc, False, False)]
    return [product(b, dc, True, True), product(dc, a, True, True)]


register("matmul", infer=_infer_matmul, fusion=Fusion.OUTPUT_FUSABLE, grad=_g_matmul, arity=2,
         doc="a[..., k] @ b[k, m] -> [..., m]")
register("matmul_tn", infer=_infer_matmul_tn, fusion=Fusion.OUTPUT_FUSABLE, grad=_g_matmul_tn, arity=2,
         doc="a.reshape(-1, k).T @ dy.reshape(-1, m) -> [k, m]: the weight gradient of matmul")
register("batch_matmul", infer=_infer_batch_matmul, fusion=Fusion.OPAQUE, grad=_g_batch_matmul, arity=2,
         doc="a[B..., m, k] @ b[B..., k, n] -> [B..., m, n], one product per batch index (equal leading "
             "dimensions); transpose_a / transpose_b read an operand's last two axes swapped")


# ----------------------------------------------------------------------------------------- reductions

def _infer_reduce(op: str):
    def infer(attrs, types):
        x = types[0]
        axes = normalize_axes(attrs.get("axes"), x.rank, op)
        if op != "reduce_sum":
            _require_float(op, x)
        return [x.with_shape(reduced_shape(x.shape, axes, bool(attrs.get("keepdims", False))))]
    return infer


def _reduce_attrs(node) -> dict[str, Any]:
    return {"axes": normalize_axes(node.attr("axes"), node.inputs[0].type.rank),
            "keepdims": bool(node.attr("keepdims", False))}


def _g_reduce_sum(g, node, dys):
    return [g.emit1("broadcast_like", [dys[0], node.inputs[0]], _reduce_attrs(node))]


def _g_reduce_mean(g, node, dys):
    return [g.emit1("broadcast_like", [dys[0], node.inputs[0]], {**_reduce_attrs(node), "mean": True})]


def _g_reduce_max(g, node, dys):
    return [g.emit1("reduce_max_grad", [dys[0], node.inputs[0]], _reduce_attrs(node))]


def _infer_broadcast_like(op: str):
    def infer(attrs, types):
        dy, x = types
        axes = normalize_axes(attrs.get("axes"), x.rank, op)
        expected = reduced_shape(x.shape, axes, bool(attrs.get("keepdims", False)))
        if dy.shape != expected:
            raise ShapeError(f"{op}: gradient shape {format_shape(dy.shape)} does not match the reduced "
                             f"shape {format_shape(expected)}")
        return [x.with_dtype(dy.dtype)]
    return infer


def _g_broadcast_like(g, node, dys):
    op = "reduce_mean" if node.attr("mean", False) else "reduce_sum"
    attrs = {"axes": normalize_axes(node.attr("axes"), node.inputs[1].type.rank),
             "keepdims": bool(node.attr("keepdims", False))}
    return [g.emit1(op, [dys[0]], attrs), None]


register("reduce_sum", infer=_infer_reduce("reduce_sum"), fusion=Fusion.REDUCTION, grad=_g_reduce_sum,
         arity=1)
register("reduce_mean", infer=_infer_reduce("reduce_mean"), fusion=Fusion.REDUCTION,
         grad=_g_reduce_mean, arity=1)
register("reduce_max", infer=_infer_reduce("reduce_max"), fusion=Fusion.REDUCTION, grad=_g_reduce_max,
         arity=1)
register("broadcast_like", infer=_infer_broadcast_like("broadcast_like"), fusion=Fusion.BROADCAST,
         grad=_g_broadcast_like, arity=2,
         doc="dy (reduced over axes) broadcast back to x's shape; mean=True divides by the reduced count")
register("reduce_max_grad", infer=_infer_broadcast_like("reduce_max_grad"), fusion=Fusion.OPAQUE,
         grad=NOT_DIFFERENTIABLE, arity=2,
         doc="dy routed to the first maximum (row-major) of x over axes")


# ------------------------------------------------------------------------------------- data movement

def _infer_reshape(attrs, types):
    x = types[0]
    target = attrs.get("shape")
    if target is None:
        raise ShapeError("reshape needs a shape")
    target = tuple(target)
    for d in target:
        if not (isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= -1)):
            raise ShapeError(f"reshape: bad dimension {d!r} in {format_shape(target)}")
    src_syms = sorted(d for d in x.shape if isinstance(d, str))
    dst_syms = sorted(d for d in target if isinstance(d, str))
    src_size = x.concrete_size()
    known = 1
    for d in target:
        if isinstance(d, int) and d != -1:
            known *= d
    if target.count(-1) > 1:
        raise ShapeError("reshape: at most one -1 dimension")
    if -1 in target:
        if src_syms or dst_syms:
            raise ShapeError("reshape: -1 cannot be combined with the batch dimension; give the "
                             "static sizes")
        if known == 0 or src_size % known:
            raise ShapeError(f"cannot reshape {format_shape(x.shape)} to {format_shape(target)}")
        target = tuple(src_size // known if d == -1 else d for d in target)
        known = src_size
    if src_syms != dst_syms or src_size != known:
        raise ShapeError(f"cannot reshape {format_shape(x.shape)} to {format_shape(target)}")
    return [x.with_shape(target)]


def _g_reshape(g, node, dys):
    return [g.emit1("reshape", [dys[0]], {"shape": tuple(node.inputs[0].type.shape)})]


def _infer_transpose(attrs, types):
    x = types[0]
    perm = tuple(attrs.get("perm", tuple(reversed(range(x.rank)))))
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"transpose: {perm} is not a permutation of the {x.rank} axes")
    return [x.with_shape(tuple(x.shape[p] for p in perm))]


def _g_transpose(g, node, dys):
    rank = node.inputs[0].type.rank
    perm = tuple(node.attr("perm", tuple(reversed(range(rank)))))
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return [g.emit1("transpose", [dys[0]], {"perm": tuple(inverse)})]


def _check_pads(op: str, x: TensorType, pads) -> tuple[tuple[int, int], ...]:
    if pads is None or len(pads) != x.rank:
        raise ShapeError(f"{op} needs one (before, after) pair per axis of {format_shape(x.shape)}")
    result = []
    for dim, pair in zip(x.shape, pads):
        before, after = (int(p) for p in pair)
        if before < 0 or after < 0:
            raise ShapeError(f"{op}: negative padding {tuple(pair)}")
        if isinstance(dim, str) and (before or after):
            raise ShapeError(f"{op}: cannot pad the batch dimension {dim}")
        result.append((before, after))
    return tuple(result)


def _infer_pad(attrs, types):
    x = types[0]
    pads = _check_pads("pad", x, attrs.get("pads"))
    return [x.with_shape(tuple(d if isinstance(d, str) else d + b + a for d, (b, a) in zip(x.shape, pads)))]


def _infer_crop(attrs, types):
    x = types[0]
    pads = _check_pads("crop", x, attrs.get("pads"))
    shape = []
    for d, (b, a) in zip(x.shape, pads):
        if isinstance(d, str):
            shape.append(d)
        elif d - b - a < 0:
            raise ShapeError(f"crop: cannot remove {b + a} elements from a dimension of {d}")
        else:
            shape.append(d - b - a)
    return [x.with_shape(tuple(shape))]


def _g_pad(g, node, dys):
    return [g.emit1("crop", [dys[0]], {"pads": node.attr("pads")})]


def _g_crop(g, node, dys):
    return [g.emit1("pad", [dys[0]], {"pads": node.attr("pads"), "value": 0.0})]


def _infer_concat(attrs, types):
    if not types:
        raise ShapeError("concat needs at least one input")
    first = types[0]
    axis = _norm_axis(attrs.get("axis", -1), first.rank, "concat")
    total = 0
    dtype = first.dtype
    for t in types:
        if t.rank != first.rank:
            raise ShapeError(f"concat: ranks differ: {format_shape(first.shape)} and {format_shape(t.shape)}")
        for i, (a, b) in enumerate(zip(first.shape, t.shape)):
            if i != axis and a != b:
                raise ShapeError(f"concat along axis {axis}: shapes {format_shape(first.shape)} and "
                                 f"{format_shape(t.shape)} differ in axis {i}")
        if isinstance(t.shape[axis], str):
            raise ShapeError(f"concat: cannot concatenate along the batch dimension {t.shape[axis]}")
        total += t.shape[axis]
        dtype = _promote(dtype, t.dtype)
    shape = list(first.shape)
    shape[axis] = total
    return [TensorType(tuple(shape), dtype)]


def _g_concat(g, node, dys):
    axis = _norm_axis(node.attr("axis", -1), node.inputs[0].type.rank, "concat")
    grads = []
    start = 0
    for value in node.inputs:
        stop = start + value.type.shape[axis]
        grads.append(g.emit1("slice", [dys[0]], {"axis": axis, "start": start, "stop": stop}))
        start = stop
    return grads


def slice_bounds(attrs, x: TensorType) -> tuple[int, int, int]:
    """(axis, start, stop) normalized against x's static dimension."""
    axis = _norm_axis(attrs.get("axis", 0), x.rank, "slice")
    dim = x.shape[axis]
    if isinstance(dim, str):
        raise ShapeError(f"slice: cannot slice the batch dimension {dim}")
    start, stop, _ = slice(attrs.get("start"), attrs.get("stop")).indices(dim)
    return axis, start, max(start, stop)


def _infer_slice(attrs, types):
    x = types[0]
    axis, start, stop = slice_bounds(attrs, x)
    shape = list(x.shape)
    shape[axis] = stop - start
    return [x.with_shape(tuple(shape))]


def _g_slice(g, node, dys):
    x = node.inputs[0].type
    axis, start, stop = slice_bounds(node.attr_dict, x)
    pads = [(0, 0)] * x.rank
    pads[axis] = (start, x.shape[axis] - stop)
    return [g.emit1("pad", [dys[0]], {"pads": tuple(pads), "value": 0.0})]


register("reshape", infer=_infer_reshape, fusion=Fusion.INJECTIVE, grad=_g_reshape, arity=1)
register("transpose", infer=_infer_transpose, fusion=Fusion.INJECTIVE, grad=_g_transpose, arity=1)
register("pad", infer=_infer_pad, fusion=Fusion.INJECTIVE, grad=_g_pad, arity=1)
register("crop", infer=_infer_crop, fusion=Fusion.INJECTIVE, grad=_g_crop, arity=1,
         doc="removes pads[i] = (before, after) elements from each axis: the inverse of pad")
register("concat", infer=_infer_concat, fusion=Fusion.INJECTIVE, grad=_g_concat, arity=None)
register("slice", infer=_infer_slice, fusion=Fusion.INJECTIVE, grad=_g_slice, arity=1,
         doc="x[start:stop] along axis")


# -------------------------------------------------------------------------------------------- dropout

def _infer_dropout_mask(attrs, types):
    rate = attrs.get("rate")
    if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ShapeError(f"dropout rate must be in [0, 1), got {rate!r}")
    _require_float("dropout_mask", types[0])
    return [types[0]]


register("dropout_mask", infer=_infer_dropout_mask, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=1, stochastic=True,
         doc="random 0 or 1/(1-rate) in x's shape; its value does not depend on x's values")


def _infer_normal_noise(attrs, types):
    stddev = attrs.get("stddev")
    if not isinstance(stddev, (int, float)) or isinstance(stddev, bool) or not stddev >= 0.0:
        raise ShapeError(f"normal_noise stddev must be a number >= 0, got {stddev!r}")
    _require_float("normal_noise", types[0])
    return [types[0]]


register("normal_noise", infer=_infer_normal_noise, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE,
         arity=1, stochastic=True,
         doc="normal draws of mean 0 and standard deviation stddev in x's shape; independent of x's values")


# --------------------------------------------------------------------------------------------- losses

def _infer_sparse(op: str):
    def infer(attrs, types):
        logits, labels = types
        _require_float(op, logits)
        if logits.rank < 1 or labels.shape != logits.shape[:-1]:
            raise ShapeError(f"{op}: labels of shape {format_shape(labels.shape)} do not match "
                             f"predictions of shape {format_shape(logits.shape)} (expected "
                             f"{format_shape(logits.shape[:-1])})")
        return [logits.with_shape(logits.shape[:-1])]
    return infer


def _infer_sparse_grad(op: str):
    sparse = _infer_sparse(op)

    def infer(attrs, types):
        dloss, logits, labels = types
        (loss,) = sparse(attrs, [logits, labels])
        if dloss.shape != loss.shape:
            raise ShapeError(f"{op}: gradient shape {format_shape(dloss.shape)} differs from "
                             f"{format_shape(loss.shape)}")
        return [logits]
    return infer


def _infer_dense(op: str):
    def infer(attrs, types):
        pred, target = types
        _require_float(op, pred)
        shape = broadcast_shapes(pred.shape, target.shape)
        axis = _norm_axis(attrs.get("axis", -1), len(shape), op)
        return [TensorType(tuple(d for i, d in enumerate(shape) if i != axis), pred.dtype)]
    return infer


def _infer_dense_grad(op: str):
    def infer(attrs, types):
        dloss, pred, target = types
        shape = broadcast_shapes(pred.shape, target.shape)
        axis = _norm_axis(attrs.get("axis", -1), len(shape), op)
        if dloss.shape != tuple(d for i, d in enumerate(shape) if i != axis):
            raise ShapeError(f"{op}: gradient shape {format_shape(dloss.shape)} does not match")
        return [TensorType(shape, pred.dtype)]
    return infer


def _infer_elementwise_loss(op: str):
    def infer(attrs, types):
        pred, target = types
        _require_float(op, pred)
        return [TensorType(broadcast_shapes(pred.shape, target.shape), pred.dtype)]
    return infer


def _infer_elementwise_loss_grad(op: str):
    def infer(attrs, types):
        dloss, pred, target = types
        shape = broadcast_shapes(pred.shape, target.shape)
        if dloss.shape != shape:
            raise ShapeError(f"{op}: gradient shape {format_shape(dloss.shape)} differs from "
                             f"{format_shape(shape)}")
        return [TensorType(shape, pred.dtype)]
    return infer


def _loss_grad(helper: str, keys: Sequence[str] = ()):
    def rule(g, node, dys):
        attrs = {k: _attr(node, k, -1 if k == "axis" else None) for k in keys}
        return [g.emit1(helper, [dys[0], *node.inputs], attrs), None]
    return rule


def _g_sigmoid_cross_entropy(g, node, dys):
    logits, targets = node.inputs
    diff = g.emit1("sub", [g.emit1("sigmoid", [logits]), targets])
    return [g.emit1("mul", [dys[0], diff]), None]


register("sparse_softmax_cross_entropy", infer=_infer_sparse("sparse_softmax_cross_entropy"),
         fusion=Fusion.OPAQUE, grad=_loss_grad("sparse_softmax_cross_entropy_grad"), arity=2,
         doc="logsumexp(logits) - logits[label], over the last axis")
register("sparse_softmax_cross_entropy_grad", infer=_infer_sparse_grad("sparse_softmax_cross_entropy_grad"),
         fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=3,
         doc="dloss * (softmax(logits) - one_hot(labels))")
register("softmax_cross_entropy", infer=_infer_dense("softmax_cross_entropy"), fusion=Fusion.OPAQUE,
         grad=_loss_grad("softmax_cross_entropy_grad", ("axis",)), arity=2,
         doc="-sum(targets * log_softmax(logits), axis)")
register("softmax_cross_entropy_grad", infer=_infer_dense_grad("softmax_cross_entropy_grad"),
         fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=3,
         doc="dloss * (softmax(logits) * sum(targets) - targets)")
register("sigmoid_cross_entropy", infer=_infer_elementwise_loss("sigmoid_cross_entropy"),
         fusion=Fusion.BROADCAST, grad=_g_sigmoid_cross_entropy, arity=2,
         doc="max(x, 0) - x * t + log1p(exp(-|x|))")
register("binary_crossentropy", infer=_infer_elementwise_loss("binary_crossentropy"),
         fusion=Fusion.BROADCAST, grad=_loss_grad("binary_crossentropy_grad"), arity=2,
         doc="-(t log p + (1 - t) log(1 - p)), p clipped to [1e-7, 1 - 1e-7]")
register("binary_crossentropy_grad", infer=_infer_elementwise_loss_grad("binary_crossentropy_grad"),
         fusion=Fusion.BROADCAST, grad=NOT_DIFFERENTIABLE, arity=3)
register("categorical_crossentropy", infer=_infer_dense("categorical_crossentropy"), fusion=Fusion.OPAQUE,
         grad=_loss_grad("categorical_crossentropy_grad", ("axis",)), arity=2,
         doc="-sum(t * log(clip(p / sum(p, axis))), axis)")
register("categorical_crossentropy_grad", infer=_infer_dense_grad("categorical_crossentropy_grad"),
         fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=3)
register("sparse_categorical_crossentropy", infer=_infer_sparse("sparse_categorical_crossentropy"),
         fusion=Fusion.OPAQUE, grad=_loss_grad("sparse_categorical_crossentropy_grad"), arity=2,
         doc="-log(clip(p[label])), over the last axis")
register("sparse_categorical_crossentropy_grad",
         infer=_infer_sparse_grad("sparse_categorical_crossentropy_grad"), fusion=Fusion.OPAQUE,
         grad=NOT_DIFFERENTIABLE, arity=3)
register("huber", infer=_infer_elementwise_loss("huber"), fusion=Fusion.BROADCAST,
         grad=_loss_grad("huber_grad", ("delta",)), arity=2,
         doc="0.5 d^2 if |d| <= delta else delta * (|d| - delta / 2), d = pred - target")
register("huber_grad", infer=_infer_elementwise_loss_grad("huber_grad"), fusion=Fusion.BROADCAST,
         grad=NOT_DIFFERENTIABLE, arity=3, doc="dloss * clip(pred - target, -delta, delta)")
