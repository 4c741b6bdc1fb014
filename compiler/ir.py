"""The graph IR: SSA values, nodes in topological order, parameters and data inputs kept apart.

A node carries an op name from the registry (`nnd.compiler.ops`), its inputs and outputs, sorted hashable
attributes, the span of the source it came from and the layer that made it. A fused node carries its
body as a graph of its own. `print_graph` gives the deterministic text used by golden tests and
`nnd compile --emit ir`.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from nnd.compiler.source import Span
from nnd.compiler.tensor_type import TensorType

_value_ids = itertools.count()


class Value:
    """One SSA value. Identity is the object itself; `id` only orders values deterministically."""

    __slots__ = ("id", "type", "name", "producer")

    def __init__(self, type: TensorType, name: str | None = None):
        self.id = next(_value_ids)
        self.type = type
        self.name = name
        self.producer: Node | None = None

    def __repr__(self) -> str:
        return f"Value({self.name or self.id}: {self.type})"


@dataclass(frozen=True)
class Initializer:
    """How a parameter's first value is drawn; `args` are sorted (key, value) pairs."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({', '.join(f'{k}={_fmt(v)}' for k, v in self.args)})"


@dataclass(frozen=True)
class Regularizer:
    l1: float = 0.0
    l2: float = 0.0

    def __str__(self) -> str:
        if not self.l1:
            return f"l2({_fmt(self.l2)})"
        if not self.l2:
            return f"l1({_fmt(self.l1)})"
        return f"l1_l2(l1={_fmt(self.l1)}, l2={_fmt(self.l2)})"


@dataclass(frozen=True)
class Parameter:
    """A weight declared by a layer, under its Keras name and layout (`conv2d.kernel`: (kh, kw, in, out))."""

    name: str
    type: TensorType
    initializer: Initializer
    trainable: bool = True
    regularizer: Regularizer | None = None
    layer: str = ""


@dataclass(frozen=True)
class LayerRecord:
    """What one source layer became, for summaries and for mapping kernels back to source lines."""

    name: str
    kind: str
    span: Span | None
    output: Value
    params: tuple[str, ...]
    flops: int = 0  # multiply-adds counted as 2 FLOPs, per sample
    further: tuple[TensorType, ...] = ()  # the types of its other results (an LSTM's states with return_state)


class Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "span", "layer", "body")

    def __init__(self, op: str, inputs: Iterable[Value], outputs: Iterable[Value],
                 attrs: dict[str, Any] | None = None, span: Span | None = None,
                 layer: str | None = None, body: "Graph | None" = None):
        self.op = op
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.attrs: tuple[tuple[str, Any], ...] = tuple(sorted((attrs or {}).items()))
        self.span = span
        self.layer = layer
        self.body = body
        for out in self.outputs:
            out.producer = self

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)

    def __repr__(self) -> str:
        return f"Node({self.op}, {len(self.inputs)} in, {len(self.outputs)} out)"


@dataclass
class Graph:
    name: str
    inputs: list[Value] = field(default_factory=list)
    params: dict[str, Value] = field(default_factory=dict)
    param_info: dict[str, Parameter] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    outputs: dict[str, Value] = field(default_factory=dict)
    # Non-trainable parameters a training step rewrites (batchnorm moving statistics): name -> new value.
    state_updates: dict[str, Value] = field(default_factory=dict)
    layers: list[LayerRecord] = field(default_factory=list)
    # The padding mask ([N, T], 1 at real steps) of each model output that carries one: a sequence output
    # downstream of embedding(mask_zero) or masking(). The loss leaves the padded steps out. Passes keep
    # an entry while its value stays computed (CSE points it at the survivor, DCE drops dead ones).
    output_masks: dict[str, Value] = field(default_factory=dict)

    def input_named(self, name: str) -> Value:
        for value in self.inputs:
            if value.name == name:
                return value
        raise KeyError(name)

    def users(self) -> dict[Value, list[Node]]:
        result: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for value in node.inputs:
                result.setdefault(value, []).append(node)
        return result

    def clone(self) -> "Graph":
        """A copy with new values and nodes throughout, for passes that rewrite nodes: the values of
        the original keep pointing to the original's producers."""
        fresh: dict[Value, Value] = {}

        def twin(value: Value) -> Value:
            if value not in fresh:
                fresh[value] = Value(value.type, value.name)
            return fresh[value]

        nodes = [Node(n.op, [twin(v) for v in n.inputs], [twin(v) for v in n.outputs], dict(n.attrs), n.span,
                      n.layer, n.body) for n in self.nodes]
        layers = [replace(r, output=twin(r.output)) for r in self.layers]
        return Graph(self.name, [twin(v) for v in self.inputs], {k: twin(v) for k, v in self.params.items()},
                     dict(self.param_info), nodes, {k: twin(v) for k, v in self.outputs.items()},
                     {k: twin(v) for k, v in self.state_updates.items()}, layers,
                     {k: twin(v) for k, v in self.output_masks.items()})

    def copy_shallow(self) -> "Graph":
        """A new graph sharing values and nodes; passes rebuild the parts they change."""
        return Graph(self.name, list(self.inputs), dict(self.params), dict(self.param_info),
                     list(self.nodes), dict(self.outputs), dict(self.state_updates), list(self.layers),
                     dict(self.output_masks))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ",".join(_fmt(v) for v in value) + ")"
    if isinstance(value, TensorType):
        return str(value)
    return str(value)


def format_attrs(attrs: tuple[tuple[str, Any], ...]) -> str:
    if not attrs:
        return ""
    return "[" + ",".join(f"{k}={_fmt(v)}" for k, v in attrs) + "]"


class _Namer:
    def __init__(self, graph: Graph):
        self.names: dict[Value, str] = {}
        for value in graph.inputs:
            self.names[value] = f"%{value.name}"
        for name, value in graph.params.items():
            self.names[value] = name
        self.counter = itertools.count()

    def __call__(self, value: Value) -> str:
        if value not in self.names:
            self.names[value] = f"%{next(self.counter)}"
        return self.names[value]


def print_graph(graph: Graph, show_params: bool = True, indent: str = "") -> str:
    """Deterministic text of a graph: value numbers follow node order, so equal graphs print equally."""
    namer = _Namer(graph)
    signature = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"{indent}graph {graph.name}({signature}) {{"]
    if show_params:
        for name, value in graph.params.items():
            info = graph.param_info.get(name)
            extra = ""
            if info is not None:
                extra = f" = {info.initializer}"
                if not info.trainable:
                    extra += " frozen"
                if info.regularizer is not None:
                    extra += f" {info.regularizer}"
            lines.append(f"{indent}  param {name}: {value.type}{extra}")
    for node in graph.nodes:
        lines.extend(_print_node(node, namer, indent + "  "))
    for name, value in graph.state_updates.items():
        lines.append(f"{indent}  update {name} = {namer(value)}")
    for name, value in graph.outputs.items():
        lines.append(f"{indent}  output {name} = {namer(value)}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _print_node(node: Node, namer: _Namer, indent: str) -> list[str]:
    outs = ", ".join(f"{namer(v)}: {v.type}" for v in node.outputs)
    args = ", ".join(namer(v) for v in node.inputs)
    where = ""
    if node.layer or node.span:
        loc = f" @ {os.path.basename(node.span.file)}:{node.span.line}:{node.span.column}" if node.span else ""
        where = f"  # {node.layer or ''}{loc}"
    lines = [f"{indent}{outs} = {node.op}{format_attrs(node.attrs)}({args}){where}"]
    if node.body is not None:
        lines.append(print_graph(node.body, show_params=False, indent=indent + "  "))
    return lines
