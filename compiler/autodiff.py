"""Reverse-mode autodiff as a graph -> graph pass.

`differentiate` walks the nodes between the requested values and the loss in reverse, asks each op's
gradient rule to emit the backward nodes, sums multiple contributions with `add` and returns a new graph
with one output `grad:<name>` per requested name. Rules return gradients in the shape of the op's
(broadcast) output; this is the one place where such a gradient is reduced back to its input's shape.
"""
from __future__ import annotations

from typing import Sequence

from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import Diagnostic, NndError, did_you_mean
from nnd.compiler.ir import Graph, Value
from nnd.compiler.ops import get_op
from nnd.compiler.tensor_type import FLOAT_DTYPES, TensorType, format_shape

GRAD_PREFIX = "grad:"


def differentiate(graph: Graph, loss: str, wrt: Sequence[str]) -> Graph:
    """A copy of `graph` with backward nodes appended and outputs `grad:<name>` for each name in `wrt`.

    `loss` names a scalar output of `graph`; `wrt` names parameters and/or data inputs.
    """
    if loss not in graph.outputs:
        hint = did_you_mean(loss, graph.outputs)
        raise NndError(f"the loss {loss!r} is not an output of graph {graph.name!r}"
                       + (f"; did you mean {hint!r}?" if hint else ""))
    loss_value = graph.outputs[loss]
    if loss_value.type.shape != ():
        raise NndError(f"the loss {loss!r} must be a scalar, but its shape is "
                       f"{format_shape(loss_value.type.shape)}")
    if loss_value.type.dtype not in FLOAT_DTYPES:
        raise NndError(f"the loss {loss!r} must be a float, but its dtype is {loss_value.type.dtype}")

    targets = [_lookup(graph, name) for name in wrt]
    out = graph.copy_shallow()
    builder = GraphBuilder(out)

    on_path = _values_on_path(graph, set(targets), loss_value)
    grads: dict[Value, Value] = {}
    if loss_value in on_path:
        producer = loss_value.producer
        with builder.origin(producer.span if producer else None, producer.layer if producer else None):
            grads[loss_value] = builder.emit1("constant", [], {"value": 1.0, "dtype": loss_value.type.dtype})

    for node in reversed(graph.nodes):
        output_grads = [grads.get(v) for v in node.outputs]
        if all(g is None for g in output_grads):
            continue
        if not any(v in on_path for v in node.inputs):
            continue
        op = get_op(node.op)
        if not op.differentiable:
            raise NndError(Diagnostic(
                f"cannot differentiate through op '{node.op}'"
                + (f" (layer {node.layer})" if node.layer else "")
                + f": it lies between the loss {loss!r} and the values it is differentiated against",
                node.span,
                (f"'{node.op}' has no gradient; make its inputs constants or remove it from the "
                 "path to the loss",)))
        with builder.origin(node.span, node.layer):
            input_grads = op.grad(builder, node, output_grads)
            if len(input_grads) != len(node.inputs):
                raise AssertionError(f"gradient rule of {node.op} returned {len(input_grads)} gradients "
                                     f"for {len(node.inputs)} inputs")
            for value, grad in zip(node.inputs, input_grads):
                if grad is None or value not in on_path:
                    continue
                grad = _unbroadcast(builder, grad, value.type, node.op)
                previous = grads.get(value)
                grads[value] = grad if previous is None else builder.emit1("add", [previous, grad])

    for name, value in zip(wrt, targets):
        grad = grads.get(value)
        if grad is None:
            grad = builder.emit1("zeros_like", [value])
        out.outputs[GRAD_PREFIX + name] = grad
    return out


def _lookup(graph: Graph, name: str) -> Value:
    if name in graph.params:
        return graph.params[name]
    for value in graph.inputs:
        if value.name == name:
            return value
    candidates = list(graph.params) + [v.name for v in graph.inputs if v.name]
    hint = did_you_mean(name, candidates)
    raise NndError(f"cannot differentiate with respect to {name!r}: it is neither a parameter nor an input "
                   f"of graph {graph.name!r}" + (f"; did you mean {hint!r}?" if hint else ""))


def _values_on_path(graph: Graph, sources: set[Value], loss: Value) -> set[Value]:
    """Values that depend on a source through float values and that the loss depends on.

    A stochastic op without a gradient (a dropout mask) draws values independent of its input's values,
    so dependence stops there; integer and boolean values carry no gradient either.
    """
    forward: set[Value] = {v for v in sources if v.type.dtype in FLOAT_DTYPES}
    for node in graph.nodes:
        if not any(v in forward for v in node.inputs):
            continue
        op = get_op(node.op)
        if op.stochastic and not op.differentiable:
            continue
        forward.update(v for v in node.outputs if v.type.dtype in FLOAT_DTYPES)
    if loss not in forward:
        return set()
    backward: set[Value] = {loss}
    for node in reversed(graph.nodes):
        if any(v in backward for v in node.outputs):
            backward.update(v for v in node.inputs if v in forward)
    return forward & backward


def _unbroadcast(builder: GraphBuilder, grad: Value, target: TensorType, op: str) -> Value:
    """Sum a gradient of a broadcast result over the axes its input was broadcast along."""
    shape, want = grad.type.shape, target.shape
    if shape == want:
        return grad
    lead = len(shape) - len(want)
    if lead < 0:
        raise AssertionError(f"gradient rule of {op} returned shape {format_shape(shape)} for an input of "
                             f"shape {format_shape(want)}")
    axes = list(range(lead))
    for i, dim in enumerate(want):
        have = shape[lead + i]
        if have == dim:
            continue
        if dim != 1:
            raise AssertionError(f"gradient rule of {op} returned shape {format_shape(shape)} for an input "
                                 f"of shape {format_shape(want)}")
        axes.append(lead + i)
    if axes:
        grad = builder.emit1("reduce_sum", [grad], {"axes": tuple(axes), "keepdims": False})
    if grad.type.shape != want:
        grad = builder.emit1("reshape", [grad], {"shape": tuple(want)})
    return grad


def grad_outputs(graph: Graph) -> dict[str, Value]:
    """The `grad:<name>` outputs of a differentiated graph, keyed by the differentiated name."""
    return {name[len(GRAD_PREFIX):]: value for name, value in graph.outputs.items()
            if name.startswith(GRAD_PREFIX)}


__all__ = ["differentiate", "grad_outputs", "GRAD_PREFIX"]
