"""The executor: buffer freeing, input checks, dtypes, state updates, the random stream, profiling."""
from __future__ import annotations

import numpy as np
import pytest

from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import NndError
from nnd.compiler.ir import Graph, Initializer, Node, Parameter, Value
from nnd.compiler.tensor_type import TensorType
from nnd.runtime.backend import Backend, get_backend
from nnd.runtime.executor import Executor, is_out_of_memory


def f(*shape, dtype="f32"):
    return TensorType(tuple(shape), dtype)


def new_graph():
    graph = Graph("g")
    return graph, GraphBuilder(graph)


def test_a_long_chain_keeps_few_buffers_alive():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 8))
    y = x
    for i in range(200):
        y = b.emit1("tanh" if i % 2 else "neg", [y])
    graph.outputs["y"] = y
    ex = Executor(graph, dtype=np.float64)
    xs = np.linspace(-1, 1, 16).reshape(2, 8)
    out = ex.run({"x": xs})
    expected = xs
    for i in range(200):
        expected = np.tanh(expected) if i % 2 else -expected
    np.testing.assert_allclose(out["y"], expected)
    assert ex.peak_live_buffers <= 2


def test_outputs_used_later_are_kept_and_dead_values_are_dropped():
    graph, b = new_graph()
    x = b.add_input("x", f(3))
    a = b.emit1("exp", [x])
    b.emit1("neg", [a])                                     # dead: never used, not an output
    c = b.emit1("add", [a, a])
    graph.outputs["a"] = a
    graph.outputs["c"] = c
    graph.outputs["x"] = x
    ex = Executor(graph, dtype=np.float64)
    out = ex.run({"x": np.zeros(3)})
    np.testing.assert_array_equal(out["a"], np.ones(3))
    np.testing.assert_array_equal(out["c"], 2 * np.ones(3))
    np.testing.assert_array_equal(out["x"], np.zeros(3))
    assert set(out) == {"a", "c", "x"}


def test_missing_input_and_parameter_errors_name_the_array_and_its_shape():
    graph, b = new_graph()
    x = b.add_input("images", f("N", 28, 28, 1))
    w = b.add_param(Parameter("dense.kernel", f(784, 10), Initializer("zeros")))
    graph.outputs["y"] = b.emit1("matmul", [b.emit1("reshape", [x], {"shape": ("N", 784)}), w])
    ex = Executor(graph)
    with pytest.raises(NndError, match=r"missing input 'images'.*\(N, 28, 28, 1\)"):
        ex.run({}, {"dense.kernel": np.zeros((784, 10))})
    with pytest.raises(NndError, match=r"missing parameter 'dense.kernel'.*\(784, 10\)"):
        ex.run({"images": np.zeros((2, 28, 28, 1))}, {})
    with pytest.raises(NndError, match=r"input 'images' has shape \(2, 28, 28\)"):
        ex.run({"images": np.zeros((2, 28, 28))}, {"dense.kernel": np.zeros((784, 10))})
    out = ex.run({"images": np.ones((3, 28, 28, 1))}, {"dense.kernel": np.ones((784, 10))})
    assert out["y"].shape == (3, 10) and out["y"].dtype == np.float32


def test_the_batch_dimension_must_agree_across_inputs():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    t = b.add_input("t", f("N", 2))
    graph.outputs["y"] = b.emit1("sub", [x, t])
    with pytest.raises(NndError, match=r"input 't' has shape \(3, 2\).*N=2"):
        Executor(graph).run({"x": np.zeros((2, 2)), "t": np.zeros((3, 2))})


def test_dtype_is_the_executors_float_dtype():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    labels = b.add_input("labels", f("N", dtype="i32"))
    loss = b.emit1("sparse_softmax_cross_entropy", [x, labels])
    graph.outputs["loss"] = b.emit1("reduce_mean", [b.emit1("mul", [loss, b.emit1(
        "constant", [], {"value": 2.0, "dtype": "f32"})])], {"axes": None})
    feeds = {"x": np.array([[1.0, 2.0], [0.5, 0.5]], dtype=np.float32), "labels": np.array([1, 0])}
    out64 = Executor(graph, dtype=np.float64).run(feeds)
    out32 = Executor(graph).run({**feeds, "x": feeds["x"].astype(np.float64)})
    assert out64["loss"].dtype == np.float64 and out64["loss"].shape == ()
    assert out32["loss"].dtype == np.float32
    expected = np.mean([np.log1p(np.exp(-1.0)), np.log(2.0)]) * 2
    np.testing.assert_allclose(out64["loss"], expected, rtol=1e-14)
    np.testing.assert_allclose(out32["loss"], expected, rtol=1e-6)
    with pytest.raises(NndError, match="float32 or float64"):
        Executor(graph, dtype=np.int32)


def test_state_updates_are_returned():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 2))
    moving = b.add_param(Parameter("bn.moving_mean", f(2), Initializer("zeros"), trainable=False))
    batch_mean = b.emit1("reduce_mean", [x], {"axes": (0,)})
    momentum = b.emit1("constant", [], {"value": 0.5, "dtype": "f32"})
    graph.state_updates["bn.moving_mean"] = b.emit1(
        "add", [b.emit1("mul", [moving, momentum]), b.emit1("mul", [batch_mean, momentum])])
    graph.outputs["y"] = b.emit1("sub", [x, batch_mean])
    out = Executor(graph).run({"x": np.array([[1.0, 2.0], [3.0, 4.0]])}, {"bn.moving_mean": np.ones(2)})
    np.testing.assert_allclose(out["update:bn.moving_mean"], [1.5, 2.0])
    np.testing.assert_allclose(out["y"], [[-1, -1], [1, 1]])


def _dropout_graph():
    graph, b = new_graph()
    x = b.add_input("x", f("N", 50))
    graph.outputs["mask"] = b.emit1("dropout_mask", [x], {"rate": 0.5})
    return graph


def test_random_stream_is_seeded_persistent_and_restorable():
    graph = _dropout_graph()
    feeds = {"x": np.ones((4, 50))}
    ex = Executor(graph, seed=7)
    state = ex.rng_state()
    first = ex.run(feeds)["mask"]
    second = ex.run(feeds)["mask"]
    assert not np.array_equal(first, second)                  # the stream moves on between runs
    np.testing.assert_array_equal(Executor(graph, seed=7).run(feeds)["mask"], first)
    assert not np.array_equal(Executor(graph, seed=8).run(feeds)["mask"], first)
    ex.set_rng_state(state)
    np.testing.assert_array_equal(ex.run(feeds)["mask"], first)
    np.testing.assert_array_equal(ex.run(feeds)["mask"], second)


def test_profile_collects_seconds_per_node():
    graph, b = new_graph()
    x = b.add_input("x", f(16, 16))
    graph.outputs["y"] = b.emit1("matmul", [b.emit1("exp", [x]), x])
    ex = Executor(graph, profile=True)
    ex.run({"x": np.ones((16, 16))})
    ex.run({"x": np.ones((16, 16))})
    assert len(ex.step_seconds) == 2 and all(s > 0 for s in ex.step_seconds)
    assert set(ex.profile_by_op()) == {"exp", "matmul"}
    assert Executor(graph).step_seconds == [0.0, 0.0]


def test_missing_kernel_and_failing_kernel_are_reported():
    graph, b = new_graph()
    x = b.add_input("x", f(2))
    out = Value(f(2))
    graph.nodes.append(Node("no_such_op", [x], [out], layer="mystery"))
    graph.outputs["y"] = out
    with pytest.raises(NndError, match="no kernel for op 'no_such_op'"):
        Executor(graph)

    graph, b = new_graph()
    x = b.add_input("x", f(2))
    with b.origin(None, "broken"):
        y = b.emit1("reshape", [x], {"shape": (2,)})
    graph.outputs["y"] = y
    graph.nodes[0].attrs = (("shape", (5,)),)                  # corrupt the node after shape inference
    with pytest.raises(ValueError) as info:
        Executor(graph).run({"x": np.zeros(2)})
    assert any("reshape" in note and "broken" in note for note in info.value.__notes__)


class FakeCupyOutOfMemory(Exception):
    """Stands for cupy.cuda.memory.OutOfMemoryError, recognized by its name and module."""


FakeCupyOutOfMemory.__name__ = "OutOfMemoryError"
FakeCupyOutOfMemory.__module__ = "cupy.cuda.memory"


class FakeCudaRuntimeError(Exception):
    """Stands for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


FakeCudaRuntimeError.__name__ = "CUDARuntimeError"
FakeCudaRuntimeError.__module__ = "cupy_backends.cuda.api.runtime"


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 37.3 GiB for an array with shape (100000, 100000)"),
    FakeCupyOutOfMemory("Out of memory allocating 1,073,741,824 bytes (allocated so far: 0 bytes)."),
    FakeCudaRuntimeError("cudaErrorMemoryAllocation: out of memory"),
])
def test_running_out_of_memory_is_one_line_naming_the_op_layer_and_batch(error):
    graph, b = new_graph()
    x = b.add_input("x", TensorType(("N", 3), "f32"))
    with b.origin(None, "dense_7"):
        y = b.emit1("relu", [x])
    graph.outputs["y"] = y

    def exhausted(ctx, attrs, x):
        raise error

    executor = Executor(graph)
    executor.steps[0].kernel = exhausted
    with pytest.raises(NndError) as info:
        executor.run({"x": np.zeros((64, 3))})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("error: out of memory in relu (layer dense_7) at batch size 64: ")
    assert str(error).split(" (")[0] in message and message.endswith("; try a smaller batch size")


def test_a_fused_node_without_a_kernel_runs_its_body():
    body, bb = new_graph()
    a = bb.add_input("a", f("N", 3))
    c = bb.add_input("c", f(3))
    body.outputs["out"] = bb.emit1("relu", [bb.emit1("add", [a, c])])
    graph, b = new_graph()
    x = b.add_input("x", f("N", 3))
    bias = b.add_param(Parameter("bias", f(3), Initializer("zeros")))
    y = Value(f("N", 3))
    graph.nodes.append(Node("fused_elementwise", [x, bias], [y], body=body))
    graph.outputs["y"] = y
    out = Executor(graph).run({"x": np.array([[1.0, -2.0, 3.0]])}, {"bias": np.array([0.5, 0.5, -4.0])})
    np.testing.assert_allclose(out["y"], [[1.5, 0.0, 0.0]])


def test_backends():
    numpy_backend = get_backend("numpy")
    assert isinstance(numpy_backend, Backend) and numpy_backend.xp is np
    assert get_backend() is numpy_backend
    assert "matmul" in numpy_backend.kernels and "conv2d" in numpy_backend.kernels
    with pytest.raises(NndError, match="unknown backend"):
        get_backend("tpu")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(NndError, match=r"the cupy backend needs CuPy: pip install cupy-cuda13x"):
            get_backend("cupy")


def test_other_cuda_runtime_errors_are_not_taken_for_running_out_of_memory():
    assert not is_out_of_memory(FakeCudaRuntimeError("cudaErrorIllegalAddress: an illegal memory access"))
