"""Checking a model against PyTorch in float64: its prediction, its mean-squared-error loss and the
gradient of every parameter, with the parameters handed to a reference written in torch ops.

    model = randomized(SOURCE, level)                      # float64, parameters drawn at random
    p = torch_parameters(model)                            # name -> tensor that collects gradients
    assert_matches_torch(model, x, y, reference(torch.tensor(x), p), p)

Import it after `pytest.importorskip("torch")`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import nnd


def randomized(source: str, level: int, scale: float = 0.3, seed: int = 1) -> nnd.Model:
    """The model of `source` in float64 at -O`level`, every parameter drawn from N(0, scale^2)."""
    model = nnd.loads(source, dtype="float64", seed=0, opt_level=level)
    rng = np.random.default_rng(seed)
    model.set_parameters({name: rng.normal(size=value.shape) * scale for name, value in model.parameters().items()})
    return model


def torch_parameters(model: nnd.Model) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value, requires_grad=True) for name, value in model.parameters().items()}


def assert_matches_torch(model: nnd.Model, x: Any, y: np.ndarray, out: torch.Tensor, p: dict[str, torch.Tensor], *,
                         rtol: float = 1e-10, grad_rtol: float = 1e-9, every_parameter_used: bool = False) -> None:
    """`out`, the reference's output for `x` computed from `p`, against the model: the prediction, the
    loss mean((out - y)^2) and the gradient of every parameter. `every_parameter_used` also asks that no
    gradient be all zeros, where a parameter left out would make the comparison prove little."""
    loss = ((out - torch.tensor(y)) ** 2).mean()
    loss.backward()
    np.testing.assert_allclose(model.predict(x), out.detach().numpy(), rtol=rtol, atol=1e-12)
    value, grads = model.loss_and_gradients(x, y)
    assert value == pytest.approx(float(loss.detach()), rel=rtol)
    assert set(grads) == set(p)
    for name, grad in grads.items():
        if every_parameter_used:
            assert np.abs(grad).max() > 0, name
        np.testing.assert_allclose(grad, p[name].grad.numpy(), rtol=grad_rtol, atol=1e-12, err_msg=name)
