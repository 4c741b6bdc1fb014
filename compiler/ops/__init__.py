"""Importing this package registers every op."""
from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, OpDef, all_ops, get_op, register

__all__ = ["NOT_DIFFERENTIABLE", "Fusion", "OpDef", "all_ops", "get_op", "register"]
