"""CUDA C++ for fused elementwise groups: one `extern "C" __global__` kernel per `fused_elementwise` body.

The kernel walks the group's iteration shape with a grid-stride loop over flat positions i; each input
is read at the position its broadcast pattern gives (`nnd.compiler.fuse_elementwise.broadcast_index`:
the same element, element 0 of a scalar, i % m for a trailing-dimension vector such as a bias, or index
arithmetic over static strides), the body's ops run on registers, and each output is written once:

    extern "C" __global__ void nnd_ew_<key>_f32(const float* __restrict__ in0, ..., float* __restrict__ out0,
                                                ..., const unsigned long long n)

Arguments are the body's inputs, then its outputs, then n, the number of elements of the iteration
shape. `float` and `double` variants come from the same body. Every expression follows the NumPy kernel
of its op (`nnd.runtime.kernels_basic`), in the same stable forms. The source needs no header, so NVRTC
compiles it as it is and several kernels concatenate into one file (`batched_source`).

`generated_kernels_for(path)` lists every kernel the generator emits for a model file's optimized
inference, evaluation and training graphs: what CI compiles with nvcc when it has no GPU.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.compiler.fuse_elementwise import FUSED_OP, body_key, broadcast_index
from nnd.compiler.ir import Graph, Node

EPSILON = 1e-7  # the probability clip of the crossentropies, as in kernels_basic
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_C = math.sqrt(2.0 / math.pi)
_TANH_K = 0.044715
_DEFAULT_ATTRS = {"leaky_relu": {"alpha": 0.2}, "leaky_relu_grad": {"alpha": 0.2}, "elu": {"alpha": 1.0},
                  "elu_grad": {"alpha": 1.0}, "gelu": {"approximate": False}, "gelu_grad": {"approximate": False},
                  "huber": {"delta": 1.0}, "huber_grad": {"delta": 1.0}}


def c_type(dtype: Any) -> str:
    """'float' or 'double' for a NumPy dtype or an IR dtype name."""
    if isinstance(dtype, str) and dtype in ("f32", "float", "f64", "double"):  # IR or C names
        return "float" if dtype in ("f32", "float") else "double"
    name = np.dtype(dtype).name  # a NumPy dtype equals the string 'float': compare names only
    if name == "float32":
        return "float"
    if name == "float64":
        return "double"
    raise NndError(f"generated CUDA kernels compute in float32 or float64, not {name}")


def kernel_name(key: str, dtype: Any) -> str:
    suffix = "f32" if c_type(dtype) == "float" else "f64"
    return f"nnd_ew_{re.sub(r'[^0-9A-Za-z_]', '_', key)}_{suffix}"


class _Writer:
    """Expressions in one C type: literals, math function names, statements of the loop body."""

    def __init__(self, ctype: str):
        self.T = ctype
        self.lines: list[str] = []

    def lit(self, value: float) -> str:
        value = float(value)
        if math.isnan(value):
            return "__int_as_float(0x7fc00000)" if self.T == "float" else "__longlong_as_double(0x7ff8000000000000LL)"
        if math.isinf(value):
            text = ("__int_as_float(0x7f800000)" if self.T == "float"
                    else "__longlong_as_double(0x7ff0000000000000LL)")
            return text if value > 0 else f"(-{text})"
        text = repr(value)
        if "e" not in text and "." not in text:
            text += ".0"
        text = f"{text}f" if self.T == "float" else text
        return f"({text})" if value < 0 else text

    def fn(self, name: str) -> str:
        return f"{name}f" if self.T == "float" else name

    def let(self, name: str, expr: str) -> str:
        self.lines.append(f"const {self.T} {name} = {expr};")
        return name

    def sigmoid(self, x: str, v: str) -> str:
        e = self.let(f"{v}_e", f"{self.fn('exp')}(-{self.fn('fabs')}({x}))")
        one = self.lit(1.0)
        return f"({x} >= {self.lit(0.0)} ? {one} / ({one} + {e}) : {e} / ({one} + {e}))"


Emitter = Callable[[_Writer, list[str], dict[str, Any], str], str]


def _attr(op: str, attrs: dict[str, Any], key: str) -> Any:
    value = attrs.get(key)
    return _DEFAULT_ATTRS[op][key] if value is None else value


def _gelu(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    x = a[0]
    half, one = w.lit(0.5), w.lit(1.0)
    if _attr("gelu", attrs, "approximate"):
        inner = f"{w.lit(_TANH_C)} * ({x} + {w.lit(_TANH_K)} * {x} * {x} * {x})"
        return f"{half} * {x} * ({one} + {w.fn('tanh')}({inner}))"
    return f"{half} * {x} * ({one} + {w.fn('erf')}({x} * {w.lit(_SQRT_HALF)}))"


def _gelu_grad(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    dy, x = a
    half, one = w.lit(0.5), w.lit(1.0)
    if _attr("gelu_grad", attrs, "approximate"):
        x2 = w.let(f"{v}_x2", f"{x} * {x}")
        t = w.let(f"{v}_t", f"{w.fn('tanh')}({w.lit(_TANH_C)} * ({x} + {w.lit(_TANH_K)} * {x2} * {x}))")
        return (f"{dy} * ({half} * ({one} + {t}) + {half} * {x} * ({one} - {t} * {t}) * {w.lit(_TANH_C)}"
                f" * ({one} + {w.lit(3.0 * _TANH_K)} * {x2}))")
    cdf = w.let(f"{v}_cdf", f"{half} * ({one} + {w.fn('erf')}({x} * {w.lit(_SQRT_HALF)}))")
    pdf = w.let(f"{v}_pdf", f"{w.lit(_INV_SQRT_2PI)} * {w.fn('exp')}({w.lit(-0.5)} * {x} * {x})")
    return f"{dy} * ({cdf} + {x} * {pdf})"


def _swish_grad(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    dy, x = a
    s = w.let(f"{v}_s", w.sigmoid(x, v))
    return f"{dy} * ({s} + {x} * {s} * ({w.lit(1.0)} - {s}))"


def _clip(w: _Writer, x: str, lo: str, hi: str) -> str:
    return f"{w.fn('fmin')}({w.fn('fmax')}({x}, {lo}), {hi})"


def _binary_crossentropy(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    p, t = a
    one = w.lit(1.0)
    pc = w.let(f"{v}_p", _clip(w, p, w.lit(EPSILON), w.lit(1.0 - EPSILON)))
    return f"-({t} * {w.fn('log')}({pc}) + ({one} - {t}) * {w.fn('log')}({one} - {pc}))"


def _binary_crossentropy_grad(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    dl, p, t = a
    one, lo, hi = w.lit(1.0), w.lit(EPSILON), w.lit(1.0 - EPSILON)
    inside = w.let(f"{v}_in", f"({w.T})({p} >= {lo} && {p} <= {hi})")
    pc = w.let(f"{v}_p", _clip(w, p, lo, hi))
    return f"{dl} * {inside} * (({one} - {t}) / ({one} - {pc}) - {t} / {pc})"


def _huber(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    p, t = a
    delta = w.lit(_attr("huber", attrs, "delta"))
    err = w.let(f"{v}_err", f"{w.fn('fabs')}({p} - {t})")
    q = w.let(f"{v}_q", f"{w.fn('fmin')}({err}, {delta})")
    return f"{w.lit(0.5)} * {q} * {q} + {delta} * ({err} - {q})"


def _huber_grad(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    dl, p, t = a
    delta = float(_attr("huber_grad", attrs, "delta"))
    return f"{dl} * {_clip(w, f'({p} - {t})', w.lit(-delta), w.lit(delta))}"


def _constant(w: _Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    if tuple(attrs.get("shape", ()) or ()):
        raise NndError("the CUDA code generator inlines scalar constants only")
    return w.lit(attrs["value"])


EMITTERS: dict[str, Emitter] = {
    "neg": lambda w, a, at, v: f"-{a[0]}",
    "relu": lambda w, a, at, v: f"({a[0]} < {w.lit(0.0)} ? {w.lit(0.0)} : {a[0]})",
    "leaky_relu": lambda w, a, at, v: (f"({a[0]} > {w.lit(0.0)} ? {a[0]} : "
                                       f"{a[0]} * {w.lit(_attr('leaky_relu', at, 'alpha'))})"),
    "elu": lambda w, a, at, v: (f"({a[0]} > {w.lit(0.0)} ? {a[0]} : {w.lit(_attr('elu', at, 'alpha'))} * "
                                f"{w.fn('expm1')}({w.fn('fmin')}({a[0]}, {w.lit(0.0)})))"),
    "gelu": _gelu,
    "sigmoid": lambda w, a, at, v: w.sigmoid(a[0], v),
    "tanh": lambda w, a, at, v: f"{w.fn('tanh')}({a[0]})",
    "swish": lambda w, a, at, v: f"{a[0]} * {w.let(f'{v}_s', w.sigmoid(a[0], v))}",
    "softplus": lambda w, a, at, v: (f"{w.fn('fmax')}({a[0]}, {w.lit(0.0)}) + "
                                     f"{w.fn('log1p')}({w.fn('exp')}(-{w.fn('fabs')}({a[0]})))"),
    "exp": lambda w, a, at, v: f"{w.fn('exp')}({a[0]})",
    "log": lambda w, a, at, v: f"{w.fn('log')}({a[0]})",
    "sqrt": lambda w, a, at, v: f"{w.fn('sqrt')}({a[0]})",
    "square": lambda w, a, at, v: f"{a[0]} * {a[0]}",
    "abs": lambda w, a, at, v: f"{w.fn('fabs')}({a[0]})",
    "sign": lambda w, a, at, v: f"({w.T})(({a[0]} > {w.lit(0.0)}) - ({a[0]} < {w.lit(0.0)}))",
    "relu_grad": lambda w, a, at, v: f"{a[0]} * ({w.T})({a[1]} > {w.lit(0.0)})",
    "leaky_relu_grad": lambda w, a, at, v: (f"({a[1]} > {w.lit(0.0)} ? {a[0]} : "
                                            f"{a[0]} * {w.lit(_attr('leaky_relu_grad', at, 'alpha'))})"),
    "elu_grad": lambda w, a, at, v: (f"({a[1]} > {w.lit(0.0)} ? {a[0]} : "
                                     f"{a[0]} * ({w.lit(_attr('elu_grad', at, 'alpha'))}"
                                     f" * {w.fn('exp')}({w.fn('fmin')}({a[1]}, {w.lit(0.0)}))))"),
    "gelu_grad": _gelu_grad,
    "sigmoid_grad": lambda w, a, at, v: f"{a[0]} * {a[1]} * ({w.lit(1.0)} - {a[1]})",
    "tanh_grad": lambda w, a, at, v: f"{a[0]} * ({w.lit(1.0)} - {a[1]} * {a[1]})",
    "swish_grad": _swish_grad,
    "add": lambda w, a, at, v: f"{a[0]} + {a[1]}",
    "sub": lambda w, a, at, v: f"{a[0]} - {a[1]}",
    "mul": lambda w, a, at, v: f"{a[0]} * {a[1]}",
    "div": lambda w, a, at, v: f"{a[0]} / {a[1]}",
    "maximum": lambda w, a, at, v: f"(({a[0]} >= {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})",
    "sigmoid_cross_entropy": lambda w, a, at, v: (f"{w.fn('fmax')}({a[0]}, {w.lit(0.0)}) - {a[0]} * {a[1]} + "
                                                  f"{w.fn('log1p')}({w.fn('exp')}(-{w.fn('fabs')}({a[0]})))"),
    "binary_crossentropy": _binary_crossentropy,
    "binary_crossentropy_grad": _binary_crossentropy_grad,
    "huber": _huber,
    "huber_grad": _huber_grad,
    "constant": _constant,
}


def _index(pattern: tuple) -> str:
    kind = pattern[0]
    if kind == "full":
        return "i"
    if kind == "scalar":
        return "0"
    if kind == "trailing":
        return f"i % {pattern[1]}ULL"
    terms = []
    for div, mod, stride in pattern[1]:
        term = "i" if div == 1 else f"(i / {div}ULL)"
        if mod is not None:
            term = f"({term} % {mod}ULL)"
        if stride != 1:
            term = f"{term} * {stride}ULL"
        terms.append(term)
    return " + ".join(terms)


def iteration_shape(body: Graph) -> tuple:
    shapes = {v.type.shape for v in body.outputs.values()}
    if len(shapes) != 1:
        raise NndError(f"a fused elementwise body writes outputs of different shapes: {sorted(map(str, shapes))}")
    return shapes.pop()


def elementwise_kernel_source(body: Graph, name: str, dtype: Any = "float32") -> str:
    """The CUDA source of one kernel computing `body` per element, in `dtype` (float32 or float64)."""
    T = c_type(dtype)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise NndError(f"{name!r} is not a C identifier")
    shape = iteration_shape(body)
    w = _Writer(T)
    names: dict[Any, str] = {}
    params = []
    for k, value in enumerate(body.inputs):
        pattern = broadcast_index(value.type.shape, shape)
        if pattern is None:
            raise NndError(f"the CUDA code generator cannot broadcast an input of shape {value.type.shape} "
                           f"to {shape}")
        params.append(f"const {T}* __restrict__ in{k}")
        names[value] = w.let(f"x{k}", f"in{k}[{_index(pattern)}]")
    for index, node in enumerate(body.nodes):
        names.update(_emit(w, node, [names[v] for v in node.inputs], f"v{index}"))
    outputs = list(body.outputs.values())
    params += [f"{T}* __restrict__ out{k}" for k in range(len(outputs))]
    params.append("const unsigned long long n")
    stores = [f"out{k}[i] = {names[value]};" for k, value in enumerate(outputs)]
    body_lines = "\n".join(f"        {line}" for line in w.lines + stores)
    signature = f",\n{' ' * (len(name) + 28)}".join(params)
    return (f'extern "C" __global__ void {name}({signature})\n'
            "{\n"
            "    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;\n"
            "         i += (unsigned long long)blockDim.x * gridDim.x) {\n"
            f"{body_lines}\n"
            "    }\n"
            "}\n")


def _emit(w: _Writer, node: Node, args: list[str], var: str) -> dict[Any, str]:
    emitter = EMITTERS.get(node.op)
    if emitter is None:
        raise NndError(f"the CUDA code generator has no expression for op '{node.op}' "
                       f"(it supports {', '.join(sorted(EMITTERS))})")
    if len(node.outputs) != 1:
        raise NndError(f"the CUDA code generator expects one output from {node.op}")
    expr = emitter(w, args, node.attr_dict, var)
    return {node.outputs[0]: w.let(var, expr)}


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
        graphs = [program.lower(model, INFER), build_loss_graph(program, model, spec, INFER).graph,
                  build_training_graph(program, model, spec).graph]
        for graph in graphs:
            for node in passes.run(graph).nodes:
                if node.op == FUSED_OP:
                    name, source = node_kernel_source(node, dtype)
                    found.setdefault(name, source)
    return list(found.items())
