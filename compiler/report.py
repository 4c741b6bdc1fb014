"""What the passes did to a graph, mapped back to the `.nnd` source: `nnd compile --report`.

The report compares the graph before and after the passes without asking the passes to keep records.
It first pairs the values of the two graphs:

* forwards, from the inputs and parameters (paired by name): a node of the optimized graph with the same
  op, attributes and (paired) inputs as an original node computes the same values. Several originals
  paired with one node are duplicates the passes merged;
* backwards, from the outputs and state updates (paired by name): when a paired value's producers have
  the same op and attributes on both sides, their inputs pair up too. This pairs the output of a fused
  node with the original value it stands for (the activation's output for an epilogue, batchnorm's
  output for a folded batchnorm).

The optimized nodes left without a partner are the new ones. Joined by the values they pass each other,
they form fused or folded groups; each group replaces the unpaired originals between the originals of its
inputs and of its outputs. Unpaired originals that no group replaced either stand for a value that lives
on in another form (a folded constant, `x * 1` become `x`) or were dead.

Memory: an original value with a batch dimension that has no partner in the optimized graph, or whose
partner already stands for another original value, is an activation no longer materialized; its
per-sample size times its dtype's size is what a sample saves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from nnd.compiler.diagnostics import counted
from nnd.compiler.ir import Graph, Node, Value, _Namer, format_attrs
from nnd.compiler.memory_plan import per_sample_bytes, plan_memory
from nnd.compiler.ops import get_op
from nnd.compiler.simplify import COMMUTATIVE



# ----------------------------------------------------------------------------------------- pairing

@dataclass
class Pairing:
    image: dict[Value, Value] = field(default_factory=dict)      # original value -> optimized value
    matched: dict[Node, Node] = field(default_factory=dict)      # original node -> optimized node

    def originals(self) -> dict[Value, list[Value]]:
        result: dict[Value, list[Value]] = {}
        for original, value in self.image.items():
            result.setdefault(value, []).append(original)
        return result


def pair_graphs(before: Graph, after: Graph) -> Pairing:
    pairing = Pairing()
    image, matched = pairing.image, pairing.matched
    for value in before.inputs:
        for twin in after.inputs:
            if twin.name == value.name:
                image[value] = twin
    for name, value in before.params.items():
        if name in after.params:
            image[value] = after.params[name]

    index: dict[tuple, list[Node]] = {}
    for node in after.nodes:
        index.setdefault(_key(node, node.inputs), []).append(node)
    taken: set[Node] = set()  # optimized nodes paired so far

    def lookup(original: Node, inputs: list[Value]) -> Node | None:
        """An equal optimized node, one not paired yet when there are several."""
        candidates = index.get(_key(original, inputs), [])
        if not candidates and original.op in COMMUTATIVE:
            candidates = index.get(_key(original, inputs[::-1]), [])
        free = [n for n in candidates if n not in taken]
        if get_op(original.op).stochastic:
            return free[0] if free else None
        return (free or candidates or [None])[0]
    roots = [(v, after.outputs[k]) for k, v in before.outputs.items() if k in after.outputs]
    roots += [(v, after.state_updates[k]) for k, v in before.state_updates.items() if k in after.state_updates]

    def pair_nodes(original: Node, node: Node) -> None:
        matched[original] = node
        taken.add(node)
        for mine, theirs in zip(original.outputs, node.outputs):
            image.setdefault(mine, theirs)

    changed = True
    while changed:
        changed = False
        for original in before.nodes:  # forwards
            if original in matched or not all(v in image for v in original.inputs):
                continue
            node = lookup(original, [image[v] for v in original.inputs])
            if node is None or len(node.outputs) != len(original.outputs):
                continue
            pair_nodes(original, node)
            changed = True
        work = list(roots)  # backwards
        while work:
            original_value, value = work.pop()
            if original_value not in image:
                image[original_value] = value
                changed = True
            original, node = original_value.producer, value.producer
            if (original is None or node is None or original in matched or node in taken
                    or original.op != node.op or original.attrs != node.attrs or original.body is not node.body
                    or len(original.inputs) != len(node.inputs) or len(original.outputs) != len(node.outputs)
                    or original.outputs.index(original_value) != node.outputs.index(value)):
                continue
            if any(v in image and image[v] is not w for v, w in zip(original.inputs, node.inputs)):
                continue
            pair_nodes(original, node)
            changed = True
            work.extend(zip(original.inputs, node.inputs))
    return pairing


def _key(node: Node, inputs: Sequence[Value]) -> tuple:
    return (node.op, node.attrs, tuple(inputs), id(node.body) if node.body is not None else None)


# ------------------------------------------------------------------------------------------ analysis

@dataclass
class Expanded:
    """The optimized graph with fused nodes spelled out in original ops, for pairing: a node with a body
    becomes its body's nodes, an epilogue its product, bias add and activation. `owner` gives the
    optimized node of each node here, `back` the optimized value of each value that the optimized
    graph materializes."""

    graph: Graph
    owner: dict[Node, Node]
    back: dict[Value, Value]
    twin: dict[Value, Value]


def expand(graph: Graph) -> Expanded:
    twin: dict[Value, Value] = {}

    def twin_of(value: Value) -> Value:
        if value not in twin:
            twin[value] = Value(value.type, value.name)
        return twin[value]

    out = Graph(graph.name, [twin_of(v) for v in graph.inputs], {k: twin_of(v) for k, v in graph.params.items()},
                dict(graph.param_info))
    owner: dict[Node, Node] = {}
    for node in graph.nodes:
        for part in _spell_out(node, [twin_of(v) for v in node.inputs], [twin_of(v) for v in node.outputs]):
            owner[part] = node
            out.nodes.append(part)
    out.outputs = {k: twin_of(v) for k, v in graph.outputs.items()}
    out.state_updates = {k: twin_of(v) for k, v in graph.state_updates.items()}
    return Expanded(out, owner, {t: v for v, t in twin.items()}, twin)


def _spell_out(node: Node, inputs: list[Value], outputs: list[Value]) -> list[Node]:
    """Nodes of original ops computing `outputs` from `inputs` as `node` does (new values in between)."""
    if node.body is not None:
        body = node.body
        local: dict[Value, Value] = dict(zip(body.inputs, inputs))
        results = dict(zip(body.outputs.values(), outputs))
        parts: list[Node] = []
        for inner in body.nodes:
            outs = []
            for value in inner.outputs:
                local[value] = results.get(value) or Value(value.type)
                outs.append(local[value])
            parts.extend(_spell_out(inner, [local.get(v) or Value(v.type) for v in inner.inputs], outs))
        for part in parts:
            if part.span is None:
                part.span, part.layer = node.span, node.layer
        return parts
    if node.op.endswith("_epilogue") and len(inputs) == 3:
        product_op = node.op[: -len("_epilogue")]
        activation = node.attr("activation", "linear")
        attrs = {k: v for k, v in node.attrs if k != "activation"}
        x, w, bias = inputs
        product = Value(outputs[0].type)
        summed = outputs[0] if activation == "linear" else Value(outputs[0].type)
        parts = [Node(product_op, [x, w], [product], attrs, node.span, node.layer),
                 Node("add", [product, bias], [summed], {}, node.span, node.layer)]
        if activation != "linear":
            parts.append(Node(activation, [summed], [outputs[0]], {}, node.span, node.layer))
        return parts
    return [Node(node.op, inputs, outputs, dict(node.attrs), node.span, node.layer)]


@dataclass
class Group:
    """Optimized nodes that together replace some original nodes: a fused node, or the new nodes of a
    rewrite (a folded batchnorm and the conv2d it went into) joined by the values they pass each other."""

    nodes: list[Node]
    replaced: list[Node]
    saved_values: list[Value]


@dataclass
class Analysis:
    before: Graph
    after: Graph
    groups: list[Group]
    merged: list[tuple[Node, list[Node]]]        # optimized node, the duplicates it stands for
    rewritten: list[tuple[Node, Value]]          # original node whose value lives on as an optimized value
    removed: list[Node]                          # original nodes whose results went unused
    saved: list[Value]                           # original activations no longer materialized
    added: list[Value]                           # new activations, with no original counterpart

    @property
    def saved_bytes(self) -> int:
        return sum(per_sample_bytes(v) for v in self.saved)

    @property
    def added_bytes(self) -> int:
        return sum(per_sample_bytes(v) for v in self.added)


def analyze(before: Graph, after: Graph) -> Analysis:
    """Both graphs are spelled out (`expand`), so fused nodes on either side pair by their parts."""
    source = expand(before)
    spelled = expand(after)
    pairing = pair_graphs(source.graph, spelled.graph)
    originals = pairing.originals()
    saved = _unmaterialized(source, spelled, pairing.image)
    added = [v for n in after.nodes for v in n.outputs
             if spelled.twin[v] not in originals and per_sample_bytes(v)]
    parts: dict[Node, list[Node]] = {}
    for part, node in spelled.owner.items():
        parts.setdefault(node, []).append(part)
    by_part: dict[Node, list[Node]] = {}
    for original, part in pairing.matched.items():
        by_part.setdefault(part, []).append(original)
    clusters = _notable_clusters(after, parts, pairing.matched, spelled, originals)
    order = {n: i for i, n in enumerate(source.graph.nodes)}
    saved_set = set(saved)
    groups = [_group(nodes, parts, by_part, pairing.matched, originals, order, saved_set) for nodes in clusters]
    in_groups = {n for nodes in clusters for n in nodes}
    merged = []  # nodes that stand for several equal original ones
    for node in after.nodes:
        stood_for = [o for p in parts[node] for o in by_part.get(p, [])]
        if node not in in_groups and len(stood_for) > 1:
            merged.append((node, stood_for))
    claimed = {n for group in groups for n in group.replaced}
    rewritten, removed = [], []
    for node in source.graph.nodes:
        if node in pairing.matched or node in claimed:
            continue
        twins = [pairing.image[v] for v in node.outputs if v in pairing.image]
        if twins:
            rewritten.append((node, spelled.back.get(twins[0], twins[0])))
        else:
            removed.append(node)
    return Analysis(before, after, groups, merged, rewritten, removed, saved, added)


def _unmaterialized(source: Expanded, spelled: Expanded, image: dict[Value, Value]) -> list[Value]:
    """Original activations the optimized graph no longer keeps: without a partner it materializes, or a
    second name for a value already counted."""
    graph = source.graph
    saved: list[Value] = []
    counted: set[Value] = {image[v] for v in [*graph.inputs, *graph.params.values()] if v in image}
    for node in graph.nodes:
        for value in node.outputs:
            if value not in source.back:
                continue
            twin = image.get(value)
            if twin is None or twin not in spelled.back or twin in counted:
                if per_sample_bytes(value):
                    saved.append(value)
            else:
                counted.add(twin)
    return saved


def _notable_clusters(after: Graph, parts: dict[Node, list[Node]], matched: dict[Node, Node], spelled: Expanded,
                      originals: dict[Value, list[Value]]) -> list[list[Node]]:
    """Optimized nodes worth reporting (fused ones, and those no original node pairs with), joined into
    clusters by the values they pass each other that stand for no original value."""
    taken = set(matched.values())
    notable = [n for n in after.nodes if len(parts[n]) > 1 or n.body is not None
               or any(p not in taken for p in parts[n])]
    parent: dict[Node, Node] = {n: n for n in notable}

    def find(n: Node) -> Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in notable:  # a value that stands for an original one separates two clusters
        for value in node.inputs:
            if value.producer in parent and spelled.twin[value] not in originals:
                parent[find(node)] = find(value.producer)
    members: dict[Node, list[Node]] = {}
    for node in notable:
        members.setdefault(find(node), []).append(node)
    return list(members.values())


def _group(nodes: list[Node], parts: dict[Node, list[Node]], by_part: dict[Node, list[Node]],
           matched: dict[Node, Node], originals: dict[Value, list[Value]], order: dict[Node, int],
           saved: set[Value]) -> Group:
    """The original nodes a cluster replaces: those its parts pair with, and every unpaired producer
    behind the originals of the values it makes, back to the originals of the values it reads."""
    inner = [p for n in nodes for p in parts[n]]
    produced = {v for p in inner for v in p.outputs}
    stops = {o for p in inner for v in p.inputs if v not in produced for o in originals.get(v, [])}
    replaced = {o for p in inner for o in by_part.get(p, [])}
    stack = [o for v in produced for o in originals.get(v, [])]
    while stack:
        value = stack.pop()
        producer = value.producer
        if value in stops or producer is None or producer in matched or producer in replaced:
            continue
        replaced.add(producer)
        stack.extend(producer.inputs)
    ordered = sorted(replaced, key=order.__getitem__)  # in the original graph's order
    return Group(nodes, ordered, [v for n in ordered for v in n.outputs if v in saved])


# -------------------------------------------------------------------------------------------- report

def optimization_report(before: Graph, after: Graph, stages: Sequence[tuple[str, Graph]] = (),
                        title: str | None = None) -> str:
    """The report on `after`, the result of the passes on `before`; `stages` (pass name, graph after it)
    add the per-pass counts."""
    analysis = analyze(before, after)
    names = _names(after)
    lines = [f"optimization report: {title or after.name}"]
    batch_nodes = [sum(1 for n in g.nodes if _batched(n)) for g in (before, after)]
    lines.append(f"nodes: {len(before.nodes)} before, {len(after.nodes)} after "
                 f"({batch_nodes[0]} -> {batch_nodes[1]} on batch-sized values)")
    if stages:
        lines.append("passes:")
        width = max(len(name) for name, _ in stages)
        previous = before
        for name, graph in stages:
            step = analyze(previous, graph)
            change = len(graph.nodes) - len(previous.nodes)
            memory = f", {_bytes(step.saved_bytes - step.added_bytes)} per sample fewer" if step.saved else ""
            lines.append(f"  {name:<{width}}  {len(previous.nodes):>4} -> {len(graph.nodes):<4} ({change:+d}){memory}")
            previous = graph

    if analysis.groups:
        lines.append(_kernels_heading(analysis.groups))
        for group in analysis.groups:
            lines.extend(_group_lines(group, names))
    if analysis.merged:
        lines.append(f"merged duplicates ({counted(sum(len(o) - 1 for _, o in analysis.merged), 'node')}):")
        for node, originals in analysis.merged:
            lines.append(f"  {names(node.outputs[0])} = {_describe(node)}: {len(originals)} copies -> 1, "
                         f"from {_sources(originals)}")
    if analysis.rewritten:
        lines.append(f"folded or simplified ({counted(len(analysis.rewritten), 'node')}):")
        for node, value in analysis.rewritten:
            into = value.producer
            what = f"{names(value)} = {_describe(into)}" if into is not None else names(value)
            lines.append(f"  {_describe(node)} @ {_sources([node])} -> {what}")
    if analysis.removed:
        ops = ", ".join(sorted({n.op for n in analysis.removed}))
        lines.append(f"removed as unused ({counted(len(analysis.removed), 'node')}: {ops}), "
                     f"from {_sources(analysis.removed)}")
    if not (analysis.groups or analysis.merged or analysis.rewritten or analysis.removed):
        lines.append("no changes")
    lines.append(f"activations no longer materialized: {_bytes(analysis.saved_bytes)} per sample "
                 f"({counted(len(analysis.saved), 'value')})")
    if analysis.added:
        lines.append(f"new activations: {_bytes(analysis.added_bytes)} per sample ({len(analysis.added)} values); "
                     f"net saving {_bytes(analysis.saved_bytes - analysis.added_bytes)} per sample")
    lines.extend(_memory_plan_lines(before, after))
    return "\n".join(lines)


def _memory_plan_lines(before: Graph, after: Graph) -> list[str]:
    """The peak of live activations per sample along each schedule (`nnd.compiler.memory_plan`)."""
    original, optimized = plan_memory(before), plan_memory(after)
    return [f"peak live activations per sample: {_bytes(original.peak_bytes_without_reuse)} before the passes, "
            f"{_bytes(optimized.peak_bytes_without_reuse)} after;",
            f"  {_bytes(optimized.peak_bytes)} with {counted(optimized.in_place_count, 'result')} written in place"]


def _listed(group: Group) -> list[Node]:
    """The nodes a group is listed by: its kernels on batch-sized values, else (all weights) every node."""
    return [n for n in group.nodes if _batched(n)] or list(group.nodes)


def _kernels_heading(groups: Sequence[Group]) -> str:
    """The count of the kernels listed below it; a group of several (its replaced nodes said once for
    all of them) makes fewer groups than kernels, which the heading says too."""
    listed = sum(len(_listed(g)) for g in groups)
    count = str(listed) if listed == len(groups) else f"{listed}, in {counted(len(groups), 'group')}"
    return f"fused and folded kernels ({count}):"


def _group_lines(group: Group, names) -> list[str]:
    kernels = [n for n in group.nodes if _batched(n)]
    helpers = [n for n in group.nodes if not _batched(n)]
    lines = []
    for node in _listed(group):
        lines.append(f"  {', '.join(names(v) for v in node.outputs)} = {_describe(node)}: "
                     f"{', '.join(str(v.type) for v in node.outputs)}")
    if group.replaced:
        lines.append(f"      replaces {', '.join(n.op for n in group.replaced)} from {_sources(group.replaced)}")
    if kernels and helpers:
        lines.append(f"      weights prepared once per run: {', '.join(_describe(n) for n in helpers)}")
    if group.saved_values:
        total = sum(per_sample_bytes(v) for v in group.saved_values)
        lines.append(f"      no longer materialized: {counted(len(group.saved_values), 'value')}, "
                     f"{_bytes(total)} per sample")
    return lines


def _batched(node: Node) -> bool:
    return any(per_sample_bytes(v) for v in node.outputs)


def _describe(node: Node) -> str:
    if node.op == "constant":
        return f"constant {node.attr('value')!r}"
    text = node.op + format_attrs(tuple((k, v) for k, v in node.attrs if k in ("activation", "perm", "axes", "relu")))
    if node.body is not None:
        text += "{" + ", ".join(n.op for n in node.body.nodes) + "}"
    return text


def _sources(nodes: Sequence[Node]) -> str:
    """`file.nnd:line (layers)` for each source line the nodes came from, in order of appearance."""
    places: dict[str, list[str]] = {}
    for node in nodes:
        if node.span is None:
            place = "(no source)"
        else:
            place = f"{os.path.basename(node.span.file)}:{node.span.line}"
        layers = places.setdefault(place, [])
        if node.layer and node.layer not in layers:
            layers.append(node.layer)
    return ", ".join(f"{place} ({', '.join(layers)})" if layers else place for place, layers in places.items())


def _names(graph: Graph):
    """Value names as `print_graph` gives them."""
    namer = _Namer(graph)
    for node in graph.nodes:
        for value in node.outputs:
            namer(value)
    return namer


def _bytes(count: int) -> str:
    if abs(count) >= 1024:
        return f"{count:,} B ({count / 1024:.1f} KiB)"
    return f"{count:,} B"


def trace_passes(passes: Sequence[str], graph: Graph, costs=None) -> list[tuple[str, Graph]]:
    """The graph after each pass of `passes`, in order; `costs` is select-layout's cost model."""
    from nnd.compiler.layout import layout_costs
    from nnd.compiler.passes import PASSES

    stages = []
    with layout_costs(costs):
        for name in passes:
            graph = PASSES[name](graph)
            stages.append((name, graph))
    return stages
