"""Kernel tables: one implementation per op written against the array module `xp`, plus per-backend
overrides for hot paths.

A kernel is `fn(ctx, attrs, *inputs) -> array | tuple[array, ...]`. `ctx.xp` is numpy or cupy, `ctx.rng`
a NumPy Generator for stochastic ops; `attrs` is the node's attribute dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

Kernel = Callable[..., Any]

GENERIC = "generic"
_TABLES: dict[str, dict[str, Kernel]] = {GENERIC: {}}


@dataclass
class KernelContext:
    xp: ModuleType
    rng: np.random.Generator
    dtype: Any = np.float32  # the float dtype the graph runs in


def kernel(op: str, backend: str = GENERIC) -> Callable[[Kernel], Kernel]:
    """Register `fn` as the kernel of `op`: for every backend (GENERIC) or one named backend's override."""

    def decorate(fn: Kernel) -> Kernel:
        table = _TABLES.setdefault(backend, {})
        if op in table:
            raise ValueError(f"kernel for {op!r} registered twice for {backend}")
        table[op] = fn
        return fn

    return decorate


class NodeKernel:
    """A kernel that needs its whole node, not only the attributes: a fused node's body, say. The executor
    calls `bind(node, executor)` once, when it compiles the graph, and runs the kernel that returns."""

    def __init__(self, bind: Callable[..., Kernel]):
        self.bind = bind

    def __call__(self, ctx, attrs, *inputs):
        raise TypeError(f"{self.bind.__name__} must be bound to its node (NodeKernel.bind) before it runs")


def node_kernel(op: str, backend: str = GENERIC) -> Callable[[Callable[..., Kernel]], Callable[..., Kernel]]:
    """Register `bind(node, executor) -> kernel` as the kernel factory of `op`, like `kernel`."""

    def decorate(bind: Callable[..., Kernel]) -> Callable[..., Kernel]:
        kernel(op, backend)(NodeKernel(bind))
        return bind

    return decorate


def kernels_for(backend: str) -> dict[str, Kernel]:
    """The generic table with the backend's overrides on top."""
    merged = dict(_TABLES[GENERIC])
    merged.update(_TABLES.get(backend, {}))
    return merged
