"""The GEMM planning of nnd's cuBLAS path (runtime/cuda_blas.py) against NumPy's matmul.

Without a GPU, the cuBLAS call is replaced by a host interpreter of its documented semantics: column-major
operands addressed as base + row + column * ld + batch * stride, each read transposed or not. A plan with
a wrong flag, leading dimension or stride reads the wrong elements and the product differs. The device
test runs the same layouts through libcublas itself.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_gpu import GPU, gpu

from nnd.runtime import cuda_blas
from nnd.runtime.cuda_blas import OP_N, Gemm, GemmPlan, Operand


def _column_major(array: np.ndarray, operand: Operand, batch: int, rows: int, cols: int) -> np.ndarray:
    """The [batch, rows, cols] matrices cuBLAS reads from `array`'s memory, transposed as `operand` says."""
    item = array.itemsize
    stored = (rows, cols) if operand.op == OP_N else (cols, rows)
    view = np.lib.stride_tricks.as_strided(array, (batch, *stored), (operand.batch_stride * item, item,
                                                                      operand.ld * item))
    return view if operand.op == OP_N else view.transpose(0, 2, 1)


class HostCublas:
    """cuBLAS' strided batched GEMM, executed on host memory."""

    def __init__(self):
        self.calls: list[GemmPlan] = []

    def gemm(self, plan: GemmPlan, first: np.ndarray, second: np.ndarray, out: np.ndarray) -> None:
        self.calls.append(plan)
        a = _column_major(first, plan.first, plan.batch, plan.m, plan.k)
        b = _column_major(second, plan.second, plan.batch, plan.k, plan.n)
        item = out.itemsize
        c = np.lib.stride_tricks.as_strided(out, (plan.batch, plan.m, plan.n),
                                            (plan.batch_stride_c * item, item, plan.ldc * item), writeable=True)
        c[...] = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(out.dtype)


@pytest.fixture
def gemm() -> Gemm:
    product = Gemm(np)
    product.loaded, product.library = True, HostCublas()
    return product


def _layouts(rng, xp=np, dtype=np.float32):
    """(name, a, b): contiguous, transposed, sliced, degenerate and batched operands of array module `xp`."""
    def _random(rng, shape):
        return xp.asarray(rng.standard_normal(shape).astype(dtype))

    wide = _random(rng, (6, 9))
    batched = _random(rng, (4, 5, 3))
    yield "contiguous", _random(rng, (5, 3)), _random(rng, (3, 4))
    yield "a transposed", _random(rng, (3, 5)).T, _random(rng, (3, 4))
    yield "b transposed", _random(rng, (5, 3)), _random(rng, (4, 3)).T
    yield "both transposed", _random(rng, (3, 5)).T, _random(rng, (4, 3)).T
    yield "column slices", wide[:, :4], wide[:4, 2:7]
    yield "transposed slices", wide[:4, :6].T, wide[1:5, 3:8]
    yield "one row", _random(rng, (1, 3)), _random(rng, (3, 4))
    yield "one column", _random(rng, (5, 3)), _random(rng, (3, 1))
    yield "inner size one", _random(rng, (5, 1)), _random(rng, (1, 4))
    yield "row of a transposed matrix", _random(rng, (3, 5)).T[:1], _random(rng, (3, 2))
    yield "batch @ matrix", batched, _random(rng, (3, 2))
    yield "matrix @ batch", _random(rng, (2, 5)), batched
    yield "batch @ batch", batched, _random(rng, (4, 3, 6))
    yield "transposed batch", _random(rng, (4, 3, 5)).transpose(0, 2, 1), _random(rng, (4, 6, 3)).transpose(0, 2, 1)
    yield "two batch axes", _random(rng, (2, 3, 5, 4)), _random(rng, (2, 3, 4, 2))
    yield "batch of size one", _random(rng, (1, 5, 3)), _random(rng, (3, 2))
    yield "strided batch", _random(rng, (8, 5, 3))[::2], _random(rng, (4, 3, 2))
    yield "batch axes that do not collapse", _random(rng, (2, 6, 5, 3))[:, ::2], _random(rng, (2, 3, 3, 2))
    yield "broadcast batch axis", _random(rng, (1, 3, 5, 4)), _random(rng, (2, 3, 4, 2))
    yield "negative strides", _random(rng, (5, 3))[::-1], _random(rng, (3, 4))
    yield "columns far apart", _random(rng, (5, 6))[:, ::2], _random(rng, (3, 4))


LAYOUTS = 21


@pytest.mark.parametrize("index", range(LAYOUTS))
def test_the_planned_cublas_call_computes_matmul(gemm, index):
    name, a, b = list(_layouts(np.random.default_rng(index)))[index]
    got = gemm(a, b)
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-5, err_msg=name)
    assert got.shape == np.matmul(a, b).shape
    assert len(gemm.library.calls) == 1, name


def test_products_land_in_an_out_array_in_place_or_through_a_copy(gemm):
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 3), dtype=np.float32), rng.random((3, 4), dtype=np.float32)
    expected = a @ b
    out = np.zeros((5, 4), np.float32)
    assert gemm(a, b, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

    wide = np.zeros((5, 7), np.float32)  # rows of the output far apart: still written in place
    gemm(a, b, out=wide[:, 2:6])
    np.testing.assert_allclose(wide[:, 2:6], expected, rtol=1e-5, atol=1e-6)
    assert not wide[:, :2].any() and not wide[:, 6:].any()

    transposed = np.zeros((4, 5), np.float32).T  # columns contiguous: computed aside, then copied
    assert gemm(a, b, out=transposed) is transposed
    np.testing.assert_allclose(transposed, expected, rtol=1e-5, atol=1e-6)

    square = rng.random((4, 4), dtype=np.float32)  # the product written over its own operand: through a copy
    want = square @ square
    written = []
    gemm.library.gemm = lambda plan, first, second, out: written.append(out) or HostCublas.gemm(
        gemm.library, plan, first, second, out)
    assert gemm(square, square, out=square) is square
    np.testing.assert_allclose(square, want, rtol=1e-5, atol=1e-6)
    assert written[0] is not square
    assert len(gemm.library.calls) == 4


@pytest.mark.parametrize("a, b", [
    (np.arange(6, dtype=np.int64).reshape(2, 3), np.ones((3, 2), np.int64)),  # integers
    (np.ones((2, 3), np.float32), np.ones((3, 2), np.float64)),  # mixed dtypes
    (np.ones(3, np.float32), np.ones((3, 2), np.float32)),  # a vector
    (np.ones((2, 0), np.float32), np.ones((0, 2), np.float32)),  # an empty inner axis
])
def test_what_cublas_does_not_take_goes_to_the_array_module(gemm, a, b):
    np.testing.assert_array_equal(gemm(a, b), np.matmul(a, b))
    assert gemm.library.calls == []


def test_a_machine_without_cublas_uses_the_array_module():
    product = Gemm(np)  # NumPy has no `cuda`: no library is looked for
    a, b = np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(product(a, b), a @ b)
    assert product.library is None


def test_the_device_array_module_keeps_the_wrapped_names_and_replaces_matmul():
    module = cuda_blas.DeviceArrayModule(np)
    assert module.__name__ == "cupy" and module.float32 is np.float32 and module.lib is np.lib
    assert isinstance(module.matmul, Gemm)


# ------------------------------------------------------------------------------------------ on a GPU

@pytest.mark.parametrize("dtype", [pytest.param(d, marks=gpu) for d in ("float32", "float64", "float16")])
def test_every_layout_through_libcublas_matches_cupy(dtype):
    import cupy

    module = cuda_blas.DeviceArrayModule(cupy)
    tolerance = 1e-2 if dtype == "float16" else 1e-5
    for index in range(LAYOUTS):
        name, a, b = list(_layouts(np.random.default_rng(index), cupy, np.dtype(dtype)))[index]
        got = module.matmul(a, b)
        assert got.dtype == a.dtype and got.shape == cupy.matmul(a, b).shape, name
        np.testing.assert_allclose(cupy.asnumpy(got).astype(np.float64),
                                   cupy.asnumpy(cupy.matmul(a, b)).astype(np.float64),
                                   rtol=tolerance, atol=tolerance, err_msg=f"{name} in {dtype}")
    assert module.matmul.library is not None


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs cupy and a CUDA device")
def test_a_captured_cublas_product_replays_on_new_operands():
    import cupy

    module = cuda_blas.DeviceArrayModule(cupy)
    rng = np.random.default_rng(0)
    a = cupy.asarray(rng.random((64, 48), dtype=np.float32))
    b = cupy.asarray(rng.random((48, 32), dtype=np.float32))
    batched = cupy.asarray(rng.random((3, 64, 48), dtype=np.float32))
    module.matmul(a, b)  # the handle and its workspace are set up outside the capture
    out = cupy.empty((64, 32), dtype=np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        module.matmul(a, b, out=out)
        product = module.matmul(batched, b)
        graph = stream.end_capture()
    a[...] = cupy.asarray(rng.random((64, 48), dtype=np.float32))
    batched[...] = cupy.asarray(rng.random((3, 64, 48), dtype=np.float32))
    graph.launch()
    cupy.cuda.Device().synchronize()
    np.testing.assert_allclose(cupy.asnumpy(out), cupy.asnumpy(cupy.matmul(a, b)), rtol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(product), cupy.asnumpy(cupy.matmul(batched, b)), rtol=1e-5)


def test_the_kernels_that_run_on_cupy_multiply_through_the_array_module():
    """CuPy's own matmul (the `@` operator, `cupy.matmul` of a module imported directly) refuses to run in
    a CUDA graph capture: the kernels call `xp.matmul` of the backend's array module instead. Only the
    NumPy-only helpers may use `@`."""
    import ast
    from pathlib import Path

    numpy_only = {("kernels_basic.py", "_sum_run")}
    runtime = Path(cuda_blas.__file__).parent
    offenders = []
    for path in sorted(runtime.glob("*.py")):
        if path.name.startswith("kernels_native"):
            continue
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                uses_operator = isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)
                imports_cupy = (isinstance(node, ast.Import)
                                and any(alias.name == "cupy" and alias.asname == "xp" for alias in node.names))
                if (uses_operator or imports_cupy) and (path.name, function.name) not in numpy_only:
                    offenders.append(f"{path.name}:{node.lineno} in {function.name}")
    assert offenders == [], offenders


def test_a_cublas_allocation_failure_is_an_out_of_memory_error():
    """cuBLAS status 3 (its workspace could not be allocated) becomes the executor's one-line
    out-of-memory error naming the op and the batch size; other statuses stay internal errors."""
    from nnd.runtime.executor import is_out_of_memory

    with pytest.raises(MemoryError) as info:
        cuda_blas.CublasLibrary._check("cublasGemmEx", cuda_blas.CUBLAS_STATUS_ALLOC_FAILED)
    assert is_out_of_memory(info.value)
    with pytest.raises(RuntimeError, match="cublasGemmEx failed with cuBLAS status 13"):
        cuda_blas.CublasLibrary._check("cublasGemmEx", 13)
