"""Every registered op is complete (shape rule, fusion kind, gradient, numpy kernel) and every
differentiable op passes a gradient check driven by `gradcheck_cases.GRADCHECK_CASES`."""
from __future__ import annotations

import pytest

from gradcheck import check_case
from gradcheck_cases import GRADCHECK_CASES
from nnd.compiler.ops import NOT_DIFFERENTIABLE, Fusion, all_ops
from nnd.runtime.backend import get_backend

OPS = all_ops()


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_complete(name):
    op = OPS[name]
    assert op.name == name
    assert callable(op.infer), f"{name} has no shape rule"
    assert isinstance(op.fusion, Fusion), f"{name} has no fusion kind"
    assert op.grad is NOT_DIFFERENTIABLE or callable(op.grad), f"{name}: grad must be a rule or NOT_DIFFERENTIABLE"
    assert name in get_backend("numpy").kernels, f"{name} has no kernel in the numpy table"


def test_every_differentiable_op_has_a_gradient_check():
    missing = sorted(n for n, op in OPS.items() if op.differentiable and not GRADCHECK_CASES.get(n))
    assert not missing, f"add GRADCHECK_CASES entries (tests/gradcheck_cases.py) for: {', '.join(missing)}"


def test_gradient_checks_name_registered_differentiable_ops():
    unknown = sorted(n for n in GRADCHECK_CASES if n not in OPS or not OPS[n].differentiable)
    assert not unknown, f"GRADCHECK_CASES has entries for unknown or non-differentiable ops: {unknown}"


CASES = [pytest.param(name, case, id=f"{name}-{i}")
         for name in sorted(GRADCHECK_CASES) for i, case in enumerate(GRADCHECK_CASES[name])]


@pytest.mark.parametrize("name, case", CASES)
def test_gradient(name, case):
    check_case(name, case)
