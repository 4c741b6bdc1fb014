"""Elementwise fusion: connected groups of elementwise and broadcasting nodes become one node.

`fuse_elementwise` gathers nodes of the ops in `FUSIBLE_OPS` (float values only, no bodies, no random
draws) into groups: producer and consumer join when they have the same output shape (the group's
iteration shape) and the union stays convex, i.e. no path leaves the group and comes back into it, so
that the group can run as one step. Merging repeats until no adjacent pair can join: every group is
maximal in that sense. Each group of two or more nodes becomes one `fused_elementwise` node whose body
(`Node.body`) is the group as a graph of its own:

* the body's inputs are the values the group reads from outside, in order of first use; scalar float
  `constant` nodes are copied into the body instead (the original goes when nothing else reads it);
* the body's outputs are the group's values that something outside reads (a later node, a graph output
  or a state update), in node order: values used only inside the group are never materialized (a group
  nothing reads is dead code and goes);
* `key`, a short hash of the printed body, is equal for equal bodies, so the CUDA backend compiles one
  kernel per distinct group.

Nodes computed from constants alone are left to constant folding. Inputs of a group may broadcast
against the iteration shape in the ways `broadcast_index` describes, which the CUDA code generator
turns into index arithmetic.
"""
from __future__ import annotations

import hashlib
import heapq
import math
from typing import Any

from nnd.compiler.ir import Graph, Node, Value, print_graph
from nnd.compiler.ops import get_op
from nnd.compiler.tensor_type import FLOAT_DTYPES, ShapeError, broadcast_shapes

FUSED_OP = "fused_elementwise"

UNARY_OPS = ("neg", "relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "swish", "softplus", "exp", "log",
             "sqrt", "square", "abs", "sign")
GRAD_OPS = ("relu_grad", "leaky_relu_grad", "elu_grad", "gelu_grad", "sigmoid_grad", "tanh_grad", "swish_grad")
BINARY_OPS = ("add", "sub", "mul", "div", "maximum")
LOSS_OPS = ("sigmoid_cross_entropy", "binary_crossentropy", "binary_crossentropy_grad", "huber", "huber_grad")
# Every op the pass may put in a group; the CUDA code generator has an expression for each.
FUSIBLE_OPS = frozenset(UNARY_OPS + GRAD_OPS + BINARY_OPS + LOSS_OPS)


# ------------------------------------------------------------------------------------------ broadcasting

def broadcast_index(in_shape: tuple, out_shape: tuple) -> tuple[Any, ...] | None:
    """How an operand of `in_shape` is read at flat (row-major) position i of an `out_shape` iteration:

    * `("full",)`: the same shape, element i;
    * `("scalar",)`: one element, element 0;
    * `("trailing", m)`: the operand is a static suffix of the iteration shape (a bias (C,) against
      (N, H, W, C)): element i % m;
    * `("strided", ((div, mod, stride), ...))`: any other broadcast whose iteration shape is static past
      its first axis: element sum(((i // div) % mod) * stride), mod None on the first axis;
    * None when the operand does not broadcast to `out_shape` or the pattern is not supported.
    """
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if in_shape == out_shape:
        return ("full",)
    if len(in_shape) > len(out_shape):
        return None
    padded = (1,) * (len(out_shape) - len(in_shape)) + in_shape
    try:
        if broadcast_shapes(padded, out_shape) != out_shape:
            return None
    except ShapeError:
        return None
    if all(d == 1 for d in padded):
        return ("scalar",)
    first = next(k for k, d in enumerate(padded) if d != 1)
    suffix = out_shape[first:]
    if padded[first:] == suffix and all(isinstance(d, int) for d in suffix):
        return ("trailing", math.prod(suffix))
    if any(not isinstance(d, int) for d in out_shape[1:]):
        return None
    terms = []
    for k, d in enumerate(padded):
        if d == 1:
            continue
        div = math.prod(out_shape[k + 1:])
        stride = math.prod(padded[k + 1:])
        terms.append((div, None if k == 0 else out_shape[k], stride))
    return ("strided", tuple(terms))


# ------------------------------------------------------------------------------------------ the pass

def _is_inlined_constant(node: Node | None) -> bool:
    """A scalar float constant: copied into every body that reads it."""
    return (node is not None and node.op == "constant" and not node.inputs and node.body is None
            and not tuple(node.attr("shape", ()) or ()) and node.outputs[0].type.dtype in FLOAT_DTYPES)


def _constant_values(graph: Graph) -> set[Value]:
    """Values computed from constants alone (no graph input, parameter or random draw reaches them)."""
    result: set[Value] = set()
    for node in graph.nodes:
        if node.body is None and not get_op(node.op).stochastic and all(v in result for v in node.inputs):
            result.update(node.outputs)
    return result


def is_fusible(node: Node, constants: set[Value] | None = None) -> bool:
    """Whether `node` may join an elementwise group."""
    if node.op not in FUSIBLE_OPS or node.body is not None or len(node.outputs) != 1:
        return False
    if get_op(node.op).stochastic:
        return False
    out = node.outputs[0].type
    if out.dtype not in FLOAT_DTYPES:
        return False
    for value in node.inputs:
        if value.type.dtype not in FLOAT_DTYPES or broadcast_index(value.type.shape, out.shape) is None:
            return False
    if constants is not None and all(v in constants for v in node.inputs):
        return False
    return True


class _Groups:
    """Union of fusible nodes into convex groups over one graph's node order."""

    def __init__(self, graph: Graph, candidates: list[Node]):
        self.nodes = graph.nodes
        self.position = {node: i for i, node in enumerate(graph.nodes)}
        self.group_of: dict[Node, int] = {node: i for i, node in enumerate(candidates)}
        self.members: dict[int, list[Node]] = {i: [node] for i, node in enumerate(candidates)}

    def convex(self, members: list[Node]) -> bool:
        """No node outside `members` both depends on the group and feeds it, and no random draw depends
        on it (fusing would then reorder the draws)."""
        inside = set(members)
        positions = [self.position[n] for n in members]
        produced = {v for n in members for v in n.outputs}
        tainted: set[Value] = set()  # values outside the group that depend on it
        for index in range(min(positions), max(positions) + 1):
            node = self.nodes[index]
            if node in inside:
                if any(v in tainted for v in node.inputs):
                    return False
            elif any(v in produced or v in tainted for v in node.inputs):
                if node.body is None and get_op(node.op).stochastic:
                    return False
                tainted.update(node.outputs)
        return True

    def try_merge(self, a: Node, b: Node) -> bool:
        ga, gb = self.group_of[a], self.group_of[b]
        if ga == gb:
            return False
        union = sorted(self.members[ga] + self.members[gb], key=self.position.__getitem__)
        if not self.convex(union):
            return False
        for node in self.members[gb]:
            self.group_of[node] = ga
        self.members[ga] = union
        del self.members[gb]
        return True


def find_groups(graph: Graph) -> list[list[Node]]:
    """The groups of two or more fusible nodes, each in node order, in the order of their first node."""
    constants = _constant_values(graph)
    candidates = [n for n in graph.nodes if is_fusible(n, constants)]
    groups = _Groups(graph, candidates)
    changed = True
    while changed:
        changed = False
        for node in candidates:
            shape = node.outputs[0].type.shape
            for value in node.inputs:
                producer = value.producer
                if (producer in groups.group_of and producer.outputs[0].type.shape == shape
                        and groups.try_merge(producer, node)):
                    changed = True
    found = [members for members in groups.members.values() if len(members) > 1]
    return sorted(found, key=lambda members: groups.position[members[0]])


def build_body(members: list[Node], outputs: list[Value]) -> tuple[Graph, list[Value]]:
    """The body graph of a group and the outside values it reads, in order."""
    produced = {v for n in members for v in n.outputs}
    external: list[Value] = []
    for node in members:
        for value in node.inputs:
            if value not in produced and value not in external and not _is_inlined_constant(value.producer):
                external.append(value)
    body = Graph(FUSED_OP)
    twin: dict[Value, Value] = {}
    for k, value in enumerate(external):
        twin[value] = Value(value.type, f"x{k}")
        body.inputs.append(twin[value])
    for node in members:
        for value in node.inputs:
            if value not in twin:  # an inlined scalar constant
                constant = value.producer
                body.nodes.append(Node("constant", [], [Value(value.type)], dict(constant.attrs)))
                twin[value] = body.nodes[-1].outputs[0]
        outs = [Value(v.type) for v in node.outputs]
        body.nodes.append(Node(node.op, [twin[v] for v in node.inputs], outs, dict(node.attrs)))
        twin.update(zip(node.outputs, outs))
    body.outputs = {f"y{k}": twin[v] for k, v in enumerate(outputs)}
    return body, external


def body_key(body: Graph) -> str:
    return hashlib.sha1(print_graph(body, show_params=False).encode()).hexdigest()[:12]


def fuse_elementwise(graph: Graph) -> Graph:
    graph = graph.clone()  # the fused nodes take over values: keep the input graph's values untouched
    return fuse_groups(graph, find_groups(graph))


def fuse_groups(graph: Graph, groups: list[list[Node]]) -> Graph:
    """The graph with each group (from `find_groups(graph)`) replaced by one fused node. The fused nodes
    take over the values the groups' nodes made: pass a graph nothing else uses (a clone)."""
    if not groups:
        return graph
    users = graph.users()
    kept = set(graph.outputs.values()) | set(graph.state_updates.values())
    position = {node: i for i, node in enumerate(graph.nodes)}
    absorbed: set[Node] = set()
    fused: list[tuple[int, Node]] = []
    for members in groups:
        inside = set(members)
        outputs = [v for n in members for v in n.outputs
                   if v in kept or any(u not in inside for u in users.get(v, ()))]
        absorbed.update(members)
        if not outputs:  # dead code: nothing reads the group
            continue
        body, external = build_body(members, outputs)
        attrs = {"key": body_key(body), "ops": tuple(n.op for n in members), "outputs": len(outputs)}
        last = members[-1]
        node = Node(FUSED_OP, external, outputs, attrs, last.span, last.layer, body)
        fused.append((position[last], node))
    remaining = [n for n in graph.nodes if n not in absorbed]
    # Scalar constants copied into bodies go when nothing outside the bodies reads them any more.
    still_read = set(kept)
    for node in remaining:
        still_read.update(node.inputs)
    for _, node in fused:
        still_read.update(node.inputs)
    remaining = [n for n in remaining if not (_is_inlined_constant(n) and n.outputs[0] not in still_read)]
    out = graph.copy_shallow()
    out.nodes = _stable_order([(position[n], n) for n in remaining] + fused)
    return out


def _stable_order(placed: list[tuple[int, Node]]) -> list[Node]:
    """A topological order of the nodes that keeps their given positions wherever it can: a fused node
    stands where its group's last node stood, and any node that reads it from an earlier position moves
    just after it."""
    maker: dict[Value, int] = {}
    for index, (_, node) in enumerate(placed):
        for value in node.outputs:
            maker[value] = index
    waiting = [0] * len(placed)
    readers: list[list[int]] = [[] for _ in placed]
    for index, (_, node) in enumerate(placed):
        deps = {maker[v] for v in node.inputs if v in maker}
        waiting[index] = len(deps)
        for dep in deps:
            readers[dep].append(index)
    ready = [(placed[i][0], i) for i in range(len(placed)) if not waiting[i]]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        _, index = heapq.heappop(ready)
        order.append(placed[index][1])
        for reader in readers[index]:
            waiting[reader] -= 1
            if not waiting[reader]:
                heapq.heappush(ready, (placed[reader][0], reader))
    if len(order) != len(placed):
        raise AssertionError("fuse-elementwise made a cycle")  # convexity rules this out
    return order
