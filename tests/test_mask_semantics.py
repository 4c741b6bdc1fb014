"""Padding masks as Keras carries them: masking() zeroes the padded steps for the layers that ignore the
mask, batchnorm keeps it, and merges (add, concat, average, arithmetic) combine their inputs' masks, so
a recurrent layer after them still skips the padding."""
from __future__ import annotations

import numpy as np
import pytest

import nnd


def test_masking_zeroes_the_padded_steps_like_keras():
    model = nnd.loads("model m {\n    input x: [3, 2]\n    masking(mask_value=-1.0)\n    global_maxpool1d()\n}\n")
    x = np.array([[[-1, -1], [-3, -2], [-1, -1]]], np.float32)
    assert np.array_equal(model.predict(x), np.zeros((1, 2), np.float32))  # Keras: max over inputs * mask


@pytest.mark.parametrize("body", [
    "x -> embedding(6, 3, mask_zero=true) -> batchnorm() -> lstm(2)",
    "concat(x -> embedding(6, 3, mask_zero=true), x -> embedding(6, 3, mask_zero=true)) -> lstm(2)",
    "(x -> embedding(6, 3, mask_zero=true)) * 2 -> lstm(2)",
    "average(x -> embedding(6, 3, mask_zero=true), x -> embedding(6, 3)) -> lstm(2)",
])
def test_a_mask_survives_batchnorm_and_merges(body):
    """An LSTM over [3, 4, pad, pad, pad] gives what it gives over [3, 4] when the mask reaches it."""
    long = nnd.loads(f"model m {{\n    input x: int32[5]\n    output {body}\n}}\n")
    short = nnd.loads(f"model m {{\n    input x: int32[2]\n    output {body}\n}}\n")
    short.set_parameters(long.parameters())
    np.testing.assert_allclose(long.predict(np.array([[3, 4, 0, 0, 0]])), short.predict(np.array([[3, 4]])),
                               atol=1e-6)


def test_a_merged_mask_trains():
    model = nnd.loads("model m {\n    input x: int32[5]\n    e = x -> embedding(6, 3, mask_zero=true)\n"
                      "    output (e + e) -> lstm(2) -> dense(1)\n}\ntrain m { loss = mse }\n")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, (16, 5))
    loss, grads = model.loss_and_gradients(ids, rng.normal(size=(16, 1)).astype(np.float32))
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
