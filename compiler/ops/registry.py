"""The one op registry: each op's shape rule, fusion kind and gradient rule.

Kernels live in the runtime (`nnd.runtime`), one table per backend, keyed by the same op names; a test
checks that every registered op has a kernel in each backend and either a gradient rule or an explicit
`NOT_DIFFERENTIABLE`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from nnd.compiler.tensor_type import TensorType

if TYPE_CHECKING:
    from nnd.compiler.builder import GraphBuilder
    from nnd.compiler.ir import Node, Value


class Fusion(enum.Enum):
    ELEMENTWISE = "elementwise"      # same-shape, one output element from the same input element
    BROADCAST = "broadcast"          # elementwise with NumPy broadcasting between inputs
    INJECTIVE = "injective"          # moves or copies elements: reshape, transpose, pad, concat
    REDUCTION = "reduction"          # sums, means, maxima over axes
    OUTPUT_FUSABLE = "output"        # conv, matmul: an elementwise epilogue may fuse into their output
    OPAQUE = "opaque"                # everything else


ShapeRule = Callable[[dict[str, Any], Sequence[TensorType]], Sequence[TensorType]]
# grad(builder, node, output_grads) -> one gradient (or None) per input
GradRule = Callable[["GraphBuilder", "Node", Sequence["Value | None"]], Sequence["Value | None"]]


class _NotDifferentiable:
    def __repr__(self) -> str:
        return "NOT_DIFFERENTIABLE"


NOT_DIFFERENTIABLE = _NotDifferentiable()


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: ShapeRule
    fusion: Fusion
    grad: GradRule | _NotDifferentiable
    arity: int | None = None         # number of inputs, None when variable
    stochastic: bool = False         # draws random numbers (dropout masks)
    doc: str = ""

    @property
    def differentiable(self) -> bool:
        return self.grad is not NOT_DIFFERENTIABLE


_REGISTRY: dict[str, OpDef] = {}


# Ops without inputs whose result the executor makes once and places in every run: a kernel may never
# write over such a value in place.
CONSTANT_OPS = frozenset(("constant", "constant_values"))


def register(name: str, *, infer: ShapeRule, fusion: Fusion, grad: GradRule | _NotDifferentiable,
             arity: int | None = None, stochastic: bool = False, doc: str = "") -> OpDef:
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name, infer, fusion, grad, arity, stochastic, doc)
    _REGISTRY[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op named {name!r} in the registry") from None


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)
