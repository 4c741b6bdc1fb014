"""A simulated CUDA-graph capture over NumPy arrays, for testing the graph runner without a device."""
from __future__ import annotations

import numpy as np

from nnd.runtime.cuda_graphs import CudaGraphs


class SimulatedCapture:
    """`CaptureApi` over NumPy. A replay re-runs the recorded function with the draws served from the
    buffers the runner filled, then copies outputs and deferred checks over the captured ones."""

    def __init__(self, executor):
        self.executor = executor

    def is_device_array(self, array) -> bool:
        return isinstance(array, np.ndarray)

    def address(self, array) -> int:
        return array.__array_interface__["data"][0]

    def upload(self, buffer, array) -> None:
        np.copyto(buffer, np.asarray(array), casting="unsafe")

    def uploaded_buffer(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def capture(self, record):
        result = record()
        outputs, draws, checks = result
        ctx = self.executor.ctx

        def replay() -> None:
            served = iter([buffer for _, _, buffer in draws])
            ctx.host_random = lambda draw, shape, dtype, stream=None: next(served)
            try:
                fresh, _, fresh_checks = record()
            finally:
                del ctx.host_random
            for name, array in outputs.items():
                np.copyto(array, fresh[name])
            checks[:] = fresh_checks

        return result, replay


def simulate(executor) -> CudaGraphs:
    """Give `executor` a graph runner over the simulated capture."""
    executor.graphs = CudaGraphs(executor, SimulatedCapture(executor))
    return executor.graphs
