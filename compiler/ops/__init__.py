"""Importing this package registers every op."""
from nnd.compiler.ops.registry import CONSTANT_OPS, NOT_DIFFERENTIABLE, Fusion, OpDef, all_ops, get_op, register

from nnd.compiler.ops import basic, conv, depthwise, fused, recurrent, sequence  # noqa: E402,F401  (registration)
from nnd.compiler.ops import fused_elementwise  # noqa: E402,F401  (registration)

__all__ = ["CONSTANT_OPS", "NOT_DIFFERENTIABLE", "Fusion", "OpDef", "all_ops", "get_op", "register"]
