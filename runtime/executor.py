"""Executes a graph: compiled once into a flat list of steps over numbered slots.

Each step is (kernel, attrs, input slots, output slots, slots to free, in-place form), following the
graph's memory plan (`nnd.compiler.memory_plan`): a value's buffer is dropped right after its last use,
so a long chain keeps only a few arrays alive (graph outputs and state updates are kept), and an
elementwise step whose input dies there writes its result into that input's buffer. Constants are made
once, when the graph is compiled, and their values stay known on the host (`KernelContext.scalar`).
With `cuda_graphs`, runs on the cupy backend are captured and replayed (`nnd.runtime.cuda_graphs`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import Diagnostic, NndError
from nnd.compiler.ir import Graph, Node, Value
from nnd.compiler.memory_plan import plan_memory
from nnd.compiler.ops import CONSTANT_OPS
from nnd.compiler.tensor_type import FLOAT_DTYPES, NUMPY_DTYPES, TensorType, format_shape
from nnd.runtime.backend import Backend, get_backend
from nnd.runtime.kernel_table import KernelContext, NodeKernel
from nnd.runtime.kernels_elementwise import fits_result, in_place_form
from nnd.runtime.memory import keep_freed_memory
from nnd.runtime.precision import is_bfloat16

UPDATE_PREFIX = "update:"


@dataclass
class Step:
    kernel: Callable[..., Any]
    attrs: dict[str, Any]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    free: tuple[int, ...]
    node: Node
    in_place: tuple[int, Callable[..., Any]] | None = None  # (input position, fn(xp, args, out))


class Executor:
    """Runs `graph` on a backend in one float dtype.

    Float inputs and parameters are converted to `dtype`; kernels keep the dtype of their inputs, so the
    whole graph runs in it (float64 for gradient checks, float16 or bfloat16 under mixed precision).
    Stochastic kernels draw from `rng`, seeded from `seed` and carried across runs; `rng_state` /
    `set_rng_state` save and restore it. With `profile=True` each step's seconds accumulate in
    `step_seconds` (see `profile_by_op`).
    """

    def __init__(self, graph: Graph, backend: str | Backend = "numpy", dtype: Any = np.float32,
                 seed: int = 0, profile: bool = False, cuda_graphs: bool = False):
        self.graph = graph
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in ("float16", "bfloat16", "float32", "float64"):
            raise NndError(f"the executor runs in float16, bfloat16, float32 or float64, not {self.dtype}")
        # ml_dtypes' NumPy matmul returns float32 for bfloat16 operands; every other kernel keeps its
        # inputs' dtype, so in bfloat16 the executor casts such results back
        self.narrow_results = is_bfloat16(self.dtype)
        if self.backend.name == "numpy":
            keep_freed_memory()  # steady-state steps then reuse the heap instead of faulting in pages
        self.rng = np.random.default_rng(seed)
        self.ctx = KernelContext(self.backend.xp, self.rng, self.dtype.type)
        self.profile = profile
        self.peak_live_buffers = 0
        self.runs = 0
        self.batch: int | None = None  # the batch size of the current run, for error messages
        self._callers_arrays: set[int] = set()  # ids of the current run's inputs, parameters and constants
        self._compile()
        self.step_seconds = [0.0] * len(self.steps)
        self.graphs = None
        if cuda_graphs:
            from nnd.runtime.cuda_graphs import CudaGraphs, capture_api
            self.graphs = CudaGraphs(self, capture_api(self.backend))

    # ------------------------------------------------------------------------------------ compilation

    def _compile(self) -> None:
        graph = self.graph
        slots: dict[Value, int] = {}

        def slot(value: Value) -> int:
            if value not in slots:
                slots[value] = len(slots)
            return slots[value]

        kept = list(graph.outputs.values()) + list(graph.state_updates.values())
        needed = set(kept)
        for node in graph.nodes:
            needed.update(node.inputs)

        self.input_slots: list[tuple[str, Value, int]] = []
        for value in graph.inputs:
            if value in needed:
                self.input_slots.append((value.name, value, slot(value)))
        self.param_slots: list[tuple[str, Value, int]] = []
        for name, value in graph.params.items():
            if value in needed:
                self.param_slots.append((name, value, slot(value)))

        plan = plan_memory(graph)
        self.memory_plan = plan
        self.steps: list[Step] = []
        self.constants: list[tuple[int, Any]] = []  # (slot, array) made once and placed in every run
        self.constant_ids: set[int] = set()  # their ids, which `collect` hands out as copies
        for index, node in enumerate(graph.nodes):
            if node.op in CONSTANT_OPS and not node.inputs and node.outputs[0] in needed:
                self.constants.append((slot(node.outputs[0]), self._constant(node)))
                continue
            free = tuple(sorted({slot(v) for v in plan.dies_at[index] + plan.never_read[index]}))
            write = in_place_form(node.op) if index in plan.in_place else None
            self.steps.append(Step(self._kernel(node), node.attr_dict, tuple(slot(v) for v in node.inputs),
                                   tuple(slot(v) for v in node.outputs), free, node,
                                   (plan.in_place[index], write) if write is not None else None))
        for value in kept:
            if value not in slots:
                raise NndError(f"graph {graph.name!r} outputs a value that no node, input or parameter makes")
        self.output_slots = [(name, slots[v]) for name, v in graph.outputs.items()]
        self.update_slots = [(UPDATE_PREFIX + name, slots[v]) for name, v in graph.state_updates.items()]
        self.num_slots = len(slots)
        self.slot_of = slots

    def _constant(self, node: Node) -> Any:
        array = self._kernel(node)(self.ctx, node.attr_dict)
        self.constant_ids.add(id(array))
        if node.op == "constant":
            self.ctx.host_values[id(array)] = float(node.attr_dict["value"])
        return array

    def _kernel(self, node: Node) -> Callable[..., Any]:
        kernel = self.backend.kernels.get(node.op)
        if isinstance(kernel, NodeKernel):
            return kernel.bind(node, self)
        if kernel is not None:
            return kernel
        if node.body is not None:
            return self._body_kernel(node)
        raise NndError(Diagnostic(f"the {self.backend.name} backend has no kernel for op '{node.op}'",
                                  node.span))

    def _body_kernel(self, node: Node) -> Callable[..., Any]:
        """A fused node without a kernel of its own runs its body: body inputs take the node's inputs in
        order and the body's outputs, in order, become the node's outputs."""
        inner = Executor.__new__(Executor)
        inner.graph, inner.backend, inner.dtype = node.body, self.backend, self.dtype
        inner.rng, inner.ctx, inner.profile, inner.narrow_results = self.rng, self.ctx, False, self.narrow_results
        inner.peak_live_buffers, inner.runs, inner.batch, inner._callers_arrays = 0, 0, None, set()
        inner._compile()
        inner.step_seconds = [0.0] * len(inner.steps)

        def run_body(ctx, attrs, *args):
            slots: list[Any] = [None] * inner.num_slots
            for value, array in zip(inner.graph.inputs, args):
                index = inner.slot_of.get(value)
                if index is not None:
                    slots[index] = array
            inner._place_constants(slots)
            inner.batch, inner._callers_arrays = self.batch, {id(a) for a in slots if a is not None}
            inner._execute(slots)
            results = tuple(slots[index] for _, index in inner.output_slots)
            return results[0] if len(results) == 1 else results

        if inner.param_slots:
            raise NndError(f"fused node {node.op} has parameters in its body; pass them as inputs")
        return run_body

    # -------------------------------------------------------------------------------------- execution

    def run(self, inputs: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every graph output by name, plus each state update under `update:<param name>`. Under CUDA graphs
        these are the graph's own buffers: read or copy them before the next run."""
        self.ctx.run_seed = int(self.rng.integers(2 ** 63))  # every path below runs under it, once
        if self.graphs is not None:
            return self.graphs.run(inputs, params or {})
        return self.run_eagerly(inputs, params)

    def run_eagerly(self, inputs: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """`run`, kernel by kernel from Python, never from a captured graph."""
        slots = self.bind(inputs, params or {})
        self._execute(slots)
        self.runs += 1
        return self.collect(slots)

    def bind(self, inputs: dict[str, Any], params: dict[str, Any],
             placed: dict[str, Any] | None = None) -> list[Any]:
        """The slots of a run: inputs and parameters checked and converted to the backend and dtype,
        constants in place; `placed` gives arrays to use as they are for some inputs (captured buffers)."""
        placed = placed or {}
        slots: list[Any] = [None] * self.num_slots
        bindings: dict[str, int] = {}
        for name, value, index in self.input_slots:
            if name not in inputs:
                raise NndError(f"missing input {name!r}: expected an array of shape "
                               f"{format_shape(value.type.shape)} ({value.type.dtype})")
            array = inputs[name]
            self.check_shape("input", name, array, value.type, bindings)
            slots[index] = placed[name] if name in placed else self._convert(array, value.type)
        for name, value, index in self.param_slots:
            if name not in params:
                raise NndError(f"missing parameter {name!r}: expected an array of shape "
                               f"{format_shape(value.type.shape)} ({value.type.dtype})")
            self.check_shape("parameter", name, params[name], value.type, bindings)
            slots[index] = self._convert(params[name], value.type)
        self._place_constants(slots)
        self.batch = bindings.get("N")
        self._callers_arrays = {id(a) for a in slots if a is not None}
        return slots

    def collect(self, slots: list[Any]) -> dict[str, Any]:
        """The outputs and state updates of a finished run; a constant comes out as a copy, so that the
        caller cannot change the one the graph keeps."""
        xp = self.backend.xp
        result = {}
        for name, index in self.output_slots + self.update_slots:
            array = xp.asarray(slots[index])
            result[name] = array.copy() if id(array) in self.constant_ids else array
        return result

    def _place_constants(self, slots: list[Any]) -> None:
        for index, array in self.constants:
            slots[index] = array

    def _execute(self, slots: list[Any]) -> None:
        ctx = self.ctx
        live = sum(1 for s in slots if s is not None)
        peak = live
        profile = self.profile
        for i, step in enumerate(self.steps):
            args = [slots[j] for j in step.inputs]
            if profile:
                self.backend.synchronize()
                start = time.perf_counter()
            try:
                result = None
                if step.in_place is not None:
                    result = self._write_in_place(step.in_place, args, slots)
                if result is None:
                    result = step.kernel(ctx, step.attrs, *args)
            except NndError:
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise NndError(self._out_of_memory_diagnostic(step.node, exc)) from None
                exc.add_note(_describe(step.node, args))
                raise
            if self.narrow_results:
                result = self._narrowed(result)
            if profile:
                self.backend.synchronize()
                self.step_seconds[i] += time.perf_counter() - start
            del args
            if len(step.outputs) == 1:
                slots[step.outputs[0]] = result
            else:
                for j, array in zip(step.outputs, result):
                    slots[j] = array
            live += len(step.outputs)
            peak = max(peak, live)
            for j in step.free:
                if slots[j] is not None:
                    slots[j] = None
                    live -= 1
        self.peak_live_buffers = peak

    def _narrowed(self, result: Any) -> Any:
        if isinstance(result, tuple):
            return tuple(self._narrowed(r) for r in result)
        if getattr(result, "dtype", None) == np.float32:
            return result.astype(self.dtype)
        return result

    def _write_in_place(self, in_place: tuple[int, Callable[..., Any]], args: list[Any], slots: list[Any]):
        """The step's result written over its dying input, or None when that buffer must not be reused:
        not an array owning its memory, of the wrong shape or dtype, passed in by the caller, still held
        as another value, or the base of a view that is still alive."""
        position, write = in_place
        buffer = args[position]
        xp = self.backend.xp
        if (not isinstance(buffer, xp.ndarray) or not buffer.flags.owndata or id(buffer) in self._callers_arrays
                or not fits_result(xp, buffer, args)):
            return None
        # the value's own slot holds the buffer; another holder is the same array (a kernel that returned
        # its input) or a view of it
        if sum(array is buffer or _views(array, buffer) for array in slots) > 1:
            return None
        return write(xp, args, buffer)

    def _out_of_memory_diagnostic(self, node: Node, exc: BaseException) -> Diagnostic:
        """One line: the op and layer that ran out, the batch, the allocator's own words."""
        where = f" (layer {node.layer})" if node.layer else ""
        batch = f" at batch size {self.batch}" if self.batch is not None else ""
        device = "GPU memory" if self.backend.name == "cupy" else "memory"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Diagnostic(f"out of {device} in {node.op}{where}{batch}: {detail}; "
                          f"try a smaller batch size", node.span)

    def check_shape(self, kind: str, name: str, array: Any, type: TensorType, bindings: dict[str, int]) -> None:
        """Raise unless `array` has the shape `type` gives, binding its symbolic dims (N, T) on first use."""
        shape = tuple(getattr(array, "shape", np.shape(array)))
        if len(shape) != type.rank or any(
                _mismatch(have, want, bindings) for have, want in zip(shape, type.shape)):
            bound = ", ".join(f"{k}={v}" for k, v in bindings.items())
            raise NndError(f"{kind} {name!r} has shape {format_shape(shape)} but the graph expects "
                           f"{format_shape(type.shape)}" + (f" (with {bound})" if bound else ""))

    def dtype_of(self, type: TensorType) -> np.dtype:
        """The dtype a value of `type` runs in: the executor's float dtype, or its own integer dtype."""
        return self.dtype if type.dtype in FLOAT_DTYPES else np.dtype(NUMPY_DTYPES[type.dtype])

    def _convert(self, array: Any, type: TensorType):
        xp, dtype = self.backend.xp, self.dtype_of(type)
        if getattr(array, "dtype", None) == dtype and isinstance(array, xp.ndarray):
            return array
        return xp.asarray(array, dtype=dtype)

    # ---------------------------------------------------------------------------------------- state

    def rng_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def profile_by_op(self) -> dict[str, float]:
        """Seconds spent per op name over all profiled runs, largest first."""
        totals: dict[str, float] = {}
        for step, seconds in zip(self.steps, self.step_seconds):
            totals[step.node.op] = totals.get(step.node.op, 0.0) + seconds
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _mismatch(have: int, want, bindings: dict[str, int]) -> bool:
    if isinstance(want, str):
        bound = bindings.setdefault(want, have)
        return bound != have
    return have != want


def _views(array: Any, buffer: Any) -> bool:
    """Whether `array` is a view of `buffer`, following the chain of bases (as_strided puts a wrapper
    object between a view and the array it views)."""
    base = getattr(array, "base", None)
    for _ in range(8):
        if base is None:
            return False
        if base is buffer:
            return True
        base = getattr(base, "base", None)
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    """NumPy's MemoryError, CuPy's OutOfMemoryError (its pool's), or a CUDA runtime call that could not
    allocate (cudaErrorMemoryAllocation, e.g. instantiating a graph); recognized without importing cupy."""
    if isinstance(exc, MemoryError):
        return True
    kind = type(exc)
    if not kind.__module__.startswith(("cupy", "cupy_backends")):
        return False
    return kind.__name__ == "OutOfMemoryError" or (
        kind.__name__ == "CUDARuntimeError" and "cudaErrorMemoryAllocation" in str(exc))


def _describe(node: Node, args: list[Any]) -> str:
    shapes = ", ".join(str(tuple(getattr(a, "shape", ()))) for a in args)
    where = f" in layer {node.layer}" if node.layer else ""
    if node.span is not None:
        where += f" at {node.span}"
    return f"while running {node.op}({shapes}){where}"
