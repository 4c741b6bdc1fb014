"""The memory plan of a graph's schedule: when each value dies, which nodes write their result over a
dying input, and how much activation memory the schedule holds at its peak.

* Liveness: a value dies after the last node that reads it; graph outputs and state updates never die.
  The executor drops each buffer at that point, so a long chain keeps a few arrays alive.
* In place: an elementwise node (`IN_PLACE_OPS`) whose input dies at that node, with the result's shape
  and dtype, writes the result into that input's buffer instead of a fresh one. Inputs and parameters
  of the graph are never overwritten (the caller owns them), nor constants (a kernel may hand out the
  same array every run). The runtime checks once more, on the arrays, that the buffer is not shared
  (a view of it still alive, or an array the caller passed in) before it reuses it.
* Peak: walking the schedule with per-sample sizes of the batch-dependent values gives the activation
  bytes per sample alive at the worst point, with and without the in-place reuse (an estimate: a
  reshape or transpose that returns a view is counted as a copy).

The buffers themselves come from the allocator, which keeps freed blocks for the next step (see
`nnd.runtime.memory`): the steady state of a training loop allocates from reused memory.
"""
from __future__ import annotations

from dataclasses import dataclass

from nnd.compiler.ir import Graph, Node, Value
from nnd.compiler.ops.registry import CONSTANT_OPS

# Elementwise ops whose kernels have a form that writes into an existing buffer (`out=`); one output.
IN_PLACE_OPS = frozenset({
    "add", "sub", "mul", "div", "maximum", "neg", "exp", "log", "sqrt", "tanh", "abs", "relu", "square",
    "relu_grad", "tanh_grad", "sigmoid_grad",
})
DTYPE_BYTES = {"bool": 1, "i32": 4, "i64": 8, "f32": 4, "f64": 8}


@dataclass
class MemoryPlan:
    dies_at: list[tuple[Value, ...]]     # per node index: the values whose last reader it is
    never_read: list[tuple[Value, ...]]  # per node index: its outputs that nothing reads or keeps
    in_place: dict[int, int]             # node index -> position of the input whose buffer takes the result
    peak_bytes: int                      # activation bytes per sample at the worst point, with in-place reuse
    peak_bytes_without_reuse: int        # the same schedule with a fresh buffer for every result

    @property
    def in_place_count(self) -> int:
        return len(self.in_place)


def plan_memory(graph: Graph) -> MemoryPlan:
    kept = set(graph.outputs.values()) | set(graph.state_updates.values())
    last_use: dict[Value, int] = {}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            last_use[value] = index
    dies_at: list[list[Value]] = [[] for _ in graph.nodes]
    for value, index in last_use.items():
        if value not in kept:
            dies_at[index].append(value)
    never_read = [tuple(v for v in node.outputs if v not in last_use and v not in kept) for node in graph.nodes]
    owned_elsewhere = set(graph.inputs) | set(graph.params.values()) | kept
    in_place = {}
    for index, node in enumerate(graph.nodes):
        position = _reusable_input(node, index, last_use, owned_elsewhere)
        if position is not None:
            in_place[index] = position
    dying = [tuple(values) for values in dies_at]
    return MemoryPlan(dying, never_read, in_place, _peak(graph, dying, never_read, in_place),
                      _peak(graph, dying, never_read, {}))


def _reusable_input(node: Node, index: int, last_use: dict[Value, int], owned_elsewhere: set[Value]) -> int | None:
    if node.op not in IN_PLACE_OPS or len(node.outputs) != 1:
        return None
    result = node.outputs[0].type
    for position, value in enumerate(node.inputs):
        if (last_use.get(value) == index and value not in owned_elsewhere and node.inputs.count(value) == 1
                and value.type.shape == result.shape and value.type.dtype == result.dtype
                and (value.producer is None or value.producer.op not in CONSTANT_OPS)):
            return position
    return None


def per_sample_bytes(value: Value) -> int:
    """Bytes of one sample of a batch-dependent value; 0 for one without a batch dimension."""
    if not any(isinstance(d, str) for d in value.type.shape):
        return 0
    return value.type.concrete_size() * DTYPE_BYTES[value.type.dtype]


def _peak(graph: Graph, dies_at, never_read, in_place: dict[int, int]) -> int:
    live = sum(per_sample_bytes(v) for v in graph.inputs)
    peak = live
    for index, node in enumerate(graph.nodes):
        reused = node.inputs[in_place[index]] if index in in_place else None
        live += sum(per_sample_bytes(v) for v in node.outputs) - (per_sample_bytes(reused) if reused else 0)
        peak = max(peak, live)
        live -= sum(per_sample_bytes(v) for v in dies_at[index] + never_read[index]
                    if v is not reused and v not in graph.inputs)
    return peak
