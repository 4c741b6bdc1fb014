"""The graph verifier: SSA, topological order, and every node's types agreeing with its op's shape rule."""
from __future__ import annotations

from nnd.compiler.ir import Graph
from nnd.compiler.ops import get_op


class VerificationError(Exception):
    """The compiler built an invalid graph: an internal error, never a user's mistake."""


def verify_graph(graph: Graph) -> None:
    defined = set(graph.inputs) | set(graph.params.values())
    for node in graph.nodes:
        for value in node.inputs:
            if value not in defined:
                raise VerificationError(f"{node.op} uses {value!r} before it is defined")
        try:
            op = get_op(node.op)
        except KeyError as err:
            raise VerificationError(str(err)) from None
        if node.body is None:
            expected = list(op.infer(node.attr_dict, [v.type for v in node.inputs]))
            actual = [v.type for v in node.outputs]
            if expected != actual:
                raise VerificationError(f"{node.op} declares outputs {actual}, its shape rule gives {expected}")
        for value in node.outputs:
            if value in defined:
                raise VerificationError(f"{value!r} is defined twice")
            if value.producer is not node:
                raise VerificationError(f"{value!r} does not point back to the node that defines it")
            defined.add(value)
    for name, value in list(graph.outputs.items()) + list(graph.state_updates.items()):
        if value not in defined:
            raise VerificationError(f"output {name} is never computed")
    for name in graph.state_updates:
        if name not in graph.params:
            raise VerificationError(f"state update of unknown parameter {name}")
