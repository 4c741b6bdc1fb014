"""Small fused-elementwise bodies covering every op the CUDA code generator supports and every broadcast
pattern, with input values each op is defined on; shared by the code generator and GPU tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from nnd.compiler.builder import GraphBuilder
from nnd.compiler.fuse_elementwise import BINARY_OPS, GRAD_OPS, UNARY_OPS
from nnd.compiler.ir import Graph
from nnd.compiler.tensor_type import TensorType

FULL = ("N", 4, 3)
BATCH = 2


@dataclass
class Body:
    name: str
    graph: Graph
    draw: Callable[[np.random.Generator], dict[str, np.ndarray]]


def _normal(rng, shape):
    return rng.normal(0.0, 1.5, shape)


def _positive(rng, shape):
    return rng.uniform(0.3, 3.0, shape)


def _probability(rng, shape):
    # a few values outside [1e-7, 1 - 1e-7] exercise the clip
    p = rng.uniform(0.02, 0.98, shape)
    flat = p.reshape(-1)
    if flat.size > 2:
        flat[0], flat[1] = 1e-9, 1.0 - 1e-9
    return p


def concrete(shape: tuple) -> tuple:
    return tuple(BATCH if isinstance(d, str) else d for d in shape)


def _body(name: str, op: str, shapes: list[tuple], attrs: dict[str, Any] | None = None,
          gens: list[Callable] | None = None, extra: Callable | None = None) -> Body:
    graph = Graph(f"body_{name}")
    b = GraphBuilder(graph)
    xs = [b.add_input(f"x{k}", TensorType(tuple(s), "f64")) for k, s in enumerate(shapes)]
    out = b.emit1(op, xs, attrs or {})
    if extra is not None:
        out = extra(b, out)
    graph.outputs["y0"] = out
    gens = gens or [_normal] * len(shapes)

    def draw(rng):
        return {f"x{k}": gen(rng, concrete(s)) for k, (s, gen) in enumerate(zip(shapes, gens))}

    return Body(name, graph, draw)


def op_bodies() -> list[Body]:
    bodies: list[Body] = []
    positive_ops = {"log", "sqrt"}
    for op in UNARY_OPS:
        bodies.append(_body(op, op, [FULL], gens=[_positive if op in positive_ops else _normal]))
    bodies.append(_body("leaky_relu_a", "leaky_relu", [FULL], {"alpha": 0.1}))
    bodies.append(_body("elu_a", "elu", [FULL], {"alpha": 0.5}))
    bodies.append(_body("gelu_tanh", "gelu", [FULL], {"approximate": True}))
    for op in GRAD_OPS:
        bodies.append(_body(op, op, [FULL, FULL]))
    bodies.append(_body("leaky_relu_grad_a", "leaky_relu_grad", [FULL, FULL], {"alpha": 0.1}))
    bodies.append(_body("elu_grad_a", "elu_grad", [FULL, FULL], {"alpha": 0.5}))
    bodies.append(_body("gelu_grad_tanh", "gelu_grad", [FULL, FULL], {"approximate": True}))
    patterns = {"full": FULL, "scalar": (), "trailing": (3,), "trailing2": (4, 3), "strided": ("N", 1, 3),
                "column": (4, 1)}
    for op in BINARY_OPS:
        for label, shape in patterns.items():
            gens = [_normal, _positive if op == "div" else _normal]
            bodies.append(_body(f"{op}_{label}", op, [FULL, shape], gens=gens))
    # the broadcast operand first
    bodies.append(_body("sub_strided_first", "sub", [("N", 1, 3), FULL]))
    bodies.append(_body("sigmoid_cross_entropy", "sigmoid_cross_entropy", [FULL, FULL],
                        gens=[_normal, lambda r, s: r.uniform(0, 1, s)]))
    bodies.append(_body("binary_crossentropy", "binary_crossentropy", [FULL, FULL],
                        gens=[_probability, lambda r, s: r.uniform(0, 1, s)]))
    bodies.append(_body("binary_crossentropy_grad", "binary_crossentropy_grad", [FULL, FULL, FULL],
                        gens=[_normal, _probability, lambda r, s: r.uniform(0, 1, s)]))
    bodies.append(_body("huber", "huber", [FULL, FULL], {"delta": 0.7}))
    bodies.append(_body("huber_grad", "huber_grad", [FULL, FULL, FULL], {"delta": 0.7}))

    def chain(b, out):
        half = b.emit1("constant", [], {"value": 0.5, "dtype": "f32"})
        return b.emit1("tanh", [b.emit1("mul", [b.emit1("add", [out, half]), out])])

    bodies.append(_body("chain_with_constant", "sigmoid", [FULL], extra=chain))
    return bodies
