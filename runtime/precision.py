"""Mixed precision's compute dtypes, on float32 master weights: float16 (with loss scaling, since its
exponent range is narrow) and bfloat16 (float32's exponent range with an 8-bit mantissa: no scaling).

NumPy has no bfloat16 of its own; the ml_dtypes package (JAX's) registers one, and CuPy computes in the
same dtype when ml_dtypes is installed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nnd.compiler.diagnostics import NndError

MIXED_PRECISIONS = ("float16", "bfloat16")


def mixed_precision_dtype(mode: bool | str | None) -> np.dtype | None:
    """The compute dtype for `mixed_precision=mode` (True means float16), or None for full precision."""
    if mode is None or mode is False:
        return None
    name = "float16" if mode is True else mode
    if name == "float16":
        return np.dtype(np.float16)
    if name == "bfloat16":
        return bfloat16()
    raise NndError(f"mixed precision computes in {' or '.join(MIXED_PRECISIONS)}, not {mode!r}")


def bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise NndError("bfloat16 needs the ml_dtypes package: pip install ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def needs_loss_scaling(dtype: Any) -> bool:
    """float16 flushes gradients below about 6e-8 to zero; bfloat16 reaches as low as float32."""
    return np.dtype(dtype) == np.float16


def is_bfloat16(dtype: Any) -> bool:
    return np.dtype(dtype).name == "bfloat16"


def is_half(dtype: Any) -> bool:
    """float16 or bfloat16: two-byte floats, whose sums need wider accumulators."""
    return np.dtype(dtype).name in MIXED_PRECISIONS


def wide_sum(xp: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """`x` summed over `axis` in x's dtype, accumulated in float32 when that is a two-byte float: summed
    in place, bfloat16 stops growing at 256 when adding ones, and float16 loses a digit for every ten-fold
    growth of the running sum."""
    if is_half(x.dtype):
        return xp.sum(x, axis=axis, keepdims=keepdims, dtype=np.float32).astype(x.dtype)
    return xp.sum(x, axis=axis, keepdims=keepdims)


def wide_mean(xp: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """`wide_sum` for the mean."""
    if is_half(x.dtype):
        return xp.mean(x, axis=axis, keepdims=keepdims, dtype=np.float32).astype(x.dtype)
    return xp.mean(x, axis=axis, keepdims=keepdims)
