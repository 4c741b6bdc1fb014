"""Backends: an array module (numpy or cupy) and the kernel table that runs on it."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.runtime.cuda_blas import DeviceArrayModule
from nnd.runtime import (kernels_basic, kernels_conv, kernels_depthwise, kernels_fused, kernels_recurrent,  # noqa: F401
                         kernels_sequence)  # importing fills the kernel tables
# cupy is imported lazily by these: they register their kernels on any machine
from nnd.runtime import (kernels_cupy, kernels_cupy_conv, kernels_cupy_recurrent, kernels_cupy_reduce,  # noqa: F401,E402
                          kernels_cupy_step, kernels_elementwise)
# the native kernels override some of those on NumPy (the C library is built on first use)
from nnd.runtime import (kernels_native, kernels_native_conv, kernels_native_depthwise,  # noqa: F401,E402
                         kernels_native_elementwise, kernels_native_norm)
from nnd.runtime.kernel_table import Kernel, kernels_for

BACKENDS = ("numpy", "cupy")


class Backend:
    """`name`, the array module `xp` and the op -> kernel table for that backend."""

    def __init__(self, name: str, xp: ModuleType):
        self.name = name
        self.xp = xp
        self.kernels: dict[str, Kernel] = kernels_for(name)

    def asarray(self, array: Any, dtype: Any = None):
        """An array of this backend (copied to the device for cupy)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A host (NumPy) copy or view of an array of this backend."""
        if self.name == "cupy" and hasattr(array, "get"):
            return array.get()
        return np.asarray(array)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU); used to time kernels."""
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


_CACHE: dict[str, Backend] = {}


def get_backend(name: str = "numpy") -> Backend:
    if name in _CACHE:
        return _CACHE[name]
    if name == "numpy":
        backend = Backend("numpy", np)
    elif name == "cupy":
        try:
            import cupy
        except ImportError:
            raise NndError("the cupy backend needs CuPy: pip install cupy-cuda13x ml_dtypes (cupy-cuda12x for "
                           "CUDA 12), or pip install -e '.[gpu]' in nnd's source tree") from None
        try:
            available = cupy.is_available()
        except Exception:  # a broken CUDA install reports itself here
            available = False
        if not available:
            raise NndError("no CUDA device is available for the cupy backend "
                           "(check the driver and CUDA_VISIBLE_DEVICES, or use --backend numpy)")
        backend = Backend("cupy", DeviceArrayModule(cupy))
    else:
        raise NndError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    _CACHE[name] = backend
    return backend
