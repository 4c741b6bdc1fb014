"""group_normalization and unit_normalization: Keras' GroupNormalization and UnitNormalization, against
PyTorch's group_norm and normalize in float64 (outputs and every gradient) at each optimization level."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, randomized, torch_parameters  # noqa: E402

F = torch.nn.functional

IMAGE_MODEL = """model m {{
    input x: [3, 4, 6]
    conv2d(6, 1, name=pre)
    {layer}
    flatten()
    dense(2)
}}
train m {{ loss = mse }}
"""


def _head(y, p, batch):
    return y.reshape(batch, -1) @ p["dense.kernel"] + p["dense.bias"]


def _pre(x, p):
    return x @ p["pre.kernel"].reshape(6, 6) + p["pre.bias"]


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("args, groups, affine", [
    ("groups=3", 3, True), ("groups=1", 1, True), ("groups=6, epsilon=0.5", 6, True),
    ("2, center=false, scale=false", 2, False),
])
def test_group_normalization_matches_torch(level, args, groups, affine):
    model = randomized(IMAGE_MODEL.format(layer=f"group_normalization({args})"), level)
    x = np.random.default_rng(2).normal(size=(4, 3, 4, 6))
    y = np.random.default_rng(3).normal(size=(4, 2))
    epsilon = 0.5 if "epsilon" in args else 1e-3
    p = torch_parameters(model)
    z = _pre(torch.tensor(x), p).permute(0, 3, 1, 2)
    normed = F.group_norm(z, groups, p.get("group_normalization.gamma"), p.get("group_normalization.beta"),
                          eps=epsilon)
    assert ("group_normalization.gamma" in p) == affine
    assert_matches_torch(model, x, y, _head(normed.permute(0, 2, 3, 1), p, len(x)), p)


@pytest.mark.parametrize("level", [0, 2])
def test_unit_normalization_matches_torch(level):
    model = randomized(IMAGE_MODEL.format(layer="unit_normalization()"), level)
    x = np.random.default_rng(4).normal(size=(4, 3, 4, 6))
    y = np.random.default_rng(5).normal(size=(4, 2))
    p = torch_parameters(model)
    out = _head(F.normalize(_pre(torch.tensor(x), p), dim=-1), p, len(x))
    assert_matches_torch(model, x, y, out, p)


def test_unit_normalization_leaves_a_zero_vector_zero():
    model = nnd.loads("model m { input x: [3]\n unit_normalization() }", dtype="float64")
    out = model.predict(np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0], [0.6, 0.0, 0.8]], rtol=1e-15)


def test_parameters_are_keras_gamma_and_beta_per_channel():
    model = nnd.loads(IMAGE_MODEL.format(layer="group_normalization(2)"))
    shapes = {name: value.shape for name, value in model.parameters().items() if name.startswith("group")}
    assert shapes == {"group_normalization.gamma": (6,), "group_normalization.beta": (6,)}


@pytest.mark.parametrize("layer, message", [
    ("group_normalization(4)", "4:5: error: group_normalization groups=4 does not divide the 6 channels"),
    ("group_normalization(2, axis=1)", "4:5: error: group_normalization normalizes over the last axis"),
    ("group_normalization(0)", "4:25: error: group_normalization argument 'groups'"),
    ("unit_normalization(axis=2)", "4:5: error: unit_normalization normalizes over the last axis"),
])
def test_mistakes_are_located(layer, message):
    with pytest.raises(NndError, match=message):
        nnd.loads(IMAGE_MODEL.format(layer=layer), name="m.nnd")


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_unit_normalization_leaves_a_zero_vector_zero_in_mixed_precision(precision):
    """float16 rounds Keras' floor of 1e-12 to zero; a zero vector must not become 0 / 0."""
    model = nnd.loads("model m { input x: [2, 3]\n unit_normalization() }", mixed_precision=precision)
    x = np.array([[[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]]], dtype=np.float32)
    out = np.asarray(model.predict(x), dtype=np.float64)
    np.testing.assert_array_equal(out[0, 0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[0, 1], [0.6, 0.0, 0.8], rtol=1e-2)
