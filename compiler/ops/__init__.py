"""Importing this package registers every op."""
from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, OpDef, all_ops, get_op, register

__all__ = ["NOT_DIFFERENTIABLE", "Fusion", "OpDef", "all_ops", "get_op", "register"]

from nnd.compiler.ops import conv  # noqa
from nnd.compiler.ops import recurrent  # noqa: E402,F401  (registers the recurrent scans)
from nnd.compiler.ops import basic  # noqa: E402,F401  (registers the basic ops)
