"""up_sampling2d and up_sampling1d: Keras' nearest-neighbour upsampling, against PyTorch's interpolate in
float64 (outputs and gradients), in either image layout and at each optimization level."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.frontend import compile_text

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, randomized, torch_parameters  # noqa: E402

IMAGE_MODEL = """model m {{
    input x: [3, 4, 2]
    up_sampling2d({size})
    conv2d(2, 3, activation=tanh)
    flatten()
    dense(2)
}}
train m {{ loss = mse }}
"""
SEQUENCE_MODEL = """model m {
    input x: [5, 3]
    up_sampling1d(3)
    conv1d(2, 2)
    flatten()
    dense(2)
}
train m { loss = mse }
"""


def _check_against(model: nnd.Model, x: np.ndarray, y: np.ndarray, reference) -> None:
    p = torch_parameters(model)
    assert_matches_torch(model, x, y, reference(torch.tensor(x), p), p, rtol=1e-12, grad_rtol=1e-10)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("size, scale", [("", (2, 2)), ("[2, 3]", (2, 3)), ("size=[1, 2]", (1, 2))])
def test_up_sampling2d_matches_torch_nearest_interpolation(monkeypatch, layout, level, size, scale):
    monkeypatch.setenv("NND_LAYOUT", layout)
    model = randomized(IMAGE_MODEL.format(size=size), level)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 3, 4, 2)), rng.normal(size=(2, 2))

    def reference(images, p):
        up = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), scale_factor=scale, mode="nearest")
        conv = torch.tanh(torch.nn.functional.conv2d(up, p["conv2d.kernel"].permute(3, 2, 0, 1), p["conv2d.bias"]))
        return conv.permute(0, 2, 3, 1).reshape(len(images), -1) @ p["dense.kernel"] + p["dense.bias"]

    _check_against(model, x, y, reference)


@pytest.mark.parametrize("level", [0, 2])
def test_up_sampling1d_matches_torch_nearest_interpolation(level):
    model = randomized(SEQUENCE_MODEL, level)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 2))

    def reference(steps, p):
        up = torch.nn.functional.interpolate(steps.permute(0, 2, 1), scale_factor=3, mode="nearest")
        conv = torch.nn.functional.conv1d(up, p["conv1d.kernel"].permute(2, 1, 0), p["conv1d.bias"])
        return conv.permute(0, 2, 1).reshape(len(steps), -1) @ p["dense.kernel"] + p["dense.bias"]

    _check_against(model, x, y, reference)


@pytest.mark.parametrize("source, message", [
    (IMAGE_MODEL.format(size="0"), "3:19: error: up_sampling2d argument 'size'"),
    (SEQUENCE_MODEL.replace("up_sampling1d(3)", "up_sampling2d()"),
     "3:5: error: up_sampling2d expects an image batch (N, height, width, channels), got f32[N,5,3]"),
    (IMAGE_MODEL.format(size="interpolation=bilinear"),
     "3:33: error: up_sampling2d argument 'interpolation': unknown interpolation 'bilinear'"),
])
def test_upsampling_mistakes_are_located_errors(source, message):
    with pytest.raises(NndError) as info:
        nnd.loads(source)
    assert message in str(info.value)


@pytest.mark.parametrize("input_shape, line, shape", [
    ("[3, 2]", "up_sampling1d(100000)", ("N", 300_000, 2)),
    ("[3, 2, 2]", "up_sampling2d([1, 100000])", ("N", 3, 200_000, 2)),
])
def test_a_large_size_lowers_to_a_few_small_nodes(input_shape, line, shape):
    """The copies are a broadcast, not `size` inputs of one concat (which made up_sampling1d(100000000)
    take minutes and gigabytes to compile)."""
    graph = compile_text(f"model m {{\n input x: {input_shape}\n {line}\n}}").graphs["m"]
    assert next(iter(graph.outputs.values())).type.shape == shape
    assert len(graph.nodes) <= 4 and max(len(node.inputs) for node in graph.nodes) <= 2
