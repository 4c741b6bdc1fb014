"""Layout selection: NCHW convolutions against NHWC ones, the select-layout and cancel-transposes passes
(valid graphs, transposes that meet cancel, results unchanged on every example), and the measured cost
model with its cache."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import NndError
from nnd.compiler.ir import Graph
from nnd.compiler.layout import cancel_transposes, forced_costs, layout_costs, select_layout
from nnd.compiler.passes import PassManager
from nnd.compiler.tensor_type import ShapeError, TensorType
from nnd.compiler.verify import verify_graph
from nnd.runtime import layout_costs as measured
from nnd.runtime.kernel_table import KernelContext, kernels_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.nnd")))
VGG = os.path.join(ROOT, "examples", "vgg_blocks.nnd")
KERNELS = kernels_for("numpy")
CTX = KernelContext(np, np.random.default_rng(0), np.float64)


def ops(graph):
    return [n.op for n in graph.nodes]


@pytest.mark.parametrize("attrs", [
    {}, {"strides": (2, 1), "padding": ((1, 1), (0, 2))}, {"dilation": (2, 1), "padding": ((2, 2), (1, 1))},
])
def test_nchw_convolution_equals_the_nhwc_one(attrs):
    r = np.random.default_rng(0)
    x, w, bias = r.normal(size=(3, 9, 8, 5)), r.normal(size=(3, 3, 5, 4)), r.normal(size=4)
    expected = KERNELS["conv2d"](CTX, attrs, x, w).transpose(0, 3, 1, 2)
    got = KERNELS["conv2d"](CTX, dict(attrs, layout="NCHW"), x.transpose(0, 3, 1, 2), w)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    fused = dict(attrs, activation="relu")
    expected = KERNELS["conv2d_epilogue"](CTX, fused, x, w, bias).transpose(0, 3, 1, 2)
    got = KERNELS["conv2d_epilogue"](CTX, dict(fused, layout="NCHW"), x.transpose(0, 3, 1, 2), w, bias)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def conv_graph(layout=None, chain=2):
    graph = Graph("convs")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType(("N", 8, 8, 3), "f32"))
    for k in range(chain):
        w = b.add_input(f"w{k}", TensorType((3, 3, x.type.shape[-1], 4), "f32"))
        attrs = {"padding": ((1, 1), (1, 1))} | ({"layout": layout} if layout else {})
        x = b.emit1("relu", [b.emit1("conv2d", [x, w], attrs)])
    graph.outputs["y"] = x
    return graph


def test_shape_rules_of_the_nchw_layout():
    graph = Graph("nchw")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType(("N", 3, 9, 8), "f32"))
    w = b.add_input("w", TensorType((3, 3, 3, 4), "f32"))
    y = b.emit1("conv2d", [x, w], {"layout": "NCHW", "strides": (2, 1)})
    assert y.type.shape == ("N", 4, 4, 6)
    bias = b.add_input("b", TensorType((4,), "f32"))
    fused = b.emit1("conv2d_epilogue", [x, w, bias], {"layout": "NCHW", "activation": "relu"})
    assert fused.type.shape == ("N", 4, 7, 6)
    with pytest.raises(ShapeError, match="layout must be one of NHWC, NCHW, got 'NWHC'"):
        b.emit1("conv2d", [x, w], {"layout": "NWHC"})


def test_without_a_cost_model_nothing_moves():
    graph = conv_graph()
    assert select_layout(graph) is graph


def test_switched_convolutions_pass_nchw_data_to_each_other():
    graph = conv_graph(chain=3)
    with layout_costs(forced_costs("NCHW")):
        moved = select_layout(graph)
    verify_graph(moved)
    assert ops(moved).count("transpose") == 6
    cancelled = cancel_transposes(moved)
    verify_graph(cancelled)
    # the relus sank below the transposes, which then met: one transpose in, one out
    assert ops(cancelled) == ["transpose", "conv2d", "relu", "conv2d", "relu", "conv2d", "relu", "transpose"]
    r = np.random.default_rng(1)
    feeds = {"x": r.normal(size=(2, 8, 8, 3)), **{f"w{k}": r.normal(size=(3, 3, 3 if k == 0 else 4, 4))
                                                   for k in range(3)}}
    from nnd.runtime.executor import Executor

    expected = Executor(graph, dtype=np.float64).run(feeds)["y"]
    for rewritten in (moved, cancelled):
        np.testing.assert_allclose(Executor(rewritten, dtype=np.float64).run(feeds)["y"], expected,
                                   rtol=1e-12, atol=1e-12)


def test_transposes_that_compose_merge_and_outputs_stay():
    graph = Graph("t")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType((2, 3, 4), "f32"))
    once = b.emit1("transpose", [x], {"perm": (1, 2, 0)})
    twice = b.emit1("transpose", [once], {"perm": (1, 2, 0)})
    graph.outputs["back"] = b.emit1("transpose", [twice], {"perm": (1, 2, 0)})  # three turns: the identity
    graph.outputs["twice"] = twice
    result = cancel_transposes(graph)
    verify_graph(result)
    assert ops(result) == ["transpose", "transpose"]  # x->twice in one step, and back kept as an output value
    assert [n.attr("perm") for n in result.nodes] == [(2, 0, 1), (1, 2, 0)]


def test_two_different_transposes_merge_into_their_composition():
    from nnd.runtime.executor import Executor

    graph = Graph("t")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType((2, 3, 4), "f32"))
    once = b.emit1("transpose", [x], {"perm": (1, 0, 2)})
    graph.outputs["y"] = b.emit1("transpose", [once], {"perm": (0, 2, 1)})
    result = cancel_transposes(graph)
    verify_graph(result)
    assert ops(result) == ["transpose"]
    xs = np.arange(24.0).reshape(2, 3, 4)
    got = Executor(result, dtype=np.float64).run({"x": xs})["y"]
    np.testing.assert_array_equal(got, xs.transpose(1, 0, 2).transpose(0, 2, 1))


def test_gradients_come_before_layout_selection():
    from nnd.compiler.autodiff import differentiate

    graph = Graph("nchw")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType(("N", 3, 9, 8), "f32"))
    w = b.add_input("w", TensorType((3, 3, 3, 4), "f32"))
    loss = b.emit1("reduce_sum", [b.emit1("conv2d", [x, w], {"layout": "NCHW"})], {"axes": None})
    graph.outputs = {"loss": loss}
    with pytest.raises(ShapeError, match="gradients are taken before layout selection"):
        differentiate(graph, "loss", ["w"])


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_every_example_trains_and_predicts_the_same_with_every_convolution_in_nchw(path, monkeypatch):
    from test_passes import assert_close, random_batch

    plain = nnd.load(path, opt_level=0, dtype="float64", seed=0)
    monkeypatch.setenv("NND_LAYOUT", "NCHW")
    moved = nnd.load(path, opt_level=2, dtype="float64", seed=0)
    x, y = random_batch(plain, np.random.default_rng(7))
    loss0, grads0 = plain.loss_and_gradients(x, y)
    loss2, grads2 = moved.loss_and_gradients(x, y)
    assert np.isclose(loss0, loss2, rtol=1e-9), (loss0, loss2)
    assert_close(grads0, grads2, "gradients")
    assert_close(plain.predict(x), moved.predict(x), "predictions")
    trainer = moved._get_trainer()
    for graph in (trainer.train_graph, moved._predictor.graph):
        convolutions = [n for n in graph.nodes if n.op in ("conv2d", "conv2d_epilogue")]
        assert all(n.attr("layout") == "NCHW" for n in convolutions)


def test_vgg_blocks_keeps_nchw_between_its_back_to_back_convolutions():
    program = nnd.load(VGG).program
    graph = PassManager.for_level(2, layout_costs=forced_costs("NCHW")).run(program.graphs[program.model_name(None)])
    kinds = ops(graph)
    assert kinds.count("conv2d_epilogue") == 4
    assert kinds.count("transpose") == 4  # into and out of each pair of convolutions, none between them


def test_measured_costs_are_cached_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("NND_LAYOUT", "measure")
    monkeypatch.setenv("NND_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measured, "_MEASURED", {})
    graph = conv_graph(chain=1)
    costs = measured.cost_model("numpy", np.float32)
    first = costs(graph.nodes[0])
    assert set(first) == {"NHWC", "NCHW"} and all(t > 0 for t in first.values())
    stored = json.loads((tmp_path / "layouts.json").read_text())
    assert list(stored.values()) == [first]
    monkeypatch.setattr(measured, "_MEASURED", {})
    assert measured.cost_model("numpy", np.float32)(graph.nodes[0]) == first  # read back, not re-measured


def test_layout_setting_errors(monkeypatch):
    monkeypatch.setenv("NND_LAYOUT", "sideways")
    with pytest.raises(NndError, match="NND_LAYOUT must be one of measure, NHWC, NCHW, not 'sideways'"):
        measured.cost_model("numpy", np.float32)


def test_compile_shows_the_chosen_layouts():
    runner = CliRunner()
    kept = runner.invoke(main, ["compile", VGG, "--emit", "optimized"])
    moved = runner.invoke(main, ["compile", VGG, "--emit", "optimized", "--layout", "NCHW"])
    assert kept.exit_code == 0 and moved.exit_code == 0, moved.output
    assert "layout=NCHW" not in kept.stdout and "transpose" not in kept.stdout
    assert moved.stdout.count("layout=NCHW") == 4
    report = runner.invoke(main, ["compile", VGG, "--report", "--layout", "NCHW"])
    assert report.exit_code == 0, report.output
    assert "select-layout" in report.stdout and "cancel-transposes" in report.stdout
