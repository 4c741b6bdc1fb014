"""Fusion passes over forward and training graphs.

`fuse_epilogues`: conv2d or matmul, then `add` of a bias vector, then (optionally) relu, sigmoid or tanh,
become one `conv2d_epilogue` / `matmul_epilogue` node that writes the bias and the activation into the
product's buffer: two full-size temporaries and two passes over memory fewer per layer. A step joins only
when the value it consumes has no other user, so every value the backward pass reads (the activation's
output for relu_grad, the logits for the loss) stays materialized.

`fuse_batchnorm_relu`: training batchnorm followed by relu (VGG- and ResNet-style blocks) becomes
batchnorm_train[activation=relu], which writes relu(y) in its normalizing pass: one full-size pass and
temporary fewer. relu_grad reads the relu's output, which the fused node still produces.

`fuse_pool_grad`: relu_grad(maxpool2d_grad(dy, x), x), the backward pass of relu then max pooling
(the relu often inside a conv epilogue), becomes maxpool2d_grad[relu=true](dy, x): the kernel routes
each window's gradient to its winner and zeroes it there unless x > 0, so the full-size gradient is
written once instead of written, read with x and written again.
"""
from __future__ import annotations

from nnd.compiler.ir import Graph, Node, Value
from nnd.compiler.ops.fused import EPILOGUE_ACTIVATIONS

_PRODUCTS = {"conv2d": "conv2d_epilogue", "matmul": "matmul_epilogue"}


def _kept_outputs(graph: Graph) -> set[Value]:
    """Values a fusion must keep materialized whatever their users: the outputs and the state updates."""
    return set(graph.outputs.values()) | set(graph.state_updates.values())


def _with_replacements(graph: Graph, replaced: dict[Node, Node | None]) -> Graph:
    """`graph` with each node in `replaced` swapped for its fused node, or dropped where that is None."""
    out = graph.copy_shallow()
    out.nodes = [replaced.get(n, n) for n in graph.nodes if replaced.get(n, n) is not None]
    return out


def fuse_epilogues(graph: Graph) -> Graph:
    graph = graph.clone()  # the fused nodes take over values: keep the input graph's values untouched
    users = graph.users()
    kept_outputs = _kept_outputs(graph)

    def sole_user(value: Value) -> Node | None:
        found = users.get(value, [])
        return found[0] if len(found) == 1 and value not in kept_outputs else None

    replaced: dict[Node, Node | None] = {}  # absorbed nodes map to None, the last one to the fused node
    for node in graph.nodes:
        if node.op not in _PRODUCTS or node in replaced:
            continue
        add = sole_user(node.outputs[0])
        if add is None or add.op != "add" or add.inputs[0] is not node.outputs[0]:
            continue
        bias = add.inputs[1]
        if bias.type.shape != (node.outputs[0].type.shape[-1],):
            continue
        chain, activation = [node, add], "linear"
        follower = sole_user(add.outputs[0])
        if follower is not None and follower.op in EPILOGUE_ACTIVATIONS and follower.op != "linear":
            chain.append(follower)
            activation = follower.op
        result = chain[-1].outputs[0]
        attrs = dict(node.attrs, activation=activation)
        fused = Node(_PRODUCTS[node.op], [*node.inputs, bias], [result], attrs, node.span, node.layer)
        for absorbed in chain[:-1]:
            replaced[absorbed] = None
        replaced[chain[-1]] = fused
    return _with_replacements(graph, replaced)


def fuse_batchnorm_relu(graph: Graph) -> Graph:
    graph = graph.clone()
    users = graph.users()
    kept_outputs = _kept_outputs(graph)
    replaced: dict[Node, Node | None] = {}
    for node in graph.nodes:
        if node.op != "batchnorm_train" or node.attr("activation", "linear") != "linear":
            continue
        y = node.outputs[0]
        found = users.get(y, [])
        if len(found) != 1 or found[0].op != "relu" or y in kept_outputs:
            continue
        relu = found[0]
        # at the batchnorm's place: users of the batch statistics may come before the relu
        replaced[node] = Node("batchnorm_train", list(node.inputs), [relu.outputs[0], *node.outputs[1:]],
                              dict(node.attr_dict, activation="relu"), node.span, node.layer)
        replaced[relu] = None
    return _with_replacements(graph, replaced)


def fuse_pool_grad(graph: Graph) -> Graph:
    graph = graph.clone()
    users = graph.users()
    kept_outputs = _kept_outputs(graph)
    replaced: dict[Node, Node | None] = {}
    for node in graph.nodes:
        if node.op != "relu_grad":
            continue
        pool = node.inputs[0].producer
        if (pool is None or pool.op != "maxpool2d_grad" or pool.attr("relu")
                or pool.inputs[1] is not node.inputs[1] or len(users.get(pool.outputs[0], [])) != 1
                or pool.outputs[0] in kept_outputs):
            continue
        fused = Node("maxpool2d_grad", list(pool.inputs), [node.outputs[0]], dict(pool.attr_dict, relu=True),
                     pool.span, pool.layer)
        replaced[pool] = None
        replaced[node] = fused
    return _with_replacements(graph, replaced)
