"""DOT text of a graph, with shapes on the edges, for `nnd graph` (render it with Graphviz if you like)."""
from __future__ import annotations

from nnd.compiler.ir import Graph, Value


def graph_to_dot(graph: Graph, show_params: bool = False) -> str:
    ids: dict[Value, str] = {}
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for value in graph.inputs:
        ids[value] = f"in_{len(ids)}"
        lines.append(f'  {ids[value]} [shape=ellipse, label="{value.name}\\n{value.type}"];')
    if show_params:
        for name, value in graph.params.items():
            ids[value] = f"p_{len(ids)}"
            lines.append(f'  {ids[value]} [shape=note, style=dashed, label="{name}\\n{value.type}"];')
    for index, node in enumerate(graph.nodes):
        node_id = f"n{index}"
        title = f"{node.layer}: {node.op}" if node.layer else node.op
        lines.append(f'  {node_id} [label="{title}"];')
        for value in node.inputs:
            if value in ids:
                lines.append(f'  {ids[value]} -> {node_id} [label="{_shape(value)}"];')
        for value in node.outputs:
            ids[value] = node_id
    for name, value in graph.outputs.items():
        out_id = f"out_{name}"
        lines.append(f'  {out_id} [shape=ellipse, label="{name}"];')
        lines.append(f'  {ids[value]} -> {out_id} [label="{_shape(value)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _shape(value: Value) -> str:
    return "(" + ",".join(str(d) for d in value.type.shape) + ")"
