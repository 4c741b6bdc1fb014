"""C for fused elementwise groups on the CPU: one function per `fused_elementwise` body.

The function computes the elements [begin, end) of the group's iteration shape, each with the statements
of `nnd.runtime.elementwise_codegen` (the same as the CUDA kernels'), so the NumPy backend makes one pass
over memory where running the body op by op makes one per op:

    void nnd_ew_<key>_f32(const float* restrict in0, ..., float* restrict out0, ...,
                          int64_t begin, int64_t end)

Arguments are the body's inputs, then its outputs, then the range; threads take ranges of their own.
Several functions concatenate into one compilation unit (`library_source`) behind one header.
"""
from __future__ import annotations

from typing import Any

from nnd.compiler.diagnostics import NndError
from nnd.compiler.fuse_elementwise import FUSED_OP, body_key
from nnd.compiler.ir import Graph, Node
from nnd.runtime.elementwise_codegen import C, EMITTERS, c_type, check_identifier, element_code, kernel_name

HEADER = "#include <math.h>\n#include <stdint.h>\n"


def elementwise_function_source(body: Graph, name: str, dtype: Any = "float32") -> str:
    """The C source of one function computing `body` per element, in `dtype` (float32 or float64)."""
    T = c_type(dtype)
    check_identifier(name)
    code = element_code(body, T, C)
    params = ([f"const {T}* restrict in{k}" for k in range(code.inputs)]
              + [f"{T}* restrict out{k}" for k in range(code.outputs)] + ["int64_t begin", "int64_t end"])
    body_lines = "\n".join(f"        {line}" for line in code.lines)
    signature = f",\n{' ' * (len(name) + 6)}".join(params)
    return (f"void {name}({signature})\n"
            "{\n"
            "    for (int64_t i = begin; i < end; ++i) {\n"
            f"{body_lines}\n"
            "    }\n"
            "}\n")


def supports(body: Graph) -> bool:
    """Whether the generator has an expression for every op of `body`."""
    return all(node.op in EMITTERS and len(node.outputs) == 1 for node in body.nodes)


def node_function_source(node: Node, dtype: Any = "float32") -> tuple[str, str]:
    """(function name, source) of a `fused_elementwise` node."""
    if node.op != FUSED_OP or node.body is None:
        raise NndError(f"{node.op} is not a fused elementwise node with a body")
    name = kernel_name(node.attr("key") or body_key(node.body), dtype)
    return name, elementwise_function_source(node.body, name, dtype)


def library_source(functions: dict[str, str]) -> str:
    """One compilation unit holding the functions `name -> source` (their names differ)."""
    return HEADER + "".join(f"\n// {name}\n{source}" for name, source in sorted(functions.items()))
