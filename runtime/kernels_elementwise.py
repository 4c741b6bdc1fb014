"""The array-module kernel of `fused_elementwise`: on NumPy for the groups the generated C does not take
(`kernels_native_elementwise`: small groups, no compiler), on CuPy when no generated kernel is wanted.

The body runs op by op with the backend's own kernels, so results equal the unfused graph's. What fusion
saves here is memory: a body value that dies at a step whose op has an in-place form is overwritten by
that step's result (`out=`), instead of a fresh temporary being allocated, and every intermediate is
dropped as soon as it is dead.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.runtime.kernel_table import NodeKernel, node_kernel

_BINARY_UFUNCS = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "maximum": "maximum"}
_UNARY_UFUNCS = {"neg": "negative", "exp": "exp", "log": "log", "sqrt": "sqrt", "tanh": "tanh", "abs": "absolute"}


def in_place_form(op: str) -> Callable[[Any, list[Any], Any], Any] | None:
    """`fn(xp, args, out)` computing op(*args) into `out`, with the same rounding as the op's kernel."""
    if op in _BINARY_UFUNCS:
        name = _BINARY_UFUNCS[op]
        return lambda xp, args, out: getattr(xp, name)(args[0], args[1], out=out)
    if op in _UNARY_UFUNCS:
        name = _UNARY_UFUNCS[op]
        return lambda xp, args, out: getattr(xp, name)(args[0], out=out)
    if op == "relu":
        return lambda xp, args, out: xp.maximum(args[0], 0, out=out)
    if op == "square":
        return lambda xp, args, out: xp.multiply(args[0], args[0], out=out)
    if op == "relu_grad":
        return lambda xp, args, out: xp.multiply(args[0], args[1] > 0, out=out)
    if op == "tanh_grad":
        def tanh_grad(xp, args, out):
            dy, y = args
            factor = 1.0 - y * y
            return xp.multiply(dy, factor, out=out)
        return tanh_grad
    if op == "sigmoid_grad":
        def sigmoid_grad(xp, args, out):
            dy, y = args
            factor = 1.0 - y
            xp.multiply(dy, y, out=out)
            return xp.multiply(out, factor, out=out)
        return sigmoid_grad
    return None


def fits_result(xp, buffer: Any, args: list[Any]) -> bool:
    """Whether `buffer` (a dying intermediate) can hold the result of an op over `args`."""
    if not isinstance(buffer, xp.ndarray) or buffer.ndim == 0:
        return False
    shapes = [getattr(a, "shape", ()) for a in args]
    dtypes = [getattr(a, "dtype", None) for a in args]
    if any(d is None for d in dtypes) or np.result_type(*dtypes) != buffer.dtype:
        return False
    return np.broadcast_shapes(*shapes) == buffer.shape


@node_kernel("fused_elementwise")
def fused_elementwise(node, executor):
    body = node.body
    if body is None:
        raise NndError("a fused_elementwise node without a body cannot run")
    kernels = executor.backend.kernels
    slot = {value: k for k, value in enumerate(body.inputs)}
    external = len(body.inputs)
    outputs = set(body.outputs.values())
    last_use: dict[Any, int] = {}
    for index, inner in enumerate(body.nodes):
        for value in inner.inputs:
            last_use[value] = index
    steps = []
    for index, inner in enumerate(body.nodes):
        kernel = kernels.get(inner.op)
        if kernel is None or isinstance(kernel, NodeKernel):
            raise NndError(f"the {executor.backend.name} backend cannot run {inner.op} inside a fused node")
        for value in inner.outputs:
            slot[value] = len(slot)
        ins = tuple(slot[v] for v in inner.inputs)
        dying = [j for j, v in enumerate(inner.inputs)
                 if slot[v] >= external and last_use.get(v) == index and v not in outputs
                 and inner.inputs.index(v) == j]
        dead = tuple(sorted({slot[v] for v in inner.inputs if last_use.get(v) == index and v not in outputs}))
        reuse = in_place_form(inner.op) if dying else None
        steps.append((kernel, inner.attr_dict, ins, slot[inner.outputs[0]], reuse, tuple(dying), dead))
    result_slots = [slot[v] for v in body.outputs.values()]
    size = len(slot)

    def run(ctx, attrs, *args):
        xp = ctx.xp
        slots: list[Any] = [*args, *([None] * (size - external))]
        for kernel, inner_attrs, ins, out, reuse, dying, dead in steps:
            values = [slots[j] for j in ins]
            result = None
            if reuse is not None:
                for j in dying:
                    if fits_result(xp, values[j], values):
                        result = reuse(xp, values, values[j])
                        break
            if result is None:
                result = kernel(ctx, inner_attrs, *values)
            for j in dead:
                slots[j] = None
            slots[out] = result
        results = tuple(slots[j] for j in result_slots)
        return results[0] if len(results) == 1 else results

    return run
