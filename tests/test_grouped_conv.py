"""depthwise_conv2d, separable_conv2d, conv2d(groups=...) and the 1-D depthwise and separable layers:
outputs and every gradient against PyTorch's grouped convolutions in float64 (with TensorFlow's 'same' pads
applied explicitly), at -O0 and -O2 and in either image layout; Keras' parameter names, layouts and
counts; FLOP counts; training; and the located errors of bad arguments."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.summary import summarize

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, randomized, torch_parameters  # noqa: E402
F = torch.nn.functional

# a 1x1 convolution before the layer, so that its kernel's gradient checks the gradient of the layer's input
IMAGE_MODEL = """model m {{
    input x: [{h}, {w}, {c}]
    conv2d({c}, 1, use_bias=false, name=pre)
    {layer}
    flatten()
    dense(2)
}}
train m {{ loss = mse }}
"""
SEQUENCE_MODEL = """model m {{
    input x: [{steps}, {c}]
    conv1d({c}, 1, use_bias=false, name=pre)
    {layer}
    flatten()
    dense(2)
}}
train m {{ loss = mse }}
"""
SETTINGS = [(0, "NHWC"), (2, "NHWC"), (2, "NCHW")]  # the layout pass runs at -O2 only


def _tf_pads(size: int, k: int, s: int, d: int, padding: str) -> tuple[int, int]:
    """TensorFlow's padding of one axis: 'same' puts the odd cell at the end."""
    if padding == "valid":
        return (0, 0)
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return (total // 2, total - total // 2)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv_nchw(x, weight, groups: int, k, s, d, padding: str):
    """PyTorch's grouped convolution of NCHW x with (out, in/groups, kh, kw) weights and TF pads."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(k), _pair(s), _pair(d)
    top, bottom = _tf_pads(x.shape[2], kh, sh, dh, padding)
    left, right = _tf_pads(x.shape[3], kw, sw, dw, padding)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, stride=(sh, sw), dilation=(dh, dw), groups=groups)


def _depthwise_weight(kernel):
    """Keras (kh, kw, C, dm) -> PyTorch (C*dm, 1, kh, kw): output channel c*dm + m in both."""
    kh, kw, c, dm = kernel.shape
    return kernel.permute(2, 3, 0, 1).reshape(c * dm, 1, kh, kw)


def _finish(y, p, name: str, activation: str):
    if f"{name}.bias" in p:
        y = y + p[f"{name}.bias"][None, :, None, None]
    return torch.tanh(y) if activation == "tanh" else y


def _check_against(model: nnd.Model, x: np.ndarray, reference) -> None:
    """Predictions, the loss and the gradient of every parameter against the PyTorch reference."""
    y = np.random.default_rng(3).normal(size=(len(x), 2))
    p = torch_parameters(model)
    assert_matches_torch(model, x, y, reference(torch.tensor(x), p), p)


def _image_reference(layer_fn):
    """pre (1x1 conv) -> layer_fn(nchw, params) -> flatten in NHWC order -> dense."""
    def reference(x, p):
        pre = F.conv2d(x.permute(0, 3, 1, 2), p["pre.kernel"].permute(3, 2, 0, 1))
        y = layer_fn(pre, p)
        return y.permute(0, 2, 3, 1).reshape(len(x), -1) @ p["dense.kernel"] + p["dense.bias"]
    return reference


# (input h, w, c), kernel_size, strides, dilation_rate, padding, depth_multiplier
DEPTHWISE_CASES = [
    ((6, 7, 3), 3, 1, 1, "valid", 1),
    ((7, 9, 3), 3, 2, 1, "same", 2),
    ((8, 7, 2), (2, 3), (1, 2), 1, "same", 3),
    ((9, 9, 2), 3, 1, 2, "same", 1),
    ((9, 8, 4), (3, 2), 1, (2, 1), "valid", 2),
    ((5, 5, 3), 1, 2, 1, "valid", 2),
    ((7, 7, 2), 4, 3, 1, "same", 1),
    ((4, 4, 2), 3, 3, 1, "valid", 1),
]


def _window_text(k, s, d, padding: str) -> str:
    def value(v):
        return str(list(v)) if isinstance(v, tuple) else str(v)
    return f"{value(k)}, strides={value(s)}, padding={padding}, dilation_rate={value(d)}"


@pytest.mark.parametrize("level, layout", SETTINGS)
@pytest.mark.parametrize("shape, k, s, d, padding, dm", DEPTHWISE_CASES)
@pytest.mark.parametrize("activation, use_bias", [("linear", "true"), ("tanh", "false")])
def test_depthwise_conv2d_matches_torch(monkeypatch, level, layout, shape, k, s, d, padding, dm, activation,
                                        use_bias):
    monkeypatch.setenv("NND_LAYOUT", layout)
    h, w, c = shape
    layer = (f"depthwise_conv2d({_window_text(k, s, d, padding)}, depth_multiplier={dm}, "
             f"activation={activation}, use_bias={use_bias})")
    model = randomized(IMAGE_MODEL.format(h=h, w=w, c=c, layer=layer), level, scale=0.4)

    def layer_fn(x, p):
        y = _conv_nchw(x, _depthwise_weight(p["depthwise_conv2d.depthwise_kernel"]), c, k, s, d, padding)
        return _finish(y, p, "depthwise_conv2d", activation)

    _check_against(model, np.random.default_rng(2).normal(size=(3, h, w, c)), _image_reference(layer_fn))


SEPARABLE_CASES = [
    ((6, 7, 3), 3, 1, 1, "valid", 1, 4),
    ((7, 9, 3), 3, 2, 1, "same", 2, 5),
    ((9, 9, 2), (3, 2), 1, 2, "same", 3, 2),
    ((8, 6, 4), 2, (2, 1), 1, "same", 1, 3),
]


@pytest.mark.parametrize("level, layout", SETTINGS)
@pytest.mark.parametrize("shape, k, s, d, padding, dm, filters", SEPARABLE_CASES)
def test_separable_conv2d_matches_torch(monkeypatch, level, layout, shape, k, s, d, padding, dm, filters):
    monkeypatch.setenv("NND_LAYOUT", layout)
    h, w, c = shape
    layer = f"separable_conv2d({filters}, {_window_text(k, s, d, padding)}, depth_multiplier={dm}, activation=tanh)"
    model = randomized(IMAGE_MODEL.format(h=h, w=w, c=c, layer=layer), level, scale=0.4)

    def layer_fn(x, p):
        y = _conv_nchw(x, _depthwise_weight(p["separable_conv2d.depthwise_kernel"]), c, k, s, d, padding)
        y = F.conv2d(y, p["separable_conv2d.pointwise_kernel"].permute(3, 2, 0, 1))
        return _finish(y, p, "separable_conv2d", "tanh")

    _check_against(model, np.random.default_rng(2).normal(size=(3, h, w, c)), _image_reference(layer_fn))


# (input h, w, c), filters, groups, kernel_size, strides, dilation_rate, padding
GROUPED_CASES = [
    ((6, 6, 4), 6, 2, 3, 1, 1, "same"),
    ((7, 7, 6), 9, 3, 3, 2, 1, "valid"),
    ((6, 7, 4), 8, 4, 3, 2, 1, "same"),       # one input channel per group
    ((8, 8, 4), 4, 2, (3, 2), 1, 2, "same"),
    ((5, 6, 6), 6, 6, 2, 1, 1, "valid"),      # groups = channels = filters: depthwise
    ((5, 5, 4), 6, 1, 3, 1, 1, "valid"),      # one group: the plain convolution
]


@pytest.mark.parametrize("level, layout", SETTINGS)
@pytest.mark.parametrize("shape, filters, groups, k, s, d, padding", GROUPED_CASES)
def test_conv2d_groups_matches_torch(monkeypatch, level, layout, shape, filters, groups, k, s, d, padding):
    monkeypatch.setenv("NND_LAYOUT", layout)
    h, w, c = shape
    layer = f"conv2d({filters}, {_window_text(k, s, d, padding)}, groups={groups}, activation=tanh, name=grouped)"
    model = randomized(IMAGE_MODEL.format(h=h, w=w, c=c, layer=layer), level, scale=0.4)
    assert model.parameters()["grouped.kernel"].shape == (*_pair(k), c // groups, filters)

    def layer_fn(x, p):
        y = _conv_nchw(x, p["grouped.kernel"].permute(3, 2, 0, 1), groups, k, s, d, padding)
        return _finish(y, p, "grouped", "tanh")

    _check_against(model, np.random.default_rng(2).normal(size=(3, h, w, c)), _image_reference(layer_fn))


def _sequence_reference(layer_fn):
    def reference(x, p):
        pre = F.conv1d(x.permute(0, 2, 1), p["pre.kernel"].permute(2, 1, 0))
        y = layer_fn(pre, p)
        return y.permute(0, 2, 1).reshape(len(x), -1) @ p["dense.kernel"] + p["dense.bias"]
    return reference


def _conv1d_ncw(x, weight, groups: int, k: int, s: int, d: int, padding: str):
    if padding == "causal":
        pads = ((k - 1) * d, 0)
    else:
        pads = _tf_pads(x.shape[2], k, s, d, padding)
    return F.conv1d(F.pad(x, pads), weight, stride=s, dilation=d, groups=groups)


# steps, channels, kernel_size, strides, dilation_rate, padding, depth_multiplier
SEQUENCE_CASES = [(9, 3, 3, 1, 1, "valid", 1), (10, 2, 4, 3, 1, "same", 2), (8, 3, 3, 1, 2, "causal", 2)]


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("steps, c, k, s, d, padding, dm", SEQUENCE_CASES)
@pytest.mark.parametrize("separable", [False, True])
def test_depthwise_and_separable_conv1d_match_torch(level, steps, c, k, s, d, padding, dm, separable):
    kind = "separable_conv1d" if separable else "depthwise_conv1d"
    window = f"{k}, strides={s}, padding={padding}, depth_multiplier={dm}, dilation_rate={d}, activation=tanh"
    layer = f"{kind}({'4, ' if separable else ''}{window})"
    model = randomized(SEQUENCE_MODEL.format(steps=steps, c=c, layer=layer), level, scale=0.4)

    def layer_fn(x, p):
        kernel = p[f"{kind}.depthwise_kernel"]                     # (k, C, dm)
        y = _conv1d_ncw(x, kernel.permute(1, 2, 0).reshape(c * dm, 1, k), c, k, s, d, padding)
        if separable:
            y = F.conv1d(y, p[f"{kind}.pointwise_kernel"].permute(2, 1, 0))
        return torch.tanh(y + p[f"{kind}.bias"][None, :, None])

    _check_against(model, np.random.default_rng(2).normal(size=(3, steps, c)), _sequence_reference(layer_fn))


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("steps, c, filters, groups, k, s, d, padding", [
    (9, 4, 6, 2, 3, 1, 1, "same"), (10, 6, 6, 3, 2, 2, 1, "valid"), (8, 3, 6, 3, 3, 1, 2, "causal")])
def test_conv1d_groups_matches_torch(level, steps, c, filters, groups, k, s, d, padding):
    layer = f"conv1d({filters}, {k}, strides={s}, padding={padding}, dilation_rate={d}, groups={groups}, name=grouped)"
    model = randomized(SEQUENCE_MODEL.format(steps=steps, c=c, layer=layer), level, scale=0.4)
    assert model.parameters()["grouped.kernel"].shape == (k, c // groups, filters)

    def layer_fn(x, p):
        y = _conv1d_ncw(x, p["grouped.kernel"].permute(2, 1, 0), groups, k, s, d, padding)
        return y + p["grouped.bias"][None, :, None]

    _check_against(model, np.random.default_rng(2).normal(size=(3, steps, c)), _sequence_reference(layer_fn))


def test_layers_match_torch_through_the_native_kernels(monkeypatch):
    """The NumPy backend runs the depthwise op's native loops, forward and both gradients."""
    from nnd.runtime import kernels_native_depthwise, native

    if native.library() is None:
        pytest.skip("no native library on this machine")
    used = []
    original = kernels_native_depthwise.native_function
    monkeypatch.setattr(kernels_native_depthwise, "native_function",
                        lambda name, dtype: used.append(name) or original(name, dtype))
    layer = "depthwise_conv2d(3, padding=same, depth_multiplier=2, activation=relu)\n    separable_conv2d(6, 3)"
    model = randomized(IMAGE_MODEL.format(h=12, w=12, c=8, layer=layer), 2, scale=0.4)

    def layer_fn(x, p):
        y = _conv_nchw(x, _depthwise_weight(p["depthwise_conv2d.depthwise_kernel"]), 8, 3, 1, 1, "same")
        y = torch.relu(_finish(y, p, "depthwise_conv2d", "linear"))
        y = _conv_nchw(y, _depthwise_weight(p["separable_conv2d.depthwise_kernel"]), 16, 3, 1, 1, "valid")
        return _finish(F.conv2d(y, p["separable_conv2d.pointwise_kernel"].permute(3, 2, 0, 1)), p, "separable_conv2d",
                       "linear")

    _check_against(model, np.random.default_rng(2).normal(size=(8, 12, 12, 8)), _image_reference(layer_fn))
    assert {"depthwise_forward", "depthwise_grad_input", "depthwise_grad_filter"} <= set(used)


# ------------------------------------------------------------------------------- parameters and FLOPs

COUNTED = """model m {
    input x: [10, 12, 8]
    depthwise_conv2d(3, padding=same, depth_multiplier=2)
    separable_conv2d(16, [3, 5], strides=2, padding=same, depth_multiplier=2)
    conv2d(12, 3, groups=4)
    depthwise_conv2d(3, use_bias=false, name=plain)
}
"""


def test_parameter_names_layouts_and_counts_are_keras():
    model = nnd.loads(COUNTED)
    shapes = {name: value.shape for name, value in model.parameters().items()}
    assert shapes == {
        "depthwise_conv2d.depthwise_kernel": (3, 3, 8, 2), "depthwise_conv2d.bias": (16,),
        "separable_conv2d.depthwise_kernel": (3, 5, 16, 2), "separable_conv2d.pointwise_kernel": (1, 1, 32, 16),
        "separable_conv2d.bias": (16,), "conv2d.kernel": (3, 3, 4, 12), "conv2d.bias": (12,),
        "plain.depthwise_kernel": (3, 3, 12, 1)}
    rows = {row.name: row for row in summarize(model.graph).rows}
    # Keras counts: 3*3*8*2 + 16; 3*5*16*2 + 32*16 + 16; 3*3*(16/4)*12 + 12; 3*3*12
    assert [rows[n].params for n in ("depthwise_conv2d", "separable_conv2d", "conv2d", "plain")] == \
        [160, 1008, 444, 108]
    assert rows["separable_conv2d"].shape == "(None, 5, 6, 16)" and rows["plain"].shape == "(None, 1, 2, 12)"
    # multiply-adds as 2 FLOPs over the output positions, plus one per biased output
    assert rows["depthwise_conv2d"].flops == 2 * 10 * 12 * 16 * 9 + 10 * 12 * 16
    assert rows["separable_conv2d"].flops == 2 * 5 * 6 * 32 * 15 + 2 * 5 * 6 * 32 * 16 + 5 * 6 * 16
    assert rows["conv2d"].flops == 2 * 3 * 4 * 12 * 9 * 4 + 3 * 4 * 12
    assert rows["plain"].flops == 2 * 1 * 2 * 12 * 9


def test_initializer_fans_are_keras():
    """Keras takes a 4-D kernel's fans from its last two axes times the window: glorot_uniform's limit is
    sqrt(6 / (kh*kw*in + kh*kw*multiplier)) for a depthwise kernel and sqrt(6 / (kh*kw*in/groups +
    kh*kw*filters)) for a grouped one."""
    model = nnd.loads("model m {\n input x: [6, 6, 64]\n depthwise_conv2d(3, depth_multiplier=4)\n"
                      " separable_conv2d(64, 1)\n conv2d(64, 3, groups=16)\n}\n", seed=0)
    p = model.parameters()
    for name, fan_in, fan_out in (("depthwise_conv2d.depthwise_kernel", 9 * 64, 9 * 4),
                                  ("separable_conv2d.pointwise_kernel", 256, 64), ("conv2d.kernel", 9 * 4, 9 * 64)):
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert 0.95 * limit < np.abs(p[name]).max() <= limit, name


def test_regularizers_reach_the_loss():
    source = ("model m {{\n input x: [4, 4, 2]\n separable_conv2d(3, 3, {reg})\n flatten()\n dense(1)\n}}\n"
              "train m {{ loss = mse }}\n")
    x, y = np.ones((2, 4, 4, 2)), np.zeros((2, 1))
    plain = nnd.loads(source.format(reg="name=s"), dtype="float64", seed=0)
    params = plain.parameters()
    regularized = nnd.loads(source.format(reg="depthwise_regularizer=l2(0.5), pointwise_regularizer=l1(0.25), "
                                              "name=s"), dtype="float64", seed=0)
    regularized.set_parameters(params)
    extra = 0.5 * np.sum(params["s.depthwise_kernel"] ** 2) + 0.25 * np.sum(np.abs(params["s.pointwise_kernel"]))
    assert regularized.loss_and_gradients(x, y)[0] == pytest.approx(plain.loss_and_gradients(x, y)[0] + extra,
                                                                     rel=1e-12)


# ------------------------------------------------------------------------------------------- training

def test_a_small_separable_network_learns():
    """Class 1 images have a bright vertical bar, class 0 a horizontal one."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=256)
    x = rng.normal(scale=0.3, size=(256, 8, 8, 2))
    for i, label in enumerate(labels):
        at = rng.integers(1, 7)
        if label:
            x[i, :, at, :] += 1.5
        else:
            x[i, at, :, :] += 1.5
    model = nnd.loads("""model m {
        input x: [8, 8, 2]
        depthwise_conv2d(3, padding=same, depth_multiplier=2, activation=relu)
        conv2d(8, 3, strides=2, groups=2, activation=relu)
        separable_conv2d(8, 3, padding=same, activation=relu)
        global_avgpool2d()
        dense(2, activation=softmax)
    }
    train m {
        loss = sparse_categorical_crossentropy
        optimizer = adam(learning_rate=0.01)
        metrics = [accuracy]
    }
    """, seed=0)
    losses = model.fit(x, labels, epochs=10, batch_size=32, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert model.evaluate(x, labels)["accuracy"] > 0.9


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("layer, shape, message", [
    ("conv2d(8, 3, groups=3)", "[6, 6, 4]", "3:5: error: conv2d groups=3 does not divide its 4 input channels"),
    ("conv2d(6, 3, groups=4)", "[6, 6, 4]", "3:5: error: conv2d groups=4 does not divide its 6 filters"),
    ("conv2d(8, 3, groups=0)", "[6, 6, 4]", "3:25: error: conv2d argument 'groups'"),
    ("conv1d(4, 3, groups=3)", "[6, 4]", "3:5: error: conv1d groups=3 does not divide its 4 input channels"),
    ("depthwise_conv2d(3)", "[6, 4]",
     "3:5: error: depthwise_conv2d expects an image batch (N, height, width, channels), got f32[N,6,4]"),
    ("depthwise_conv1d(3)", "[6, 6, 4]", "for images (batch, height, width, channels) use depthwise_conv2d"),
    ("separable_conv2d(4, 3)", "[6, 4]", "3:5: error: separable_conv2d expects an image batch"),
    ("depthwise_conv2d(3, strides=2, dilation_rate=2)", "[9, 9, 2]",
     "3:5: error: depthwise_conv2d cannot combine strides and dilation_rate other than 1"),
    ("depthwise_conv2d(5)", "[4, 6, 2]", "3:5: error: depthwise_conv2d window 5x5 is larger than its 4x6 input"),
    ("depthwise_conv1d(9)", "[6, 2]", "3:5: error: depthwise_conv1d window of 9 steps is longer than its input"),
    ("depthwise_conv2d(3, depth_multiplier=0)", "[6, 6, 2]", "3:42: error: depthwise_conv2d argument "
                                                              "'depth_multiplier'"),
    ("separable_conv2d(kernel_size=3)", "[6, 6, 2]", "3:5: error: separable_conv2d needs argument 'filters'"),
    ("depthwise_conv2d(3, padding=causal)", "[6, 6, 2]", "3:33: error: depthwise_conv2d argument 'padding'"),
])
def test_mistakes_are_located_errors(layer, shape, message):
    with pytest.raises(NndError) as info:
        nnd.loads(f"model m {{\n    input x: {shape}\n    {layer}\n}}\n", name="m.nnd")
    assert message in str(info.value)


def test_nnd_layers_lists_them_with_keras_arguments():
    from click.testing import CliRunner

    from nnd.cli import main

    text = CliRunner().invoke(main, ["layers"]).stdout
    assert ("depthwise_conv2d(kernel_size|kernel, strides=1, padding=valid, depth_multiplier=1, "
            "dilation_rate|dilation=1, activation=linear, use_bias=true, depthwise_initializer=glorot_uniform, "
            "bias_initializer=zeros, depthwise_regularizer=none, bias_regularizer=none, name=none)") in text
    assert "separable_conv2d(filters, kernel_size|kernel, strides=1, padding=valid, dilation_rate|dilation=1, " \
           "depth_multiplier=1," in text
    assert "depthwise_conv1d(kernel_size|kernel, strides=1, padding=valid, depth_multiplier=1," in text
    assert "separable_conv1d(filters, " in text
    assert "bias_regularizer=none, groups=1, name=none)" in text
