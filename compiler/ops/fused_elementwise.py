"""The op made by the `fuse-elementwise` pass (nnd.compiler.fuse_elementwise), never by lowering.

`fused_elementwise[key, ops](x0, x1, ...)` carries its computation as a body graph (`Node.body`): the
body's inputs take the node's inputs in order and its outputs, in order, are the node's outputs. Every
output has the group's iteration shape, the broadcast of the inputs' shapes; `key` is a short hash of the
printed body, equal for equal bodies, so that backends compile one kernel per distinct group; `ops` lists
the body's ops for people reading the IR.

Fusion runs after autodiff, so the op needs no gradient rule.
"""
from __future__ import annotations

from typing import Any, Sequence

from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, register
from nnd.compiler.tensor_type import FLOAT_DTYPES, ShapeError, TensorType, broadcast_shapes


def _infer_fused_elementwise(attrs: dict[str, Any], types: Sequence[TensorType]) -> list[TensorType]:
    if not types:
        raise ShapeError("fused_elementwise needs at least one input")
    shape = types[0].shape
    for t in types[1:]:
        shape = broadcast_shapes(shape, t.shape)
    dtypes = [t.dtype for t in types if t.dtype in FLOAT_DTYPES]
    dtype = "f64" if "f64" in dtypes else "f32"
    count = attrs.get("outputs", 1)
    if not isinstance(count, int) or count < 1:
        raise ShapeError(f"fused_elementwise: outputs must be a positive int, got {count!r}")
    return [TensorType(shape, dtype)] * count


register("fused_elementwise", infer=_infer_fused_elementwise, fusion=Fusion.ELEMENTWISE, grad=NOT_DIFFERENTIABLE,
         arity=None, doc="a group of elementwise ops run as one kernel; the node's body holds them")
