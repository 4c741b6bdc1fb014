"""Simplifying passes: constant folding, common-subexpression elimination, batchnorm folding.

* `fold_constants`: a node of scalar arithmetic whose inputs are all constants becomes one constant;
  `x * 1`, `1 * x`, `x / 1`, `x + 0`, `0 + x` and `x - 0` become `x` when that changes neither shape nor
  dtype; equal constants (batchnorm's momentum and 1 - momentum, one pair per layer) become one node.
* `eliminate_common_subexpressions`: two nodes with the same op, the same inputs and the same attributes
  compute the same values, so the later one goes and its users read the earlier one's outputs. The
  commutative ops (add, mul, maximum) match with their inputs in either order. Stochastic ops (dropout
  masks) and nodes with bodies never merge.
* `fold_batchnorm` (inference graphs): `batchnorm_infer(conv2d(x, w) [+ b], gamma, beta, mean, var)`
  becomes `conv2d(x, w * s) + ((b - mean) * s + beta)` with `s = gamma / sqrt(var + epsilon)`; the same for
  matmul. Parameters are graph inputs, so the folded kernel and bias are computed by IR nodes from the
  parameters, once per run and on weight-sized tensors, while the activation-sized batchnorm disappears
  and the bias add can join the product's epilogue (`fuse-epilogues`).

Values are only evaluated here when they are compile-time constants, with Python floats: the compiler
never runs kernels. Every pass returns a new graph and leaves its input, values included, untouched.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from nnd.compiler.ir import Graph, Node, Value
from nnd.compiler.ops import get_op
from nnd.compiler.tensor_type import FLOAT_DTYPES, ShapeError, TensorType

COMMUTATIVE = frozenset({"add", "mul", "maximum"})


# ------------------------------------------------------------------------------------------- helpers

def _canonical(value: Any) -> Any:
    """A hashable key that tells apart what `==` confuses: 1 and 1.0 and True, 0.0 and -0.0."""
    if isinstance(value, tuple):
        return ("tuple", tuple(_canonical(v) for v in value))
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def _attrs_key(node: Node) -> tuple:
    return tuple((k, _canonical(v)) for k, v in node.attrs)


def _rewire(graph: Graph, replace: dict[Value, Value]) -> None:
    """Point the graph's outputs, state updates, output masks and layer records at the replacements."""
    if not replace:
        return
    graph.outputs = {k: replace.get(v, v) for k, v in graph.outputs.items()}
    graph.state_updates = {k: replace.get(v, v) for k, v in graph.state_updates.items()}
    graph.output_masks = {k: replace.get(v, v) for k, v in graph.output_masks.items()}
    graph.layers = [dataclasses.replace(r, output=replace[r.output]) if r.output in replace else r
                    for r in graph.layers]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


_UNARY: dict[str, Callable[[float], float]] = {
    "neg": lambda x: -x,
    "relu": lambda x: x if x > 0 else 0.0,
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "square": lambda x: x * x,
    "abs": abs,
    "sign": lambda x: float((x > 0) - (x < 0)),
    "sigmoid": _sigmoid,
    "tanh": math.tanh,
    "cast": lambda x: x,  # float to float only (checked below): the executor's float dtype decides
}

_BINARY: dict[str, Callable[[float, float], float]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": max,
}

# op -> (position of the neutral constant, its value); for add and mul either side.
_NEUTRAL = {"add": ((0, 1), 0.0), "sub": ((1,), 0.0), "mul": ((0, 1), 1.0), "div": ((1,), 1.0)}


# ------------------------------------------------------------------------------------ fold-constants

def fold_constants(graph: Graph) -> Graph:
    graph = graph.clone()  # nodes get new inputs below: keep the input graph's nodes as they are
    replace: dict[Value, Value] = {}
    known: dict[Value, float] = {}         # float constants' values
    pool: dict[tuple, Value] = {}          # one node per distinct constant
    kept: list[Node] = []
    for node in graph.nodes:
        node.inputs = tuple(replace.get(v, v) for v in node.inputs)
        if node.op != "constant":
            folded = _evaluate(node, known)
            if folded is not None:
                out = node.outputs[0]
                attrs: dict[str, Any] = {"value": folded, "dtype": out.type.dtype}
                if out.type.shape:
                    attrs["shape"] = tuple(out.type.shape)
                node = Node("constant", [], [out], attrs, node.span, node.layer)
            else:
                same = _neutral_operand(node, known)
                if same is not None:
                    replace[node.outputs[0]] = same
                else:
                    kept.append(node)
                continue
        out = node.outputs[0]
        key = _attrs_key(node)
        if key in pool:
            replace[out] = pool[key]
            continue
        pool[key] = out
        value = node.attr("value")
        if out.type.dtype in FLOAT_DTYPES and isinstance(value, (int, float)) and not isinstance(value, bool):
            known[out] = float(value)
        kept.append(node)
    graph.nodes = kept
    _rewire(graph, replace)
    return graph


def _evaluate(node: Node, known: dict[Value, float]) -> float | None:
    """The value of a scalar-arithmetic node over known float constants, or None."""
    if node.body is not None or not node.inputs or len(node.outputs) != 1:
        return None
    if not all(v in known for v in node.inputs):
        return None
    out = node.outputs[0].type
    if out.dtype not in FLOAT_DTYPES or any(isinstance(d, str) for d in out.shape):
        return None
    args = [known[v] for v in node.inputs]
    try:
        if node.op in _UNARY and len(args) == 1:
            result = _UNARY[node.op](args[0])
        elif node.op in _BINARY and len(args) == 2:
            result = _BINARY[node.op](*args)
        else:
            return None
    except (ArithmeticError, ValueError):
        return None
    result = float(result)
    return result if math.isfinite(result) else None


def _neutral_operand(node: Node, known: dict[Value, float]) -> Value | None:
    """x for `x * 1`, `x + 0` and friends, when the result has x's type exactly."""
    rule = _NEUTRAL.get(node.op)
    if rule is None or len(node.inputs) != 2 or node.body is not None:
        return None
    positions, neutral = rule
    out = node.outputs[0]
    for pos in positions:
        const, other = node.inputs[pos], node.inputs[1 - pos]
        if const in known and known[const] == neutral and other.type == out.type:
            return other
    return None


# --------------------------------------------------------------------------------------------- cse

def eliminate_common_subexpressions(graph: Graph) -> Graph:
    graph = graph.clone()
    order: dict[Value, int] = {}
    for value in [*graph.inputs, *graph.params.values()]:
        order[value] = len(order)
    replace: dict[Value, Value] = {}
    seen: dict[tuple, Node] = {}
    kept: list[Node] = []
    for node in graph.nodes:
        node.inputs = tuple(replace.get(v, v) for v in node.inputs)
        op = get_op(node.op)
        if node.body is None and not op.stochastic:
            inputs = list(node.inputs)
            if node.op in COMMUTATIVE:
                inputs.sort(key=lambda v: order.get(v, -1))
            key = (node.op, _attrs_key(node), tuple(inputs))
            first = seen.get(key)
            if first is not None and len(first.outputs) == len(node.outputs):
                for mine, theirs in zip(node.outputs, first.outputs):
                    replace[mine] = theirs
                continue
            seen[key] = node
        for value in node.outputs:
            order[value] = len(order)
        kept.append(node)
    graph.nodes = kept
    _rewire(graph, replace)
    return graph


# ---------------------------------------------------------------------------------- fold-batchnorm

_PRODUCTS = ("conv2d", "matmul")


@dataclasses.dataclass
class _Match:
    norm: Node              # the batchnorm_infer node
    product: Node           # conv2d or matmul
    bias_add: Node | None   # add(product, bias), when there is one
    bias: Value | None


def fold_batchnorm(graph: Graph) -> Graph:
    graph = graph.clone()
    users = graph.users()
    kept_values = set(graph.outputs.values()) | set(graph.state_updates.values())

    def sole_user(value: Value) -> Node | None:
        found = users.get(value, [])
        return found[0] if len(found) == 1 and value not in kept_values else None

    matches: dict[Node, _Match] = {}
    absorbed: set[Node] = set()
    for node in graph.nodes:
        if node.op != "batchnorm_infer":
            continue
        match = _match(node, sole_user)
        if match is not None and match.product not in absorbed:
            matches[node] = match
            absorbed.add(match.product)
            if match.bias_add is not None:
                absorbed.add(match.bias_add)

    epsilons: dict[tuple, Value] = {}  # one epsilon constant per (value, dtype) for the whole pass
    nodes: list[Node] = []
    for node in graph.nodes:
        if node in absorbed:
            continue
        match = matches.get(node)
        if match is None:
            nodes.append(node)
            continue
        folded = _fold(match, epsilons)
        if folded is None:  # types did not work out: keep the original nodes, in their order
            nodes.extend(n for n in (match.product, match.bias_add) if n is not None)
            nodes.append(node)
        else:
            nodes.extend(folded)
    out = graph.copy_shallow()
    out.nodes = nodes
    return out


def _match(norm: Node, sole_user: Callable[[Value], Node | None]) -> _Match | None:
    x = norm.inputs[0]
    channels = x.type.shape[-1]
    if any(v.type.dtype not in FLOAT_DTYPES for v in norm.inputs) or sole_user(x) is not norm:
        return None
    producer = x.producer
    if producer is None:
        return None
    bias_add, bias = None, None
    if producer.op == "add":
        for pos in (0, 1):
            inner, vector = producer.inputs[pos], producer.inputs[1 - pos]
            if (inner.producer is not None and inner.producer.op in _PRODUCTS and inner.type == x.type
                    and vector.type.shape == (channels,) and vector.type.dtype in FLOAT_DTYPES
                    and sole_user(inner) is producer):
                bias_add, bias, producer = producer, vector, inner.producer
                break
        else:
            return None
    if producer.op not in _PRODUCTS or producer.body is not None:
        return None
    if producer.outputs[0].type != x.type or producer.inputs[1].type.shape[-1] != channels:
        return None
    return _Match(norm, producer, bias_add, bias)


def _fold(match: _Match, epsilons: dict[tuple, Value]) -> list[Node] | None:
    norm, product = match.norm, match.product
    _, gamma, beta, mean, var = norm.inputs
    data, kernel = product.inputs
    nodes: list[Node] = []

    def emit(op: str, inputs: list[Value], attrs: dict[str, Any] | None = None, origin: Node = norm) -> Value:
        attrs = attrs or {}
        (out_type,) = get_op(op).infer(attrs, [v.type for v in inputs])
        value = Value(out_type)
        nodes.append(Node(op, inputs, [value], attrs, origin.span, origin.layer))
        return value

    try:
        epsilon = float(norm.attr("epsilon"))
        key = (repr(epsilon), var.type.dtype)
        eps = epsilons.get(key) or emit("constant", [], {"value": epsilon, "dtype": var.type.dtype})
        scale = emit("div", [gamma, emit("sqrt", [emit("add", [var, eps])])])
        folded_kernel = emit("mul", [kernel, scale])
        if match.bias is not None:
            shift = emit("add", [emit("mul", [emit("sub", [match.bias, mean]), scale]), beta])
        else:
            shift = emit("sub", [beta, emit("mul", [mean, scale])])
        product_out = emit(product.op, [data, folded_kernel], product.attr_dict, origin=product)
        result = norm.outputs[0]
        (add_type,) = get_op("add").infer({}, [product_out.type, shift.type])
    except (ShapeError, TypeError, ValueError):
        return None
    if add_type != result.type or not isinstance(add_type, TensorType):
        return None
    nodes.append(Node("add", [product_out, shift], [result], {}, product.span, product.layer))
    epsilons[key] = eps
    return nodes
