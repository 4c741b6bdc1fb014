"""The autodiff pass: broadcast reduction, summed contributions, unreachable names, errors, provenance."""
from __future__ import annotations

import numpy as np
import pytest

from nnd.compiler.autodiff import differentiate, grad_outputs
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import NndError
from nnd.compiler.ir import Graph, Initializer, Parameter, print_graph
from nnd.compiler.source import Span
from nnd.compiler.tensor_type import TensorType
from nnd.runtime.executor import Executor


def f(*shape, dtype="f32"):
    return TensorType(tuple(shape), dtype)


def new_graph():
    graph = Graph("g")
    return graph, GraphBuilder(graph)


def param(b, name, *shape):
    return b.add_param(Parameter(name, f(*shape), Initializer("zeros")))


def mean_loss(b, value):
    return b.emit1("reduce_mean", [value], {"axes": None})


def run64(graph, inputs, params=None):
    return Executor(graph, dtype=np.float64).run(inputs, params or {})


def test_bias_gradient_is_reduced_over_the_batch():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 3))
    bias = param(b, "bias", 3)
    row = param(b, "row", 1, 3)
    y = b.emit1("add", [b.emit1("add", [x, bias]), row])
    graph.outputs["loss"] = b.emit1("reduce_sum", [b.emit1("square", [y])], {"axes": None})
    grad = differentiate(graph, "loss", ["bias", "row", "x"])
    assert grad.outputs["grad:bias"].type.shape == (3,)
    assert grad.outputs["grad:row"].type.shape == (1, 3)
    assert grad.outputs["grad:x"].type.shape == ("N", 3)
    producer = grad.outputs["grad:bias"].producer
    assert producer.op == "reduce_sum" and producer.attr("axes") == (0,)
    assert grad.outputs["grad:row"].producer.op == "reshape"
    xs = np.random.default_rng(0).normal(size=(5, 3))
    bs, rs = np.array([0.1, -0.2, 0.3]), np.array([[1.0, 2.0, 3.0]])
    out = run64(grad, {"x": xs}, {"bias": bs, "row": rs})
    dy = 2 * (xs + bs + rs)
    np.testing.assert_allclose(out["grad:bias"], dy.sum(0))
    np.testing.assert_allclose(out["grad:row"], dy.sum(0, keepdims=True))
    np.testing.assert_allclose(out["grad:x"], dy)


def test_contributions_of_a_value_used_twice_are_summed():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    y = b.emit1("add", [b.emit1("mul", [x, x]), b.emit1("exp", [x])])
    graph.outputs["loss"] = b.emit1("reduce_sum", [y], {"axes": None})
    grad = differentiate(graph, "loss", ["x"])
    xs = np.array([[0.5, -1.0], [2.0, 0.0]])
    out = run64(grad, {"x": xs})
    np.testing.assert_allclose(out["grad:x"], 2 * xs + np.exp(xs))
    backward = grad.nodes[len(graph.nodes):]
    assert sum(node.op == "add" for node in backward) == 2      # mul's two inputs, then exp's


def test_names_that_do_not_reach_the_loss_get_zeros():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    t = b.add_input("t", f("N", 2))
    unused = param(b, "unused", 4)
    w = param(b, "w", 2)
    b.emit1("mul", [unused, unused])                          # computed but not part of the loss
    through_targets = b.emit1("mul", [t, w])                  # reaches the loss only as a target
    loss = b.emit1("sigmoid_cross_entropy", [x, through_targets])
    graph.outputs["loss"] = mean_loss(b, loss)
    grad = differentiate(graph, "loss", ["unused", "w", "x"])
    assert grad.outputs["grad:unused"].producer.op == "zeros_like"
    assert grad.outputs["grad:w"].producer.op == "zeros_like"
    out = run64(grad, {"x": np.ones((3, 2)), "t": np.ones((3, 2))},
                {"unused": np.full(4, np.inf), "w": np.ones(2)})
    np.testing.assert_array_equal(out["grad:unused"], np.zeros(4))
    np.testing.assert_array_equal(out["grad:w"], np.zeros(2))
    assert out["grad:x"].shape == (3, 2) and np.all(out["grad:x"] != 0)


def test_a_loss_independent_of_everything_still_differentiates():
    graph, b = new_graph()
    param(b, "w", 2)
    graph.outputs["loss"] = b.emit1("constant", [], {"value": 3.0, "dtype": "f32"})
    grad = differentiate(graph, "loss", ["w"])
    np.testing.assert_array_equal(run64(grad, {}, {"w": np.ones(2)})["grad:w"], np.zeros(2))


def test_non_differentiable_op_on_the_path_is_an_error_naming_it():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    span = Span("model.nnd", 4, 9, 4, 20)
    with b.origin(span, "sign_layer"):
        s = b.emit1("sign", [x])
    graph.outputs["loss"] = mean_loss(b, b.emit1("mul", [s, x]))
    with pytest.raises(NndError) as info:
        differentiate(graph, "loss", ["x"])
    message = str(info.value)
    assert "'sign'" in message and "sign_layer" in message and "model.nnd:4:9" in message


def test_non_differentiable_op_off_the_path_is_fine():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    w = param(b, "w", 2)
    graph.outputs["signs"] = b.emit1("sign", [x])             # not between w and the loss
    graph.outputs["loss"] = mean_loss(b, b.emit1("mul", [x, w]))
    grad = differentiate(graph, "loss", ["w"])
    out = run64(grad, {"x": np.array([[1.0, 2.0], [3.0, 4.0]])}, {"w": np.ones(2)})
    np.testing.assert_allclose(out["grad:w"], [1.0, 1.5])


def test_dropout_mask_is_a_constant_for_autodiff():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 4))
    mask = b.emit1("dropout_mask", [x], {"rate": 0.5})
    graph.outputs["mask"] = mask
    graph.outputs["loss"] = b.emit1("reduce_sum", [b.emit1("mul", [x, mask])], {"axes": None})
    grad = differentiate(graph, "loss", ["x"])
    out = run64(grad, {"x": np.ones((3, 4))})
    np.testing.assert_array_equal(out["grad:x"], out["mask"])
    assert set(np.unique(out["mask"]).tolist()) <= {0.0, 2.0}


def test_bad_requests_are_clear_errors():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    w = param(b, "weights", 2)
    y = b.emit1("mul", [x, w])
    graph.outputs["per_sample"] = y
    graph.outputs["loss"] = mean_loss(b, y)
    with pytest.raises(NndError, match="must be a scalar"):
        differentiate(graph, "per_sample", ["weights"])
    with pytest.raises(NndError, match="did you mean 'loss'"):
        differentiate(graph, "los", ["weights"])
    with pytest.raises(NndError, match="did you mean 'weights'"):
        differentiate(graph, "loss", ["weight"])


def test_backward_nodes_carry_their_forward_origin_and_the_input_graph_is_untouched():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 3))
    w = param(b, "dense.kernel", 3, 2)
    span = Span("m.nnd", 2, 5, 2, 30)
    with b.origin(span, "dense"):
        y = b.emit1("matmul", [x, w])
    graph.outputs["loss"] = mean_loss(b, y)
    before = print_graph(graph)
    grad = differentiate(graph, "loss", ["dense.kernel"])
    assert print_graph(graph) == before
    backward = grad.nodes[len(graph.nodes):]
    matmul_grads = [n for n in backward if n.op in ("matmul_tn", "transpose", "matmul")]
    assert matmul_grads and all(n.layer == "dense" and n.span == span for n in matmul_grads)
    assert grad.outputs["loss"] is graph.outputs["loss"]
    assert set(grad_outputs(grad)) == {"dense.kernel"}


def test_mlp_gradients_match_torch():
    torch = pytest.importorskip("torch")
    graph, b = new_graph()
    x = b.add_input("x", f("N", 4))
    labels = b.add_input("labels", f("N", dtype="i64"))
    w1, b1, w2, b2 = param(b, "w1", 4, 5), param(b, "b1", 5), param(b, "w2", 5, 3), param(b, "b2", 3)
    h = b.emit1("gelu", [b.emit1("add", [b.emit1("matmul", [x, w1]), b1])])
    h = b.emit1("mul", [h, b.emit1("sigmoid", [h])])
    logits = b.emit1("add", [b.emit1("matmul", [h, w2]), b2])
    per_sample = b.emit1("sparse_softmax_cross_entropy", [logits, labels])
    graph.outputs["loss"] = mean_loss(b, per_sample)
    grad = differentiate(graph, "loss", ["w1", "b1", "w2", "b2", "x"])

    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(6, 4)), "labels": rng.integers(0, 3, 6)}
    params = {"w1": rng.normal(size=(4, 5)), "b1": rng.normal(size=5),
              "w2": rng.normal(size=(5, 3)), "b2": rng.normal(size=3)}
    out = run64(grad, feeds, params)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(feeds["x"], requires_grad=True)
    th = torch.nn.functional.gelu(tx @ tp["w1"] + tp["b1"])
    th = th * torch.sigmoid(th)
    tloss = torch.nn.functional.cross_entropy(th @ tp["w2"] + tp["b2"], torch.tensor(feeds["labels"]))
    tloss.backward()
    np.testing.assert_allclose(out["loss"], tloss.item(), rtol=1e-12)
    for name, tensor in tp.items():
        np.testing.assert_allclose(out[f"grad:{name}"], tensor.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out["grad:x"], tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_maximum_splits_its_gradient_at_ties_as_torch_does():
    torch = pytest.importorskip("torch")
    graph, b = new_graph()
    x, y = b.add_input("x", f("N", 4)), b.add_input("y", f("N", 4))
    weights = param(b, "weights", 4)
    graph.outputs["loss"] = b.emit1("reduce_sum", [b.emit1("mul", [b.emit1("maximum", [x, y]), weights])],
                                    {"axes": None})
    grad = differentiate(graph, "loss", ["x", "y"])
    xs = np.array([[1.0, 2.0, -3.0, 0.5], [0.0, 4.0, 1.5, -1.0]])
    ys = np.array([[1.0, 0.0, -3.0, 2.5], [0.0, 5.0, 1.5, -2.0]])  # ties in five places
    ws = np.array([1.0, 2.0, 3.0, 4.0])
    out = run64(grad, {"x": xs, "y": ys}, {"weights": ws})
    tx, ty = torch.tensor(xs, requires_grad=True), torch.tensor(ys, requires_grad=True)
    (torch.maximum(tx, ty) * torch.tensor(ws)).sum().backward()
    np.testing.assert_allclose(out["grad:x"], tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out["grad:y"], ty.grad.numpy(), rtol=1e-12)


def test_float32_graph_gradients_stay_float32():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 3))
    w = param(b, "w", 3, 2)
    graph.outputs["loss"] = mean_loss(b, b.emit1("tanh", [b.emit1("matmul", [x, w])]))
    grad = differentiate(graph, "loss", ["w"])
    out = Executor(grad).run({"x": np.ones((2, 3))}, {"w": np.ones((3, 2))})
    assert out["grad:w"].dtype == np.float32 and out["loss"].dtype == np.float32
