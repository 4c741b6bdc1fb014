"""layer_normalization: Keras' LayerNormalization over the last axis, against PyTorch's layer_norm in
float64 (outputs and every gradient), at each optimization level; its options and its errors."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError

torch = pytest.importorskip("torch")  # the independent reference

MODEL = """model m {{
    input x: [5, 6]
    layer_normalization({args})
    dense(3)
}}
train m {{ loss = mse }}
"""


def _model(args: str = "", level: int = 2):
    model = nnd.loads(MODEL.format(args=args), dtype="float64", seed=0, opt_level=level)
    rng = np.random.default_rng(1)
    model.set_parameters({name: rng.normal(size=value.shape) for name, value in model.parameters().items()})
    return model


def _torch_reference(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epsilon: float):
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    normalized = torch.nn.functional.layer_norm(torch.tensor(x), (6,), p.get("layer_normalization.gamma"),
                                                p.get("layer_normalization.beta"), eps=epsilon)
    out = normalized @ p["dense.kernel"] + p["dense.bias"]
    loss = ((out - torch.tensor(y)) ** 2).mean()
    loss.backward()
    return out.detach().numpy(), float(loss.detach()), {k: v.grad.numpy() for k, v in p.items()}


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("args, epsilon", [("", 1e-3), ("epsilon=0.5", 0.5)])
def test_outputs_and_gradients_match_torch_layer_norm(level, args, epsilon):
    model = _model(args, level)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 5, 6)) * 3 + 1, rng.normal(size=(4, 5, 3))
    expected, expected_loss, expected_grads = _torch_reference(model.parameters(), x, y, epsilon)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12, atol=1e-12)
    loss, grads = model.loss_and_gradients(x, y)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert set(grads) == set(expected_grads)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, expected_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_center_and_scale_can_be_left_out():
    model = _model("center=false, scale=false")
    assert sorted(model.parameters()) == ["dense.bias", "dense.kernel"]
    x, y = np.random.default_rng(3).normal(size=(2, 5, 6)), np.zeros((2, 5, 3))
    expected, _, _ = _torch_reference(model.parameters(), x, y, 1e-3)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12, atol=1e-12)
    assert sorted(_model().parameters()) == ["dense.bias", "dense.kernel", "layer_normalization.beta",
                                             "layer_normalization.gamma"]


def test_an_axis_other_than_the_last_is_a_located_error():
    with pytest.raises(NndError) as info:
        nnd.loads(MODEL.format(args="axis=1"))
    assert "<string>:3:5: error: layer_normalization normalizes over the last axis (axis=-1), got axis=1" in str(
        info.value)
