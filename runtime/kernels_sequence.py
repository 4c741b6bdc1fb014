"""Kernels of the sequence helper ops (see nnd.compiler.ops.sequence)."""
from __future__ import annotations

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
