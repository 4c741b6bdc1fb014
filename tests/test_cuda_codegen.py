"""The CUDA code generator of fused elementwise groups: source shape, op expressions, broadcast index
arithmetic; every kernel it emits for the examples compiles with nvcc (sm_90); and the generated code,
built as plain C++ on the host, computes what the NumPy kernels compute."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from elementwise_bodies import BATCH, concrete, op_bodies
from host_cuda import call_host, host_library
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import NndError
from nnd.compiler.frontend import compile_file
from nnd.compiler.fuse_elementwise import FUSED_OP, FUSIBLE_OPS
from nnd.compiler.ir import Graph
from nnd.compiler.passes import PassManager
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.training_graph import build_training_graph
from nnd.runtime.cuda_codegen import (EMITTERS, batched_source, c_type, elementwise_kernel_source,
                                      generated_kernels_for, kernel_name, node_kernel_source)
from nnd.runtime.executor import Executor

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.nnd"))
KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(')


def body_of(build, *shapes) -> Graph:
    graph = Graph("body")
    b = GraphBuilder(graph)
    xs = [b.add_input(f"x{k}", TensorType(tuple(s), "f32")) for k, s in enumerate(shapes)]
    graph.outputs["y0"] = build(b, *xs)
    return graph


# ------------------------------------------------------------------------------------------ the source

def test_one_kernel_per_group_with_inputs_outputs_and_a_grid_stride_loop():
    body = body_of(lambda b, dy, y, bias: b.emit1("add", [b.emit1("relu_grad", [dy, y]), bias]),
                   ("N", 8, 8, 16), ("N", 8, 8, 16), (16,))
    source = elementwise_kernel_source(body, "k", "float32")
    assert KERNEL.findall(source) == ["k"]
    assert "const float* __restrict__ in0" in source and "const float* __restrict__ in2" in source
    assert "float* __restrict__ out0" in source and "const unsigned long long n" in source
    assert "i += (unsigned long long)blockDim.x * gridDim.x" in source
    assert "const float x0 = in0[i];" in source
    assert "const float x2 = in2[i % 16ULL];" in source        # the bias, by trailing-dimension index
    assert "x0 * (float)(x1 > 0.0f)" in source                 # relu_grad
    assert "out0[i] = v1;" in source
    assert "double" not in source


def test_float64_variant_uses_double_literals_and_functions():
    body = body_of(lambda b, x: b.emit1("mul", [b.emit1("exp", [x]),
                                                b.emit1("constant", [], {"value": 0.25, "dtype": "f32"})]), (4,))
    f32 = elementwise_kernel_source(body, "k32", "float32")
    f64 = elementwise_kernel_source(body, "k64", np.float64)
    assert "expf(x0)" in f32 and "0.25f" in f32
    assert "exp(x0)" in f64 and "expf" not in f64 and "0.25f" not in f64 and "const double v1 = 0.25;" in f64
    assert kernel_name("abc", "float32") == "nnd_ew_abc_f32" and kernel_name("abc", np.float64) == "nnd_ew_abc_f64"
    for dtype in (np.float64, np.dtype(np.float64), "float64", "f64", "double"):  # np.dtype('float64') == 'float'
        assert c_type(dtype) == "double", dtype
    for dtype in (np.float32, np.dtype(np.float32), "float32", "f32", "float"):
        assert c_type(dtype) == "float", dtype


def test_broadcast_index_arithmetic():
    body = body_of(lambda b, x, s, row, col: b.emit1("add", [b.emit1("mul", [x, s]),
                                                             b.emit1("sub", [row, col])]),
                   ("N", 4, 3), (), ("N", 1, 3), (4, 1))
    source = elementwise_kernel_source(body, "k", "float32")
    assert "in1[0]" in source                                   # a scalar
    assert "in2[(i / 12ULL) * 3ULL + (i % 3ULL)]" in source     # (N, 1, 3) against (N, 4, 3)
    assert "in3[((i / 3ULL) % 4ULL)]" in source                 # (4, 1) against (N, 4, 3)


def test_op_expressions():
    cases = {
        "sigmoid": ("expf(-fabsf(x0))", "x0 >= 0.0f ? 1.0f / (1.0f + v0_e) : v0_e / (1.0f + v0_e)"),
        "tanh_grad": ("x0 * (1.0f - x1 * x1)",),
        "sigmoid_grad": ("x0 * x1 * (1.0f - x1)",),
        "gelu": ("erff(x0 * 0.7071067811865476f)",),
        "softplus": ("fmaxf(x0, 0.0f) + log1pf(expf(-fabsf(x0)))",),
        "maximum": ("((x0 >= x1 || x0 != x0) ? x0 : x1)",),
        "leaky_relu": ("x0 * 0.2f",),
    }
    for op, fragments in cases.items():
        arity = 2 if op in ("tanh_grad", "sigmoid_grad", "maximum") else 1
        body = body_of(lambda b, *xs: b.emit1(op, list(xs)), *[(5,)] * arity)
        source = elementwise_kernel_source(body, "k", "float32")
        for fragment in fragments:
            assert fragment in source, (op, fragment, source)


def test_every_fusible_op_has_an_expression_and_other_ops_are_a_clear_error():
    assert FUSIBLE_OPS <= set(EMITTERS)
    body = body_of(lambda b, x: b.emit1("softmax", [b.emit1("exp", [x])]), ("N", 5))
    with pytest.raises(NndError, match="no expression for op 'softmax'"):
        elementwise_kernel_source(body, "k", "float32")
    with pytest.raises(NndError, match="float32 or float64"):
        elementwise_kernel_source(body, "k", np.int32)
    body = body_of(lambda b, x: b.emit1("exp", [x]), (5,))
    with pytest.raises(NndError, match="not a C identifier"):
        elementwise_kernel_source(body, "not a name", "float32")


def test_equal_groups_share_a_kernel_and_the_examples_emit_kernels():
    program = compile_file(EXAMPLES[[p.stem for p in EXAMPLES].index("tiny_resnet")])
    graph = PassManager.for_level(2).run(build_training_graph(program, program.model_name()).graph)
    fused = [n for n in graph.nodes if n.op == FUSED_OP]
    names = {node_kernel_source(n)[0] for n in fused}
    assert len(fused) == 14 and len(names) < len(fused)
    kernels = generated_kernels_for(EXAMPLES[[p.stem for p in EXAMPLES].index("tiny_resnet")])
    assert {name for name, _ in kernels} >= names
    assert all(KERNEL.findall(source) == [name] for name, source in kernels)


# ------------------------------------------------------------------------------------------ nvcc

# layers that no example uses, so that their kernels are compiled too
UNCOMMON_LAYERS_MODEL = Path(__file__).parent / "models" / "uncommon_layers.nnd"


def all_sources() -> list[tuple[str, str]]:
    """Every kernel source the cupy backend can compile: the generated elementwise kernels of the
    examples and of every op body, and the fixed sources: epilogues, LSTM and GRU steps, whole scans, pooling,
    col2im, the sparse softmax cross-entropy and Adam."""
    from nnd.runtime.kernels_cupy import EPILOGUE_SOURCE
    from nnd.runtime.kernels_cupy_conv import CONV_KERNELS_SOURCE
    from nnd.runtime.kernels_cupy_recurrent import GRU_STEP_SOURCE, LSTM_STEP_SOURCE
    from nnd.runtime.kernels_cupy_reduce import REDUCE_SOURCE
    from nnd.runtime.kernels_cupy_scan import SCAN_SOURCE
    from nnd.runtime.kernels_cupy_step import STEP_KERNELS_SOURCE

    found: dict[str, str] = {"nnd_lstm_steps": LSTM_STEP_SOURCE, "nnd_gru_steps": GRU_STEP_SOURCE,
                             "nnd_conv_kernels": CONV_KERNELS_SOURCE, "nnd_scans": SCAN_SOURCE,
                             "nnd_step_kernels": STEP_KERNELS_SOURCE, "nnd_epilogue": EPILOGUE_SOURCE,
                             "nnd_reductions": REDUCE_SOURCE}
    for path in [*EXAMPLES, UNCOMMON_LAYERS_MODEL]:
        for dtype in ("float32", "float64"):
            found.update(generated_kernels_for(path, dtype))
    for body in op_bodies():
        for dtype in ("float32", "float64"):
            name = f"test_{body.name}_{kernel_name('', dtype)[-3:]}"
            found[name] = elementwise_kernel_source(body.graph, name, dtype)
    return list(found.items())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_generated_kernel_compiles_with_nvcc(tmp_path):
    sources = all_sources()
    example_kernels = [name for name, _ in sources if name.startswith("nnd_ew_")]
    assert len(example_kernels) >= 10
    unit = tmp_path / "kernels.cu"
    unit.write_text(batched_source(sources))
    result = subprocess.run(["nvcc", "--cubin", "-arch=sm_90", "-o", "/dev/null", str(unit)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_the_pooling_and_col2im_kernels_compile_with_nvcc(tmp_path):
    from nnd.runtime.kernels_cupy_conv import CONV_KERNELS_SOURCE

    unit = tmp_path / "conv.cu"
    unit.write_text(CONV_KERNELS_SOURCE)
    result = subprocess.run(["nvcc", "--cubin", "-arch=sm_90", "-o", "/dev/null", str(unit)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_recurrent_step_kernels_compile_with_nvcc(tmp_path, cell):
    """Each step source on its own (the host tests in test_gpu.py check the kernels it defines)."""
    from nnd.runtime import kernels_cupy_recurrent

    unit = tmp_path / f"{cell}.cu"
    unit.write_text(getattr(kernels_cupy_recurrent, f"{cell.upper()}_STEP_SOURCE"))
    result = subprocess.run(["nvcc", "--cubin", "-arch=sm_90", "-o", "/dev/null", str(unit)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def find_nvrtc():
    """libnvrtc as ctypes, from $NND_NVRTC, the library path or the NVIDIA wheels (nvidia-cuda-nvrtc);
    None when absent. Its builtins library, beside it, is loaded first so no library path is needed."""
    import ctypes
    import ctypes.util
    import glob
    import os
    import site

    candidates = [os.environ.get("NND_NVRTC"), ctypes.util.find_library("nvrtc")]
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")))
    for candidate in filter(None, candidates):
        if "builtins" in candidate or ".alt." in candidate:
            continue
        try:
            for builtins in glob.glob(os.path.join(os.path.dirname(candidate), "libnvrtc-builtins.so*")):
                if ".alt." not in builtins:
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


def test_every_generated_kernel_compiles_alone_with_nvrtc():
    """What cupy.RawKernel does with each source: NVRTC, no headers, one program per kernel."""
    import ctypes

    nvrtc = find_nvrtc()
    if nvrtc is None:
        pytest.skip("libnvrtc is not available (set NND_NVRTC to its path)")
    failures = []
    for name, source in all_sources():
        program = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0,
                                        None, None) == 0
        options = (ctypes.c_char_p * 1)(b"--gpu-architecture=sm_90")
        status = nvrtc.nvrtcCompileProgram(program, 1, options)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
        if status != 0:
            failures.append(f"{name}: {log.value.decode(errors='replace')[:400]}")
    assert not failures, "\n".join(failures[:5])


# ------------------------------------------------------------------------------------------ host build

def reference(graph: Graph, feeds: dict[str, np.ndarray], dtype) -> list[np.ndarray]:
    result = Executor(graph, dtype=dtype).run(feeds)
    return [np.asarray(result[name]) for name in graph.outputs]


TOLERANCE = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_generated_code_matches_numpy_on_the_host(tmp_path):
    bodies = op_bodies()
    sources = []
    for body in bodies:
        for dtype in (np.float32, np.float64):
            name = f"host_{body.name}_{np.dtype(dtype).name}"
            sources.append((name, elementwise_kernel_source(body.graph, name, dtype)))
    library = host_library(tmp_path, sources)
    rng = np.random.default_rng(0)
    for body in bodies:
        feeds = body.draw(rng)
        shape = concrete(next(iter(body.graph.outputs.values())).type.shape)
        for dtype in (np.float32, np.float64):
            name = f"host_{body.name}_{np.dtype(dtype).name}"
            want = reference(body.graph, {k: v.astype(dtype) for k, v in feeds.items()}, dtype)
            got = call_host(library, name, [feeds[v.name] for v in body.graph.inputs], shape, 1, dtype)
            np.testing.assert_allclose(got[0], want[0], err_msg=name, **TOLERANCE[dtype])


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_example_kernels_match_their_bodies_on_the_host(tmp_path):
    nodes = []
    for stem in ("tiny_resnet", "vgg_blocks", "forecast", "two_inputs", "lstm_classifier"):
        program = compile_file(EXAMPLES[[p.stem for p in EXAMPLES].index(stem)])
        graph = PassManager.for_level(2).run(build_training_graph(program, program.model_name()).graph)
        nodes += [n for n in graph.nodes if n.op == FUSED_OP]
    sources = dict(node_kernel_source(n, np.float64) for n in nodes)
    library = host_library(tmp_path, list(sources.items()))
    rng = np.random.default_rng(1)
    for node in nodes:
        body = node.body
        feeds = {v.name: rng.uniform(0.1, 1.0, concrete(v.type.shape)) * rng.choice([-1, 1], concrete(v.type.shape))
                 for v in body.inputs}
        shape = concrete(node.outputs[0].type.shape)
        want = reference(body, feeds, np.float64)
        got = call_host(library, node_kernel_source(node, np.float64)[0], [feeds[v.name] for v in body.inputs],
                        shape, len(node.outputs), np.float64)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    assert BATCH == 2 and nodes
