"""The fuse-elementwise pass: valid graphs, maximal closed groups, the same numbers as the unfused graph
on every example (forward, loss, gradients, state updates), and the NumPy kernel of fused nodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nnd
from nnd.bench import _id_range, random_array
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.frontend import compile_file
from nnd.compiler.fuse_elementwise import (FUSED_OP, FUSIBLE_OPS, _constant_values, _Groups, body_key,
                                           broadcast_index, find_groups, fuse_elementwise, fuse_groups,
                                           is_fusible)
from nnd.compiler.ir import Graph, print_graph
from nnd.compiler.layers import INFER
from nnd.compiler.passes import PIPELINES, PassManager
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.training_graph import build_training_graph
from nnd.compiler.verify import verify_graph
from nnd.runtime.executor import Executor

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.nnd"))
IDS = [p.stem for p in EXAMPLES]
BEFORE = tuple(p for p in PIPELINES[2] if p != "fuse-elementwise")


def f(*shape, dtype="f32"):
    return TensorType(tuple(shape), dtype)


def graphs_of(path):
    program = compile_file(path)
    name = program.model_name()
    return {"train": build_training_graph(program, name).graph, "infer": program.lower(name, INFER)}


def check_fused_nodes(graph: Graph) -> int:
    count = 0
    for node in graph.nodes:
        if node.op != FUSED_OP:
            continue
        count += 1
        body = node.body
        verify_graph(body)
        assert [v.type for v in body.outputs.values()] == [v.type for v in node.outputs]
        assert [v.type for v in body.inputs] == [v.type for v in node.inputs]
        assert node.attr("key") == body_key(body)
        assert node.attr("outputs") == len(node.outputs)
        assert len([n for n in body.nodes if n.op != "constant"]) >= 2, "a group of one is left alone"
        assert all(n.op in FUSIBLE_OPS or n.op == "constant" for n in body.nodes)
    return count


# ------------------------------------------------------------------------------------------ examples

@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_the_pass_keeps_every_example_graph_valid(path):
    for kind, graph in graphs_of(path).items():
        fused = fuse_elementwise(graph)
        verify_graph(fused)
        check_fused_nodes(fused)
        optimized = PassManager.for_level(2).run(graph)  # verifies after every pass
        check_fused_nodes(optimized)
        # the input graph is untouched: its values still point to its own nodes
        for node in graph.nodes:
            assert all(v.producer is node for v in node.outputs)


def assert_maximal_and_closed(graph: Graph) -> list[list]:
    """Check the groups `find_groups` makes for `graph`; returns them."""
    graph = graph.clone()
    groups = find_groups(graph)
    users = graph.users()
    kept = set(graph.outputs.values()) | set(graph.state_updates.values())
    fused = fuse_groups(graph, groups)
    fused_nodes = [n for n in fused.nodes if n.op == FUSED_OP]
    produced = {v for n in fused.nodes for v in n.outputs}
    made_by = {v: node for node in fused_nodes for v in node.outputs}
    live_groups = 0
    for members in groups:
        inside = set(members)
        nodes = {made_by[v] for m in members for v in m.outputs if v in made_by}
        assert len(nodes) <= 1
        live_groups += len(nodes)
        for member in members:
            for value in member.outputs:
                outside = value in kept or any(u not in inside for u in users.get(value, ()))
                # a value read outside the group stays materialized, one read only inside does not
                assert (value in produced) == outside
                if nodes:
                    assert (value in next(iter(nodes)).outputs) == outside
    assert live_groups == len(fused_nodes)  # one node per group that something reads
    # maximal: no two adjacent groups (or fusible singletons) of one shape could merge
    candidates = [n for n in graph.nodes if is_fusible(n, _constant_values(graph))]
    state = _Groups(graph, candidates)
    for members in groups:
        for member in members[1:]:
            state.try_merge(members[0], member)
    for node in candidates:
        for value in node.inputs:
            producer = value.producer
            if producer in state.group_of and state.group_of[producer] != state.group_of[node] \
                    and producer.outputs[0].type.shape == node.outputs[0].type.shape:
                union = state.members[state.group_of[producer]] + state.members[state.group_of[node]]
                assert not state.convex(sorted(union, key=state.position.__getitem__)), \
                    f"{producer.op} -> {node.op} could still fuse"
    return groups


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_groups_are_maximal_and_never_swallow_a_value_used_outside(path):
    for graph in graphs_of(path).values():
        assert_maximal_and_closed(PassManager(list(BEFORE)).run(graph))


def _feeds(model, graph, batch, seed):
    rng = np.random.default_rng(seed)
    return {v.name: random_array(v.type, batch, rng, _id_range(model, v)) for v in graph.inputs}


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_o2_matches_o0_on_outputs_loss_gradients_and_updates(path):
    results = {}
    for level in (0, 2):
        model = nnd.load(path, opt_level=level, dtype="float64", seed=0)
        trainer = model._get_trainer()
        feeds = _feeds(model, trainer.train_graph, 3, seed=1)
        train = trainer.train_executor.run(feeds, model.params)
        infer = model.predict({k: v for k, v in feeds.items() if k in model.input_names})
        results[level] = ({k: np.asarray(v) for k, v in train.items()}, infer)
        if level == 2 and path.stem in ("tiny_resnet", "vgg_blocks", "forecast"):
            assert any(n.op == FUSED_OP for n in trainer.train_graph.nodes)
    (train0, infer0), (train2, infer2) = results[0], results[2]
    assert train0.keys() == train2.keys()
    for name in train0:
        np.testing.assert_allclose(train2[name], train0[name], rtol=1e-9, atol=1e-11, err_msg=name)
    if isinstance(infer0, dict):
        for name in infer0:
            np.testing.assert_allclose(infer2[name], infer0[name], rtol=1e-9, atol=1e-11)
    else:
        np.testing.assert_allclose(infer2, infer0, rtol=1e-9, atol=1e-11)


def test_node_counts_drop_on_the_training_graphs():
    counts = {}
    for stem in ("mnist_cnn", "tiny_resnet", "vgg_blocks"):
        graph = graphs_of(EXAMPLES[IDS.index(stem)])["train"]
        before = PassManager(list(BEFORE)).run(graph)
        after = fuse_elementwise(before)
        counts[stem] = (len(before.nodes), len(after.nodes))
    print("training-graph nodes before -> after fuse-elementwise:", counts)
    # mnist_cnn's only elementwise nodes are relu_grads between pooling and convolution gradients:
    # groups of one, left alone
    assert counts["mnist_cnn"][1] == counts["mnist_cnn"][0]
    assert counts["tiny_resnet"][1] <= counts["tiny_resnet"][0] - 20
    assert counts["vgg_blocks"][1] < counts["vgg_blocks"][0]


# ------------------------------------------------------------------------------------------ small graphs

def new_graph():
    graph = Graph("g")
    return graph, GraphBuilder(graph)


def run(graph, feeds):
    return Executor(graph, dtype=np.float64).run(feeds)


def test_a_backward_chain_becomes_one_node_with_a_shared_key():
    graph, b = new_graph()
    dy = b.add_input("dy", f("N", 4, 3))
    y = b.add_input("y", f("N", 4, 3))
    bias = b.add_input("bias", f(3))
    outs = []
    for _ in range(2):
        g = b.emit1("relu_grad", [dy, y])
        g = b.emit1("mul", [g, bias])
        g = b.emit1("add", [g, b.emit1("constant", [], {"value": 0.5, "dtype": "f32"})])
        outs.append(b.emit1("softmax", [g]))
    graph.outputs = {"a": outs[0], "b": outs[1]}
    fused = fuse_elementwise(graph)
    verify_graph(fused)
    assert [n.op for n in fused.nodes] == [FUSED_OP, "softmax", FUSED_OP, "softmax"]
    first, second = fused.nodes[0], fused.nodes[2]
    assert first.attr("ops") == ("relu_grad", "mul", "add")
    assert first.inputs == tuple(fused.inputs)  # dy, y, bias in order of first use
    assert first.attr("key") == second.attr("key")
    assert "constant[dtype=f32,value=0.5]" in print_graph(first.body)
    rng = np.random.default_rng(0)
    feeds = {"dy": rng.normal(size=(2, 4, 3)), "y": rng.normal(size=(2, 4, 3)), "bias": rng.normal(size=3)}
    copies = {k: v.copy() for k, v in feeds.items()}
    want, got = run(graph, feeds), run(fused, feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    for name in feeds:  # in-place reuse never writes into the node's inputs
        np.testing.assert_array_equal(feeds[name], copies[name])


def test_values_read_outside_are_outputs_and_a_path_through_another_op_splits_the_group():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 5))
    a = b.emit1("tanh", [x])
    c = b.emit1("mul", [a, a])
    s = b.emit1("softmax", [c])              # c leaves the group and comes back through softmax
    d = b.emit1("add", [c, s])
    e = b.emit1("sigmoid", [d])
    graph.outputs = {"a": a, "e": e}
    groups = assert_maximal_and_closed(graph)
    assert [[n.op for n in g] for g in groups] == [["tanh", "mul"], ["add", "sigmoid"]]
    fused = fuse_elementwise(graph)
    verify_graph(fused)
    assert [n.op for n in fused.nodes] == [FUSED_OP, "softmax", FUSED_OP]
    # a is a graph output and c is read by softmax: both stay materialized
    assert fused.nodes[0].outputs == (fused.outputs["a"], fused.nodes[1].inputs[0])
    x_value = np.random.default_rng(1).normal(size=(3, 5))
    want, got = run(graph, {"x": x_value}), run(fused, {"x": x_value})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_singletons_random_draws_constant_math_integers_and_other_shapes_stay_out():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 4))
    ids = b.add_input("ids", f("N", 4, dtype="i64"))
    lone = b.emit1("relu", [b.emit1("softmax", [x])])
    mask = b.emit1("dropout_mask", [x], {"rate": 0.5})
    k = b.emit1("mul", [b.emit1("constant", [], {"value": 2.0, "dtype": "f32"}),
                        b.emit1("constant", [], {"value": 3.0, "dtype": "f32"})])
    k2 = b.emit1("add", [k, b.emit1("constant", [], {"value": 1.0, "dtype": "f32"})])
    masked = b.emit1("mul", [x, ids])
    small = b.emit1("reduce_sum", [x], {"axes": (1,), "keepdims": True})
    wide = b.emit1("neg", [b.emit1("exp", [small])])          # (N, 1): a group of its own shape
    graph.outputs = {"lone": lone, "mask": mask, "k2": k2, "masked": masked,
                     "wide": b.emit1("add", [x, wide])}
    groups = find_groups(graph)
    assert [[n.op for n in g] for g in groups] == [["exp", "neg"]]
    fused = fuse_elementwise(graph)
    verify_graph(fused)
    assert sum(n.op == FUSED_OP for n in fused.nodes) == 1


def test_random_draws_are_not_reordered_by_a_fused_node():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 4))
    a = b.emit1("tanh", [x])
    m1 = b.emit1("dropout_mask", [a], {"rate": 0.5})   # depends on the would-be group
    m2 = b.emit1("dropout_mask", [x], {"rate": 0.5})
    c = b.emit1("neg", [a])
    graph.outputs = {"m1": m1, "m2": m2, "c": b.emit1("mul", [c, m2])}
    fused = fuse_elementwise(graph)
    verify_graph(fused)
    feeds = {"x": np.random.default_rng(2).normal(size=(6, 4))}
    want, got = run(graph, feeds), run(fused, feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_broadcast_index_patterns():
    assert broadcast_index(("N", 4, 3), ("N", 4, 3)) == ("full",)
    assert broadcast_index((), ("N", 4, 3)) == ("scalar",)
    assert broadcast_index((1, 1), ("N", 4)) == ("scalar",)
    assert broadcast_index((3,), ("N", 4, 3)) == ("trailing", 3)
    assert broadcast_index((4, 3), ("N", 4, 3)) == ("trailing", 12)
    assert broadcast_index((1, 3), ("N", 4, 3)) == ("trailing", 3)
    # (N, 1, 3) against (N, 4, 3): i // 12 picks the row of the input, i % 3 the column
    assert broadcast_index(("N", 1, 3), ("N", 4, 3)) == ("strided", ((12, None, 3), (1, 3, 1)))
    assert broadcast_index((4, 1), ("N", 4, 3)) == ("strided", ((3, 4, 1),))
    assert broadcast_index((5,), ("N", 4, 3)) is None
    assert broadcast_index(("N", 4, 3), (4, 3)) is None
    assert broadcast_index((4, 1), (4, "T")) is None  # a symbolic inner dimension: not supported


def _random_graph(rng: np.random.Generator):
    unary = ["tanh", "sigmoid", "relu", "neg", "square", "exp", "softplus", "swish", "gelu", "elu", "abs"]
    binary = ["add", "sub", "mul", "maximum", "relu_grad", "tanh_grad", "sigmoid_grad", "swish_grad"]
    graph, b = new_graph()
    full = [b.add_input("x0", f("N", 4, 3)), b.add_input("x1", f("N", 4, 3))]
    vector = [b.add_input("v", f(3))]
    values = list(full)
    for _ in range(int(rng.integers(6, 16))):
        kind = rng.random()
        if kind < 0.15:
            node_value = b.emit1("softmax", [values[rng.integers(len(values))]])
        elif kind < 0.5:
            node_value = b.emit1(unary[rng.integers(len(unary))], [values[rng.integers(len(values))]])
            if node_value.producer.op == "exp":
                node_value = b.emit1("tanh", [node_value])
        else:
            op = binary[rng.integers(len(binary))]
            left = values[rng.integers(len(values))]
            right = (vector + values)[rng.integers(len(values) + 1)] if op in ("add", "mul", "sub") \
                else values[rng.integers(len(values))]
            node_value = b.emit1(op, [left, right])
        values.append(node_value)
    picks = rng.choice(len(values), size=min(3, len(values)), replace=False)
    graph.outputs = {f"o{k}": values[int(i)] for k, i in enumerate(picks)}
    graph.outputs["last"] = values[-1]
    return graph


def test_random_graphs_fuse_into_valid_equal_graphs():
    rng = np.random.default_rng(7)
    fused_any = 0
    for _ in range(40):
        graph = _random_graph(rng)
        fused = fuse_elementwise(graph)
        verify_graph(fused)
        check_fused_nodes(fused)
        assert_maximal_and_closed(graph)
        fused_any += sum(n.op == FUSED_OP for n in fused.nodes)
        feeds = {"x0": rng.normal(size=(2, 4, 3)), "x1": rng.normal(size=(2, 4, 3)), "v": rng.normal(size=3)}
        want, got = run(graph, feeds), run(fused, feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12)
    assert fused_any > 20


def test_the_pass_is_in_the_o2_pipeline_after_epilogue_fusion_and_can_be_turned_off():
    assert "fuse-elementwise" in PIPELINES[2]
    assert PIPELINES[2].index("fuse-elementwise") > PIPELINES[2].index("fuse-epilogues")
    assert "fuse-elementwise" not in PassManager.for_level(2, disabled=("fuse-elementwise",)).passes
