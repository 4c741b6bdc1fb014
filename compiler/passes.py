"""The pass manager: passes are pure functions Graph -> Graph, run in order, each checked and dumpable."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from nnd.compiler.diagnostics import NndError, did_you_mean
from nnd.compiler.ir import Graph, Node, print_graph
from nnd.compiler.simplify import eliminate_common_subexpressions, fold_batchnorm, fold_constants
from nnd.compiler.verify import verify_graph

Pass = Callable[[Graph], Graph]
LayoutCosts = Callable[[Node], dict[str, float]]  # see nnd.compiler.layout


def eliminate_dead_code(graph: Graph) -> Graph:
    """Drop nodes whose results reach no output and no state update."""
    live = set(graph.outputs.values()) | set(graph.state_updates.values())
    kept = []
    for node in reversed(graph.nodes):
        if any(v in live for v in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    result = graph.copy_shallow()
    result.nodes = list(reversed(kept))
    available = set(graph.inputs) | set(graph.params.values()) | {v for n in kept for v in n.outputs}
    result.output_masks = {k: v for k, v in graph.output_masks.items() if v in available}
    return result


def _fuse_epilogues(graph: Graph) -> Graph:
    from nnd.compiler.fusion import fuse_epilogues

    return fuse_epilogues(graph)


def _fuse_batchnorm_relu(graph: Graph) -> Graph:
    from nnd.compiler.fusion import fuse_batchnorm_relu

    return fuse_batchnorm_relu(graph)


def _select_layout(graph: Graph) -> Graph:
    from nnd.compiler.layout import select_layout

    return select_layout(graph)


def _cancel_transposes(graph: Graph) -> Graph:
    from nnd.compiler.layout import cancel_transposes

    return cancel_transposes(graph)


def _fuse_pool_grad(graph: Graph) -> Graph:
    from nnd.compiler.fusion import fuse_pool_grad

    return fuse_pool_grad(graph)


def _fuse_elementwise(graph: Graph) -> Graph:
    from nnd.compiler.fuse_elementwise import fuse_elementwise

    return fuse_elementwise(graph)


PASSES: dict[str, Pass] = {"fold-constants": fold_constants, "cse": eliminate_common_subexpressions,
                           "fold-batchnorm": fold_batchnorm, "dce": eliminate_dead_code,
                           "fuse-epilogues": _fuse_epilogues, "fuse-batchnorm-relu": _fuse_batchnorm_relu,
                           "select-layout": _select_layout,
                           "cancel-transposes": _cancel_transposes, "fuse-pool-grad": _fuse_pool_grad,
                           "fuse-elementwise": _fuse_elementwise}
PIPELINES: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("fold-constants", "cse", "dce"),
    2: ("fold-constants", "cse", "fold-batchnorm", "dce", "fuse-epilogues", "fuse-batchnorm-relu", "select-layout",
        "cancel-transposes", "fuse-pool-grad", "fuse-elementwise"),
}


@dataclass
class PassManager:
    passes: list[str]
    verify: bool = True
    dump_after: set[str] = field(default_factory=set)  # pass names, or "all"
    dump: Callable[[str, str], None] = lambda name, text: None
    layout_costs: "LayoutCosts | None" = None  # what select-layout measures with; None keeps NHWC

    @classmethod
    def for_level(cls, level: int, disabled: tuple[str, ...] = (), **options) -> "PassManager":
        check_level(level)
        for name in disabled:
            check_pass_name(name)
        return cls([p for p in PIPELINES[level] if p not in disabled], **options)

    def run(self, graph: Graph) -> Graph:
        from nnd.compiler.layout import layout_costs

        with layout_costs(self.layout_costs):
            for name in self.passes:
                graph = PASSES[name](graph)
                if self.verify:
                    verify_graph(graph)
                if name in self.dump_after or "all" in self.dump_after:
                    self.dump(name, print_graph(graph))
        return graph


def check_level(level: int) -> None:
    if level not in PIPELINES:
        raise NndError(f"-O{level} is not an optimization level; use -O0, -O1 or -O2")


def check_pass_name(name: str) -> None:
    if name not in PASSES:
        hint = did_you_mean(name, PASSES)
        raise NndError(f"unknown pass '{name}'" + (f"; did you mean '{hint}'?" if hint else "")
                       + f" (passes: {', '.join(PASSES)})")
