"""Ops for sequence layers: folding time into the batch (time_distributed), reversing time
(bidirectional), repeating a vector over steps (repeat_vector), and batch-sized zero states.

* `merge_batch(x[N,T,...]) -> [N*T,...]`: the merged dimension is the symbol `"N*T"` (with T's value), so
  the layers applied per step see a batch of their own;
* `split_batch[batch, steps](x[M,...]) -> [batch, steps, ...]`: the inverse, `batch` naming the symbol;
* `flip[axis](x)`: reverse one axis;
* `tile_steps[steps](x[N,F]) -> [N,steps,F]`;
* `batch_zeros[shape](x) -> zeros[x.shape[0], *shape]`: a zero initial state sized by x's batch;
* `gather_rows(ids[...], table[R,D]) -> [..., D]`: embedding lookup; `gather_rows_grad[rows](dy, ids)`
  scatter-adds the rows back;
* `nonzero_mask(x) -> f32`: 1 where x != 0 (the padding mask of id sequences);
* `attention_bias[steps=(Tq, Tv), causal](keep?) -> f32`: what attention adds to its scores before the
  softmax: 0 where a query may attend a key, a large negative number where it may not. `keep` (optional)
  is 1 for allowed pairs, [N, Tq or 1, Tv or 1]; `causal` also forbids key j > query i. The number is Keras'
  (-1e9; -3e4 in float16, whose range ends at 65504), chosen by the kernel from the dtype the graph runs
  in, so that a float16 run adds no infinity (0 * -inf would be NaN).
"""
from __future__ import annotations

from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, register
from nnd.compiler.tensor_type import ShapeError, TensorType


def _infer_merge(attrs, types):
    (x,) = types
    if x.rank < 2:
        raise ShapeError(f"merge_batch needs a batch of sequences, got {x}")
    batch, steps = x.shape[0], x.shape[1]
    merged = batch * steps if isinstance(batch, int) and isinstance(steps, int) else f"{batch}*{steps}"
    return [x.with_shape((merged, *x.shape[2:]))]


def _infer_split(attrs, types):
    (x,) = types
    return [x.with_shape((attrs["batch"], attrs["steps"], *x.shape[1:]))]


def _g_merge(g, node, dys):
    x = node.inputs[0].type
    return [g.emit1("split_batch", [dys[0]], {"batch": x.shape[0], "steps": x.shape[1]})]


def _g_split(g, node, dys):
    return [g.emit1("merge_batch", [dys[0]])]


def _infer_flip(attrs, types):
    (x,) = types
    axis = attrs["axis"]
    if not -x.rank <= axis < x.rank:
        raise ShapeError(f"flip: axis {axis} is out of range for {x}")
    return [x]


def _g_flip(g, node, dys):
    return [g.emit1("flip", [dys[0]], {"axis": node.attr("axis")})]


def _infer_tile(attrs, types):
    (x,) = types
    if x.rank != 2:
        raise ShapeError(f"tile_steps needs a batch of vectors, got {x}")
    return [x.with_shape((x.shape[0], attrs["steps"], x.shape[1]))]


def _g_tile(g, node, dys):
    return [g.emit1("reduce_sum", [dys[0]], {"axes": (1,), "keepdims": False})]


def _infer_batch_zeros(attrs, types):
    (x,) = types
    return [TensorType((x.shape[0], *attrs["shape"]), x.dtype if x.dtype in ("f32", "f64") else "f32")]


def _g_constant_in_x(g, node, dys):
    return [None]  # the zeros do not depend on x's values, only on its batch size


register("merge_batch", infer=_infer_merge, fusion=Fusion.INJECTIVE, grad=_g_merge, arity=1)
register("split_batch", infer=_infer_split, fusion=Fusion.INJECTIVE, grad=_g_split, arity=1)
register("flip", infer=_infer_flip, fusion=Fusion.INJECTIVE, grad=_g_flip, arity=1)
register("tile_steps", infer=_infer_tile, fusion=Fusion.INJECTIVE, grad=_g_tile, arity=1)
register("batch_zeros", infer=_infer_batch_zeros, fusion=Fusion.OPAQUE, grad=_g_constant_in_x, arity=1)




def _infer_gather(attrs, types):
    ids, table = types
    if ids.dtype not in ("i32", "i64"):
        raise ShapeError(f"gather_rows needs integer ids, got {ids}")
    if table.rank != 2:
        raise ShapeError(f"gather_rows needs a 2-D table, got {table}")
    return [TensorType((*ids.shape, table.shape[1]), table.dtype)]


def _g_gather(g, node, dys):
    ids, table = node.inputs
    return [None, g.emit1("gather_rows_grad", [dys[0], ids], {"rows": table.type.shape[0]})]


def _infer_gather_grad(attrs, types):
    dy, ids = types
    return [TensorType((attrs["rows"], dy.shape[-1]), dy.dtype)]


def _infer_nonzero_mask(attrs, types):
    (ids,) = types
    return [TensorType(ids.shape, "f32")]


register("gather_rows", infer=_infer_gather, fusion=Fusion.OPAQUE, grad=_g_gather, arity=2,
         doc="table[ids]: one row per id, as an embedding lookup")
register("gather_rows_grad", infer=_infer_gather_grad, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=2,
         doc="scatter-add of dy's rows into a zero table at ids")
register("nonzero_mask", infer=_infer_nonzero_mask, fusion=Fusion.ELEMENTWISE, grad=_g_constant_in_x, arity=1,
         doc="1.0 where x != 0, else 0.0 (padding masks of id sequences)")


def _infer_attention_bias(attrs, types):
    rows, cols = attrs["steps"]
    causal = bool(attrs.get("causal", False))
    if not types:
        if not causal:
            raise ShapeError("attention_bias needs a keep mask or causal=True")
        return [TensorType((rows, cols), "f32")]
    (keep,) = types
    if keep.rank != 3 or keep.shape[1] not in (1, rows) or keep.shape[2] not in (1, cols):
        raise ShapeError(f"attention_bias needs a keep mask [N, {rows} or 1, {cols} or 1], got {keep}")
    return [TensorType((keep.shape[0], rows, cols) if causal else keep.shape, "f32")]


def _g_attention_bias(g, node, dys):
    return [None] * len(node.inputs)  # masks carry no gradient


register("attention_bias", infer=_infer_attention_bias, fusion=Fusion.OPAQUE, grad=_g_attention_bias, arity=None,
         doc="0 where a query may attend a key, Keras' large negative number where it may not")
