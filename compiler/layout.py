"""Layout selection: every convolution runs in NHWC (the language's layout) or NCHW, whichever measures
faster on the backend that will run it; transposes go around the ones that switch, and a second pass
cancels the transposes that meet.

* `select_layout` asks the active cost model (`layout_costs`) what a convolution costs in each layout.
  The runtime supplies one that times its own kernels (`nnd.runtime.layout_costs`); without one, as in
  `nnd compile`, the pass changes nothing. A convolution switches only when NCHW is clearly faster
  (`SWITCH_MARGIN`): on a near tie the default and its rounding stay.
* `cancel_transposes` rewrites until nothing changes: a transpose of a transpose becomes one transpose
  of the composed permutation, or disappears when that is the identity; an elementwise op with one input
  (relu, ...) of a transpose read by nothing else becomes the transpose of the op, so that transposes
  sink toward each other and meet. Two NCHW convolutions in a row then pass NCHW data directly; the NHWC
  value stays wherever something else (a gradient, a pooling) reads it.

Both run after differentiation: the gradient ops keep reading the NHWC values, which the transposes
still produce.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

from nnd.compiler.ir import Graph, Node, Value
from nnd.compiler.ops import Fusion, get_op
from nnd.compiler.ops.conv import conv_layout

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
SWITCH_MARGIN = 0.9          # NCHW must cost under 90% of NHWC to be chosen
CONVOLUTIONS = ("conv2d", "conv2d_epilogue")

# node -> {"NHWC": seconds, "NCHW": seconds}
LayoutCosts = Callable[[Node], dict[str, float]]
_COSTS: ContextVar[LayoutCosts | None] = ContextVar("layout_costs", default=None)


def forced_costs(layout: str) -> LayoutCosts:
    """A cost model that always prefers `layout` (NND_LAYOUT, `nnd compile --layout`, tests)."""
    other = "NHWC" if layout == "NCHW" else "NCHW"
    return lambda node: {layout: 1.0, other: 2.0}


@contextmanager
def layout_costs(costs: LayoutCosts | None) -> Iterator[None]:
    """Make `costs` the cost model of `select_layout` inside the block."""
    token = _COSTS.set(costs)
    try:
        yield
    finally:
        _COSTS.reset(token)


def select_layout(graph: Graph) -> Graph:
    costs = _COSTS.get()
    if costs is None:
        return graph
    graph = graph.clone()
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op in CONVOLUTIONS and conv_layout(node.attr_dict) == "NHWC" and _prefers_nchw(costs(node)):
            nodes.extend(_in_nchw(node))
        else:
            nodes.append(node)
    out = graph.copy_shallow()
    out.nodes = nodes
    return out


def _prefers_nchw(costs: dict[str, float]) -> bool:
    return costs["NCHW"] < SWITCH_MARGIN * costs["NHWC"]


def _permuted(value: Value, perm: tuple[int, ...]) -> Value:
    return Value(value.type.with_shape(tuple(value.type.shape[p] for p in perm)))


def _in_nchw(node: Node) -> list[Node]:
    """transpose to NCHW, the convolution in NCHW, transpose back into the node's own output value."""
    x, *others = node.inputs
    (y,) = node.outputs
    x_nchw, y_nchw = _permuted(x, TO_NCHW), _permuted(y, TO_NCHW)
    return [Node("transpose", [x], [x_nchw], {"perm": TO_NCHW}, node.span, node.layer),
            Node(node.op, [x_nchw, *others], [y_nchw], dict(node.attr_dict, layout="NCHW"), node.span, node.layer),
            Node("transpose", [y_nchw], [y], {"perm": TO_NHWC}, node.span, node.layer)]


# ---------------------------------------------------------------------------------------------------
# Cancelling transposes


def cancel_transposes(graph: Graph) -> Graph:
    graph = graph.clone()
    while True:
        rewritten = _rewrite_once(graph)
        if rewritten is None:
            return _drop_unread_transposes(graph)
        graph = rewritten


def _perm(node: Node) -> tuple[int, ...]:
    return tuple(node.attr("perm", tuple(reversed(range(node.inputs[0].type.rank)))))


def _is_unary_elementwise(node: Node) -> bool:
    """One input, one output, each element from the same element: indifferent to the axes' order (a
    fused node's body may broadcast a constant along one axis, so it never qualifies)."""
    return (len(node.inputs) == 1 and len(node.outputs) == 1 and node.body is None
            and get_op(node.op).fusion == Fusion.ELEMENTWISE)


def _rewrite_once(graph: Graph) -> Graph | None:
    """The graph with the first applicable rewrite done, or None when there is none."""
    users = graph.users()
    kept = set(graph.outputs.values()) | set(graph.state_updates.values())
    for index, node in enumerate(graph.nodes):
        inner = node.inputs[0].producer if node.inputs else None
        if inner is None or inner.op != "transpose":
            continue
        if node.op == "transpose":
            replacement = _merge_transposes(inner, node, kept)
        elif (_is_unary_elementwise(node) and len(users.get(node.inputs[0], [])) == 1
              and node.inputs[0] not in kept):
            replacement = _sink_transpose(inner, node)
        else:
            continue
        if replacement is None:
            continue
        return _replace_node(graph, index, *replacement)
    return None


def _merge_transposes(inner: Node, outer: Node, kept: set[Value]) -> tuple[list[Node], dict[Value, Value]] | None:
    inner_perm, outer_perm = _perm(inner), _perm(outer)
    composed = tuple(inner_perm[p] for p in outer_perm)
    source, (result,) = inner.inputs[0], outer.outputs
    if composed == tuple(range(len(composed))):
        if result in kept:
            return None  # an output must stay a value of its own
        return [], {result: source}
    return [Node("transpose", [source], [result], {"perm": composed}, outer.span, outer.layer)], {}


def _sink_transpose(transpose: Node, node: Node) -> tuple[list[Node], dict[Value, Value]]:
    """op(transpose(v)) -> transpose(op(v)), the op on v's layout, into the node's own output value."""
    source, (result,) = transpose.inputs[0], node.outputs
    moved = Value(result.type.with_shape(source.type.shape))
    return [Node(node.op, [source], [moved], node.attr_dict, node.span, node.layer),
            Node("transpose", [moved], [result], {"perm": _perm(transpose)}, transpose.span, transpose.layer)], {}


def _replace_node(graph: Graph, index: int, nodes: list[Node], renamed: dict[Value, Value]) -> Graph:
    """Node `index` replaced by `nodes`; every later read of a value in `renamed` reads its replacement."""
    out = graph.copy_shallow()
    later = []
    for node in graph.nodes[index + 1:]:
        if any(v in renamed for v in node.inputs):
            node = Node(node.op, [renamed.get(v, v) for v in node.inputs], node.outputs, node.attr_dict, node.span,
                        node.layer, node.body)
        later.append(node)
    out.nodes = graph.nodes[:index] + nodes + later
    return out


def _drop_unread_transposes(graph: Graph) -> Graph:
    """Transposes left with no reader (the rewrites bypassed them), last to first."""
    kept = set(graph.outputs.values()) | set(graph.state_updates.values())
    read: set[Value] = set(kept)
    nodes = []
    for node in reversed(graph.nodes):
        if node.op == "transpose" and node.outputs[0] not in read:
            continue
        nodes.append(node)
        read.update(node.inputs)
    out = graph.copy_shallow()
    out.nodes = list(reversed(nodes))
    return out
