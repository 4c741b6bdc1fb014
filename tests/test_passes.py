"""The optimizing passes: each keeps every example's graphs valid and leaves its input untouched, and the
optimized graphs compute what the unoptimized ones do (outputs, gradients, training steps, predictions)."""
from __future__ import annotations

import glob
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.compiler.autodiff import differentiate
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.frontend import compile_file
from nnd.compiler.ir import Graph, Initializer, Parameter, print_graph
from nnd.compiler.passes import PASSES, PIPELINES, PassManager
from nnd.compiler.report import optimization_report
from nnd.compiler.simplify import eliminate_common_subexpressions, fold_batchnorm, fold_constants
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.output_losses import loss_for
from nnd.compiler.training_graph import build_training_graph, target_type
from nnd.compiler.verify import verify_graph
from nnd.runtime.executor import Executor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.nnd")))
EXAMPLE_IDS = [os.path.basename(p) for p in EXAMPLES]
TINY_RESNET = os.path.join(ROOT, "examples", "tiny_resnet.nnd")


def line_of(path: str, text: str) -> int:
    """The number of the first line of the file at `path` that holds `text` (which may end in a newline)."""
    lines = [line + "\n" for line in open(path).read().splitlines()]
    return next(number for number, line in enumerate(lines, 1) if text in line)
VGG = os.path.join(ROOT, "examples", "vgg_blocks.nnd")
MNIST = os.path.join(ROOT, "examples", "mnist_cnn.nnd")
LSTM = os.path.join(ROOT, "examples", "lstm_classifier.nnd")
BATCHNORM_EXAMPLES = [TINY_RESNET, VGG]

_programs: dict[str, object] = {}


def program(path: str):
    if path not in _programs:
        _programs[path] = compile_file(path)
    return _programs[path]


def graphs_of(path: str) -> list[tuple[str, Graph]]:
    prog = program(path)
    result = []
    for name in prog.graphs:
        result.append((f"{name}/inference", prog.graphs[name]))
        result.append((f"{name}/training", build_training_graph(prog, name).graph))
    return result


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


# ------------------------------------------------------------------------------------------ validity

@pytest.mark.parametrize("path", EXAMPLES, ids=EXAMPLE_IDS)
def test_every_pass_keeps_every_graph_valid_and_its_input_untouched(path):
    for label, graph in graphs_of(path):
        printed = print_graph(graph)
        producers = {v: v.producer for n in graph.nodes for v in n.outputs}
        for name, run in PASSES.items():
            result = run(graph)
            verify_graph(result)
            assert print_graph(graph) == printed, f"{name} changed its input ({label})"
            assert all(v.producer is p for v, p in producers.items()), f"{name} rewired its input ({label})"
        for level in PIPELINES:
            verify_graph(PassManager.for_level(level, verify=True).run(graph))


# --------------------------------------------------------------------- unoptimized vs optimized runs

def random_batch(model, rng, n: int = 3):
    """Inputs of the right shape and dtype (ids for integer inputs) and targets for the model's loss."""
    x = {}
    for value in model.graph.inputs:
        shape = (n,) + tuple(value.type.shape[1:])
        if value.type.dtype.startswith("i"):
            x[value.name] = rng.integers(1, 5, shape)
        else:
            x[value.name] = rng.standard_normal(shape)
    y = {}
    for name, output in model.graph.outputs.items():
        loss = loss_for(model.spec, name, model.graph.outputs).name
        target = target_type(loss, output)
        shape = (n,) + tuple(target.shape[1:])
        if target.dtype.startswith("i"):
            y[name] = rng.integers(0, output.type.shape[-1], shape)
        else:
            y[name] = rng.uniform(0.0, 1.0, shape)
    return x, y


def assert_close(a, b, what: str):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_close(a[key], b[key], f"{what}[{key}]")
        return
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-7, atol=1e-10, err_msg=what)


def models(path: str, levels=(0, 2)):
    return [nnd.load(path, opt_level=level, dtype="float64", seed=0) for level in levels]


@pytest.mark.parametrize("path", EXAMPLES, ids=EXAMPLE_IDS)
def test_optimized_graphs_give_the_same_losses_gradients_and_predictions(path):
    plain, optimized = models(path)
    x, y = random_batch(plain, np.random.default_rng(7))
    loss0, grads0 = plain.loss_and_gradients(x, y)
    loss2, grads2 = optimized.loss_and_gradients(x, y)
    assert np.isclose(loss0, loss2, rtol=1e-9), (loss0, loss2)
    assert_close(grads0, grads2, "gradients")
    assert_close(plain.predict(x), optimized.predict(x), "predictions")
    assert_close(plain.evaluate(x, y, batch_size=3), optimized.evaluate(x, y, batch_size=3), "evaluation")


@pytest.mark.parametrize("path", BATCHNORM_EXAMPLES, ids=os.path.basename)
def test_batchnorm_models_agree_after_training_steps(path):
    plain, optimized = models(path)
    x, y = random_batch(plain, np.random.default_rng(3), n=4)
    for model in (plain, optimized):
        model.fit(x, y, epochs=1, batch_size=2, shuffle=False, verbose=0, validation_data=(x, y))
    params0, params2 = plain.parameters(), optimized.parameters()
    moving = [k for k in params0 if "moving" in k]
    assert moving and all(not np.allclose(params0[k], np.round(params0[k])) for k in moving)
    assert_close(params0, params2, "parameters after two steps")
    assert_close(plain.predict(x), optimized.predict(x), "predictions after training")
    # predict at -O2 runs the folded graph: no batchnorm is left in it
    assert "batchnorm_infer" in ops(plain._predictor.graph)
    assert "batchnorm_infer" not in ops(optimized._predictor.graph)


@pytest.mark.parametrize("path", BATCHNORM_EXAMPLES, ids=os.path.basename)
def test_folded_batchnorm_predicts_like_batchnorm_with_arbitrary_statistics(path):
    plain, optimized = models(path)
    rng = np.random.default_rng(11)
    values = {}
    for name, value in plain.parameters().items():
        if name.endswith(("gamma", "beta", "moving_mean", "bias")):
            values[name] = rng.normal(0.0, 0.5, value.shape)
        elif name.endswith("moving_variance"):
            values[name] = rng.uniform(0.2, 2.0, value.shape)
    for model in (plain, optimized):
        model.set_parameters(values, strict=False)
    x, _ = random_batch(plain, rng, n=5)
    assert_close(plain.predict(x), optimized.predict(x), "predictions")


DENSE_BN = """
model dense_bn {
    input x: [6]
    h = x -> dense(5) -> batchnorm(epsilon=0.01) -> relu()
    h = h -> dense(4, use_bias=false) -> batchnorm()
    output h -> dense(3, activation=softmax)
}
"""


def test_batchnorm_after_dense_folds_into_the_matmul():
    plain, optimized = (nnd.loads(DENSE_BN, opt_level=level, dtype="float64", seed=0) for level in (0, 2))
    rng = np.random.default_rng(5)
    values = {name: rng.uniform(0.3, 1.5, v.shape) for name, v in plain.parameters().items()
              if "batchnorm" in name}
    for model in (plain, optimized):
        model.set_parameters(values, strict=False)
    x = rng.standard_normal((4, 6))
    assert_close(plain.predict(x), optimized.predict(x), "predictions")
    folded = PassManager.for_level(2).run(plain.graph)
    assert "batchnorm_infer" not in ops(folded)
    assert ops(folded).count("matmul_epilogue") == 3


# ------------------------------------------------------------------------------------- the passes

def momentum_constants(graph: Graph) -> list:
    return [n.attr("value") for n in graph.nodes if n.op == "constant" and n.layer and n.layer.startswith("batchnorm")]


def test_constant_folding_folds_batchnorm_momentum_constants():
    graph = build_training_graph(program(TINY_RESNET), "tiny_resnet").graph
    before = momentum_constants(graph)
    assert len(before) == 16  # momentum and 1 - momentum, for the mean and the variance of 4 layers
    folded = fold_constants(graph)
    verify_graph(folded)
    constants = [n for n in folded.nodes if n.op == "constant"]
    assert sorted(n.attr("value") for n in constants if n.layer.startswith("batchnorm")) == sorted(set(before))
    assert len(folded.nodes) == len(graph.nodes) - 14
    assert set(folded.state_updates) == set(graph.state_updates)


def test_constant_folding_evaluates_arithmetic_on_constants():
    graph = build_training_graph(program(VGG), "vgg_small").graph

    def constant_only(g):
        return [n for n in g.nodes if n.inputs and all(v.producer is not None and v.producer.op == "constant"
                                                       for v in n.inputs)]

    assert [n.op for n in constant_only(graph)] == ["mul"]  # 1.0 * 0.0005 in the l2 gradient
    folded = fold_constants(graph)
    verify_graph(folded)
    assert constant_only(folded) == []
    assert 0.0005 in [n.attr("value") for n in folded.nodes if n.op == "constant"]


def scalar_graph():
    graph = Graph("scalars")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 3), "f32"))
    two = builder.emit1("constant", [], {"value": 2.0, "dtype": "f32"})
    three = builder.emit1("constant", [], {"value": 3.0, "dtype": "f32"})
    one = builder.emit1("sub", [three, two])
    root = builder.emit1("sqrt", [builder.emit1("mul", [two, builder.emit1("add", [two, three])])])
    scaled = builder.emit1("mul", [x, one])                  # x * 1 is x
    zero = builder.emit1("constant", [], {"value": 0.0, "dtype": "f32"})
    log_zero = builder.emit1("log", [zero])                  # not finite: left alone
    graph.outputs = {"y": builder.emit1("add", [scaled, root]), "z": log_zero}
    return graph


def test_constant_folding_of_scalars_and_neutral_operands():
    graph = scalar_graph()
    folded = fold_constants(graph)
    verify_graph(folded)
    text = print_graph(folded)
    assert "value=3.1622776601683795" in text  # sqrt(2 * (2 + 3))
    assert "mul(" not in text and "sub(" not in text and "sqrt(" not in text
    assert "log(" in text
    x = np.arange(6.0).reshape(2, 3)
    with np.errstate(divide="ignore"):  # log(0)
        want = Executor(graph, dtype=np.float64).run({"x": x})["y"]
        got = Executor(folded, dtype=np.float64).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_constant_folding_drops_only_neutral_operands_on_their_own_side():
    # x - 0 is x but 0 - x is not; 1 / x is not x either
    graph = Graph("sides")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 3), "f32"))
    zero = builder.emit1("constant", [], {"value": 0.0, "dtype": "f32"})
    one = builder.emit1("constant", [], {"value": 1.0, "dtype": "f32"})
    graph.outputs = {"minus_zero": builder.emit1("sub", [x, zero]), "zero_minus": builder.emit1("sub", [zero, x]),
                     "one_over": builder.emit1("div", [one, x])}
    folded = fold_constants(graph)
    verify_graph(folded)
    xs = np.array([[1.0, -2.0, 0.5], [3.0, 4.0, -0.25]])
    got = Executor(folded, dtype=np.float64).run({"x": xs})
    np.testing.assert_array_equal(got["minus_zero"], xs)
    np.testing.assert_array_equal(got["zero_minus"], -xs)
    np.testing.assert_array_equal(got["one_over"], 1.0 / xs)


def test_constant_folding_keeps_a_neutral_operand_that_broadcasts_or_widens():
    # x * ones[2, 3] has the constant's shape and x + 0.0 in f64 the wider dtype: neither result is x
    graph = Graph("widening")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType((2, 1), "f32"))
    ones = builder.emit1("constant", [], {"value": 1.0, "dtype": "f32", "shape": (2, 3)})
    zero64 = builder.emit1("constant", [], {"value": 0.0, "dtype": "f64"})
    graph.outputs = {"wide": builder.emit1("mul", [x, ones]), "f64": builder.emit1("add", [x, zero64])}
    folded = fold_constants(graph)
    verify_graph(folded)
    assert {k: v.type for k, v in folded.outputs.items()} == {k: v.type for k, v in graph.outputs.items()}
    got = Executor(folded, dtype=np.float64).run({"x": np.array([[2.0], [3.0]])})
    np.testing.assert_array_equal(got["wide"], [[2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])


def test_constants_zero_and_minus_zero_stay_apart():
    graph = Graph("signed_zeros")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 2), "f32"))
    zero = builder.emit1("constant", [], {"value": 0.0, "dtype": "f32"})
    minus_zero = builder.emit1("constant", [], {"value": -0.0, "dtype": "f32"})
    graph.outputs = {"up": builder.emit1("div", [x, zero]), "down": builder.emit1("div", [x, minus_zero])}
    xs = np.array([[1.0, 2.0]])
    for simplified in (fold_constants(graph), eliminate_common_subexpressions(graph)):
        verify_graph(simplified)
        with np.errstate(divide="ignore"):
            got = Executor(simplified, dtype=np.float64).run({"x": xs})
        np.testing.assert_array_equal(got["up"], [[np.inf, np.inf]])
        np.testing.assert_array_equal(got["down"], [[-np.inf, -np.inf]])


def shared_weight_training_graph() -> Graph:
    """A weight used by two matmuls: autodiff emits transpose(W) once per use."""
    graph = Graph("shared")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 4), "f32"))
    w = builder.add_param(Parameter("w", TensorType((4, 4), "f32"), Initializer("zeros")))
    h = builder.emit1("tanh", [builder.emit1("matmul", [x, w])])
    y = builder.emit1("matmul", [h, w])
    graph.outputs = {"loss": builder.emit1("reduce_mean", [builder.emit1("square", [y])], {"axes": (0, 1)})}
    return differentiate(graph, "loss", ["w"])


def test_cse_merges_duplicate_transposes_in_a_training_graph():
    graph = shared_weight_training_graph()
    assert ops(graph).count("transpose") == 2
    merged = eliminate_common_subexpressions(graph)
    verify_graph(merged)
    assert ops(merged).count("transpose") == 1
    assert len(merged.nodes) == len(graph.nodes) - 1
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4))}
    params = {"w": np.random.default_rng(1).standard_normal((4, 4))}
    want = Executor(graph, dtype=np.float64).run(feeds, params)
    got = Executor(merged, dtype=np.float64).run(feeds, params)
    assert_close(want, got, "shared-weight graph")


def test_cse_merges_repeated_sigmoids_and_never_random_draws():
    lstm = build_training_graph(program(LSTM), "lstm_classifier").graph
    assert ops(lstm).count("sigmoid") == 2  # the output and the loss gradient
    assert ops(eliminate_common_subexpressions(lstm)).count("sigmoid") == 1

    graph = Graph("masks")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 4), "f32"))
    a = builder.emit1("dropout_mask", [x], {"rate": 0.5})
    b = builder.emit1("dropout_mask", [x], {"rate": 0.5})
    graph.outputs = {"y": builder.emit1("add", [builder.emit1("mul", [x, a]), builder.emit1("mul", [b, x])])}
    merged = eliminate_common_subexpressions(graph)
    assert ops(merged).count("dropout_mask") == 2
    assert ops(merged).count("mul") == 2


def test_cse_matches_commutative_inputs_in_either_order():
    graph = Graph("commute")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 4), "f32"))
    y = builder.add_input("y", TensorType(("N", 4), "f32"))
    s = builder.emit1("add", [x, y])
    t = builder.emit1("add", [y, x])
    u = builder.emit1("sub", [x, y])
    v = builder.emit1("sub", [y, x])
    graph.outputs = {"p": builder.emit1("mul", [s, t]), "q": builder.emit1("mul", [u, v])}
    merged = eliminate_common_subexpressions(graph)
    assert ops(merged).count("add") == 1
    assert ops(merged).count("sub") == 2


def test_no_cse_keeps_the_duplicates():
    with_cse = run_cli("compile", "--emit", "train", "-O1", LSTM)
    without = run_cli("compile", "--emit", "train", "-O1", "--no", "cse", LSTM)
    assert with_cse.exit_code == 0 and without.exit_code == 0, without.output
    assert len(re.findall(r"= sigmoid\(", with_cse.stdout)) == 1
    assert len(re.findall(r"= sigmoid\(", without.stdout)) == 2


def test_fold_batchnorm_removes_every_batchnorm_after_a_conv_in_tiny_resnet():
    graph = program(TINY_RESNET).graphs["tiny_resnet"]
    assert ops(graph).count("batchnorm_infer") == 4
    folded = fold_batchnorm(graph)
    verify_graph(folded)
    assert "batchnorm_infer" not in ops(folded)
    assert ops(folded).count("conv2d") == ops(graph).count("conv2d")
    optimized = PassManager.for_level(2).run(graph)
    assert "batchnorm_infer" not in ops(optimized)
    assert "conv2d" not in ops(optimized)  # every conv2d, folded or not, joined its bias and activation


def test_a_conv1d_joins_its_bias_and_activation():
    graph = program(os.path.join(ROOT, "examples", "forecast.nnd")).graphs["forecast"]
    optimized = PassManager.for_level(2).run(graph)
    assert "conv2d" not in ops(optimized)
    assert [n.attr("activation") for n in optimized.nodes if n.op == "conv2d_epilogue"] == ["relu"]


def test_fold_batchnorm_leaves_a_conv_whose_output_has_another_user():
    graph = Graph("shared_conv")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 6, 6, 2), "f32"))

    def param(name, shape):
        return builder.add_param(Parameter(name, TensorType(shape, "f32"), Initializer("ones")))

    conv = builder.emit1("conv2d", [x, param("k", (3, 3, 2, 4))], {"strides": (1, 1), "padding": ((0, 0), (0, 0)),
                                                                 "dilation": (1, 1)})
    stats = [param(n, (4,)) for n in ("gamma", "beta", "mean", "var")]
    normed = builder.emit1("batchnorm_infer", [conv, *stats], {"epsilon": 0.001})
    graph.outputs = {"y": builder.emit1("add", [normed, conv])}
    assert ops(fold_batchnorm(graph)) == ops(graph)


def test_fold_batchnorm_leaves_a_product_whose_unbiased_output_has_another_user():
    graph = Graph("shared_matmul")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 3), "f32"))

    def param(name, shape):
        return builder.add_param(Parameter(name, TensorType(shape, "f32"), Initializer("ones")))

    product = builder.emit1("matmul", [x, param("w", (3, 4))])
    biased = builder.emit1("add", [product, param("b", (4,))])
    stats = [param(n, (4,)) for n in ("gamma", "beta", "mean", "var")]
    normed = builder.emit1("batchnorm_infer", [biased, *stats], {"epsilon": 0.001})
    graph.outputs = {"y": builder.emit1("add", [normed, product])}
    folded = fold_batchnorm(graph)
    verify_graph(folded)
    assert ops(folded) == ops(graph)


def test_fold_batchnorm_leaves_training_graphs_alone():
    graph = build_training_graph(program(TINY_RESNET), "tiny_resnet").graph
    assert ops(fold_batchnorm(graph)) == ops(graph)


def test_fuse_pool_grad_puts_relu_into_every_max_pool_gradient_of_the_cnn():
    graph = build_training_graph(program(MNIST), "mnist_cnn").graph
    optimized = PassManager.for_level(2).run(graph)
    pools = [n for n in optimized.nodes if n.op == "maxpool2d_grad"]
    assert len(pools) == 2 and all(n.attr("relu") is True for n in pools)
    # the relu gradients left are those of the layers without a pool after them (conv2d_2, dense)
    assert ops(optimized).count("relu_grad") == ops(graph).count("relu_grad") - 2
    off = PassManager.for_level(2, disabled=("fuse-pool-grad",)).run(graph)
    assert [n.attr("relu") for n in off.nodes if n.op == "maxpool2d_grad"] == [None, None]


def pool_then_relu_grad(same_input: bool, extra_user: bool) -> Graph:
    graph = Graph("pool_grad")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 4, 4, 2), "f32"))
    other = builder.add_input("other", TensorType(("N", 4, 4, 2), "f32"))
    dy = builder.add_input("dy", TensorType(("N", 2, 2, 2), "f32"))
    dx = builder.emit1("maxpool2d_grad", [dy, x], {"pool": (2, 2)})
    graph.outputs = {"g": builder.emit1("relu_grad", [dx, x if same_input else other])}
    if extra_user:
        graph.outputs["dx"] = dx
    return graph


@pytest.mark.parametrize("same_input, extra_user", [(False, False), (True, True)])
def test_fuse_pool_grad_needs_the_pool_input_and_a_sole_user(same_input, extra_user):
    graph = pool_then_relu_grad(same_input, extra_user)
    assert ops(PASSES["fuse-pool-grad"](graph)) == ["maxpool2d_grad", "relu_grad"]


def test_fused_pool_grad_equals_the_pair_it_replaces():
    graph = pool_then_relu_grad(True, False)
    fused = PASSES["fuse-pool-grad"](graph)
    verify_graph(fused)
    assert ops(fused) == ["maxpool2d_grad"]
    rng = np.random.default_rng(0)
    feeds = {"x": np.maximum(rng.normal(size=(3, 4, 4, 2)), 0), "other": np.zeros((3, 4, 4, 2)),
             "dy": rng.normal(size=(3, 2, 2, 2))}
    feeds["x"][0, :2, :2, 0] = 0.0  # a window whose maximum is 0: relu lets nothing through
    expected = Executor(graph, dtype=np.float64).run(feeds)["g"]
    got = Executor(fused, dtype=np.float64).run(feeds)["g"]
    np.testing.assert_array_equal(got, expected)
    assert np.all(got[0, :2, :2, 0] == 0) and np.count_nonzero(got) > 0


@pytest.mark.parametrize("path, fused", [(TINY_RESNET, 1), (VGG, 4)], ids=["tiny_resnet", "vgg_blocks"])
def test_fuse_batchnorm_relu_takes_the_relu_after_each_training_batchnorm(path, fused):
    name = next(iter(program(path).graphs))
    graph = build_training_graph(program(path), name).graph
    optimized = PassManager.for_level(2).run(graph)
    verify_graph(optimized)
    norms = [n for n in optimized.nodes if n.op == "batchnorm_train"]
    assert sum(n.attr("activation") == "relu" for n in norms) == fused
    off = PassManager.for_level(2, disabled=("fuse-batchnorm-relu",)).run(graph)
    assert all(n.attr("activation") is None for n in off.nodes if n.op == "batchnorm_train")

    def relus_after_batchnorm(g: Graph) -> int:
        producers = [n.inputs[0].producer for n in g.nodes if n.op == "relu"]
        return sum(1 for m in producers if m is not None and m.op == "batchnorm_train")

    assert (relus_after_batchnorm(off), relus_after_batchnorm(optimized)) == (fused, 0)


def batchnorm_then_relu(extra_user: bool) -> Graph:
    """batchnorm_train, a user of its batch mean placed before the relu, then the relu."""
    graph = Graph("batchnorm_relu")
    builder = GraphBuilder(graph)
    x = builder.add_input("x", TensorType(("N", 3, 3, 4), "f32"))
    gamma, beta = (builder.add_param(Parameter(n, TensorType((4,), "f32"), Initializer("ones")))
                   for n in ("gamma", "beta"))
    y, mean, _ = builder.emit("batchnorm_train", [x, gamma, beta], {"epsilon": 0.001})
    graph.outputs = {"mean": builder.emit1("neg", [mean]), "z": builder.emit1("relu", [y])}
    if extra_user:
        graph.outputs["y"] = y
    return graph


def test_fuse_batchnorm_relu_needs_a_sole_relu_user():
    assert ops(PASSES["fuse-batchnorm-relu"](batchnorm_then_relu(extra_user=True))) == ["batchnorm_train", "neg",
                                                                                       "relu"]


def test_fused_batchnorm_relu_equals_the_pair_it_replaces():
    graph = batchnorm_then_relu(extra_user=False)
    fused = PASSES["fuse-batchnorm-relu"](graph)
    verify_graph(fused)  # the fused node stays before the user of the batch mean
    assert ops(fused) == ["batchnorm_train", "neg"] and fused.nodes[0].attr("activation") == "relu"
    feeds = {"x": np.random.default_rng(0).normal(size=(5, 3, 3, 4))}
    params = {"gamma": np.linspace(-1, 2, 4), "beta": np.linspace(0.5, -0.5, 4)}
    expected = Executor(graph, dtype=np.float64).run(feeds, params)
    got = Executor(fused, dtype=np.float64).run(feeds, params)
    for key in ("z", "mean"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12)
    assert 0 < np.count_nonzero(got["z"]) < got["z"].size


# -------------------------------------------------------------------------------------- the report

def test_report_names_the_source_lines_of_fused_and_folded_kernels():
    result = run_cli("compile", TINY_RESNET, "--report")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("optimization report: tiny_resnet (inference graph, -O2)")
    stem = line_of(TINY_RESNET, "h = x -> conv2d(")
    assert re.search(r"%\d+ = conv2d_epilogue\[activation=relu\]: f32\[N,32,32,16\]\n"
                     rf" +replaces conv2d, add, batchnorm_infer, relu from tiny_resnet\.nnd:{stem} "
                     r"\(conv2d, batchnorm, relu\)", text), text
    second, norm = line_of(TINY_RESNET, "-> conv2d(channels, 3, padding=same)\n"), line_of(TINY_RESNET, "-> batchnorm(")
    assert (f"replaces conv2d, add, batchnorm_infer from tiny_resnet.nnd:{second} (conv2d_2), "
            f"tiny_resnet.nnd:{norm} (batchnorm_1)") in text
    for name in PIPELINES[2]:
        assert re.search(rf"^  {re.escape(name)} +\d+ -> \d+", text, re.M), name
    assert "activations no longer materialized: " in text


def test_report_counts_the_activation_bytes_no_longer_materialized():
    graph = program(MNIST).graphs["mnist_cnn"]
    fused = PASSES["fuse-epilogues"](graph)
    text = optimization_report(graph, fused, [("fuse-epilogues", fused)])
    # conv2d and bias-add outputs of three convolutions and one dense, and the last dense's product
    per_sample = 2 * (26 * 26 * 32 + 11 * 11 * 64 + 3 * 3 * 64 + 64) + 10
    assert f"activations no longer materialized: {per_sample * 4:,} B" in text
    assert "replaces conv2d, add, relu from mnist_cnn.nnd:5 (conv2d)" in text
    assert f"nodes: {len(graph.nodes)} before, {len(fused.nodes)} after" in text


def test_report_on_a_training_graph_shows_merges_and_removed_nodes():
    result = run_cli("compile", LSTM, "--emit", "train", "-O1", "--report")
    assert result.exit_code == 0, result.output
    text = result.stdout
    dense, loss = line_of(LSTM, "dense(1, activation=sigmoid)"), line_of(LSTM, "loss ")
    assert re.search(rf"%\d+ = sigmoid: 2 copies -> 1, from lstm_classifier\.nnd:{dense} \(dense\), "
                     rf"lstm_classifier\.nnd:{loss} \(loss\)", text), text
    assert "removed as unused (3 nodes: add, matmul, transpose)" in text


@pytest.mark.parametrize("path, count", [(VGG, "7, in 3 groups"), (MNIST, "5"), (TINY_RESNET, "11")])
def test_report_heading_counts_the_kernels_it_lists(path, count):
    result = run_cli("compile", path, "--report")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index(f"fused and folded kernels ({count}):")
    section = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        section.append(line)
    assert sum(1 for line in section if re.match(r"  %\d+ = ", line)) == int(count.split(",")[0])


def test_report_without_changes():
    graph = program(MNIST).graphs["mnist_cnn"]
    assert "no changes" in optimization_report(graph, graph)


def test_report_needs_a_graph():
    result = run_cli("compile", MNIST, "--emit", "ast", "--report")
    assert result.exit_code == 2
    assert "--report" in result.stderr


# ------------------------------------------------------------------------------------------ the CLI

@pytest.mark.parametrize("emit", ["ir", "optimized", "train"])
def test_an_unknown_pass_is_a_clear_error(emit):
    result = run_cli("compile", MNIST, "--emit", emit, "--no", "fold-constant")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (f"error: unknown pass 'fold-constant'; did you mean 'fold-constants'? "
                             f"(passes: {', '.join(PASSES)})\n")
    assert "Traceback" not in result.output


def test_dropout_draws_the_same_masks_at_every_level():
    """Each dropout seeds its draw from the run and its own layer: removing an unused dropout (DCE) leaves
    the others' masks as they were, so a seed reproduces a training step at every -O level."""
    import nnd

    source = ("model m {\n    input x: [4]\n    unused = x -> dropout(0.5)\n"
              "    output y = x -> dropout(0.5) -> dropout(0.5) -> dense(2)\n}\ntrain m {\n    loss = mse\n}\n")
    x, y = np.random.default_rng(1).normal(size=(3, 4)), np.zeros((3, 2))
    steps = [nnd.loads(source, dtype="float64", seed=0, opt_level=level).loss_and_gradients(x, y)
             for level in (0, 1, 2)]
    for loss, grads in steps[1:]:
        assert loss == steps[0][0]
        assert all(np.array_equal(grads[name], steps[0][1][name]) for name in grads)
