"""The cost model of the select-layout pass (`nnd.compiler.layout`): a convolution timed in both layouts
with the backend's own kernels, on random data of the node's shapes at a small batch (8 samples, fewer
for large images).

The NCHW timing includes the transposes into and out of NCHW. Timings are the best of a few runs, kept
per process and in a JSON file in the cache directory (keyed by backend, kernel version, dtype, op,
shapes and attributes), so a machine decides once and every later compilation picks the same layout.
NND_LAYOUT overrides the measurement: NHWC keeps every convolution in the language's layout, NCHW moves
every one (for tests and comparisons), `measure` (the default) times them.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.compiler.ir import Node
from nnd.compiler.layout import TO_NCHW, TO_NHWC, LayoutCosts, forced_costs
from nnd.runtime.backend import Backend, get_backend
from nnd.runtime.kernel_table import KernelContext

MEASURE_BATCH = 8
MEASURE_BYTES = 4 << 20  # a smaller batch for large images, so that first compilations stay quick
RUNS = 5
MODES = ("measure", "NHWC", "NCHW")
_MEASURED: dict[str, dict[str, float]] = {}


def layout_mode() -> str:
    mode = os.environ.get("NND_LAYOUT", "measure").strip() or "measure"
    if mode not in MODES:
        raise NndError(f"NND_LAYOUT must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def cost_model(backend: str | Backend, dtype: Any) -> LayoutCosts:
    """The costs select-layout asks for, on `backend` in `dtype`."""
    mode = layout_mode()
    if mode != "measure":
        return forced_costs(mode)
    backend = get_backend(backend) if isinstance(backend, str) else backend
    dtype = np.dtype(dtype)
    return lambda node: _measured(node, backend, dtype)


def _measured(node: Node, backend: Backend, dtype: np.dtype) -> dict[str, float]:
    batch = _measure_batch(node, dtype)
    key = json.dumps([backend.name, _kernel_version(backend), dtype.name, node.op,
                      [list(_concrete(v.type.shape, batch)) for v in node.inputs],
                      sorted((k, repr(v)) for k, v in node.attrs)])
    found = _MEASURED.get(key)
    if found is None:
        stored = _load_store()
        found = stored.get(key)
        if found is None:
            found = {layout: _time_node(node, backend, dtype, layout, batch) for layout in ("NHWC", "NCHW")}
            stored[key] = found
            _save_store(stored)
        _MEASURED[key] = found
    return found


def _kernel_version(backend: Backend) -> str:
    """Which kernels the timings are of: new native kernels (a new ABI version), other rules for when
    they run, or their absence call for new measurements."""
    from nnd.runtime import kernels_native_conv, native

    if backend.name == "numpy" and native.library() is not None:
        return f"native-{native.ABI_VERSION}-{kernels_native_conv.selection_rule()}"
    return "array-module"


def _measure_batch(node: Node, dtype: np.dtype) -> int:
    """MEASURE_BATCH samples, fewer when one sample's input is large (at least one)."""
    per_sample = int(np.prod(_concrete(node.inputs[0].type.shape, 1))) * dtype.itemsize
    return max(1, min(MEASURE_BATCH, MEASURE_BYTES // max(1, per_sample)))


def _concrete(shape: tuple, batch: int) -> tuple[int, ...]:
    return tuple(batch if isinstance(d, str) else d for d in shape)


def _time_node(node: Node, backend: Backend, dtype: np.dtype, layout: str, batch: int) -> float:
    """Seconds of the node in `layout`; NCHW pays for both transposes, materialized, as if the neighbours
    stayed NHWC (when they switch too, the transposes cancel and the choice only gets better)."""
    rng = np.random.default_rng(0)
    xp = backend.xp
    inputs = [backend.asarray(rng.standard_normal(_concrete(v.type.shape, batch)).astype(dtype))
              for v in node.inputs]
    kernel = backend.kernels[node.op]
    ctx = KernelContext(xp, rng, dtype.type)
    if layout == "NHWC":
        return _best_seconds(lambda: kernel(ctx, node.attr_dict, *inputs), backend)
    attrs = dict(node.attr_dict, layout="NCHW")

    def switched():
        x = xp.ascontiguousarray(xp.transpose(inputs[0], TO_NCHW))
        return xp.ascontiguousarray(xp.transpose(kernel(ctx, attrs, x, *inputs[1:]), TO_NHWC))

    return _best_seconds(switched, backend)


def _best_seconds(run: Callable[[], Any], backend: Backend) -> float:
    run()
    backend.synchronize()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        backend.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(sorted(times)[:3])  # the fastest runs: the least disturbed by the machine


def _store_path() -> Path:
    from nnd.runtime.native import cache_dir

    return cache_dir() / "layouts.json"


def _load_store() -> dict[str, dict[str, float]]:
    try:
        data = json.loads(_store_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_store(stored: dict[str, dict[str, float]]) -> None:
    path = _store_path()
    try:
        handle, partial = tempfile.mkstemp(prefix=".layouts-", suffix=".json", dir=path.parent)
        with os.fdopen(handle, "w") as out:
            json.dump(stored, out)
        os.replace(partial, path)
    except OSError:
        pass  # an unwritable cache only costs a measurement next time
