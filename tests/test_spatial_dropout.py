"""spatial_dropout1d and spatial_dropout2d: Keras' SpatialDropout, which drops whole channels of a sample
(every position of a feature map at once) while training and passes values through in inference."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.frontend import TRAIN, compile_text
from nnd.runtime.executor import Executor

MODEL = """model m {{
    input x: {shape}
    {layer}
}}
"""


def _training_output(layer: str, shape: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    program = compile_text(MODEL.format(layer=layer, shape=shape), name="m.nnd")
    executor = Executor(program.lower("m", TRAIN), dtype=np.float64, seed=seed)
    return executor.run({"x": x}, {})["output"]


@pytest.mark.parametrize("layer, shape, sample", [
    ("spatial_dropout2d(0.3)", "[4, 5, 64]", (50, 4, 5, 64)),
    ("spatial_dropout1d(0.3)", "[7, 64]", (50, 7, 64)),
])
def test_whole_channels_are_dropped_and_the_rest_scaled(layer, shape, sample):
    x = np.random.default_rng(0).uniform(1.0, 2.0, size=sample)
    y = _training_output(layer, shape, x)
    spatial = tuple(range(1, len(sample) - 1))
    kept = (y != 0).all(axis=spatial)
    dropped = (y == 0).all(axis=spatial)
    assert np.all(kept | dropped)                         # a channel of a sample is kept or dropped whole
    np.testing.assert_allclose(y[np.broadcast_to(np.expand_dims(kept, spatial), y.shape)],
                               x[np.broadcast_to(np.expand_dims(kept, spatial), x.shape)] / 0.7, rtol=1e-12)
    assert 0.25 < dropped.mean() < 0.35                   # 3,200 channels: within five standard deviations
    assert not (dropped.all(axis=0).any() or dropped.all(axis=1).any())  # drawn per sample and per channel


def test_inference_passes_values_through_and_gradients_follow_the_mask():
    model = nnd.loads(MODEL.format(layer="spatial_dropout2d(0.5)\n    flatten()\n    dense(1)",
                                   shape="[2, 2, 3]") + "train m { loss = mse }", dtype="float64", seed=0)
    x = np.random.default_rng(1).normal(size=(4, 2, 2, 3))
    params = model.parameters()
    np.testing.assert_allclose(model.predict(x), x.reshape(4, -1) @ params["dense.kernel"] + params["dense.bias"],
                               rtol=1e-12)
    _, grads = model.loss_and_gradients(x, np.zeros((4, 1)))
    rows = grads["dense.kernel"].reshape(2, 2, 3)         # the kernel's rows of a dropped channel get nothing
    assert np.all((rows != 0).all(axis=(0, 1)) | (rows == 0).all(axis=(0, 1)))


@pytest.mark.parametrize("layer, shape, message", [
    ("spatial_dropout2d(0.5)", "[7, 3]",
     "3:5: error: spatial_dropout2d expects an image batch (N, height, width, channels), got f32[N,7,3]"),
    ("spatial_dropout1d(1.5)", "[7, 3]", "3:23: error: spatial_dropout1d argument 'rate'"),
])
def test_mistakes_are_located_errors(layer, shape, message):
    with pytest.raises(NndError) as info:
        nnd.loads(MODEL.format(layer=layer, shape=shape))
    assert message in str(info.value)
