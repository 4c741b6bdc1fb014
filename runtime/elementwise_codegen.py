"""The expression language of generated elementwise code, shared by its targets: CUDA C++ kernels
(`nnd.runtime.cuda_codegen`) and C functions for the CPU (`nnd.runtime.cpu_codegen`).

`element_code(body, ctype, target)` turns a `fused_elementwise` body into the statements that compute one
element at flat position `i` of the group's iteration shape: each input is read at the position its
broadcast pattern gives (`nnd.compiler.fuse_elementwise.broadcast_index`: the same element, element 0 of a
scalar, i % m for a trailing-dimension vector such as a bias, or index arithmetic over static strides), the
body's ops run on registers, and each output is stored once. Every expression follows the NumPy kernel of
its op (`nnd.runtime.kernels_basic`), in the same stable forms; the two targets differ only in how they
spell a NaN or an infinity.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.compiler.fuse_elementwise import broadcast_index
from nnd.compiler.ir import Graph, Node

CUDA, C = "cuda", "c"

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
    raise NndError(f"generated elementwise code computes in float32 or float64, not {name}")


def kernel_name(key: str, dtype: Any) -> str:
    suffix = "f32" if c_type(dtype) == "float" else "f64"
    return f"nnd_ew_{re.sub(r'[^0-9A-Za-z_]', '_', key)}_{suffix}"


class Writer:
    """Expressions in one C type: literals, math function names, statements of the loop body."""

    def __init__(self, ctype: str, target: str = CUDA):
        self.T = ctype
        self.target = target
        self.lines: list[str] = []

    def lit(self, value: float) -> str:
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            text = self._special("nan" if math.isnan(value) else "inf")
            return text if math.isnan(value) or value > 0 else f"(-{text})"
        text = repr(value)
        if "e" not in text and "." not in text:
            text += ".0"
        text = f"{text}f" if self.T == "float" else text
        return f"({text})" if value < 0 else text

    def _special(self, which: str) -> str:
        if self.target == C:  # math.h's float constants, exact in double too
            return f"(({self.T}){'NAN' if which == 'nan' else 'INFINITY'})"
        if self.T == "float":
            return "__int_as_float(0x7fc00000)" if which == "nan" else "__int_as_float(0x7f800000)"
        return ("__longlong_as_double(0x7ff8000000000000LL)" if which == "nan"
                else "__longlong_as_double(0x7ff0000000000000LL)")

    def fn(self, name: str) -> str:
        return f"{name}f" if self.T == "float" else name

    def let(self, name: str, expr: str) -> str:
        self.lines.append(f"const {self.T} {name} = {expr};")
        return name

    def sigmoid(self, x: str, v: str) -> str:
        e = self.let(f"{v}_e", f"{self.fn('exp')}(-{self.fn('fabs')}({x}))")
        one = self.lit(1.0)
        return f"({x} >= {self.lit(0.0)} ? {one} / ({one} + {e}) : {e} / ({one} + {e}))"


Emitter = Callable[[Writer, list[str], dict[str, Any], str], str]


def _attr(op: str, attrs: dict[str, Any], key: str) -> Any:
    value = attrs.get(key)
    return _DEFAULT_ATTRS[op][key] if value is None else value


def _gelu(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    x = a[0]
    half, one = w.lit(0.5), w.lit(1.0)
    if _attr("gelu", attrs, "approximate"):
        inner = f"{w.lit(_TANH_C)} * ({x} + {w.lit(_TANH_K)} * {x} * {x} * {x})"
        return f"{half} * {x} * ({one} + {w.fn('tanh')}({inner}))"
    return f"{half} * {x} * ({one} + {w.fn('erf')}({x} * {w.lit(_SQRT_HALF)}))"


def _gelu_grad(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
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


def _swish_grad(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    dy, x = a
    s = w.let(f"{v}_s", w.sigmoid(x, v))
    return f"{dy} * ({s} + {x} * {s} * ({w.lit(1.0)} - {s}))"


def _clip(w: Writer, x: str, lo: str, hi: str) -> str:
    return f"{w.fn('fmin')}({w.fn('fmax')}({x}, {lo}), {hi})"


def _binary_crossentropy(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    p, t = a
    one = w.lit(1.0)
    pc = w.let(f"{v}_p", _clip(w, p, w.lit(EPSILON), w.lit(1.0 - EPSILON)))
    return f"-({t} * {w.fn('log')}({pc}) + ({one} - {t}) * {w.fn('log')}({one} - {pc}))"


def _binary_crossentropy_grad(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    dl, p, t = a
    one, lo, hi = w.lit(1.0), w.lit(EPSILON), w.lit(1.0 - EPSILON)
    inside = w.let(f"{v}_in", f"({w.T})({p} >= {lo} && {p} <= {hi})")
    pc = w.let(f"{v}_p", _clip(w, p, lo, hi))
    return f"{dl} * {inside} * (({one} - {t}) / ({one} - {pc}) - {t} / {pc})"


def _huber(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    p, t = a
    delta = w.lit(_attr("huber", attrs, "delta"))
    err = w.let(f"{v}_err", f"{w.fn('fabs')}({p} - {t})")
    q = w.let(f"{v}_q", f"{w.fn('fmin')}({err}, {delta})")
    return f"{w.lit(0.5)} * {q} * {q} + {delta} * ({err} - {q})"


def _huber_grad(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    dl, p, t = a
    delta = float(_attr("huber_grad", attrs, "delta"))
    return f"{dl} * {_clip(w, f'({p} - {t})', w.lit(-delta), w.lit(delta))}"


def _constant(w: Writer, a: list[str], attrs: dict[str, Any], v: str) -> str:
    if tuple(attrs.get("shape", ()) or ()):
        raise NndError("the elementwise code generator inlines scalar constants only")
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


def index_expression(pattern: tuple) -> str:
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


def emit(w: Writer, node: Node, args: list[str], var: str) -> dict[Any, str]:
    emitter = EMITTERS.get(node.op)
    if emitter is None:
        raise NndError(f"the elementwise code generator has no expression for op '{node.op}' "
                       f"(it supports {', '.join(sorted(EMITTERS))})")
    if len(node.outputs) != 1:
        raise NndError(f"the elementwise code generator expects one output from {node.op}")
    expr = emitter(w, args, node.attr_dict, var)
    return {node.outputs[0]: w.let(var, expr)}


@dataclass
class ElementCode:
    """One element's worth of a body: `inputs[k]` and `outputs[k]` are the k-th pointer parameters' types
    and names are in0.. and out0..; `lines` read the inputs at i, compute, and store the outputs at i."""

    inputs: int
    outputs: int
    lines: list[str]


def element_code(body: Graph, ctype: str, target: str) -> ElementCode:
    """The statements computing `body` at flat position `i` (an unsigned 64-bit or int64_t loop index)."""
    shape = iteration_shape(body)
    w = Writer(ctype, target)
    names: dict[Any, str] = {}
    for k, value in enumerate(body.inputs):
        pattern = broadcast_index(value.type.shape, shape)
        if pattern is None:
            raise NndError(f"the elementwise code generator cannot broadcast an input of shape "
                           f"{value.type.shape} to {shape}")
        names[value] = w.let(f"x{k}", f"in{k}[{index_expression(pattern)}]")
    for index, node in enumerate(body.nodes):
        names.update(emit(w, node, [names[v] for v in node.inputs], f"v{index}"))
    outputs = list(body.outputs.values())
    stores = [f"out{k}[i] = {names[value]};" for k, value in enumerate(outputs)]
    return ElementCode(len(body.inputs), len(outputs), w.lines + stores)


def check_identifier(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise NndError(f"{name!r} is not a C identifier")
