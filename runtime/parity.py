"""Backend parity: one training step of a graph on two backends, compared value by value
(`nnd train --compare-backends`).

Both runs get the same parameters, batch and seed, and keep every node's results, which come back to
the host and are compared node by node in graph order. A node's difference is the largest absolute
difference over its outputs and that difference relative to the largest magnitude of the reference
output (robust to elements near zero). The first node over the tolerance is where the backends part:
every later value inherits its difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nnd.compiler.ir import Graph, Node
from nnd.runtime.backend import Backend, get_backend
from nnd.runtime.executor import Executor

# Scaled differences above these mean the backends disagree, not that they round differently.
TOLERANCES = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@dataclass
class NodeDifference:
    node: Node
    max_abs: float
    scaled: float  # max_abs / the largest magnitude of the reference's outputs


def trace(graph: Graph, backend: Backend, dtype: Any, feeds: dict[str, Any], params: dict[str, Any],
          seed: int) -> dict[str, np.ndarray]:
    """Every node output of one run, on the host, by a name unique in the graph."""
    traced = graph.copy_shallow()
    traced.outputs = {_name(node, k): value for node in graph.nodes for k, value in enumerate(node.outputs)}
    traced.state_updates = {}
    results = Executor(traced, backend, dtype, seed=seed).run(feeds, params)
    return {name: np.asarray(backend.to_numpy(array)) for name, array in results.items()}


def _name(node: Node, index: int) -> str:
    return f"{id(node)}:{index}"


def compare_backends(graph: Graph, feeds: dict[str, Any], params: dict[str, Any],
                     backends: tuple[str | Backend, str | Backend] = ("numpy", "cupy"),
                     dtype: Any = np.float32, seed: int = 0) -> list[NodeDifference]:
    """The difference of every node with an array output, reference (first backend) against the second."""
    reference, other = (b if isinstance(b, Backend) else get_backend(b) for b in backends)
    expected = trace(graph, reference, dtype, feeds, params, seed)
    got = trace(graph, other, dtype, feeds, params, seed)
    differences = []
    for node in graph.nodes:
        worst_abs, scale = 0.0, 0.0
        for k in range(len(node.outputs)):
            a, b = expected[_name(node, k)], got[_name(node, k)]
            if a.size == 0 or a.dtype.kind not in "fc":
                continue
            worst_abs = max(worst_abs, float(np.max(np.abs(a.astype(np.float64) - b))))
            scale = max(scale, float(np.max(np.abs(a))))
        differences.append(NodeDifference(node, worst_abs, worst_abs / scale if scale > 0 else worst_abs))
    return differences


def first_divergence(differences: list[NodeDifference], dtype: Any) -> NodeDifference | None:
    tolerance = TOLERANCES[np.dtype(dtype)]
    return next((d for d in differences if d.scaled > tolerance), None)


def format_parity(differences: list[NodeDifference], names: tuple[str, str], dtype: Any, title: str) -> str:
    lines = [f"backend parity, {names[0]} against {names[1]}: {title}",
             f"  {'op':<28}{'layer':<18}{'source':<26}{'max abs diff':>14}{'scaled':>11}"]
    for d in differences:
        span = d.node.span
        source = f"{span.file.rsplit('/', 1)[-1]}:{span.line}" if span is not None else ""
        lines.append(f"  {d.node.op:<28}{(d.node.layer or ''):<18}{source:<26}{d.max_abs:>14.3g}{d.scaled:>11.3g}")
    tolerance = TOLERANCES[np.dtype(dtype)]
    first = first_divergence(differences, dtype)
    worst = max(differences, key=lambda d: d.scaled, default=None)
    if first is None:
        largest = f"; largest {worst.scaled:.3g} in {worst.node.op}" if worst is not None else ""
        lines.append(f"agree: every op within {tolerance:g} of the reference's scale{largest}")
    else:
        where = f" (layer {first.node.layer})" if first.node.layer else ""
        at = f" at {first.node.span}" if first.node.span is not None else ""
        lines.append(f"differ: first beyond {tolerance:g} at {first.node.op}{where}{at}: "
                     f"{first.scaled:.3g} of the value's scale")
    return "\n".join(lines)
