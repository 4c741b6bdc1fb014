"""The NumPy backend's `fused_elementwise` as generated C (`nnd.runtime.cpu_codegen`): one pass over memory
for the whole group, split across threads, instead of one NumPy call (and one pass) per op of the body.

Functions are compiled in batches: binding a node only registers its source, and the first run of any
generated function builds every source registered so far into one library. An executor binds all its
nodes before it runs one, so a model's groups cost one compiler call (cached on disk, keyed by the source
text; later processes only load it). Small groups, other dtypes, ops the generator lacks, and machines
without a C compiler run the array-op kernel (`kernels_elementwise`) instead, with the same results up to
the last bit of the transcendental functions (the arithmetic ops round alike: no contraction into FMAs).
"""
from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from nnd.runtime import native
from nnd.runtime.cpu_codegen import library_source, node_function_source, supports
from nnd.runtime.kernel_table import node_kernel
from nnd.runtime.kernels_elementwise import fused_elementwise

# Below this many elements a ctypes call and the thread hand-off cost more than NumPy's passes save.
MIN_GENERATED_ELEMENTS = 4096
# Elements per thread below which one thread does the whole range.
ELEMENTS_PER_THREAD = 1 << 15

_pending: dict[str, tuple[str, int]] = {}  # name -> (source, pointer arguments), registered, not yet built
_functions: dict[str, Any] = {}  # name -> bound ctypes function


def _register(name: str, source: str, pointers: int) -> None:
    if name not in _functions:
        _pending[name] = (source, pointers)


def _function(name: str):
    """The built function `name`, building everything pending first; None when it cannot be built (and
    then never tried again: the array ops run)."""
    found = _functions.get(name)
    if found is not None or name not in _pending:
        return found
    batch = dict(_pending)
    library = native.generated_library(library_source({built: source for built, (source, _) in batch.items()}))
    if library is None:
        for built in batch:
            _pending.pop(built, None)
        return None
    for built, (_, pointers) in batch.items():
        function = getattr(library, built)
        function.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64, ctypes.c_int64]
        function.restype = None
        _functions[built] = function
        _pending.pop(built, None)
    return _functions[name]


@node_kernel("fused_elementwise", backend="numpy")
def fused_elementwise_native(node, executor):
    array_ops = fused_elementwise(node, executor)
    dtype = np.dtype(executor.dtype)
    if dtype not in (np.float32, np.float64) or not supports(node.body) or native.library() is None:
        return array_ops
    name, source = node_function_source(node, dtype)
    outputs = len(node.outputs)
    _register(name, source, len(node.inputs) + outputs)

    def run(ctx, attrs, *args):
        shape = np.broadcast_shapes(*(np.shape(a) for a in args))
        count = math.prod(shape)
        function = _function(name) if count >= MIN_GENERATED_ELEMENTS else None
        if function is None or any(np.result_type(a) != dtype for a in args):
            return array_ops(ctx, attrs, *args)
        inputs = [np.ascontiguousarray(a) for a in args]
        results = [np.empty(shape, dtype=dtype) for _ in range(outputs)]
        pointers = [a.ctypes.data for a in (*inputs, *results)]
        threads = max(1, min(native.thread_count(), count // ELEMENTS_PER_THREAD))
        native.run_chunks(native.row_chunks(count, threads, align=16),
                          lambda index, begin, end: function(*pointers, begin, end))
        return results[0] if outputs == 1 else tuple(results)

    return run
