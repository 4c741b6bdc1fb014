"""Keras' activations selu, relu6, hard_sigmoid, hard_silu (hard_swish), mish, softsign, exponential and silu,
the relu layer's max_value, negative_slope and threshold, and prelu: outputs and gradients against PyTorch
in float64 at -O0 and -O2, as layers, as activation(NAME) and as a dense layer's activation=NAME; their
FLOP counts; a located error for each bad argument."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.frontend import compile_text
from nnd.compiler.summary import summarize
from nnd.runtime import kernels_native_elementwise, native

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, torch_parameters  # noqa: E402
F = torch.nn.functional

WIDTH = 12
# The activations' inputs: clear of every kink (0, +-3, 6 and the thresholds and caps used below) by more
# than the gradients' finite precision could blur.
POINTS = np.array([[-7.3, -4.1, -2.7, -1.2, -0.4, 0.3, 0.9, 2.2, 3.6, 5.1, 6.8, 9.0],
                   [8.1, 4.4, 2.6, 1.7, 0.6, 0.2, -0.7, -1.6, -2.2, -3.4, -5.5, -6.6]])

MODEL = """model m {{
    input x: [{width}]
    {first}
    {second}
    dense(3)
}}
train m {{ loss = mse }}
"""


def _hard_sigmoid(z):
    """PyTorch's hardsigmoid (Keras 3's) as relu6(z + 3) / 6: torch's own backward scales by 1/6 rounded to
    float32 even in float64 (see the test below for its forward)."""
    return F.relu6(z + 3) / 6


TORCH_ACTIVATIONS = {
    "selu": F.selu, "relu6": F.relu6, "hard_sigmoid": _hard_sigmoid, "hard_silu": F.hardswish,
    "hard_swish": F.hardswish, "mish": F.mish, "softsign": F.softsign, "exponential": torch.exp,
    "silu": F.silu,
}


def _model(first: str, second: str, level: int) -> nnd.Model:
    """dense(WIDTH) with the identity kernel and no bias feeds POINTS themselves to the layer under test, so
    the gradient of that kernel is the activation's derivative at POINTS."""
    model = nnd.loads(MODEL.format(width=WIDTH, first=first, second=second), dtype="float64", seed=0,
                      opt_level=level)
    rng = np.random.default_rng(1)
    params = {name: rng.normal(size=value.shape) * 0.5 for name, value in model.parameters().items()}
    params.update({"dense.kernel": np.eye(WIDTH), "dense.bias": np.zeros(WIDTH)})
    model.set_parameters(params)
    return model


def _check_against(model: nnd.Model, activation, points: np.ndarray = POINTS) -> None:
    """`activation(z, params)` in torch between the identity dense layer and the last dense layer."""
    p = torch_parameters(model)
    x = torch.tensor(points)
    out = activation(x @ p["dense.kernel"] + p["dense.bias"], p) @ p["dense_1.kernel"] + p["dense_1.bias"]
    y = np.random.default_rng(2).normal(size=(len(points), 3))
    assert_matches_torch(model, points, y, out, p, rtol=1e-12, grad_rtol=1e-10)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("form", ["layer", "activation", "dense"])
@pytest.mark.parametrize("name", sorted(TORCH_ACTIVATIONS))
def test_activation_matches_torch(name, form, level):
    first, second = {"layer": ("dense(12)", f"{name}()"), "activation": ("dense(12)", f"activation({name})"),
                     "dense": (f"dense(12, activation={name})", "linear()")}[form]
    model = _model(first, second, level)
    _check_against(model, lambda z, p: TORCH_ACTIVATIONS[name](z))


def test_hard_sigmoid_is_torchs_hardsigmoid():
    model = _model("dense(12)", "hard_sigmoid()", 2)
    p = model.parameters()
    hidden = F.hardsigmoid(torch.tensor(POINTS)).numpy()
    np.testing.assert_allclose(model.predict(POINTS), hidden @ p["dense_1.kernel"] + p["dense_1.bias"],
                               rtol=1e-13, atol=1e-13)


def test_selu_uses_the_full_precision_constants():
    """Keras' documentation rounds alpha and scale to 8 decimals; the backends use them in full."""
    model = _model("dense(12)", "selu()", 0)
    p = model.parameters()
    hidden = F.selu(torch.tensor(POINTS)).numpy()
    np.testing.assert_allclose(model.predict(POINTS), hidden @ p["dense_1.kernel"] + p["dense_1.bias"],
                               rtol=1e-15, atol=1e-15)


def keras_relu(z, max_value=None, negative_slope=0.0, threshold=0.0):
    """Keras 3's ReLU from PyTorch's primitives: threshold(z, t, 0) is z where z > t and 0 elsewhere."""
    kept = F.threshold(z, threshold, 0.0)
    if max_value is not None:
        kept = torch.clamp(kept, max=max_value)
    return kept - negative_slope * F.relu(threshold - z)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("args, options", [
    ("6", {"max_value": 6.0}),
    ("max_value=2.5", {"max_value": 2.5}),
    ("negative_slope=0.1", {"negative_slope": 0.1}),
    ("threshold=1.0", {"threshold": 1.0}),
    ("4.0, 0.2", {"max_value": 4.0, "negative_slope": 0.2}),
    ("threshold=1.0, negative_slope=0.3", {"threshold": 1.0, "negative_slope": 0.3}),
    ("max_value=5.0, negative_slope=0.25, threshold=2.0", {"max_value": 5.0, "negative_slope": 0.25,
                                                          "threshold": 2.0}),
    ("max_value=1.0, threshold=2.0", {"max_value": 1.0, "threshold": 2.0}),
    ("max_value=none", {}),
])
def test_relu_keras_arguments_match_torch(args, options, level):
    model = _model("dense(12)", f"relu({args})", level)
    _check_against(model, lambda z, p: keras_relu(z, **options))


def test_relu_keras_arguments_agree_with_torchs_own_relu6_and_leaky_relu():
    z = torch.tensor(POINTS)
    np.testing.assert_array_equal(keras_relu(z, max_value=6.0).numpy(), F.relu6(z).numpy())
    np.testing.assert_array_equal(keras_relu(z, negative_slope=0.1).numpy(), F.leaky_relu(z, 0.1).numpy())


def test_relu_threshold_is_strict_and_max_value_is_exact_in_float32():
    """Keras keeps x only where x > threshold; a cap of 6 stays 6 where x - 6 rounds in float32."""
    model = nnd.loads("model m {\n input x: [4]\n relu(6, threshold=1.0)\n}", seed=0)
    got = model.predict(np.array([[1.0, 1.5, 3e8, -2.0]], dtype=np.float32))
    np.testing.assert_array_equal(got, [[0.0, 1.5, 6.0, 0.0]])


PRELU_MODEL = """model m {{
    input x: [{shape}]
    {first}
    prelu({args})
    flatten()
    dense(3, name=head)
}}
train m {{ loss = mse }}
"""


def _prelu_model(shape: tuple[int, ...], args: str, level: int) -> tuple[nnd.Model, np.ndarray]:
    """An identity dense (or 1x1 convolution) before prelu, so that the gradients reaching it are checked
    at the inputs drawn here, clear of the kink at 0."""
    first = "conv2d(2, 1)" if len(shape) == 3 else "dense(4)"
    source = PRELU_MODEL.format(shape=", ".join(map(str, shape)), first=first, args=args)
    model = nnd.loads(source, dtype="float64", seed=0, opt_level=level)
    rng = np.random.default_rng(1)
    params = {name: rng.normal(size=value.shape) * 0.5 for name, value in model.parameters().items()}
    kernel = "conv2d.kernel" if len(shape) == 3 else "dense.kernel"
    params[kernel] = np.eye(shape[-1]).reshape(params[kernel].shape)
    params[kernel.replace("kernel", "bias")] = np.zeros(shape[-1])
    model.set_parameters(params)
    x = rng.uniform(0.2, 2.0, (3, *shape)) * rng.choice([-1.0, 1.0], (3, *shape))
    return model, x


def _check_prelu(model: nnd.Model, x: np.ndarray, reference) -> None:
    p = torch_parameters(model)
    first = "conv2d" if x.ndim == 4 else "dense"
    z = torch.tensor(x) @ p[f"{first}.kernel"].reshape(x.shape[-1], -1) + p[f"{first}.bias"]
    out = reference(z, p["prelu.alpha"]).reshape(len(x), -1) @ p["head.kernel"] + p["head.bias"]
    y = np.random.default_rng(3).normal(size=(len(x), 3))
    assert_matches_torch(model, x, y, out, p, rtol=1e-12, grad_rtol=1e-10)


def _where_prelu(z, alpha):
    return torch.where(z >= 0, z, alpha * z)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("shape, args, alpha_shape", [
    ((5, 4), "", (5, 4)),
    ((5, 4), "shared_axes=1", (1, 4)),
    ((5, 4), "shared_axes=[1, 2]", (1, 1)),
    ((3, 4, 2), "shared_axes=[2]", (3, 1, 2)),
])
def test_prelu_matches_torch(shape, args, alpha_shape, level):
    model, x = _prelu_model(shape, args, level)
    assert model.parameters()["prelu.alpha"].shape == alpha_shape  # Keras' shape for alpha
    _check_prelu(model, x, _where_prelu)


@pytest.mark.parametrize("level", [0, 2])
def test_prelu_shared_over_space_is_torchs_per_channel_prelu(level):
    model, x = _prelu_model((3, 4, 2), "shared_axes=[1, 2]", level)
    assert model.parameters()["prelu.alpha"].shape == (1, 1, 2)

    def channel_prelu(z, alpha):
        return F.prelu(z.permute(0, 3, 1, 2), alpha.reshape(-1)).permute(0, 2, 3, 1)
    _check_prelu(model, x, channel_prelu)


def test_prelu_alpha_starts_at_zero_and_takes_an_initializer_and_a_regularizer():
    source = "model m {{\n input x: [3]\n prelu({args})\n}}"
    assert np.all(nnd.loads(source.format(args=""), seed=0).parameters()["prelu.alpha"] == 0.0)
    alpha = nnd.loads(source.format(args="alpha_initializer=constant(0.25)"), seed=0).parameters()["prelu.alpha"]
    np.testing.assert_array_equal(alpha, [0.25, 0.25, 0.25])
    graph = compile_text(source.format(args="alpha_regularizer=l2(0.01)")).graphs["m"]
    assert graph.param_info["prelu.alpha"].regularizer.l2 == 0.01


def _layer_flops(line: str, shape: str = "[2, 5]") -> int:
    graph = compile_text(f"model m {{\n input x: {shape}\n {line}\n}}").graphs["m"]
    return summarize(graph).rows[-1].flops


@pytest.mark.parametrize("line, ops", [
    ("relu()", 1), ("selu()", 2), ("relu6()", 4), ("hard_sigmoid()", 6), ("hard_silu()", 7), ("mish()", 3),
    ("softsign()", 3), ("exponential()", 1), ("silu()", 1), ("relu(6)", 4), ("relu(negative_slope=0.1)", 1),
    ("relu(threshold=1.0, negative_slope=0.5)", 6), ("prelu()", 5), ("activation(mish)", 3),
    ("rescaling(0.5)", 1), ("rescaling(0.5, 1.0)", 2), ("cropping1d([1, 0])", 0), ("permute([2, 1])", 0),
])
def test_flops_count_each_elementwise_op_once_per_element(line, ops):
    assert _layer_flops(line) == ops * 10


def test_a_dense_layers_composite_activation_counts_its_ops():
    base = 2 * 10 * 4 + 4
    assert _layer_flops("dense(4, activation=mish)", "[10]") == base + 3 * 4


def _error(line: str, shape: str = "[6, 5]") -> str:
    source = f"model m {{\n    input x: {shape}\n    {line}\n}}\n"
    with pytest.raises(NndError) as info:
        nnd.loads(source)
    return str(info.value)


@pytest.mark.parametrize("line, message", [
    ("relu(max_value=-1.0)", "3:20: error: relu argument 'max_value': must be at least 0, got -1"),
    ("relu(negative_slope=-0.1)", "3:25: error: relu argument 'negative_slope': must be at least 0, got -0.1"),
    ("relu(threshold=-2)", "3:20: error: relu argument 'threshold': must be at least 0, got -2"),
    ("relu(max_value=same)", "3:20: error: relu argument 'max_value': expected a number, got the name 'same'"),
    ("prelu(shared_axes=0)", "3:23: error: prelu argument 'shared_axes': must be at least 1, got 0"),
    ("prelu(shared_axes=[1, 1])", "3:23: error: prelu argument 'shared_axes': an axis appears twice in [1, 1]"),
    ("prelu(shared_axes=3)", "3:5: error: prelu shared_axes names axis 3, but f32[N,6,5] has axes 1 to 2"),
    ("prelu(alpha_initializer=zero)", "3:29: error: prelu argument 'alpha_initializer': unknown initializer 'zero'"),
    ("prelu(alpha_regularizer=l2)", "3:29: error: prelu argument 'alpha_regularizer': l2 needs parentheses"),
    ("activation(hardswish)", "3:16: error: activation argument 'activation': unknown activation 'hardswish'; "
                              "did you mean 'hard_swish'?"),
    ("dense(3, activation=mishh)", "3:25: error: dense argument 'activation': unknown activation 'mishh'; "
                                   "did you mean 'mish'?"),
])
def test_bad_activation_arguments_are_located_errors(line, message):
    assert message in _error(line)


@pytest.mark.parametrize("line", ["selu()", "mish()", "hard_silu()", "activation(softsign)", "relu(6)", "prelu()"])
def test_composite_activations_of_integer_ids_say_so(line):
    kind = line.split("(")[0] if not line.startswith("activation") else "softsign"
    assert f"3:5: error: {kind} needs a float input, got i32[N,6]" in _error(line, "int32[6]")


COMPOSITES = [(f"{name}()", TORCH_ACTIVATIONS[name]) for name in sorted(TORCH_ACTIVATIONS)
              if name not in ("exponential", "silu")]  # those two are one op each, and nothing to fuse


@pytest.mark.parametrize("line, reference", [
    *COMPOSITES, ("relu(5.0, 0.2, 1.0)", lambda z: keras_relu(z, 5.0, 0.2, 1.0)),
])
def test_composite_activations_in_the_generated_c_kernels_match_torch(monkeypatch, line, reference):
    """A batch large enough for the fused groups at -O2 to run as generated C rather than NumPy ops."""
    if native.library() is None:
        pytest.skip(f"native kernels are unavailable: {native.status()}")
    built = []

    def spy(function_name: str):
        function = original(function_name)
        built.append(function is not None)
        return function
    original = kernels_native_elementwise._function
    monkeypatch.setattr(kernels_native_elementwise, "_function", spy)
    model = _model("dense(12)", line, 2)
    _check_against(model, lambda z, p: reference(z), np.tile(POINTS, (200, 1)))
    assert any(built)
