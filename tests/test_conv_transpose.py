"""conv2d_transpose and conv1d_transpose: Keras' transposed convolutions, against PyTorch's
conv_transpose in float64 (outputs and every gradient), with Keras' output sizes and TensorFlow's
placement of an odd 'same' padding."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, randomized, torch_parameters  # noqa: E402

IMAGE_MODEL = """model m {{
    input x: [{h}, {w}, 2]
    conv2d(3, 1, activation=tanh)
    conv2d_transpose({filters}, {kernel}, {args})
    flatten()
    dense(2)
}}
train m {{ loss = mse }}
"""


def _keras_length(size: int, k: int, s: int, d: int, padding: str, extra: int | None) -> int:
    """Keras' deconv_output_length."""
    span = (k - 1) * d + 1
    if extra is None:
        return size * s if padding == "same" else size * s + max(span - s, 0)
    return (size - 1) * s + span - 2 * (span // 2 if padding == "same" else 0) + extra


def _tf_transpose(x, kernel, strides, dilation, padding, extra):
    """TensorFlow's conv2d_transpose on NCHW torch tensors, kernel (kh, kw, out, in): PyTorch's full
    transposed convolution, then the window TF keeps (its 'same' pads the convolution's end first) and
    zeros for the rows no input reaches."""
    full = torch.nn.functional.conv_transpose2d(x, kernel.permute(3, 2, 0, 1), stride=strides, dilation=dilation)
    for axis in (0, 1):
        size, k = x.shape[2 + axis], kernel.shape[axis]
        out = _keras_length(size, k, strides[axis], dilation[axis], padding, None if extra is None else extra[axis])
        span = (k - 1) * dilation[axis] + 1
        before = max((size - 1) * strides[axis] + span - out, 0) // 2 if padding == "same" else 0
        full = full.narrow(2 + axis, before, min(out, full.shape[2 + axis] - before))
        missing = out - full.shape[2 + axis]
        if missing:
            pad = [0, 0, 0, 0]
            pad[2 * (1 - axis) + 1] = missing
            full = torch.nn.functional.pad(full, pad)
    return full


def _check_against(model: nnd.Model, x: np.ndarray, reference) -> None:
    y = np.random.default_rng(5).normal(size=(len(x), 2))
    p = torch_parameters(model)
    assert_matches_torch(model, x, y, reference(torch.tensor(x), p), p, rtol=1e-11, grad_rtol=1e-10)


CASES = [  # (h, w), filters, kernel, strides, dilation, padding, output_padding
    ((4, 5), 3, (3, 3), (2, 2), (1, 1), "same", None),
    ((4, 5), 3, (3, 3), (2, 2), (1, 1), "valid", None),
    ((3, 4), 2, (2, 3), (3, 1), (1, 1), "valid", None),      # stride beyond the kernel: rows left zero
    ((4, 3), 2, (4, 2), (2, 2), (1, 1), "same", None),       # even kernels: same pads both sides
    ((3, 3), 2, (3, 2), (2, 3), (1, 1), "same", (1, 2)),
    ((3, 4), 1, (2, 3), (2, 2), (1, 1), "valid", (1, 0)),
    ((5, 4), 2, (3, 2), (1, 1), (2, 3), "same", None),
    ((5, 4), 2, (3, 2), (1, 1), (2, 2), "valid", None),
]


def _argument_text(strides, dilation, padding, extra) -> str:
    text = f"strides={list(strides)}, dilation_rate={list(dilation)}, padding={padding}"
    return text + (f", output_padding={list(extra)}" if extra is not None else "")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("size, filters, kernel, strides, dilation, padding, extra", CASES)
def test_conv2d_transpose_matches_tensorflow_semantics(monkeypatch, layout, level, size, filters, kernel, strides,
                                                       dilation, padding, extra):
    monkeypatch.setenv("NND_LAYOUT", layout)
    source = IMAGE_MODEL.format(h=size[0], w=size[1], filters=filters, kernel=list(kernel),
                                args=_argument_text(strides, dilation, padding, extra))
    model = randomized(source, level)
    x = np.random.default_rng(2).normal(size=(2, *size, 2))

    def reference(images, p):
        h = torch.tanh(torch.nn.functional.conv2d(images.permute(0, 3, 1, 2), p["conv2d.kernel"].permute(3, 2, 0, 1),
                                                  p["conv2d.bias"]))
        up = _tf_transpose(h, p["conv2d_transpose.kernel"], strides, dilation, padding, extra)
        up = up + p["conv2d_transpose.bias"].reshape(1, -1, 1, 1)
        return up.permute(0, 2, 3, 1).reshape(len(images), -1) @ p["dense.kernel"] + p["dense.bias"]

    _check_against(model, x, reference)


@pytest.mark.parametrize("source_args, size, expected", [
    ("3, strides=2, padding=same", 7, 14),
    ("3, strides=2", 7, 15),
    ("3, strides=2, padding=same, output_padding=0", 7, 13),
    ("3, strides=2, padding=same, output_padding=1", 7, 14),
    ("2, strides=3", 5, 15),
    ("5, dilation_rate=2", 4, 12),
])
def test_output_sizes_are_keras(source_args, size, expected):
    model = nnd.loads(f"model m {{ input x: [{size}, {size}, 1]\n conv2d_transpose(4, {source_args}) }}")
    assert model.output_shape == (None, expected, expected, 4)
    sequence = nnd.loads(f"model m {{ input x: [{size}, 1]\n conv1d_transpose(4, {source_args}) }}")
    assert sequence.output_shape == (None, expected, 4)


def test_parameters_use_keras_layout_and_count():
    model = nnd.loads("model m { input x: [7, 7, 4]\n conv2d_transpose(6, [3, 2]) }")
    shapes = {name: value.shape for name, value in model.parameters().items()}
    assert shapes == {"conv2d_transpose.kernel": (3, 2, 6, 4), "conv2d_transpose.bias": (6,)}
    sequence = nnd.loads("model m { input x: [7, 4]\n conv1d_transpose(6, 3, use_bias=false) }")
    assert {n: v.shape for n, v in sequence.parameters().items()} == {"conv1d_transpose.kernel": (3, 6, 4)}


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("strides, padding, extra", [(3, "same", 2), (2, "valid", None), (1, "same", None)])
def test_conv1d_transpose_matches_torch(level, strides, padding, extra):
    extra_text = f", output_padding={extra}" if extra is not None else ""
    source = f"""model m {{
    input x: [5, 2]
    conv1d(3, 1, activation=tanh)
    conv1d_transpose(2, 3, strides={strides}, padding={padding}{extra_text}, activation=tanh)
    flatten()
    dense(2)
}}
train m {{ loss = mse }}
"""
    model = randomized(source, level)
    x = np.random.default_rng(3).normal(size=(2, 5, 2))

    def reference(steps, p):
        h = torch.tanh(torch.nn.functional.conv1d(steps.permute(0, 2, 1), p["conv1d.kernel"].permute(2, 1, 0),
                                                  p["conv1d.bias"]))
        kernel = p["conv1d_transpose.kernel"].unsqueeze(0)          # (1, k, out, in)
        up = _tf_transpose(h.unsqueeze(2), kernel, (1, strides), (1, 1), padding,
                           None if extra is None else (0, extra)).squeeze(2)
        up = torch.tanh(up + p["conv1d_transpose.bias"].reshape(1, -1, 1))
        return up.permute(0, 2, 1).reshape(len(steps), -1) @ p["dense.kernel"] + p["dense.bias"]

    _check_against(model, x, reference)


def test_a_convolutional_autoencoder_learns_to_reconstruct():
    source = """model autoencoder {
    input image: [8, 8, 1]
    conv2d(8, 3, strides=2, padding=same, activation=relu)
    conv2d_transpose(8, 3, strides=2, padding=same, activation=relu)
    conv2d(1, 3, padding=same)
}
train autoencoder { loss = mse
    optimizer = adam(lr=0.01) }
"""
    model = nnd.loads(source, seed=0)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:8, 0:8]
    images = np.stack([np.sin(rows * a + cols * b) for a, b in rng.uniform(0.2, 0.8, size=(256, 2))])[..., None]
    images = images.astype(np.float32)
    history = model.fit(images, images, epochs=15, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("line, column, message", [
    ("conv2d_transpose(4, 3, strides=2, output_padding=2)", 5, "output_padding 2 must be less than the stride 2"),
    ("conv2d_transpose(4, 3, strides=2, dilation_rate=2)", 5, "cannot combine strides and dilation_rate"),
    ("conv2d_transpose(4, 3, output_padding=-1)", 43, "argument 'output_padding': must be at least 0, got -1"),
    ("conv1d_transpose(4, 3)", 5, "conv1d_transpose expects a sequence"),
])
def test_mistakes_are_located(line, column, message):
    source = f"model m {{\n    input x: [6, 6, 2]\n    {line}\n}}\n"
    with pytest.raises(NndError) as caught:
        nnd.loads(source, name="m.nnd")
    text = str(caught.value)
    assert f"m.nnd:3:{column}: error" in text and message in text


@pytest.mark.parametrize("line, message, note", [
    ("conv2d_transpose(4, 2, strides=2, padding=same, output_padding=0)",
     "makes 10 rows, which its convolution maps back to 5, not the input's 6", "use output_padding 1, an odd"),
    ("conv2d_transpose(4, [3, 4], padding=same, output_padding=0)",
     "spanning 4 makes 5 columns, which its convolution maps back to 5, not the input's 6",
     "use an odd kernel_size or padding=valid"),
    ("conv2d_transpose(4, [3, 2], strides=3, padding=same, output_padding=[1, 0])",
     "makes 15 columns, which its convolution maps back to 5", "use output_padding 1 to 2"),
])
def test_output_padding_zero_with_an_even_same_window_is_located(line, message, note):
    """Keras' formula gives these an output whose convolution is one position short of the input, which
    TensorFlow refuses when it runs; the layer says so at its call."""
    source = f"model m {{\n    input x: [6, 6, 2]\n    {line}\n}}\n"
    with pytest.raises(NndError) as caught:
        nnd.loads(source, name="m.nnd")
    text = str(caught.value)
    assert "m.nnd:3:5: error: conv2d_transpose output_padding 0 with padding=same" in text
    assert message in text and note in text


def test_conv1d_transpose_output_padding_zero_with_an_even_same_window_is_located():
    with pytest.raises(NndError) as caught:
        nnd.loads("model m {\n    input x: [6, 2]\n    conv1d_transpose(4, 2, padding=same, output_padding=0)\n}\n",
                  name="m.nnd")
    assert "m.nnd:3:5: error: conv1d_transpose output_padding 0" in str(caught.value)
    assert "makes 5 steps" in str(caught.value)
