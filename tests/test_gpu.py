"""The cupy backend against the NumPy one: every op forward and backward (the gradient-check cases), the
generated fused elementwise kernels, and whole training steps of every example.

Tests marked `gpu` need cupy and a CUDA device and are skipped without them (`pytest -m gpu` selects
them on a GPU machine); the clear error for a missing cupy or device runs everywhere.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import nnd
from elementwise_bodies import op_bodies
from gradcheck import _resolve, away_from_zero
from gradcheck_cases import GRADCHECK_CASES
from capture_sim import simulate
from host_cuda import FakeCupy, HostRawKernel, ThreadedRawKernel
from nnd.bench import _id_range, random_array
from nnd.compiler.autodiff import differentiate
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import NndError
from nnd.compiler.fuse_elementwise import FUSED_OP, body_key
from nnd.compiler.ir import Graph, Node, Value
from nnd.compiler.tensor_type import FLOAT_DTYPES, NUMPY_DTYPES, TensorType
from nnd.runtime import backend as backend_module
from nnd.runtime import kernels_cupy
from nnd.runtime.executor import Executor
from nnd.runtime.kernel_table import KernelContext, kernels_for

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.nnd"))


def _cupy_available() -> bool:
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:
        return False


GPU = _cupy_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="needs cupy and a CUDA device")]


def host(array) -> np.ndarray:
    return np.asarray(array.get() if hasattr(array, "get") else array)


@pytest.fixture
def cupy_stand_in(tmp_path, monkeypatch) -> FakeCupy:
    """`cupy` as NumPy plus the CUDA sources built by g++ (see host_cuda), for the rest of the test."""
    fake = FakeCupy(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend_module, "_CACHE", {})
    monkeypatch.setattr(kernels_cupy, "_COMPILED", {})
    return fake


# ------------------------------------------------------------------------------------------ without a GPU

_TYPED_KERNEL = """typedef unsigned long long nnd_size;
#define NND_COPY(T) \\
extern "C" __global__ void nnd_copy_##T(const T* x, T* y, nnd_size n, int on) { \\
    for (nnd_size i = 0; i < n; i++) y[i] = on ? x[i] : (T)0; \\
}
NND_COPY(float)
"""


def test_the_stand_in_refuses_launch_arguments_a_device_would_misread(tmp_path):
    kernel = HostRawKernel(_TYPED_KERNEL, "nnd_copy_float", tmp_path)
    x, y = np.arange(3, dtype=np.float32), np.zeros(3, np.float32)
    kernel((1,), (1,), (x, y, np.uint64(3), np.int32(1)))
    np.testing.assert_array_equal(y, x)
    wrong = {2: [np.int32(3), 3, 3.0], 3: [np.int64(1), True], 0: [x.astype(np.float64), x.tolist()]}
    for index, values in wrong.items():
        for value in values:
            args = [x, y, np.uint64(3), np.int32(1)]
            args[index] = value
            with pytest.raises(AssertionError, match=f"argument {index}"):
                kernel((1,), (1,), tuple(args))
    with pytest.raises(AssertionError, match="3 arguments for 4"):
        kernel((1,), (1,), (x, y, np.uint64(3)))


def test_the_cupy_backend_without_cupy_or_a_device_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(backend_module, "_CACHE", {})
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(NndError, match=r"the cupy backend needs CuPy: pip install cupy-cuda13x"):
        backend_module.get_backend("cupy")
    with pytest.raises(NndError, match="needs CuPy"):
        nnd.load(EXAMPLES[[p.stem for p in EXAMPLES].index("mnist_cnn")], backend="cupy")
    fake = types.ModuleType("cupy")
    fake.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(NndError, match="no CUDA device is available for the cupy backend"):
        backend_module.get_backend("cupy")


# ------------------------------------------------------------------------------------------ every op

def case_graph(op: str, case, seed: int = 0) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph a gradient check of `case` differentiates (outputs weighted into a loss, with the
    gradient of every float input) and its inputs."""
    rng = np.random.default_rng(seed)
    gen = case.gen or away_from_zero
    graph = Graph(f"parity_{op}")
    builder = GraphBuilder(graph)
    feeds: dict[str, np.ndarray] = {}
    values = []
    for i, spec in enumerate(case.inputs):
        t, shape, array = _resolve(spec, case.batch)
        values.append(builder.add_input(f"x{i}", t))
        if array is None:
            array = np.asarray(gen(rng, shape, i))
        feeds[f"x{i}"] = array.astype(np.float64 if t.dtype in FLOAT_DTYPES else NUMPY_DTYPES[t.dtype])
    results = builder.emit(op, values, case.attrs)
    chosen = range(len(results)) if case.outputs is None else case.outputs
    loss = None
    for k in chosen:
        out = results[k]
        if out.type.dtype not in FLOAT_DTYPES:
            continue
        graph.outputs[f"y{k}"] = out
        w = builder.add_input(f"w{k}", TensorType(out.type.shape, "f64"))
        shape = tuple(case.batch if isinstance(d, str) else d for d in out.type.shape)
        feeds[f"w{k}"] = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        term = builder.emit1("reduce_sum", [builder.emit1("mul", [out, w])], {"axes": None})
        loss = term if loss is None else builder.emit1("add", [loss, term])
    graph.outputs["loss"] = loss
    checked = [i for i, v in enumerate(values) if v.type.dtype in FLOAT_DTYPES] if case.wrt is None else case.wrt
    return differentiate(graph, "loss", [f"x{i}" for i in checked]), feeds


CASES = [pytest.param(name, case, id=f"{name}-{i}", marks=gpu)
         for name in sorted(GRADCHECK_CASES) for i, case in enumerate(GRADCHECK_CASES[name])]


def _run_both(graph, feeds, dtype, seed=0):
    want = Executor(graph, "numpy", dtype, seed=seed).run(feeds)
    got = Executor(graph, "cupy", dtype, seed=seed).run(feeds)
    assert want.keys() == got.keys()
    return want, got


@pytest.mark.parametrize("name, case", CASES)
def test_every_op_forward_and_backward_matches_numpy(name, case):
    check_op_parity(name, case)


def test_every_op_forward_and_backward_through_the_cupy_kernels_on_a_host_stand_in(cupy_stand_in):
    """The same parity of every op on any machine: the cupy kernel table with its CUDA sources built by g++
    and NumPy for CuPy's own operations."""
    for name in sorted(GRADCHECK_CASES):
        for case in GRADCHECK_CASES[name]:
            check_op_parity(name, case)


def check_op_parity(name: str, case) -> None:
    """Forward and backward of one gradient-check case on cupy against NumPy, in float64 and float32."""
    graph, feeds = case_graph(name, case)
    want, got = _run_both(graph, feeds, np.float64)
    for key in want:
        diff = np.max(np.abs(host(got[key]) - np.asarray(want[key])), initial=0.0)
        assert diff < 1e-9, f"{name} {key}: float64 differs by {diff:.3g}"
    want, got = _run_both(graph, feeds, np.float32)
    for key in want:
        w, g = np.asarray(want[key], np.float64), host(got[key]).astype(np.float64)
        scale = max(float(np.max(np.abs(w), initial=0.0)), 1e-3)
        diff = float(np.max(np.abs(g - w), initial=0.0)) / scale
        assert diff < 1e-4, f"{name} {key}: float32 differs by a relative {diff:.3g}"


# ------------------------------------------------------------------------------------------ fused kernels

def fused_graph(body: Graph) -> Graph:
    """A graph of one fused_elementwise node running `body`."""
    graph = Graph("fused")
    inputs = [Value(v.type, v.name) for v in body.inputs]
    graph.inputs = inputs
    outputs = [Value(v.type) for v in body.outputs.values()]
    attrs = {"key": body_key(body), "ops": tuple(n.op for n in body.nodes), "outputs": len(outputs)}
    graph.nodes = [Node(FUSED_OP, inputs, outputs, attrs, body=body)]
    graph.outputs = {name: v for name, v in zip(body.outputs, outputs)}
    return graph


BODIES = op_bodies()


@pytest.mark.parametrize("body", [pytest.param(b, id=b.name, marks=gpu) for b in BODIES])
def test_generated_kernel_matches_the_numpy_body(body):
    graph = fused_graph(body.graph)
    feeds = body.draw(np.random.default_rng(0))
    for dtype, rtol, atol in ((np.float64, 1e-10, 1e-12), (np.float32, 2e-5, 2e-6)):
        want, got = _run_both(graph, feeds, dtype)
        for key in want:
            np.testing.assert_allclose(host(got[key]), np.asarray(want[key]), rtol=rtol, atol=atol,
                                       err_msg=f"{body.name} {np.dtype(dtype).name}")


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_the_cupy_fused_kernel_path_on_a_host_stand_in(cupy_stand_in):
    """The cupy kernel of fused_elementwise (source, compile cache, argument order, launch size, several
    outputs) on any machine: cupy is NumPy here and RawKernel the generated code built by g++."""
    fake = cupy_stand_in
    stand_in = backend_module.get_backend("cupy")
    rng = np.random.default_rng(0)
    chosen = ("add_strided", "sub_strided_first", "mul_trailing2", "maximum_column", "div_scalar",
              "chain_with_constant", "binary_crossentropy_grad")
    for body in [b for b in BODIES if b.name in chosen]:
        graph = fused_graph(body.graph)
        feeds = body.draw(rng)
        for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-5)):
            want = Executor(graph, "numpy", dtype).run(feeds)
            got = Executor(graph, stand_in, dtype).run(feeds)
            np.testing.assert_allclose(got["y0"], want["y0"], rtol=rtol, atol=rtol, err_msg=body.name)
    model = nnd.load(EXAMPLES[[p.stem for p in EXAMPLES].index("tiny_resnet")], dtype="float64", seed=0)
    graph = model._get_trainer().train_graph
    feeds = {v.name: random_array(v.type, 2, rng, _id_range(model, v)) for v in graph.inputs}
    want = Executor(graph, "numpy", np.float64, seed=0).run(feeds, model.params)
    before = len(fake.kernels)
    got = Executor(graph, stand_in, np.float64, seed=0).run(feeds, model.params)
    keys = {n.attr("key") for n in graph.nodes if n.op == FUSED_OP}
    fused = [k for k in fake.kernels[before:] if k.fn.__name__.startswith("nnd_ew_")]
    assert len(fused) == len(keys) >= 3  # one compiled kernel per distinct group
    assert sum(k.launches for k in fused) == sum(n.op == FUSED_OP for n in graph.nodes)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_training_steps_of_every_example_through_the_cupy_kernels_on_a_host_stand_in(cupy_stand_in, monkeypatch):
    """The whole cupy kernel table (generated and hand-written CUDA built by g++, NumPy for CuPy's own
    operations) trains three float64 steps of every example as the NumPy backend does (the first eager,
    then captured and replayed through a simulated CUDA graph), and launches every family of hand-written
    kernel on the way."""
    fake = cupy_stand_in
    monkeypatch.setenv("NND_CUDA_SCAN", "steps")
    for path in EXAMPLES:
        losses, params = {}, {}
        for backend in ("numpy", "cupy"):
            model = nnd.load(path, backend=backend, seed=0, dtype="float64", cuda_graphs=False)  # simulated below
            trainer = model._get_trainer()
            if backend == "cupy":
                graphs = simulate(trainer.train_executor)
            rng = np.random.default_rng(3)
            batches = [{v.name: random_array(v.type, 4, rng, _id_range(model, v)) for v in trainer.train_graph.inputs}
                       for _ in range(3)]
            losses[backend] = [float(trainer.step(feeds)["loss"]) for feeds in batches]
            params[backend] = model.parameters()
        assert (graphs.captures, graphs.replays) == (1, 2), path.stem
        np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-12, err_msg=path.stem)
        for name, want in params["numpy"].items():
            np.testing.assert_allclose(params["cupy"][name], want, rtol=1e-10, atol=1e-13,
                                       err_msg=f"{path.stem} {name}")
    launched = {k.fn.__name__.rsplit("_", 1)[0] for k in fake.kernels if k.launches}
    assert {"nnd_maxpool2d", "nnd_maxpool2d_grad", "nnd_col2im", "nnd_sparse_softmax_ce", "nnd_sparse_softmax_ce_grad",
            "nnd_adam_update", "nnd_lstm_forward_step", "nnd_lstm_backward_step", "nnd_gru_forward_step",
            "nnd_gru_backward_step", "nnd_bias_activation"} <= launched
    assert any(name.startswith("nnd_ew_") for name in launched)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid"])
def test_the_cuda_bias_activation_epilogue_on_a_host_stand_in(cupy_stand_in, activation):
    """The one-pass epilogue built by g++ against the generic kernels: a channels-last and an NCHW
    convolution, a dense layer."""
    fake = cupy_stand_in
    generic, cuda = kernels_for("numpy"), kernels_for("cupy")
    rng = np.random.default_rng(4)
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x = rng.normal(size=(2, 6, 5, 3)).astype(dtype)
        w = rng.normal(size=(3, 3, 3, 4)).astype(dtype)
        bias = rng.normal(size=4).astype(dtype)
        for layout in ("NHWC", "NCHW"):
            attrs = {"activation": activation, "layout": layout}
            operand = x.transpose(0, 3, 1, 2).copy() if layout == "NCHW" else x
            ctx = KernelContext(np, rng, dtype)
            want = generic["conv2d_epilogue"](ctx, attrs, operand, w, bias)
            got = cuda["conv2d_epilogue"](KernelContext(fake, rng, dtype), attrs, operand, w, bias)
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance, err_msg=layout)
        a, b = rng.normal(size=(5, 7)).astype(dtype), rng.normal(size=(7, 4)).astype(dtype)
        want = generic["matmul_epilogue"](KernelContext(np, rng, dtype), {"activation": activation}, a, b, bias)
        got = cuda["matmul_epilogue"](KernelContext(fake, rng, dtype), {"activation": activation}, a, b, bias)
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    assert {k.fn.__name__ for k in fake.kernels if k.launches} == {"nnd_bias_activation_float",
                                                                   "nnd_bias_activation_double"}


POOLINGS = [
    ({"pool": (2, 2)}, (2, 7, 6, 3)),                                          # tiles, a row left out
    ({"pool": (2, 2), "strides": (3, 3)}, (2, 8, 8, 2)),                       # gaps between windows
    ({"pool": (2, 2), "padding": ((1, 0), (0, 1))}, (2, 5, 5, 3)),             # padding, no overlap
    ({"pool": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1))}, (2, 7, 7, 2)),  # overlap: generic
]
CONV_GRADS = [
    ({}, (2, 6, 7, 3, 4)),
    ({"strides": (2, 1), "padding": ((1, 2), (0, 1)), "dilation": (1, 2)}, (2, 9, 9, 3, 2)),
]


def test_the_cupy_pooling_and_col2im_kernels_on_a_host_stand_in(cupy_stand_in):
    """The CUDA max pooling, pooling gradient and col2im kernels built by g++ (one thread) against the
    NumPy kernels: ties at the maximum, relu windows of zeros, NaNs, padding, gaps and strides."""
    from nnd.runtime import kernels_conv

    fake = cupy_stand_in
    cuda = kernels_for("cupy")
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        ctx = KernelContext(np, rng, dtype)
        for attrs, shape in POOLINGS:
            x = np.maximum(rng.normal(size=shape), 0).astype(dtype)
            x[:, ::2, ::3, 0] = 2.0                                        # ties at the maximum
            y = cuda["maxpool2d"](ctx, attrs, x)
            np.testing.assert_array_equal(y, kernels_conv.maxpool2d(ctx, attrs, x))
            dy = rng.normal(size=y.shape).astype(dtype)
            for relu in (False, True):
                grad_attrs = dict(attrs, relu=relu)
                np.testing.assert_allclose(cuda["maxpool2d_grad"](ctx, grad_attrs, dy, x),
                                           kernels_conv.maxpool2d_grad(ctx, grad_attrs, dy, x), rtol=1e-6, atol=1e-6)
            x[0, 1, 1:3, 0] = np.nan                                      # a NaN wins its windows
            np.testing.assert_array_equal(cuda["maxpool2d"](ctx, attrs, x), kernels_conv.maxpool2d(ctx, attrs, x))
            np.testing.assert_allclose(cuda["maxpool2d_grad"](ctx, attrs, dy, x),
                                       kernels_conv.maxpool2d_grad(ctx, attrs, dy, x), rtol=1e-6, atol=1e-6)
        for attrs, (n, h, w_, c, f) in CONV_GRADS:
            w = rng.normal(size=(3, 3, c, f)).astype(dtype)
            dy = rng.normal(size=kernels_conv.conv2d(ctx, attrs, np.zeros((n, h, w_, c), dtype), w).shape).astype(dtype)
            grad_attrs = dict(attrs, input_hw=(h, w_))
            np.testing.assert_allclose(cuda["conv2d_grad_input"](ctx, grad_attrs, dy, w),
                                       kernels_conv.conv2d_grad_input(ctx, grad_attrs, dy, w), rtol=1e-5, atol=1e-5)
    launched = {k.fn.__name__ for k in fake.kernels if k.launches}
    assert launched == {f"nnd_{name}_{t}" for name in ("maxpool2d", "maxpool2d_grad", "col2im")
                        for t in ("float", "double")}


def test_the_cuda_run_sum_kernel_on_a_host_stand_in(cupy_stand_in):
    """Sums over consecutive axes that keep the last one (bias gradients, global pooling), built by g++,
    against NumPy: uneven chunks, keepdims, a non-contiguous input; other axes take CuPy's own sum."""
    fake = cupy_stand_in
    reduce_sum = kernels_for("cupy")["reduce_sum"]
    rng = np.random.default_rng(0)
    cases = [((6, 5, 7, 3), (0, 1, 2)), ((4, 9, 2), (1,)), ((2, 3, 4, 5), (1, 2)), ((10, 1), (0,)),
             ((1, 1, 4), (0, 1)), ((5, 4, 3), (2,)), ((5, 4, 3), (0, 2))]
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
        ctx = KernelContext(np, rng, dtype)
        for shape, axes in cases:
            for keepdims in (False, True):
                x = rng.normal(size=shape).astype(dtype)
                got = reduce_sum(ctx, {"axes": list(axes), "keepdims": keepdims}, x)
                np.testing.assert_allclose(got, x.sum(axis=axes, keepdims=keepdims), rtol=tolerance, atol=tolerance)
        x = rng.normal(size=(3, 8, 4)).astype(dtype)[:, ::2]
        np.testing.assert_allclose(reduce_sum(ctx, {"axes": [0, 1]}, x), x.sum(axis=(0, 1)), rtol=tolerance)
    launches = sum(k.launches for k in fake.kernels if k.fn.__name__.startswith("nnd_chunk_sums"))
    assert launches == 2 * 2 * (2 * 5 + 1)  # two per sum, for the cases whose axes keep the last one


@pytest.mark.parametrize("mode", ["steps", "scan"])
@pytest.mark.parametrize("attrs, recurrent_dropout", [
    ({}, False), ({"return_sequences": True}, False), ({"go_backwards": True, "return_sequences": True}, True),
])
def test_the_cuda_lstm_kernels_on_a_host_stand_in(cupy_stand_in, monkeypatch, attrs, recurrent_dropout, mode):
    """The LSTM's CUDA paths built by g++ (one thread) against the NumPy kernels: per step a GEMM and one
    gate kernel, or (NND_CUDA_SCAN=scan) the whole scan in one launch, forward and backward."""
    fake = cupy_stand_in
    monkeypatch.setenv("NND_CUDA_SCAN", mode)
    check_lstm_kernels(fake, attrs, recurrent_dropout)
    names = {k.fn.__name__ for k in fake.kernels if k.launches}
    kernel = "lstm_scan_{}" if mode == "scan" else "lstm_{}_step"
    assert names == {f"nnd_{kernel.format(d)}_{t}" for d in ("forward", "backward") for t in ("float", "double")}


@pytest.mark.parametrize("mode", ["steps", "scan"])
@pytest.mark.parametrize("attrs, recurrent_dropout", [
    ({}, False), ({"return_sequences": True}, False), ({"return_sequences": True, "go_backwards": True}, True),
])
def test_the_cuda_gru_kernels_on_a_host_stand_in(cupy_stand_in, monkeypatch, attrs, recurrent_dropout, mode):
    """The GRU's (reset_after) CUDA paths built by g++ against the NumPy kernels: per step a GEMM and one
    gate kernel, or the whole scan in one launch, forward and backward."""
    fake = cupy_stand_in
    monkeypatch.setenv("NND_CUDA_SCAN", mode)
    check_gru_kernels(fake, attrs, recurrent_dropout)
    names = {k.fn.__name__ for k in fake.kernels if k.launches}
    kernel = "gru_scan_{}" if mode == "scan" else "gru_{}_step"
    assert names == {f"nnd_{kernel.format(d)}_{t}" for d in ("forward", "backward") for t in ("float", "double")}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_per_step_recurrent_gradients_take_an_output_gradient_of_another_dtype(cupy_stand_in, monkeypatch,
                                                                                   cell):
    """An output gradient that arrives in float32 for a float64 scan is converted before the kernels read
    it (the stand-in refuses an array of the wrong type, as a device would misread one)."""
    monkeypatch.setenv("NND_CUDA_SCAN", "steps")
    check = check_lstm_kernels if cell == "lstm" else check_gru_kernels
    check(cupy_stand_in, {"return_sequences": True}, False, d_out_dtype=np.float32)


def check_lstm_kernels(fake, attrs: dict, recurrent_dropout: bool, n: int = 5, t: int = 4, u: int = 3,
                       d_out_dtype=None) -> None:
    """lstm_scan and lstm_scan_grad of the cupy table on `fake` against the NumPy kernels."""
    generic, cuda = kernels_for("numpy"), kernels_for("cupy")
    rng = np.random.default_rng(1)
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
        rmask = (rng.random((n, u)) > 0.3) / 0.7 if recurrent_dropout else np.array(1.0)
        inputs = [np.asarray(a, dtype=dtype) for a in (rng.normal(size=(n, t, 4 * u)), rng.normal(size=(n, u)),
                                                       rng.normal(size=(n, u)), rng.normal(size=(u, 4 * u)),
                                                       np.array(1.0), rmask)]
        d_out = rng.normal(size=(n, t, u) if attrs.get("return_sequences") else (n, u)).astype(d_out_dtype or dtype)
        d_h, d_c = rng.normal(size=(n, u)).astype(dtype), rng.normal(size=(n, u)).astype(dtype)
        results = []
        for table, xp in ((generic, np), (cuda, fake)):
            ctx = KernelContext(xp, np.random.default_rng(0), dtype)
            forward = table["lstm_scan"](ctx, dict(attrs, units=u), *inputs)
            grads = table["lstm_scan_grad"](ctx, dict(attrs, units=u), *inputs[1:3], *inputs[3:], *forward[3:],
                                            d_out, d_h, d_c)
            results.append([*forward, *grads])
        for got, want in zip(results[1], results[0]):
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def check_gru_kernels(fake, attrs: dict, recurrent_dropout: bool, n: int = 5, t: int = 4, u: int = 3,
                      d_out_dtype=None) -> None:
    """gru_scan and gru_scan_grad (reset_after) of the cupy table on `fake` against the NumPy kernels."""
    generic, cuda = kernels_for("numpy"), kernels_for("cupy")
    rng = np.random.default_rng(2)
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
        rmask = (rng.random((n, u)) > 0.3) / 0.7 if recurrent_dropout else np.array(1.0)
        inputs = [np.asarray(a, dtype=dtype) for a in (rng.normal(size=(n, t, 3 * u)), rng.normal(size=(n, u)),
                                                       rng.normal(size=(u, 3 * u)), rng.normal(size=3 * u),
                                                       np.array(1.0), rmask)]
        d_out = rng.normal(size=(n, t, u) if attrs.get("return_sequences") else (n, u)).astype(d_out_dtype or dtype)
        d_h = rng.normal(size=(n, u)).astype(dtype)
        results = []
        for table, xp in ((generic, np), (cuda, fake)):
            ctx = KernelContext(xp, np.random.default_rng(0), dtype)
            forward = table["gru_scan"](ctx, dict(attrs, units=u), *inputs)
            grads = table["gru_scan_grad"](ctx, dict(attrs, units=u), inputs[1], inputs[2], inputs[4], inputs[5],
                                           *forward[2:], d_out, d_h)
            results.append([*forward, *grads])
        for got, want in zip(results[1], results[0]):
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


class NarrowBlocks(ThreadedRawKernel):
    """Blocks of 8 threads whatever the launch asks: fewer than a row's gate columns, so every loop over a
    row's elements strides."""

    def run(self, grid, block, converted: list) -> None:
        super().run(grid, (min(int(block[0]), 8),), converted)


class RegisterBoundBlocks(ThreadedRawKernel):
    """A kernel that needs so many registers that a device allows it only 32 threads a block."""

    max_threads_per_block = 32


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("kernel_class", [ThreadedRawKernel, NarrowBlocks, RegisterBoundBlocks],
                         ids=["launch_blocks", "8_threads", "32_thread_limit"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_whole_scan_kernels_with_many_threads_a_block_on_a_host_stand_in(cupy_stand_in, monkeypatch, cell,
                                                                              kernel_class):
    """The one-launch scans are the kernels whose threads work together (a block owns a batch row and
    synchronizes twice a step): run with every thread of a block at once around a real barrier, and fewer
    blocks than rows, they still match the NumPy kernels, forward and backward."""
    fake = cupy_stand_in
    fake.kernel_class = kernel_class
    monkeypatch.setenv("NND_CUDA_SCAN", "scan")
    check = check_lstm_kernels if cell == "lstm" else check_gru_kernels
    check(fake, {"go_backwards": True, "return_sequences": True}, True, n=5, t=4, u=3)
    check(fake, {}, False, n=3, t=3, u=5)
    check(fake, {}, False, n=2, t=2, u=20)  # gate columns beyond 32 threads
    launched = {k.fn.__name__ for k in fake.kernels if k.launches}
    assert launched == {f"nnd_{cell}_scan_{d}_{t}" for d in ("forward", "backward") for t in ("float", "double")}
    assert all(isinstance(k, kernel_class) for k in fake.kernels)


def test_the_cupy_loss_and_optimizer_kernels_on_a_host_stand_in(cupy_stand_in):
    """The sparse softmax cross-entropy (forward, gradient), Adam, momentum-SGD and RMSprop kernels built by
    g++ against NumPy."""
    from nnd.runtime.optimizers import make_optimizer

    fake = cupy_stand_in
    generic, cuda = kernels_for("numpy"), kernels_for("cupy")
    rng = np.random.default_rng(4)
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
        ctx = KernelContext(np, rng, dtype)
        logits = (rng.normal(size=(6, 4, 7)) * 30).astype(dtype)  # large logits: the maximum is subtracted
        labels = rng.integers(0, 7, (6, 4))
        dloss = rng.normal(size=(6, 4)).astype(dtype)
        for op, args in (("sparse_softmax_cross_entropy", (logits, labels)),
                         ("sparse_softmax_cross_entropy_grad", (dloss, logits, labels))):
            np.testing.assert_allclose(cuda[op](ctx, {}, *args), generic[op](ctx, {}, *args), rtol=tolerance,
                                       atol=tolerance, err_msg=op)
        start = rng.normal(size=(30, 7)).astype(dtype)
        for name, options in (("adam", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.8, "nesterov": True}),
                              ("rmsprop", {}), ("rmsprop", {"momentum": 0.5})):
            results = []
            for xp in (np, fake):
                params = {"w": start.copy()}
                optimizer = make_optimizer(name, lr=0.01, xp=xp, **options)
                bound = optimizer.bind(params)
                for step in range(3):
                    optimizer.step({"w": (np.arange(210).reshape(30, 7) % 7 - 3.0 + step).astype(dtype)})
                results.append(np.array(bound["w"]))
            np.testing.assert_allclose(results[1], results[0], rtol=tolerance, atol=tolerance, err_msg=name)
    names = {k.fn.__name__ for k in fake.kernels if k.launches}
    assert names == {f"nnd_{n}_{t}" for n in ("sparse_softmax_ce", "sparse_softmax_ce_grad", "adam_update",
                                              "sgd_momentum_update", "rmsprop_update") for t in ("float", "double")}


# ------------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=gpu) for p in EXAMPLES])
def test_two_training_steps_match_numpy(path):
    """Momentum SGD, whatever the example's optimizer: its update is linear in the gradients, so the
    weights differ as little as the gradients do. Adam moves a weight by about lr whatever its gradient's
    size, so a gradient near zero that rounds to opposite signs on the two backends puts the weight up to
    2 * lr apart after one step (the autoencoder's first kernel did); its kernel is compared on its own
    above."""
    losses, params = {}, {}
    for backend in ("numpy", "cupy"):
        model = nnd.load(path, backend=backend, seed=0)
        model.compile(optimizer="sgd(lr=0.05, momentum=0.9)")
        trainer = model._get_trainer()
        rng = np.random.default_rng(3)
        feeds = {v.name: random_array(v.type, 8, rng, _id_range(model, v)) for v in trainer.train_graph.inputs}
        losses[backend] = [float(trainer.step(feeds)["loss"]) for _ in range(2)]
        params[backend] = model.parameters()
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-3)
    for name, want in params["numpy"].items():
        np.testing.assert_allclose(params["cupy"][name], want, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=gpu) for p in EXAMPLES
                                  if p.stem in ("mnist_cnn", "lstm_classifier")])
def test_mixed_precision_training_steps_match_numpy(path, precision):
    """float16 or bfloat16 on both backends (CuPy's own ops where the generated kernels are float/double)."""
    if precision == "bfloat16":
        pytest.importorskip("ml_dtypes")
    losses, params = {}, {}
    for backend in ("numpy", "cupy"):
        model = nnd.load(path, backend=backend, seed=0, mixed_precision=precision)
        trainer = model._get_trainer()
        rng = np.random.default_rng(3)
        feeds = {v.name: random_array(v.type, 8, rng, _id_range(model, v)) for v in trainer.train_graph.inputs
                 if v.name != "loss_scale"}
        losses[backend] = [float(trainer.step(feeds)["loss"]) for _ in range(2)]
        params[backend] = model.parameters()
        assert all(value.dtype == np.float32 for value in params[backend].values())
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=2e-2)
    # Adam moves a weight by up to about lr per step whatever the gradient's size, so a gradient near zero
    # that rounds to opposite signs on the two backends (bfloat16 keeps 8 bits) ends up to 2 * lr * steps
    # apart: 0.004 after two steps at lr=0.001
    atol = 4e-3 if precision == "bfloat16" else 2e-3
    for name, want in params["numpy"].items():
        np.testing.assert_allclose(params["cupy"][name], want, rtol=2e-2, atol=atol, err_msg=name)


# ------------------------------------------------------------------------------------------ CUDA graphs

@contextlib.contextmanager
def no_capture_failures():
    """A capture that falls back to eager runs (with its warning) fails the test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs without CUDA graphs.*")
        yield


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=gpu) for p in EXAMPLES])
def test_captured_training_steps_match_eager_ones_on_the_device(path):
    """Four steps (eager, capture, two replays) against four eager steps on the GPU."""
    losses, params = {}, {}
    for cuda_graphs in (False, True):
        model = nnd.load(path, backend="cupy", seed=0, cuda_graphs=cuda_graphs)
        trainer = model._get_trainer()
        rng = np.random.default_rng(3)
        batches = [{v.name: random_array(v.type, 8, rng, _id_range(model, v)) for v in trainer.train_graph.inputs}
                   for _ in range(4)]
        with no_capture_failures():
            losses[cuda_graphs] = [float(trainer.step(feeds)["loss"]) for feeds in batches]
        params[cuda_graphs] = model.parameters()
        if cuda_graphs:
            graphs = trainer.train_executor.graphs
            assert (graphs.captures, graphs.replays) == (1, 3)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    for name, want in params[False].items():
        np.testing.assert_allclose(params[True][name], want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs cupy and a CUDA device")
def test_the_cupy_backend_captures_by_default():
    path = next(p for p in EXAMPLES if p.stem == "mnist_cnn")
    model = nnd.load(path, backend="cupy", seed=0)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    with no_capture_failures():
        for _ in range(3):
            model.predict(x)
    assert model.cuda_graphs and (model._predictor.graphs.captures, model._predictor.graphs.replays) == (1, 2)
    assert nnd.load(path, backend="cupy", cuda_graphs=False)._get_trainer().train_executor.graphs is None
    assert not nnd.load(path, backend="cupy", mixed_precision=True).cuda_graphs  # its steps do not capture


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs cupy and a CUDA device")
def test_captured_predictions_match_eager_ones_on_the_device():
    path = next(p for p in EXAMPLES if p.stem == "mnist_cnn")
    x = np.random.default_rng(0).random((10, 28, 28, 1), dtype=np.float32)
    want = nnd.load(path, backend="cupy", seed=0, cuda_graphs=False).predict(x, batch_size=4)
    model = nnd.load(path, backend="cupy", seed=0, cuda_graphs=True)
    with no_capture_failures():
        for _ in range(3):
            np.testing.assert_allclose(model.predict(x, batch_size=4), want, rtol=1e-5, atol=1e-6)
    assert model._predictor.graphs.captures == 2  # batches of 4 and of 2


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs cupy and a CUDA device")
def test_a_graph_captured_on_unpadded_sequences_masks_padded_ones():
    source = "model m {\n input x: int32[5]\n embedding(9, 3, mask_zero=true)\n lstm(4)\n dense(2)\n}\n"
    unpadded = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], dtype=np.int32)
    padded = np.array([[1, 2, 3, 0, 0], [5, 4, 0, 0, 0]], dtype=np.int32)
    want = nnd.loads(source, backend="cupy", seed=0, cuda_graphs=False).predict(padded)
    model = nnd.loads(source, backend="cupy", seed=0, cuda_graphs=True)
    with no_capture_failures():
        model.predict(unpadded)
        model.predict(unpadded)  # captured here, on a batch without padding
        np.testing.assert_allclose(model.predict(padded), want, rtol=1e-5, atol=1e-6)
    assert model._predictor.graphs.captures == 1
    with pytest.raises(NndError, match="is out of range for an embedding of 9 rows"):
        model.predict(np.array([[1, 2, 3, 0, 0], [5, 4, 12, 0, 0]], dtype=np.int32))


def test_the_gpu_benchmark_times_its_nnd_systems_on_a_host_stand_in(cupy_stand_in, monkeypatch, capsys):
    """benchmarks/gpu_bench.py end to end (its steps, rounds, failures and table) on the stand-in, so that
    the device run spends its minutes measuring, not finding the script's own mistakes."""
    import importlib.util

    class Pool:
        def total_bytes(self) -> int:
            return 3 << 20

    cupy_stand_in.cuda = types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(synchronize=lambda: None),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda index: {"name": b"host stand-in"}))
    cupy_stand_in.get_default_memory_pool = Pool
    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))
    spec = importlib.util.spec_from_file_location("gpu_bench", bench_dir / "gpu_bench.py")
    gpu_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_bench)
    monkeypatch.setattr(sys, "argv", ["gpu_bench.py", "--rounds", "2", "--steps", "1", "--warmup", "1",
                                      "--workloads", "cnn-train-32", "lstm-infer-32",
                                      "--systems", "nnd cupy -O2", "nnd cupy -O0", "nnd cupy -O2 steps",
                                      "torch cuda"])
    gpu_bench.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("cnn-", "lstm-"))]
    assert "GPU: host stand-in; fp32, TF32 off" in out and "failed" not in out, out
    assert [(row[:17].strip(), row[17:44].strip()) for row in rows] == [
        ("cnn-train-32", "nnd cupy -O2"), ("cnn-train-32", "nnd cupy -O0"),
        ("lstm-infer-32", "nnd cupy -O2"), ("lstm-infer-32", "nnd cupy -O0"), ("lstm-infer-32", "nnd cupy -O2 steps")]
    assert all(row.split()[-1] == "3" for row in rows)  # the pool's megabytes
