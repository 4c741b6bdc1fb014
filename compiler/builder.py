"""Appending nodes to a graph with shape inference: used by lowering, autodiff and passes."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from nnd.compiler.ir import Graph, Node, Parameter, Value
from nnd.compiler.ops import get_op
from nnd.compiler.source import Span
from nnd.compiler.tensor_type import ShapeError, TensorType


class GraphBuilder:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.span: Span | None = None
        self.layer: str | None = None

    @contextmanager
    def origin(self, span: Span | None, layer: str | None) -> Iterator[None]:
        """Nodes emitted inside carry this source span and layer name."""
        saved = self.span, self.layer
        self.span, self.layer = span, layer
        try:
            yield
        finally:
            self.span, self.layer = saved

    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(type, name)
        self.graph.inputs.append(value)
        return value

    def add_param(self, param: Parameter) -> Value:
        value = Value(param.type, param.name)
        self.graph.params[param.name] = value
        self.graph.param_info[param.name] = param
        return value

    def emit(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None) -> tuple[Value, ...]:
        """Append `op(inputs)`; raises ShapeError (without position) when the shapes don't fit."""
        attrs = attrs or {}
        definition = get_op(op)
        if definition.arity is not None and len(inputs) != definition.arity:
            raise ShapeError(f"{op} takes {definition.arity} inputs, got {len(inputs)}")
        out_types = definition.infer(attrs, [v.type for v in inputs])
        outputs = [Value(t) for t in out_types]
        self.graph.nodes.append(Node(op, inputs, outputs, attrs, self.span, self.layer))
        return tuple(outputs)

    def emit1(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None) -> Value:
        (value,) = self.emit(op, inputs, attrs)
        return value
