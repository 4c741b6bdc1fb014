"""The C code generator of fused elementwise groups and the NumPy backend's kernel that runs it: the source,
every op against NumPy, rounding equal to the op-by-op kernels for arithmetic, ranges and threads, and the
fallbacks (small groups, no native code)."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from elementwise_bodies import concrete, op_bodies
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.fuse_elementwise import FUSED_OP, fuse_elementwise
from nnd.compiler.ir import Graph
from nnd.compiler.tensor_type import TensorType
from nnd.runtime import kernels_native_elementwise, native
from nnd.runtime.cpu_codegen import elementwise_function_source, library_source, node_function_source
from nnd.runtime.executor import Executor

# Bodies of these ops round exactly as NumPy's kernels do; the others call libm's transcendental functions,
# which may differ from NumPy's in the last bit.
EXACT_OPS = {"add", "sub", "mul", "div", "maximum", "neg", "relu", "relu_grad", "square", "abs", "sign", "sqrt",
             "leaky_relu", "leaky_relu_grad"}
TOLERANCE = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


@pytest.fixture(autouse=True)
def native_code():
    if native.library() is None:
        pytest.skip(f"native kernels are unavailable: {native.status()}")


def _reference(graph: Graph, feeds: dict[str, np.ndarray], dtype) -> list[np.ndarray]:
    """The body run op by op by the NumPy kernels."""
    result = Executor(graph, dtype=dtype).run(feeds)
    return [np.asarray(result[name]) for name in graph.outputs]


def _call(library, name: str, inputs: list[np.ndarray], shape: tuple, dtype, ranges: int = 1) -> np.ndarray:
    """Run the generated function over the whole shape in `ranges` consecutive calls."""
    args = [np.ascontiguousarray(a, dtype=dtype) for a in inputs]
    out = np.full(shape, np.nan, dtype=dtype)
    fn = getattr(library, name)
    fn.argtypes = [ctypes.c_void_p] * (len(args) + 1) + [ctypes.c_int64, ctypes.c_int64]
    fn.restype = None
    bounds = np.linspace(0, out.size, ranges + 1).astype(int)
    for begin, end in zip(bounds[:-1], bounds[1:]):
        fn(*[a.ctypes.data for a in args], out.ctypes.data, int(begin), int(end))
    return out


def test_the_source_is_one_c_function_over_a_range():
    graph = Graph("body")
    b = GraphBuilder(graph)
    x = b.add_input("x0", TensorType(("N", 8), "f32"))
    bias = b.add_input("x1", TensorType((8,), "f32"))
    graph.outputs["y0"] = b.emit1("relu", [b.emit1("add", [x, bias])])
    source = elementwise_function_source(graph, "nnd_ew_k_f32", "float32")
    assert source.startswith("void nnd_ew_k_f32(const float* restrict in0,")
    assert "float* restrict out0," in source and "int64_t begin," in source and "int64_t end)" in source
    assert "for (int64_t i = begin; i < end; ++i)" in source
    assert "in1[i % 8ULL]" in source and "out0[i] = v1;" in source
    unit = library_source({"nnd_ew_k_f32": source, "nnd_ew_k_f64": source.replace("f32", "f64")})
    assert unit.startswith("#include <math.h>\n#include <stdint.h>\n")
    assert unit.index("nnd_ew_k_f32") < unit.index("nnd_ew_k_f64")


def test_infinities_and_nans_are_spelled_with_math_h_constants():
    graph = Graph("body")
    b = GraphBuilder(graph)
    x = b.add_input("x0", TensorType((4,), "f64"))
    inf = b.emit1("constant", [], {"value": float("-inf"), "dtype": "f64"})
    graph.outputs["y0"] = b.emit1("maximum", [x, inf])
    source = elementwise_function_source(graph, "f", "float64")
    assert "(-((double)INFINITY))" in source
    library = native.generated_library(library_source({"f": source}))
    values = np.array([1.0, -np.inf, np.nan, -2.0])
    got = _call(library, "f", [values], (4,), np.float64)
    np.testing.assert_array_equal(got, np.maximum(values, -np.inf))


def test_every_op_matches_numpy_and_arithmetic_rounds_identically():
    bodies = op_bodies()
    sources = {}
    for body in bodies:
        for dtype in (np.float32, np.float64):
            name = f"cpu_{body.name}_{np.dtype(dtype).name}"
            sources[name] = elementwise_function_source(body.graph, name, dtype)
    library = native.generated_library(library_source(sources))
    assert library is not None
    rng = np.random.default_rng(0)
    for body in bodies:
        feeds = body.draw(rng)
        shape = concrete(next(iter(body.graph.outputs.values())).type.shape)
        exact = {node.op for node in body.graph.nodes} <= EXACT_OPS
        for dtype in (np.float32, np.float64):
            name = f"cpu_{body.name}_{np.dtype(dtype).name}"
            want = _reference(body.graph, {k: v.astype(dtype) for k, v in feeds.items()}, dtype)[0]
            got = _call(library, name, [feeds[v.name] for v in body.graph.inputs], shape, dtype, ranges=3)
            if exact:
                np.testing.assert_array_equal(got, want, err_msg=name)
            else:
                np.testing.assert_allclose(got, want, err_msg=name, **TOLERANCE[dtype])


def _moving_average_graph(shape: tuple) -> Graph:
    """a * 0.9 + b * 0.1 then relu: the multiply-adds an FMA would round differently."""
    graph = Graph("moving")
    b = GraphBuilder(graph)
    a = b.add_input("a", TensorType(shape, "f32"))
    x = b.add_input("b", TensorType(shape, "f32"))
    keep = b.emit1("constant", [], {"value": 0.9, "dtype": "f32"})
    take = b.emit1("constant", [], {"value": 0.1, "dtype": "f32"})
    mixed = b.emit1("add", [b.emit1("mul", [a, keep]), b.emit1("mul", [x, take])])
    graph.outputs["y"] = b.emit1("relu", [mixed])
    return graph


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_the_numpy_backend_runs_large_groups_as_generated_code_equal_to_the_op_by_op_kernels(monkeypatch,
                                                                                            threads):
    monkeypatch.setenv("NND_NUM_THREADS", threads)
    graph = _moving_average_graph(("N", 97, 131))  # an odd size: ranges end inside the vector lanes
    fused = fuse_elementwise(graph)
    node = next(n for n in fused.nodes if n.op == FUSED_OP)
    rng = np.random.default_rng(1)
    feeds = {"a": rng.normal(size=(3, 97, 131)).astype(np.float32),
             "b": rng.normal(size=(3, 97, 131)).astype(np.float32)}
    want = Executor(graph, dtype=np.float32).run(feeds)["y"]
    calls = []
    monkeypatch.setattr(kernels_native_elementwise, "_function",
                        _spy(kernels_native_elementwise._function, calls))
    got = Executor(fused, dtype=np.float32).run(feeds)["y"]
    assert calls == [node_function_source(node, np.float32)[0]]  # the generated function ran
    np.testing.assert_array_equal(got, want)


def _spy(function, calls):
    def spied(name):
        found = function(name)
        calls.append(name if found is not None else None)
        return found
    return spied


def test_small_groups_other_dtypes_and_no_native_code_run_the_array_ops(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels_native_elementwise, "_function",
                        _spy(kernels_native_elementwise._function, calls))
    small = fuse_elementwise(_moving_average_graph(("N", 8)))
    rng = np.random.default_rng(2)
    feeds = {"a": rng.normal(size=(4, 8)), "b": rng.normal(size=(4, 8))}
    want = Executor(_moving_average_graph(("N", 8)), dtype=np.float32).run(feeds)["y"]
    np.testing.assert_array_equal(Executor(small, dtype=np.float32).run(feeds)["y"], want)
    assert calls == []  # 32 elements: not worth a call into C
    large = fuse_elementwise(_moving_average_graph(("N", 4096)))
    feeds = {"a": rng.normal(size=(2, 4096)), "b": rng.normal(size=(2, 4096))}
    native.set_enabled(False)
    try:
        off = Executor(large, dtype=np.float32).run(feeds)["y"]
    finally:
        native.set_enabled(None)
    assert calls == []
    on = Executor(large, dtype=np.float32).run(feeds)["y"]
    assert len(calls) == 1
    np.testing.assert_array_equal(on, off)


def test_an_executor_builds_all_its_groups_in_one_library(monkeypatch):
    built = []
    real = native.generated_library
    monkeypatch.setattr(native, "generated_library", lambda source: built.append(source) or real(source))
    graph = Graph("two")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType(("N", 64, 64), "f64"))
    w = b.add_input("w", TensorType((64, 64), "f64"))
    y = b.emit1("tanh", [b.emit1("mul", [x, x])])
    z = b.emit1("matmul", [y, w])  # splits the elementwise work in two groups
    graph.outputs["out"] = b.emit1("sigmoid", [b.emit1("add", [z, x])])
    fused = fuse_elementwise(graph)
    keys = {n.attr("key") for n in fused.nodes if n.op == FUSED_OP}
    assert len(keys) == 2
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(2, 64, 64)), "w": rng.normal(size=(64, 64)) / 8}
    want = Executor(graph, dtype=np.float64).run(feeds)["out"]
    got = Executor(fused, dtype=np.float64).run(feeds)["out"]
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    assert len(built) == 1 and all(f"nnd_ew_{key}_f64" in built[0] for key in keys)


def test_a_library_that_cannot_be_built_is_tried_once_and_the_array_ops_run(monkeypatch):
    attempts = []
    monkeypatch.setattr(native, "generated_library", lambda source: attempts.append(source))
    graph = Graph("softplus")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType(("N", 77, 53), "f64"))
    graph.outputs["y"] = b.emit1("exp", [b.emit1("softplus", [x])])
    fused = fuse_elementwise(graph)
    feeds = {"x": np.random.default_rng(4).normal(size=(2, 77, 53))}
    executor = Executor(fused, dtype=np.float64)
    want = Executor(graph, dtype=np.float64).run(feeds)["y"]
    for _ in range(3):
        np.testing.assert_array_equal(executor.run(feeds)["y"], want)
    assert len(attempts) == 1


def test_a_group_with_several_outputs_writes_each_of_them(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels_native_elementwise, "_function",
                        _spy(kernels_native_elementwise._function, calls))
    graph = Graph("two_outputs")
    b = GraphBuilder(graph)
    x = b.add_input("x", TensorType(("N", 64, 65), "f32"))
    bias = b.add_input("bias", TensorType((65,), "f32"))
    shifted = b.emit1("add", [x, bias])
    graph.outputs["shifted"] = shifted  # read outside the group: a second output of the fused node
    graph.outputs["squashed"] = b.emit1("tanh", [b.emit1("relu", [shifted])])
    fused = fuse_elementwise(graph)
    (node,) = [n for n in fused.nodes if n.op == FUSED_OP]
    assert len(node.outputs) == 2
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(size=(3, 64, 65)).astype(np.float32), "bias": rng.normal(size=65).astype(np.float32)}
    want = Executor(graph, dtype=np.float32).run(feeds)
    got = Executor(fused, dtype=np.float32).run(feeds)
    np.testing.assert_array_equal(got["shifted"], want["shifted"])
    np.testing.assert_allclose(got["squashed"], want["squashed"], **TOLERANCE[np.float32])
    assert calls == [node_function_source(node, np.float32)[0]]
