"""CUDA C++ for fused elementwise groups: one `extern "C" __global__` kernel per `fused_elementwise` body.

The kernel walks the group's iteration shape with a grid-stride loop over flat positions i, computing
each element with the statements of `nnd.runtime.elementwise_codegen` (shared with the CPU's generated C):

    extern "C" __global__ void nnd_ew_<key>_f32(const float* __restrict__ in0, ..., float* __restrict__ out0,
                                                ..., const unsigned long long n)

Arguments are the body's inputs, then its outputs, then n, the number of elements of the iteration
shape. `float` and `double` variants come from the same body. The source needs no header, so NVRTC
compiles it as it is and several kernels concatenate into one file (`batched_source`).

`generated_kernels_for(path)` lists every kernel the generator emits for a model file's optimized
inference, evaluation and training graphs: what CI compiles with nvcc when it has no GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nnd.compiler.diagnostics import NndError
from nnd.compiler.fuse_elementwise import FUSED_OP, body_key
from nnd.compiler.ir import Graph, Node
from nnd.runtime.elementwise_codegen import CUDA, EMITTERS, c_type, check_identifier, element_code, kernel_name

__all__ = ["EMITTERS", "batched_source", "c_type", "elementwise_kernel_source", "generated_kernels_for",
           "kernel_name", "node_kernel_source"]


def elementwise_kernel_source(body: Graph, name: str, dtype: Any = "float32") -> str:
    """The CUDA source of one kernel computing `body` per element, in `dtype` (float32 or float64)."""
    T = c_type(dtype)
    check_identifier(name)
    code = element_code(body, T, CUDA)
    params = ([f"const {T}* __restrict__ in{k}" for k in range(code.inputs)]
              + [f"{T}* __restrict__ out{k}" for k in range(code.outputs)] + ["const unsigned long long n"])
    body_lines = "\n".join(f"        {line}" for line in code.lines)
    signature = f",\n{' ' * (len(name) + 28)}".join(params)
    return (f'extern "C" __global__ void {name}({signature})\n'
            "{\n"
            "    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;\n"
            "         i += (unsigned long long)blockDim.x * gridDim.x) {\n"
            f"{body_lines}\n"
            "    }\n"
            "}\n")


def node_kernel_source(node: Node, dtype: Any = "float32") -> tuple[str, str]:
    """(kernel name, source) of a `fused_elementwise` node."""
    if node.op != FUSED_OP or node.body is None:
        raise NndError(f"{node.op} is not a fused elementwise node with a body")
    name = kernel_name(node.attr("key") or body_key(node.body), dtype)
    return name, elementwise_kernel_source(node.body, name, dtype)


def batched_source(kernels: list[tuple[str, str]]) -> str:
    """One compilation unit holding several generated kernels (their names differ)."""
    return "\n".join(f"// {name}\n{source}" for name, source in kernels)


def generated_kernels_for(path: str | Path, dtype: Any = "float32") -> list[tuple[str, str]]:
    """Every (name, source) the generator emits for the models of a `.nnd` file: their inference,
    evaluation (loss) and training graphs after the -O2 pipeline, each distinct kernel once."""
    from nnd.compiler.frontend import compile_file
    from nnd.compiler.layers import INFER
    from nnd.compiler.passes import PassManager
    from nnd.compiler.training_graph import build_loss_graph, build_training_graph

    program = compile_file(path)
    passes = PassManager.for_level(2)
    found: dict[str, str] = {}
    for model in program.graphs:
        spec = program.train_spec(model)
        # the loss graphs as the trainer builds them, with their sample-weight inputs
        graphs = [program.lower(model, INFER), build_loss_graph(program, model, spec, INFER, sample_weights=True).graph,
                  build_training_graph(program, model, spec, sample_weights=True).graph]
        for graph in graphs:
            for node in passes.run(graph).nodes:
                if node.op == FUSED_OP:
                    name, source = node_kernel_source(node, dtype)
                    found.setdefault(name, source)
    return list(found.items())
