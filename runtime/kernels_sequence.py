"""Kernels of the sequence helper ops (see nnd.compiler.ops.sequence)."""
from __future__ import annotations

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.runtime.kernel_table import kernel


@kernel("merge_batch")
def merge_batch(ctx, attrs, x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


@kernel("split_batch")
def split_batch(ctx, attrs, x):
    return x.reshape((-1, attrs["steps"]) + x.shape[1:])


@kernel("flip")
def flip(ctx, attrs, x):
    return ctx.xp.ascontiguousarray(ctx.xp.flip(x, axis=attrs["axis"]))


@kernel("tile_steps")
def tile_steps(ctx, attrs, x):
    return ctx.xp.ascontiguousarray(ctx.xp.broadcast_to(x[:, None, :], (x.shape[0], attrs["steps"], x.shape[1])))


@kernel("batch_zeros")
def batch_zeros(ctx, attrs, x):
    dtype = x.dtype if x.dtype.kind == "f" else ctx.dtype
    return ctx.xp.zeros((x.shape[0],) + tuple(attrs["shape"]), dtype=dtype)


@kernel("gather_rows")
def gather_rows(ctx, attrs, ids, table):
    rows = table.shape[0]
    if ids.size:
        ctx.check((ids.min() < 0) | (ids.max() >= rows), lambda: _out_of_range(ctx.xp, ids, rows))
    if ctx.capturing:  # the check comes after the replay: until then, stay inside the table
        return table[ctx.xp.clip(ids, 0, rows - 1)]
    return table[ids]


def _out_of_range(xp, ids, rows: int) -> NndError:
    bad = ids[(ids < 0) | (ids >= rows)][0]
    position = tuple(int(i) for i in xp.argwhere(ids == bad)[0])
    return NndError(f"index {int(bad)} at position {position} is out of range for an embedding of "
                    f"{rows} rows (input_dim={rows}: valid ids are 0 to {rows - 1})")


@kernel("gather_rows_grad")
def gather_rows_grad(ctx, attrs, dy, ids):
    xp = ctx.xp
    table = xp.zeros((attrs["rows"], dy.shape[-1]), dtype=dy.dtype)
    flat = ids.reshape(-1)
    rows = dy.reshape(-1, dy.shape[-1])
    xp.add.at(table, flat, rows)  # unbuffered: repeated ids accumulate
    return table


@kernel("nonzero_mask")
def nonzero_mask(ctx, attrs, x):
    return (x != 0).astype(ctx.dtype)


def large_negative(dtype) -> float:
    """Keras' `_large_negative_number`: the score of a pair attention must not see."""
    return -3e4 if np.dtype(dtype) == np.float16 else -1e9


@kernel("attention_bias")
def attention_bias(ctx, attrs, *keep):
    """Built in float32 (float64 when the graph runs in it) and cast once at the end: a two-byte dtype
    holds the numbers, but not every array module builds a triangle in bfloat16."""
    xp = ctx.xp
    rows, cols = attrs["steps"]
    work = np.float64 if np.dtype(ctx.dtype) == np.float64 else np.float32
    allowed = keep[0].astype(work, copy=False) if keep else None
    if attrs.get("causal", False):
        lower = xp.tri(rows, cols, dtype=work)  # key j <= query i
        allowed = lower if allowed is None else allowed * lower
    return ((1.0 - allowed) * large_negative(ctx.dtype)).astype(ctx.dtype, copy=False)
