"""CUDA graphs of executor runs: a run's kernels recorded once, then replayed with no Python between them.

Small batches on a GPU are bound by launches: a training step of the seed LSTM launches some 800 kernels
(a GEMM and a gate kernel per time step, layer and direction), the seed CNN's some 50, most of them a few
microseconds long, and Python takes longer to issue each one than the device takes to run it. A CUDA
graph issues them all in one call.

Runs are keyed by the shapes of their inputs and the device addresses of their parameters:

1. The first run of a key runs eagerly. It compiles every kernel (NVRTC, CuPy's own), sets up cuBLAS and
   fills the memory pool, none of which belongs inside a capture.
2. The second run captures. Its inputs go to buffers the graph owns, and the executor runs with
   `ctx.capturing` on a stream of its own, allocating from a memory pool that nothing else uses: the
   addresses baked into the graph stay the graph's (a buffer freed during the capture is reused only by
   later kernels of the same graph, in stream order). Random draws become buffers
   (`KernelContext.host_random`), data checks deferred ones (`KernelContext.check`).
3. From then on a run copies the inputs into the graph's buffers, draws the random numbers on the host in
   the order of the steps and copies them in (a captured run uses the same masks as an eager one), replays
   the graph on the current stream and evaluates the deferred checks.

A key whose capture fails (a kernel that needs a device value on the host, a CUDA call that cannot be
captured) runs eagerly from then on, after one warning; so do keys beyond MAX_GRAPHS (many sequence
lengths, say). The outputs of a replay are the graph's own buffers, overwritten by the next replay: read
or copy them before running the executor again (or name arrays for them to be copied into, inside the
graph: `output_targets`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.runtime.backend import Backend
from nnd.runtime.executor import is_out_of_memory
from nnd.runtime.kernel_table import DeferredCheck

if TYPE_CHECKING:
    from nnd.runtime.executor import Executor

MAX_GRAPHS = 4  # captured keys per executor; each holds its own activations' memory


class CaptureApi(Protocol):
    """What the runner needs of a device: `capture(record)` runs `record()` with the device work recorded
    instead of executed and returns its result with a function that replays the work."""

    def is_device_array(self, array: Any) -> bool: ...

    def address(self, array: Any) -> int: ...

    def upload(self, buffer: Any, array: Any) -> None: ...

    def uploaded_buffer(self, shape: tuple, dtype: Any) -> Any: ...

    def capture(self, record: Callable[[], Any]) -> tuple[Any, Callable[[], None]]: ...


class CupyCapture:
    """Stream capture with CuPy: a non-blocking stream to record on, a private memory pool per graph for
    its kernels' arrays and another for the buffers the host fills before each replay (random draws)."""

    def __init__(self, cupy: Any):
        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.uploads: Any = None  # the pool of the capture under way

    def is_device_array(self, array: Any) -> bool:
        return isinstance(array, self.cupy.ndarray)

    def address(self, array: Any) -> int:
        return int(array.data.ptr)

    def upload(self, buffer: Any, array: Any) -> None:
        """Copy `array` (host or device) into `buffer` on the current stream, converting its dtype."""
        if isinstance(array, self.cupy.ndarray):
            buffer[...] = array
        else:
            buffer.set(np.ascontiguousarray(array, dtype=buffer.dtype))

    def uploaded_buffer(self, shape: tuple, dtype: Any) -> Any:
        """A buffer the graph reads and the host writes: from a pool of its own, since memory of the graph's
        pool may be a temporary that a kernel freed during the capture, which it then writes on every
        replay, after the upload."""
        with self.cupy.cuda.using_allocator(self.uploads.malloc):
            return self.cupy.empty(shape, dtype=dtype)

    def capture(self, record: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        cupy = self.cupy
        pool = cupy.cuda.MemoryPool()  # the graph's own, kept alive by its replay
        self.uploads = cupy.cuda.MemoryPool()
        with cupy.cuda.using_allocator(pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                result = record()
            finally:
                graph = self.stream.end_capture()  # always leave capture mode, even when record() failed

        return result, _CupyReplay(graph, pool, self.uploads)


@dataclass
class _CupyReplay:
    graph: Any
    pool: Any  # the memory the graph's kernels address: it lives as long as the graph
    uploads: Any  # the memory of the buffers uploaded before each replay, likewise

    def __call__(self) -> None:
        self.graph.launch()  # on the caller's current stream, after its input copies


def capture_api(backend: Backend) -> CaptureApi:
    if backend.name != "cupy":
        raise NndError(f"CUDA graphs replay GPU work: they need the cupy backend, not {backend.name!r}")
    return CupyCapture(backend.xp)


@dataclass
class Captured:
    """One key's graph: the buffers its inputs are copied into, its outputs, draws and deferred checks."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    draws: list[tuple[Callable[[np.random.Generator], np.ndarray], int | None, Any]]  # draw, stream, buffer
    checks: list[DeferredCheck]
    replay: Callable[[], None]


class CudaGraphs:
    """Runs an executor's graph through captured CUDA graphs, one per key (see the module's text)."""

    def __init__(self, executor: "Executor", api: CaptureApi):
        self.executor = executor
        self.api = api
        self.graphs: dict[tuple, Captured] = {}
        self.seen: set[tuple] = set()  # keys run once, eagerly
        self.eager: set[tuple] = set()  # keys whose capture failed
        self.param_addresses: tuple | None = None
        # output name -> an array the graph copies that output into (the optimizer's gradient buffer), so
        # that nothing needs copying between the replay and the update
        self.output_targets: dict[str, Any] = {}
        self.captures = 0
        self.replays = 0

    def run(self, inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        if self.executor.profile:  # timing each kernel means waiting for it, which a graph cannot
            return self.executor.run_eagerly(inputs, params)
        key = self._key(inputs, params)
        if key is not None and key[1] != self.param_addresses:
            # new parameter arrays (loaded weights, say): the graphs read the old ones; let their memory go
            self.graphs.clear()
            self.seen.clear()
            self.param_addresses = key[1]
        if key is None or key in self.eager:
            return self.executor.run_eagerly(inputs, params)
        captured = self.graphs.get(key)
        if captured is None:
            if key not in self.seen or len(self.graphs) >= MAX_GRAPHS:
                self.seen.add(key)
                return self.executor.run_eagerly(inputs, params)
            captured = self._capture(key, inputs, params)
            if captured is None:
                return self.executor.run_eagerly(inputs, params)
        return self._replay(captured, inputs)

    def _key(self, inputs: dict[str, Any], params: dict[str, Any]) -> tuple | None:
        """Input shapes, and the addresses of the parameters and output targets; None when a parameter is
        not on the device (a host array would be copied anew on every run, at an address no graph can
        keep)."""
        executor = self.executor
        bindings: dict[str, int] = {}
        shapes: list[tuple] = []
        for name, value, _ in executor.input_slots:
            if name not in inputs:
                return None  # run_eagerly says what is missing
            executor.check_shape("input", name, inputs[name], value.type, bindings)
            shapes.append((name, tuple(np.shape(inputs[name]))))
        addresses: list[tuple] = []
        for name, _, _ in executor.param_slots:
            array = params.get(name)
            if array is None or not self.api.is_device_array(array):
                return None
            addresses.append((name, tuple(array.shape), str(array.dtype), self.api.address(array)))
        for name, target in sorted(self.output_targets.items()):
            addresses.append((name, self.api.address(target)))
        return tuple(shapes), tuple(addresses)

    def _capture(self, key: tuple, inputs: dict[str, Any], params: dict[str, Any]) -> Captured | None:
        executor = self.executor
        try:
            static = self._input_buffers(inputs)
            (outputs, draws, checks), replay = self.api.capture(self._recorder(static, inputs, params))
        except NndError:
            raise
        except Exception as exc:  # noqa: BLE001  (any failure to capture leaves the eager path)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if is_out_of_memory(exc):
                raise NndError(f"out of GPU memory capturing a CUDA graph of {executor.graph.name!r} at batch size "
                               f"{executor.batch}: {reason}; try a smaller batch size, or run without CUDA "
                               "graphs (they keep each batch shape's activations)") from None
            self.eager.add(key)
            warnings.warn(f"graph {executor.graph.name!r} runs without CUDA graphs: its capture failed ({reason})",
                          RuntimeWarning, stacklevel=3)
            return None
        self.captures += 1
        captured = Captured(static, outputs, draws, checks, replay)
        self.graphs[key] = captured
        return captured

    def _input_buffers(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The graph's own input buffers, holding this run's inputs (should anything read them before the
        replay)."""
        executor = self.executor
        static = {name: executor.backend.xp.empty(np.shape(inputs[name]), dtype=executor.dtype_of(value.type))
                  for name, value, _ in executor.input_slots}
        for name, buffer in static.items():
            self.api.upload(buffer, inputs[name])
        return static

    def _recorder(self, static: dict[str, Any], inputs: dict[str, Any], params: dict[str, Any]):
        """The function whose device work becomes the graph: one run of the executor on the graph's input
        buffers in capture mode, its outputs copied into `output_targets` where given."""
        executor = self.executor
        ctx = executor.ctx

        def record() -> tuple[dict[str, Any], list, list]:
            ctx.capturing, ctx.draws, ctx.checks = True, [], []
            ctx.uploaded_buffer = self.api.uploaded_buffer
            try:
                slots = executor.bind(inputs, params, placed=static)
                executor._execute(slots)
                outputs = executor.collect(slots)
                for name, target in self.output_targets.items():
                    if name in outputs:
                        target[...] = outputs[name]
                        outputs[name] = target
                return outputs, ctx.draws, ctx.checks
            finally:
                ctx.capturing, ctx.uploaded_buffer = False, None

        return record

    def _replay(self, captured: Captured, inputs: dict[str, Any]) -> dict[str, Any]:
        executor = self.executor
        for name, buffer in captured.inputs.items():
            self.api.upload(buffer, inputs[name])
        for draw, stream, buffer in captured.draws:
            self.api.upload(buffer, draw(executor.ctx.stream_rng(stream)))
        captured.replay()
        self.replays += 1
        executor.runs += 1
        for check in captured.checks:
            if bool(check.failed):
                raise check.error()
        return dict(captured.outputs)
