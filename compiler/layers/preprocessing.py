"""Keras' Normalization preprocessing layer: inputs standardized with per-feature statistics that are
written in the source or learned from data (`nnd.adapt`), never by gradient descent.

Keras 3 computes (keras/src/layers/preprocessing/normalization.py, `call`):

    (inputs - mean) / ops.maximum(ops.sqrt(variance), backend.epsilon())      # invert=False
    mean + inputs * ops.maximum(ops.sqrt(variance), backend.epsilon())        # invert=True

with backend.epsilon() = 1e-7, so a feature of zero variance is divided by 1e-7, not by 0.
"""
from __future__ import annotations

import math
from typing import Any

from nnd.compiler.args import BOOL, INT, NAME, STATISTIC, VARIANCE, ArgSpec
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.base import LayerContext, LayerError, layer, require_float

EPSILON = 1e-7  # Keras' backend.epsilon(), the floor of the standard deviation

# What a layer learning its statistics calls them, as Keras' weights are named (in Keras' order); `count`
# is the number of values per feature that adapt averaged, 0 until it has run. The runtime refuses a layer
# whose count is 0 and whose statistics are still the initial 0 and 1 (see nnd/adapt.py).
MEAN, VARIANCE_PARAM, COUNT = "mean", "variance", "count"


def _given(ctx: LayerContext, what: str, values: float | tuple[float, ...], features: int, x: Value) -> Value:
    """Statistics written in the source, as a constant broadcast over the feature axis: one number for
    all features (Keras broadcasts a scalar), or one per feature."""
    items = values if isinstance(values, tuple) else (values,)
    if len(items) not in (1, features):
        raise LayerError(f"normalization {what} has {len(items)} values, but its input {x.type} has {features} "
                         f"features on its last axis", [f"give one number, or a list of {features}"])
    if len(set(items)) == 1:
        return ctx.constant(items[0])
    return ctx.emit("constant_values", [], values=tuple(float(v) for v in items), dtype="f32")


def _spread_of(variance: float | tuple[float, ...]) -> float | tuple[float, ...]:
    """max(sqrt(variance), epsilon), each value; computed here once for statistics the source gives."""
    if isinstance(variance, tuple):
        return tuple(max(math.sqrt(v), EPSILON) for v in variance)
    return max(math.sqrt(variance), EPSILON)


def _statistics(ctx: LayerContext, x: Value, args: dict[str, Any]) -> tuple[Value, Value]:
    """The mean and the spread max(sqrt(variance), epsilon) the layer applies, per feature."""
    features = x.type.shape[-1]
    mean, variance = args["mean"], args["variance"]
    if (mean is None) != (variance is None):
        given, missing = ("mean", "variance") if variance is None else ("variance", "mean")
        raise LayerError(f"normalization is given {given} but no {missing}: give both, or neither to learn them "
                         "from data", ["model.adapt(x) (Keras' layer.adapt) computes both from training inputs; "
                                       "nnd train does so by itself"])
    if mean is not None:
        return _given(ctx, "mean", mean, features, x), _given(ctx, "variance", _spread_of(variance), features, x)
    learned_mean = ctx.param(MEAN, (features,), Initializer("zeros"), trainable=False)
    learned_variance = ctx.param(VARIANCE_PARAM, (features,), Initializer("ones"), trainable=False)
    ctx.param(COUNT, (), Initializer("zeros"), trainable=False)
    spread = ctx.emit("maximum", [ctx.emit("sqrt", [learned_variance]), ctx.constant(EPSILON)])
    return learned_mean, spread


@layer("normalization", ArgSpec("axis", INT, -1), ArgSpec("mean", STATISTIC, None),
       ArgSpec("variance", VARIANCE, None), ArgSpec("invert", BOOL, False), ArgSpec("name", NAME, None),
       keeps_mask=True)
def _normalization(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """Keras' Normalization: (x - mean) / max(sqrt(variance), 1e-7) per feature of the last axis, or with
    invert=true x * max(sqrt(variance), 1e-7) + mean. The statistics are `mean` and `variance` when given
    (a number or a list of one per feature); otherwise non-trainable parameters `mean`, `variance` and
    `count` that model.adapt(x) computes from data (nnd train does so before the first epoch)."""
    x = inputs[0]
    require_float(x, "normalization")
    if x.type.rank < 2:
        raise LayerError(f"normalization expects a batch with a feature axis, got {x.type}")
    if args["axis"] not in (-1, x.type.rank - 1):
        raise LayerError(f"normalization keeps statistics per feature of the last axis (axis=-1), got "
                         f"axis={args['axis']} for {x.type}",
                         ["move the features to the last axis with permute(...) first"])
    mean, spread = _statistics(ctx, x, args)
    ctx.count(2 * x.type.concrete_size())
    if args["invert"]:
        return ctx.emit("add", [ctx.emit("mul", [x, spread]), mean])
    return ctx.emit("div", [ctx.emit("sub", [x, mean]), spread])
