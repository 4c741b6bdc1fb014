"""gaussian_noise, gaussian_dropout and alpha_dropout: Keras' noise layers, checked on the statistics of
what they draw while training (against Keras' formulas), as the identity in inference, and for the
gradient that flows through them."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.frontend import TRAIN, compile_text
from nnd.runtime.executor import Executor

MODEL = """model m {{
    input x: [{width}]
    {layer}
}}
"""
SAMPLES = (400, 500)  # 200,000 draws: a mean within 0.01 of the truth is over four standard errors


def _training_output(layer: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    program = compile_text(MODEL.format(layer=layer, width=x.shape[1]), name="m.nnd")
    executor = Executor(program.lower("m", TRAIN), dtype=np.float64, seed=seed)
    return executor.run({"x": x}, {})["output"]


def test_gaussian_noise_adds_normal_noise_of_the_given_deviation():
    x = np.random.default_rng(0).uniform(-3.0, 3.0, size=SAMPLES)
    noise = _training_output("gaussian_noise(0.5)", x) - x
    assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(0.5, rel=0.01)
    assert abs(np.corrcoef(noise.ravel(), x.ravel())[0, 1]) < 0.01  # independent of the input
    assert not np.array_equal(noise, _training_output("gaussian_noise(0.5)", x, seed=1) - x)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_gaussian_dropout_multiplies_by_noise_centred_on_one(rate):
    x = np.random.default_rng(1).uniform(1.0, 2.0, size=SAMPLES)
    factor = _training_output(f"gaussian_dropout({rate})", x) / x
    assert abs(factor.mean() - 1.0) < 0.01
    assert factor.std() == pytest.approx(math.sqrt(rate / (1.0 - rate)), rel=0.01)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_alpha_dropout_saturates_dropped_units_and_keeps_a_standard_normal_standard(rate):
    x = np.random.default_rng(2).normal(size=SAMPLES)
    y = _training_output(f"alpha_dropout({rate})", x)
    saturated = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - rate) * (1 + rate * saturated ** 2)) ** -0.5       # Keras' affine correction
    b = -a * saturated * rate
    kept = np.isclose(y, a * x + b, rtol=0, atol=1e-12)
    dropped = np.isclose(y, a * saturated + b, rtol=0, atol=1e-12)
    assert np.all(kept | dropped)
    assert dropped.mean() == pytest.approx(rate, abs=0.005)
    assert abs(y.mean()) < 0.01 and y.std() == pytest.approx(1.0, abs=0.01)  # selu's fixed point kept


@pytest.mark.parametrize("layer", ["gaussian_noise(0.3)", "gaussian_dropout(0.4)", "alpha_dropout(0.2)"])
def test_inference_is_the_identity(layer):
    model = nnd.loads(MODEL.format(layer=layer, width=6), dtype="float64")
    x = np.random.default_rng(3).normal(size=(5, 6))
    np.testing.assert_array_equal(model.predict(x), x)


def test_gradients_flow_through_the_noise():
    """The gradients of a step through noise are finite and differ from those of the same model without
    noise (gaussian_dropout(0.0) is the identity)."""
    source = MODEL.format(layer="dense(3, name=d)\n    {noise}\n    dense(1)", width=4) + "train m { loss = mse }"
    x, y = np.random.default_rng(4).normal(size=(8, 4)), np.zeros((8, 1))
    plain = nnd.loads(source.replace("{noise}", "gaussian_dropout(0.0)"), dtype="float64", seed=0)
    noisy = nnd.loads(source.replace("{noise}", "gaussian_noise(0.5)"), dtype="float64", seed=0)
    _, plain_grads = plain.loss_and_gradients(x, y)
    _, noisy_grads = noisy.loss_and_gradients(x, y)
    assert all(np.isfinite(g).all() for g in noisy_grads.values())
    assert not np.allclose(noisy_grads["dense.kernel"], plain_grads["dense.kernel"])  # the noise reached the loss


def test_a_model_with_noise_layers_trains():
    source = MODEL.format(layer="gaussian_noise(0.1)\n    dense(16, activation=selu)\n    alpha_dropout(0.1)\n"
                               "    dense(8)\n    gaussian_dropout(0.1)\n    dense(1)", width=4)
    model = nnd.loads(source + "train m { loss = mse\n optimizer = adam(lr=0.01) }", seed=0)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]])).astype(np.float32)
    history = model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]


@pytest.mark.parametrize("layer, message", [
    ("gaussian_noise(-1.0)", "3:20: error: gaussian_noise argument 'stddev'"),
    ("gaussian_dropout(1.0)", "3:22: error: gaussian_dropout argument 'rate'"),
    ("alpha_dropout()", "3:5: error: alpha_dropout"),
])
def test_mistakes_are_located(layer, message):
    with pytest.raises(NndError, match=message):
        nnd.loads(MODEL.format(layer=layer, width=3), name="m.nnd")
