"""Kernel tables: one implementation per op written against the array module `xp`, plus per-backend
overrides for hot paths.

A kernel is `fn(ctx, attrs, *inputs) -> array | tuple[array, ...]`. `ctx.xp` is numpy or cupy, `ctx.rng`
a NumPy Generator for stochastic ops; `attrs` is the node's attribute dict.

A run may be captured into a CUDA graph (`nnd.runtime.cuda_graphs`), which records the device work and
replays it with no Python in between. Kernels therefore take random numbers through `ctx.host_random`, read
0-d arrays through `ctx.scalar`, and validate data through `ctx.check`, never by reading device values
themselves: under capture those become buffers refilled before each replay, host-known constants, and
checks evaluated after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

Kernel = Callable[..., Any]

GENERIC = "generic"
_TABLES: dict[str, dict[str, Kernel]] = {GENERIC: {}}


class CaptureUnsupported(Exception):
    """A kernel needs a device value on the host while its run is being captured into a CUDA graph."""


@dataclass
class DeferredCheck:
    """A validation recorded during capture: `failed` is a 0-d device bool the graph recomputes on every
    replay; `error()` builds the message from the arrays it holds once `failed` reads true."""

    failed: Any
    error: Callable[[], Exception]


@dataclass
class KernelContext:
    xp: ModuleType
    rng: np.random.Generator
    dtype: Any = np.float32  # the float dtype the graph runs in
    capturing: bool = False  # the run is being recorded into a CUDA graph
    host_values: dict[int, float] = field(default_factory=dict)  # id of a constant array -> its value
    draws: list[tuple[Callable[[np.random.Generator], np.ndarray], int | None, Any]] = field(default_factory=list)
    # drawn from `rng` once per run; a draw with a stream of its own uses (run_seed, stream), so that its
    # numbers do not depend on how many other draws the graph makes (an -O level may remove some)
    run_seed: int = 0
    checks: list[DeferredCheck] = field(default_factory=list)
    # under capture: (shape, dtype) -> a device buffer that no kernel of the graph may reuse (see host_random)
    uploaded_buffer: Callable[[tuple, Any], Any] | None = None

    def stream_rng(self, stream: int | None) -> np.random.Generator:
        """The generator a draw of `stream` uses in this run (None: the run's shared one)."""
        return self.rng if stream is None else np.random.default_rng([self.run_seed, stream])

    def host_random(self, draw: Callable[[np.random.Generator], np.ndarray], shape: tuple, dtype: Any,
                    stream: int | None = None):
        """`draw(rng)` (a NumPy array of `shape` and `dtype`) on this backend. Under capture, a device buffer
        that the graph runner refills with a fresh draw before each replay, in the order of the steps, so a
        captured run draws the same numbers as an eager one. The buffer comes from `uploaded_buffer`, outside
        the graph's own memory: there, it could reuse the memory of a temporary that an earlier kernel of the
        graph frees, and that kernel would overwrite the uploaded draw on every replay."""
        if not self.capturing:
            return self.xp.asarray(draw(self.stream_rng(stream)))
        allocate = self.uploaded_buffer or (lambda shape, dtype: self.xp.empty(shape, dtype=dtype))
        buffer = allocate(tuple(shape), dtype)
        self.draws.append((draw, stream, buffer))
        return buffer

    def scalar(self, array: Any) -> float:
        """The value of a 0-d array: the graph's constants are known on the host; anything else is read from
        the device, which a capture cannot do."""
        known = self.host_values.get(id(array))
        if known is not None:
            return known
        if self.capturing:
            raise CaptureUnsupported("a kernel reads a computed scalar on the host")
        return float(array)

    def check(self, failed: Any, error: Callable[[], Exception]) -> None:
        """Raise `error()` when the 0-d device bool `failed` is true: at once in an eager run, after each
        replay under capture."""
        if self.capturing:
            self.checks.append(DeferredCheck(failed, error))
        elif bool(failed):
            raise error()


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
    import nnd.runtime.backend  # noqa: F401  (its imports register every kernel module's kernels)

    merged = dict(_TABLES[GENERIC])
    merged.update(_TABLES.get(backend, {}))
    return merged
