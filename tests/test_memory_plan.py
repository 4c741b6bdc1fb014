"""The memory plan: liveness, in-place writes and the peak estimate; the executor's use of it (results
equal with and without in-place writes, and never over an array someone else still sees)."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from nnd.compiler.builder import GraphBuilder
from nnd.compiler.frontend import compile_file
from nnd.compiler.ir import Graph
from nnd.compiler.memory_plan import IN_PLACE_OPS, plan_memory
from nnd.compiler.passes import PassManager
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.training_graph import build_training_graph
from nnd.runtime.executor import Executor
from nnd.runtime.kernels_elementwise import in_place_form

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.nnd")))


def batch_type(*shape):
    return TensorType(("N", *shape), "f32")


def chain_graph():
    """y = relu(neg(x) + 1) + x: the neg and add results die where their users read them."""
    graph = Graph("chain")
    b = GraphBuilder(graph)
    x = b.add_input("x", batch_type(4))
    one = b.emit1("constant", [], {"value": 1.0, "dtype": "f32"})
    negated = b.emit1("neg", [x])
    shifted = b.emit1("add", [negated, one])
    rectified = b.emit1("relu", [shifted])
    graph.outputs["y"] = b.emit1("add", [rectified, x])
    return graph


def test_every_in_place_op_has_a_runtime_form():
    assert all(in_place_form(op) is not None for op in IN_PLACE_OPS)


def test_plan_of_a_chain():
    graph = chain_graph()
    plan = plan_memory(graph)
    ops = [n.op for n in graph.nodes]
    assert ops == ["constant", "neg", "add", "relu", "add"]
    # neg reads the graph input: never overwritten; add, relu and the last add write over dying results
    assert plan.in_place == {2: 0, 3: 0, 4: 0}
    assert [len(values) for values in plan.dies_at] == [0, 0, 2, 1, 2]
    # x (16 B per sample) and one more buffer at a time, against two at once without reuse
    assert plan.peak_bytes == 32 and plan.peak_bytes_without_reuse == 48


def test_executor_writes_in_place_and_leaves_the_callers_arrays_alone():
    executor = Executor(chain_graph())
    # the constant is made once, when the graph is compiled: no step of its own
    assert [s.in_place is not None for s in executor.steps] == [False, True, True, True]
    written = []
    original = executor._write_in_place
    executor._write_in_place = lambda *args: written.append(original(*args)) or written[-1]
    x = np.array([[-2.0, -0.5, 0.5, 3.0]], dtype=np.float32)
    before = x.copy()
    y = executor.run({"x": x})["y"]
    assert len(written) == 3 and all(w is not None for w in written)
    np.testing.assert_array_equal(y, np.maximum(1 - before, 0) + before)
    np.testing.assert_array_equal(x, before)


def test_a_constant_made_once_is_never_written_over():
    graph = Graph("constant_first")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType((4,), "f32"))
    ones = b.emit1("constant", [], {"value": 1.0, "dtype": "f32", "shape": (4,)})
    doubled = b.emit1("add", [ones, ones])  # the constant dies here: by the plan alone it could be reused
    graph.outputs["y"] = b.emit1("mul", [doubled, x])
    graph.outputs["c"] = ones
    executor = Executor(graph)
    x_value = np.arange(4.0, dtype=np.float32)
    for _ in range(3):
        result = executor.run({"x": x_value})
        np.testing.assert_array_equal(result["y"], 2 * x_value)
        result["c"][...] = 7.0  # the caller's copy: the graph's own constant stays 1
    np.testing.assert_array_equal(executor.constants[0][1], np.ones(4, dtype=np.float32))


def test_a_live_view_keeps_its_base_from_being_overwritten():
    graph = Graph("view")
    b = GraphBuilder(graph)
    x = b.add_input("x", batch_type(2, 3))
    negated = b.emit1("neg", [x])
    graph.outputs["flat"] = b.emit1("reshape", [negated], {"shape": ("N", 6)})  # a view of negated
    graph.outputs["y"] = b.emit1("relu", [negated])
    plan = plan_memory(graph)
    assert 2 in plan.in_place  # by the types alone relu could take negated's buffer
    x_value = np.arange(-3.0, 3.0, dtype=np.float32).reshape(1, 2, 3)
    result = Executor(graph).run({"x": x_value})
    np.testing.assert_array_equal(result["flat"], -x_value.reshape(1, 6))
    np.testing.assert_array_equal(result["y"], np.maximum(-x_value, 0))


def test_a_view_through_as_strided_counts_as_a_view():
    from nnd.runtime.executor import _views

    base = np.zeros((3, 4))
    strided = np.lib.stride_tricks.as_strided(base, (3, 4), base.strides)
    assert _views(strided, base) and _views(base[1:].T, base)
    assert not _views(np.zeros(3), base) and not _views(base, base)


def test_an_array_held_as_two_values_is_not_overwritten(monkeypatch):
    """A kernel may return its input itself: the two values are then one array, and the first one
    dying must not let an elementwise node overwrite the second."""
    graph = Graph("alias")
    b = GraphBuilder(graph)
    x = b.add_input("x", batch_type(3))
    negated = b.emit1("neg", [x])
    same = b.emit1("reshape", [negated], {"shape": ("N", 3)})
    rectified = b.emit1("relu", [negated])   # negated dies here: relu may take its buffer by the types
    graph.outputs["y"] = b.emit1("add", [rectified, same])
    executor = Executor(graph)
    reshape_step = next(s for s in executor.steps if s.node.op == "reshape")
    reshape_step.kernel = lambda ctx, attrs, value: value  # returns the very same array
    x_value = np.array([[-1.0, 2.0, -3.0]], dtype=np.float32)
    np.testing.assert_array_equal(executor.run({"x": x_value})["y"], np.maximum(-x_value, 0) - x_value)


def test_constants_and_kept_values_are_never_written_over():
    graph = Graph("kept")
    b = GraphBuilder(graph)
    x = b.add_input("x", batch_type(3))
    shift = b.emit1("constant", [], {"value": np.ones((1, 3), np.float32), "dtype": "f32"})
    total = b.emit1("add", [shift, x])
    graph.outputs["total"] = total
    graph.outputs["y"] = b.emit1("relu", [total])
    assert plan_memory(graph).in_place == {}


def test_a_constant_the_size_of_the_result_keeps_its_value_from_run_to_run():
    # The executor makes a constant once and hands the same array to every run, so writing a result
    # over it would change what the next run computes: the plan never picks it, and the run refuses it.
    graph = Graph("full_constant")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType((2, 3), "f32"))
    ones = b.emit1("constant", [], {"value": 1.0, "dtype": "f32", "shape": (2, 3)})
    graph.outputs["y"] = b.emit1("add", [ones, x])
    assert plan_memory(graph).in_place == {}
    executor = Executor(graph, dtype=np.float64)
    xs = np.full((2, 3), 2.0)
    for _ in range(3):
        np.testing.assert_array_equal(executor.run({"x": xs})["y"], xs + 1.0)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_in_place_writes_change_no_result_of_any_training_step(path):
    program = compile_file(path)
    name = list(program.graphs)[-1]
    graph = PassManager.for_level(1).run(build_training_graph(program, name).graph)
    plain, reusing = Executor(graph, dtype=np.float64), Executor(graph, dtype=np.float64)
    for step in plain.steps:
        step.in_place = None
    rng = np.random.default_rng(0)
    feeds = {}
    for value in graph.inputs:
        shape = tuple(3 if isinstance(d, str) else d for d in value.type.shape)
        integer = value.type.dtype in ("i32", "i64")
        feeds[value.name] = rng.integers(0, 2, shape) if integer else rng.uniform(0.1, 0.9, shape)
    params = {n: rng.normal(scale=0.3, size=tuple(3 if isinstance(d, str) else d for d in v.type.shape))
              for n, v in graph.params.items()}
    expected, got = plain.run(feeds, params), reusing.run(feeds, params)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
