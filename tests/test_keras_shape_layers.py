"""Keras' Rescaling, Cropping1D, Cropping2D and Permute: outputs and gradients against PyTorch in float64 at
-O0 and -O2 (through a layer with parameters before them, so the gradients pass through them), integer
inputs to rescaling, and a located error for each bad argument."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.frontend import compile_text
from nnd.compiler.summary import summarize

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, randomized, torch_parameters  # noqa: E402
F = torch.nn.functional

MODEL = """model m {{
    input x: [{shape}]
    {first}
    {layer}
    flatten()
    dense(3, name=head)
}}
train m {{ loss = mse }}
"""


def _randomized(shape: str, first: str, layer: str, level: int) -> nnd.Model:
    return randomized(MODEL.format(shape=shape, first=first, layer=layer), level, scale=0.5)


def _check_against(model: nnd.Model, x: np.ndarray, reference) -> None:
    """`reference(x, params)` is the torch value that reaches flatten()."""
    p = torch_parameters(model)
    out = reference(torch.tensor(x), p).reshape(len(x), -1) @ p["head.kernel"] + p["head.bias"]
    y = np.random.default_rng(3).normal(size=(len(x), 3))
    assert_matches_torch(model, x, y, out, p, rtol=1e-12, grad_rtol=1e-10)


def _conv(images, p):
    """conv2d(2, 3, padding=same) in torch, channels last in and out."""
    y = F.conv2d(images.permute(0, 3, 1, 2), p["conv2d.kernel"].permute(3, 2, 0, 1), p["conv2d.bias"], padding=1)
    return y.permute(0, 2, 3, 1)


def _images(shape=(2, 6, 5, 2)) -> np.ndarray:
    return np.random.default_rng(2).normal(size=shape)


# ---------------------------------------------------------------- rescaling

@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("args, scale, offset", [("1.0 / 255", 1 / 255, 0.0), ("2.5, offset=-1", 2.5, -1.0),
                                                 ("scale=-0.5, offset=0.25", -0.5, 0.25)])
def test_rescaling_matches_torch(args, scale, offset, level):
    model = _randomized("4", "dense(5)", f"rescaling({args})", level)
    x = np.random.default_rng(2).normal(size=(3, 4))
    _check_against(model, x, lambda v, p: (v @ p["dense.kernel"] + p["dense.bias"]) * scale + offset)


@pytest.mark.parametrize("level", [0, 2])
def test_rescaling_turns_integer_pixels_into_floats(level):
    source = "model m {\n input x: int32[4, 4, 1]\n rescaling(1.0 / 255, offset=-0.5)\n}"
    model = nnd.loads(source, dtype="float64", seed=0, opt_level=level)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 4, 4, 1)).astype(np.int32)
    got = model.predict(pixels)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, pixels / 255.0 - 0.5, rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------- cropping

@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("args, rows, columns", [
    ("", (0, 0), (0, 0)), ("1", (1, 1), (1, 1)), ("[2, 1]", (2, 2), (1, 1)),
    ("cropping=[[1, 0], [0, 3]]", (1, 0), (0, 3)),
])
def test_cropping2d_matches_torch_slicing(args, rows, columns, level):
    model = _randomized("6, 5, 2", "conv2d(2, 3, padding=same)", f"cropping2d({args})", level)

    def reference(images, p):
        y = _conv(images, p)
        return y[:, rows[0]:y.shape[1] - rows[1], columns[0]:y.shape[2] - columns[1], :]
    _check_against(model, _images(), reference)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("args, start, end", [("", 1, 1), ("2", 2, 2), ("[0, 3]", 0, 3), ("cropping=[4, 0]", 4, 0)])
def test_cropping1d_matches_torch_slicing(args, start, end, level):
    model = _randomized("7, 3", "dense(4)", f"cropping1d({args})", level)

    def reference(steps, p):
        y = steps @ p["dense.kernel"] + p["dense.bias"]
        return y[:, start:y.shape[1] - end, :]
    _check_against(model, np.random.default_rng(2).normal(size=(2, 7, 3)), reference)


def test_croppings_output_shapes_follow_keras():
    def shape(shape: str, line: str) -> tuple:
        graph = compile_text(f"model m {{\n input x: [{shape}]\n {line}\n}}").graphs["m"]
        return graph.outputs["output"].type.shape if "output" in graph.outputs else next(
            iter(graph.outputs.values())).type.shape
    assert shape("6, 5, 2", "cropping2d([[1, 0], [0, 3]])") == ("N", 5, 2, 2)
    assert shape("7, 3", "cropping1d()") == ("N", 5, 3)


# ---------------------------------------------------------------- permute

@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("dims", [(2, 1, 3), (3, 1, 2), (1, 2, 3), (3, 2, 1)])
def test_permute_of_images_matches_torch(dims, level):
    model = _randomized("6, 5, 2", "conv2d(2, 3, padding=same)", f"permute([{', '.join(map(str, dims))}])", level)
    _check_against(model, _images(), lambda images, p: _conv(images, p).permute(0, *dims))


@pytest.mark.parametrize("level", [0, 2])
def test_permute_swaps_steps_and_features(level):
    model = _randomized("7, 3", "dense(4)", "permute([2, 1])", level)
    x = np.random.default_rng(2).normal(size=(2, 7, 3))
    _check_against(model, x, lambda steps, p: (steps @ p["dense.kernel"] + p["dense.bias"]).permute(0, 2, 1))


def test_shape_layers_cost_no_flops_and_rescaling_one_or_two_per_element():
    def flops(shape: str, line: str) -> int:
        return summarize(compile_text(f"model m {{\n input x: [{shape}]\n {line}\n}}").graphs["m"]).rows[-1].flops
    assert flops("6, 5, 2", "cropping2d(1)") == 0
    assert flops("7, 3", "cropping1d()") == 0
    assert flops("7, 3", "permute([2, 1])") == 0
    assert flops("7, 3", "rescaling(0.5)") == 21
    assert flops("7, 3", "rescaling(0.5, offset=1)") == 42


# ---------------------------------------------------------------- mistakes

def _error(line: str, shape: str) -> str:
    source = f"model m {{\n    input x: [{shape}]\n    {line}\n}}\n"
    with pytest.raises(NndError) as info:
        nnd.loads(source)
    return str(info.value)


@pytest.mark.parametrize("line, shape, message", [
    ("rescaling()", "4", "3:5: error: rescaling needs argument 'scale'"),
    ("rescaling(relu)", "4", "3:15: error: rescaling argument 'scale': expected a number, got the name 'relu'"),
    ("rescaling(0.5, offset=true)", "4", "3:27: error: rescaling argument 'offset': expected a number, got a bool"),
    ("cropping2d(-1)", "6, 5, 2", "3:16: error: cropping2d argument 'cropping': must be at least 0, got -1"),
    ("cropping2d([1, 2, 3])", "6, 5, 2", "3:16: error: cropping2d argument 'cropping': expected an int, "
                                         "[rows, columns] or [[top, bottom], [left, right]]"),
    ("cropping2d([[1, 2], [3]])", "6, 5, 2", "3:16: error: cropping2d argument 'cropping': expected "
                                             "[[top, bottom], [left, right]]"),
    ("cropping2d([3, 0])", "6, 5, 2", "3:5: error: cropping2d cuts 6 rows from images of 6 rows in "
                                      "f32[N,6,5,2], leaving none"),
    ("cropping2d([[0, 0], [4, 1]])", "6, 5, 2", "3:5: error: cropping2d cuts 5 columns from images of 5 columns"),
    ("cropping2d(1)", "7, 3", "3:5: error: cropping2d expects an image batch (N, height, width, channels), "
                              "got f32[N,7,3]"),
    ("cropping1d([1])", "7, 3", "3:16: error: cropping1d argument 'cropping': expected an int or [start, end], "
                                "got a list of 1"),
    ("cropping1d(-2)", "7, 3", "3:16: error: cropping1d argument 'cropping': must be at least 0, got -2"),
    ("cropping1d([4, 3])", "7, 3", "3:5: error: cropping1d cuts 7 steps from sequences of 7 steps in f32[N,7,3], "
                                   "leaving none"),
    ("cropping1d()", "6, 5, 2", "3:5: error: cropping1d expects a batch of sequences (N, steps, features), "
                                "got f32[N,6,5,2]"),
    ("permute(2)", "7, 3", "3:13: error: permute argument 'dims': expected a list of axes such as [2, 1], "
                           "got an int (2)"),
    ("permute([1, 1])", "7, 3", "3:13: error: permute argument 'dims': expected an order of the axes 1 to 2 "
                                "(the batch axis 0 stays first), got [1, 1]"),
    ("permute([0, 1])", "7, 3", "3:13: error: permute argument 'dims': expected an order of the axes 1 to 2"),
    ("permute([2, 1])", "6, 5, 2", "3:5: error: permute dims [2, 1] order 2 axes, but f32[N,6,5,2] has 3 "
                                   "after the batch axis"),
    ("permute()", "7, 3", "3:5: error: permute needs argument 'dims'"),
])
def test_bad_arguments_are_located_errors(line, shape, message):
    assert message in _error(line, shape)
