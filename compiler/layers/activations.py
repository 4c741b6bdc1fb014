"""Activations: the functions that `activation=NAME` names, and the layers that apply one (relu, elu, prelu,
softmax, activation(NAME), ...).

Each lowers onto existing IR ops (relu, elu, maximum, mul, ...), so autodiff, every backend and the
elementwise fusion serve the composite ones (relu6, hard_sigmoid, mish, ...) as they are. The formulas and
constants are Keras 3's.
"""
from __future__ import annotations

from typing import Any, Callable

from nnd.compiler.args import (ACTIVATION, BOOL, FLOAT, INITIALIZER, INT, NAME, NON_NEGATIVE_FLOAT, REGULARIZER,
                               SHARED_AXES, ArgSpec)
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.base import LayerContext, LayerError, check_axis, layer, require_float

# SELU's fixed point constants (Klambauer et al. 2017) in full precision, as TensorFlow, JAX and PyTorch
# use them; Keras' documentation rounds them to 1.67326324 and 1.05070098.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# Activations that are one IR op each.
_SINGLE_OPS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "swish": "swish", "silu": "swish",
               "softplus": "softplus", "exponential": "exp"}


def clip_above(ctx: LayerContext, x: Value, ceiling: float) -> Value:
    """min(x, ceiling), written -max(-x, -ceiling): the IR has a maximum but no minimum, and unlike
    x - relu(x - ceiling) this stays exact for large x in float32."""
    flipped = ctx.emit("maximum", [ctx.emit("neg", [x]), ctx.constant(-ceiling)])
    return ctx.emit("neg", [flipped])


def _relu6(ctx: LayerContext, x: Value) -> Value:
    return clip_above(ctx, ctx.emit("relu", [x]), 6.0)


def _hard_sigmoid(ctx: LayerContext, x: Value) -> Value:
    """Keras 3's relu6(x + 3) / 6 (Keras 2's slope was 0.2; PyTorch's hardsigmoid is this one)."""
    return ctx.emit("div", [_relu6(ctx, ctx.emit("add", [x, ctx.constant(3.0)])), ctx.constant(6.0)])


def _hard_silu(ctx: LayerContext, x: Value) -> Value:
    return ctx.emit("mul", [x, _hard_sigmoid(ctx, x)])


def _selu(ctx: LayerContext, x: Value) -> Value:
    return ctx.emit("mul", [ctx.emit("elu", [x], alpha=SELU_ALPHA), ctx.constant(SELU_SCALE)])


def _mish(ctx: LayerContext, x: Value) -> Value:
    return ctx.emit("mul", [x, ctx.emit("tanh", [ctx.emit("softplus", [x])])])


def _softsign(ctx: LayerContext, x: Value) -> Value:
    return ctx.emit("div", [x, ctx.emit("add", [ctx.emit("abs", [x]), ctx.constant(1.0)])])


_COMPOSITES: dict[str, Callable[[LayerContext, Value], Value]] = {
    "selu": _selu, "relu6": _relu6, "hard_sigmoid": _hard_sigmoid, "hard_silu": _hard_silu,
    "hard_swish": _hard_silu, "mish": _mish, "softsign": _softsign,
}


def counted(ctx: LayerContext, x: Value, emit: Callable[[], Value]) -> Value:
    """Run `emit` and count one FLOP per element of x for each op it emitted (constants cost nothing), so
    that a composite such as mish costs what its parts do and a one-op activation one FLOP per element."""
    nodes = ctx.builder.graph.nodes
    start = len(nodes)
    y = emit()
    ctx.count(sum(1 for node in nodes[start:] if node.op != "constant") * x.type.concrete_size())
    return y


def apply_activation(ctx: LayerContext, x: Value, name: str, **options: Any) -> Value:
    """Emit the activation `name` on x; `linear` emits nothing and costs nothing."""
    if name == "linear":
        return x
    return counted(ctx, x, lambda: _emit_activation(ctx, x, name, options))


def _emit_activation(ctx: LayerContext, x: Value, name: str, options: dict[str, Any]) -> Value:
    if name == "softmax":
        return ctx.emit("softmax", [x], axis=options.get("axis", -1))
    if name == "leaky_relu":
        return ctx.emit("leaky_relu", [x], alpha=options.get("alpha", 0.2))
    if name == "elu":
        return ctx.emit("elu", [x], alpha=options.get("alpha", 1.0))
    if name == "gelu":
        return ctx.emit("gelu", [x], approximate=options.get("approximate", False))
    if name in _COMPOSITES:
        return _COMPOSITES[name](ctx, x)
    return ctx.emit(_SINGLE_OPS[name], [x])


# ---------------------------------------------------------------- layers of one activation each

_FORMULAS = {
    "sigmoid": "1 / (1 + exp(-x))", "tanh": "tanh(x)", "softplus": "log(1 + exp(x))", "linear": "x",
    "exponential": "exp(x)", "swish": "x * sigmoid(x)", "relu6": "min(max(x, 0), 6)",
    "selu": "scale * elu(x, alpha), alpha 1.6733 and scale 1.0507 (self-normalizing)",
    "hard_sigmoid": "relu6(x + 3) / 6, Keras 3's piecewise-linear sigmoid", "hard_silu": "x * hard_sigmoid(x)",
    "mish": "x * tanh(softplus(x))", "softsign": "x / (1 + |x|)",
}


def _simple_activation(name: str, aliases: tuple[str, ...] = ()) -> None:
    @layer(name, ArgSpec("name", NAME, None), doc=f"{name} activation, elementwise: {_FORMULAS[name]}",
           aliases=aliases, keeps_mask=True)
    def lower(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
        if name in _COMPOSITES:
            require_float(inputs[0], name)  # said here, not by an op of the composite
        return apply_activation(ctx, inputs[0], name)


for _name in ("sigmoid", "tanh", "softplus", "linear", "exponential", "selu", "relu6", "hard_sigmoid", "mish",
              "softsign"):
    _simple_activation(_name)
_simple_activation("swish", ("silu",))
_simple_activation("hard_silu", ("hard_swish",))


@layer("relu", ArgSpec("max_value", NON_NEGATIVE_FLOAT, None), ArgSpec("negative_slope", NON_NEGATIVE_FLOAT, 0.0),
       ArgSpec("threshold", NON_NEGATIVE_FLOAT, 0.0), ArgSpec("name", NAME, None), keeps_mask=True)
def _relu(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' ReLU: x above threshold, capped at max_value; negative_slope * (x - threshold) below it."""
    x = inputs[0]
    max_value, slope, threshold = args["max_value"], args["negative_slope"], args["threshold"]
    if max_value is None and slope == 0.0 and threshold == 0.0:
        return apply_activation(ctx, x, "relu")
    require_float(x, "relu")
    return counted(ctx, x, lambda: _keras_relu(ctx, x, max_value, slope, threshold))


def _keras_relu(ctx: LayerContext, x: Value, max_value: float | None, slope: float, threshold: float) -> Value:
    """Keras 3's ReLU.static_call: x * (x > threshold), clipped to max_value, less slope * relu(threshold - x)."""
    if max_value is None and threshold == 0.0:
        return ctx.emit("leaky_relu", [x], alpha=slope)
    if threshold == 0.0:
        kept = ctx.emit("relu", [x])
    else:
        # relu_grad(a, b) is a * (b > 0): here x where x > threshold and 0 elsewhere, with Keras' strict
        # comparison at the threshold itself; its gradient with respect to x is the same step.
        kept = ctx.emit("relu_grad", [x, ctx.emit("sub", [x, ctx.constant(threshold)])])
    if max_value is not None:
        kept = clip_above(ctx, kept, max_value)
    if slope == 0.0:
        return kept
    short = ctx.emit("neg", [x]) if threshold == 0.0 else ctx.emit("sub", [ctx.constant(threshold), x])
    below = ctx.emit("mul", [ctx.emit("relu", [short]), ctx.constant(slope)])
    return ctx.emit("sub", [kept, below])


@layer("leaky_relu", ArgSpec("negative_slope", FLOAT, 0.3, aliases=("alpha",)), ArgSpec("name", NAME, None),
       keeps_mask=True)
def _leaky_relu(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """x for x > 0, negative_slope * x otherwise (Keras' LeakyReLU default slope 0.3)."""
    return apply_activation(ctx, inputs[0], "leaky_relu", alpha=args["negative_slope"])


@layer("elu", ArgSpec("alpha", FLOAT, 1.0), ArgSpec("name", NAME, None), keeps_mask=True)
def _elu(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return apply_activation(ctx, inputs[0], "elu", alpha=args["alpha"])


@layer("gelu", ArgSpec("approximate", BOOL, False), ArgSpec("name", NAME, None), keeps_mask=True)
def _gelu(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Gaussian error linear unit; approximate=true uses the tanh form."""
    return apply_activation(ctx, inputs[0], "gelu", approximate=args["approximate"])


@layer("softmax", ArgSpec("axis", INT, -1), ArgSpec("name", NAME, None), keeps_mask=True)
def _softmax(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Softmax along an axis (the last by default)."""
    check_axis(inputs[0], args["axis"])
    return apply_activation(ctx, inputs[0], "softmax", axis=args["axis"])


@layer("activation", ArgSpec("activation", ACTIVATION), ArgSpec("name", NAME, None), keeps_mask=True)
def _activation(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Any activation by name: activation(relu)."""
    if args["activation"] in _COMPOSITES:
        require_float(inputs[0], args["activation"])
    return apply_activation(ctx, inputs[0], args["activation"])


# ---------------------------------------------------------------- prelu

@layer("prelu", ArgSpec("alpha_initializer", INITIALIZER, Initializer("zeros")),
       ArgSpec("alpha_regularizer", REGULARIZER, None), ArgSpec("shared_axes", SHARED_AXES, None),
       ArgSpec("name", NAME, None), keeps_mask=True)
def _prelu(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' PReLU: x for x >= 0, alpha * x below, with a learned alpha per element of a sample (shape
    input.shape[1:]), one alpha along each of the shared_axes (1 is the first axis after the batch)."""
    x = inputs[0]
    require_float(x, "prelu")
    if x.type.rank < 2:
        raise LayerError(f"prelu expects a batch with at least one axis after the batch axis, got {x.type}")
    shape = list(x.type.shape[1:])
    for axis in args["shared_axes"] or ():
        if axis >= x.type.rank:
            raise LayerError(f"prelu shared_axes names axis {axis}, but {x.type} has axes 1 to {x.type.rank - 1} "
                             "after the batch axis")
        shape[axis - 1] = 1
    alpha = ctx.param("alpha", shape, args["alpha_initializer"], regularizer=args["alpha_regularizer"])

    def emit() -> Value:  # Keras' relu(x) - alpha * relu(-x)
        below = ctx.emit("mul", [alpha, ctx.emit("relu", [ctx.emit("neg", [x])])])
        return ctx.emit("sub", [ctx.emit("relu", [x]), below])
    return counted(ctx, x, emit)
