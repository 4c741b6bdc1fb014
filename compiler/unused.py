"""Layers whose results reach no output of their model: most likely a value named and then forgotten.

The passes would remove such a layer's computation, but its parameters are still created, counted and
saved, so the checker warns at the layer that ends each unused chain (`u = x -> dense(8)` with `u` never
read). A layer counts as used when any value it computes reaches an output, so an unpacked result left
as `_` (say, the sequence output beside an LSTM's states) warns about nothing.
"""
from __future__ import annotations

from nnd.compiler.diagnostics import Diagnostic
from nnd.compiler.ir import Graph, Node, Value


def unused_layer_warnings(graph: Graph) -> list[Diagnostic]:
    live = _values_reaching_outputs(graph)
    by_layer: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if node.layer is not None:
            by_layer.setdefault(node.layer, []).append(node)
    readers: dict[Value, set[str | None]] = {}
    for node in graph.nodes:
        for value in node.inputs:
            readers.setdefault(value, set()).add(node.layer)
    warnings = []
    for record in graph.layers:
        results = [value for node in by_layer.get(record.name, []) for value in node.outputs]
        if not results or any(value in live for value in results):
            continue
        if any(readers.get(value, set()) - {record.name} for value in results):
            continue  # a later unused layer reads it: the warning goes to the end of the chain
        notes = ["remove it, or use its result in an output"]
        if record.params:
            notes.append("its parameters are still created, counted and saved")
        warnings.append(Diagnostic(f"the result of this {record.kind} is never used", record.span, tuple(notes),
                                   severity="warning"))
    return warnings


def _values_reaching_outputs(graph: Graph) -> set[Value]:
    producer = {value: node for node in graph.nodes for value in node.outputs}
    live: set[Value] = set()
    pending = [*graph.outputs.values(), *graph.output_masks.values()]
    while pending:  # iterative: a chain of thousands of layers must not exhaust the stack
        value = pending.pop()
        if value in live:
            continue
        live.add(value)
        node = producer.get(value)
        if node is not None:
            pending.extend(node.inputs)
    return live
